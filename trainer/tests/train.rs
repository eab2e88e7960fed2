//! End-to-end training on a tiny synthetic ImageFolder made here, at low resolution.

use std::path::{Path, PathBuf};

use candle_core::Device;
use image::{ImageBuffer, Luma, Rgb};
use trainer::data::ImageFolder;
use trainer::device::DeviceChoice;
use trainer::evaluate::evaluate_folder;
use trainer::sampler::Balance;
use trainer::training::{self, TrainArgs, CARD_FILE, CHECKPOINT_FILE, METRICS_FILE, MODEL_FILE};

/// Two classes a network can tell apart at a glance: a bright disc on dark, or a dark one on
/// bright, with per-image jitter; PNG and JPEG, gray and RGB.
fn synthetic_folder(root: &Path, per_class: usize) {
    synthetic_folder_from(root, per_class, "");
}

/// The same, with `prefix` before every file name (`SOURCE__` names a source collection).
fn synthetic_folder_from(root: &Path, per_class: usize, prefix: &str) {
    for (class, bright_disc) in [("disc", true), ("ring", false)] {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let (w, h) = (40 + i as u32 % 5, 40);
            let jitter = (i * 7 % 11) as f32;
            let image = ImageBuffer::from_fn(w, h, |x, y| {
                let d =
                    ((x as f32 - 20.0 - jitter / 3.0).powi(2) + (y as f32 - 20.0).powi(2)).sqrt();
                let inside = d < 10.0 + jitter / 2.0;
                let v = if inside == bright_disc { 220 } else { 30 } as u8;
                Luma([v.saturating_add((x * y % 9) as u8)])
            });
            if i % 2 == 0 {
                image.save(dir.join(format!("{prefix}{i:03}.png"))).unwrap();
            } else {
                let rgb = ImageBuffer::from_fn(w, h, |x, y| {
                    let v = image.get_pixel(x, y).0[0];
                    Rgb([v, v, v])
                });
                rgb.save(dir.join(format!("{prefix}{i:03}.jpg"))).unwrap();
            }
        }
    }
}

fn args(data: &Path, out: &Path, epochs: usize) -> TrainArgs {
    TrainArgs {
        data: vec![data.to_path_buf()],
        classes: None,
        val_data: Vec::new(),
        balance: Balance::None,
        source_power: 0.5,
        balance_batches: false,
        samples_per_epoch: 0,
        crop_area_min: 1.0,
        aspect_max: 1.0,
        brightness: 0.0,
        contrast: 0.0,
        gamma: 0.0,
        sharpness: 0.0,
        framing_consistency: 0.0,
        framing_zoom: 1.25,
        mixstyle: 0.0,
        mixstyle_groups: 3,
        jpeg_probability: 0.0,
        jpeg_quality_min: 40,
        equalize: false,
        out: out.to_path_buf(),
        epochs,
        batch_size: 6,
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 1e-4,
        nesterov: false,
        lr_step: 10,
        lr_gamma: 0.1,
        warmup_epochs: 1,
        val_fraction: 0.25,
        seed: 3,
        init: None,
        init_head_classes: None,
        zero_init_residual: true,
        freeze: None,
        rotation: 5.0,
        translate: 0.05,
        scale: 0.05,
        resize: 36,
        crop: 32,
        micro_batch: 0,
        f16: false,
        resume: false,
        device: DeviceChoice::Cpu,
    }
}

fn metrics(out: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(out.join(METRICS_FILE))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn tiny_run_lowers_the_loss_and_exports_a_loadable_model() {
    let dir = tempdir();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    synthetic_folder(&data, 12);
    let card = training::run(&args(&data, &out, 3)).unwrap();
    let rows = metrics(&out);
    assert_eq!(rows.len(), 3);
    let (first, last) = (rows[0][2], rows[2][2]);
    assert!(last < first, "train loss went from {first} to {last}");
    assert!(out.join("curves.png").exists());

    assert_eq!(card.classes, vec!["disc", "ring"]);
    let training = card.training.as_ref().unwrap();
    assert_eq!(training.data.files, 24);
    assert_eq!(training.data.train_per_class, vec![9, 9]);
    assert_eq!(training.data.validation_per_class, vec![3, 3]);
    assert!(training.initialization.contains("from scratch"));
    assert_eq!(training.config["seed"], 3);
    assert!(!card.preprocessing.equalize);

    let weights = std::fs::read(out.join(MODEL_FILE)).unwrap();
    card.verify_weights(&weights).unwrap();
    let classifier = trainer::predict::load_classifier(
        &out.join(MODEL_FILE),
        Some(&out.join(CARD_FILE)),
        &Device::Cpu,
    )
    .unwrap();
    let sample = std::fs::read(data.join("disc/000.png")).unwrap();
    let prediction = classifier.classify_bytes(&sample).unwrap();
    let total: f32 = prediction.probabilities.iter().sum();
    assert!((total - 1.0).abs() < 1e-5);
}

#[test]
fn resume_gives_the_same_result_as_an_uninterrupted_run() {
    let dir = tempdir();
    let data = dir.path().join("data");
    synthetic_folder(&data, 8);
    let whole = dir.path().join("whole");
    training::run(&args(&data, &whole, 2)).unwrap();

    let parts = dir.path().join("parts");
    training::run(&args(&data, &parts, 1)).unwrap();
    let resumed = TrainArgs {
        resume: true,
        ..args(&data, &parts, 2)
    };
    training::run(&resumed).unwrap();

    // Everything but the timing columns (images/s, seconds) must be identical.
    let without_timing = |rows: Vec<Vec<f64>>| {
        rows.into_iter()
            .map(|r| r[..6].to_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        without_timing(metrics(&whole)),
        without_timing(metrics(&parts))
    );
    let a = candle_core::safetensors::load(whole.join(CHECKPOINT_FILE), &Device::Cpu).unwrap();
    let b = candle_core::safetensors::load(parts.join(CHECKPOINT_FILE), &Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (name, ta) in &a {
        let tb = &b[name];
        let diff = (ta.to_dtype(candle_core::DType::F64).unwrap()
            - tb.to_dtype(candle_core::DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
        assert_eq!(diff, 0.0, "{name} differs after resume");
    }
}

#[test]
fn resume_refuses_other_settings() {
    let dir = tempdir();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    synthetic_folder(&data, 4);
    training::run(&args(&data, &out, 1)).unwrap();
    let other = TrainArgs {
        resume: true,
        lr: 0.5,
        ..args(&data, &out, 2)
    };
    let err = training::run(&other).unwrap_err().to_string();
    assert!(err.contains("other settings"), "{err}");
}

#[test]
fn corrupt_files_are_skipped_named_and_counted() {
    let dir = tempdir();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    synthetic_folder(&data, 6);
    std::fs::write(data.join("disc/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(data.join("ring/notes.txt"), b"radiologist notes").unwrap();
    std::fs::write(data.join("ring/empty.jpg"), b"").unwrap();
    let card = training::run(&args(&data, &out, 1)).unwrap();
    let data_record = card.training.unwrap().data;
    assert_eq!(data_record.files, 12);
    let skipped: Vec<&str> = data_record
        .skipped
        .iter()
        .map(|(f, _)| f.as_str())
        .collect();
    assert_eq!(
        skipped,
        vec!["disc/broken.png", "ring/empty.jpg", "ring/notes.txt"]
    );
}

fn expect_error_before_training(data: PathBuf, out: PathBuf, needle: &str) {
    let err = training::run(&args(&data, &out, 1)).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains(needle), "{text}");
    assert!(!out.join(CHECKPOINT_FILE).exists(), "no training may start");
}

#[test]
fn unusable_data_folders_fail_before_training() {
    let dir = tempdir();
    let root = dir.path();
    expect_error_before_training(
        root.join("missing"),
        root.join("o1"),
        "cannot read data folder",
    );

    let single = root.join("single");
    synthetic_folder(&single, 4);
    std::fs::remove_dir_all(single.join("ring")).unwrap();
    expect_error_before_training(single, root.join("o2"), "at least two classes");

    let empty_class = root.join("empty_class");
    synthetic_folder(&empty_class, 4);
    std::fs::create_dir(empty_class.join("zzz")).unwrap();
    expect_error_before_training(empty_class, root.join("o3"), "is empty");

    let unreadable_class = root.join("unreadable_class");
    synthetic_folder(&unreadable_class, 4);
    std::fs::create_dir(unreadable_class.join("junk")).unwrap();
    std::fs::write(unreadable_class.join("junk/a.png"), b"garbage").unwrap();
    expect_error_before_training(unreadable_class, root.join("o4"), "no readable image");
}

#[test]
fn calibrate_adds_a_temperature_and_a_gate_that_predict_applies() {
    let dir = tempdir();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    synthetic_folder(&data, 12);
    training::run(&args(&data, &out, 1)).unwrap();
    let (weights, card_path) = (out.join(MODEL_FILE), out.join(CARD_FILE));
    let calibrate = trainer::calibrate::CalibrateArgs {
        weights: weights.clone(),
        card: card_path.clone(),
        data: Vec::new(),
        gate_features: pneumoscope::ood::GateFeatures::Layer2Stats,
        dims: 8,
        true_accept: 0.95,
        sensitivity: 0.9,
    };
    let card = trainer::calibrate::run(&calibrate, &Device::Cpu).unwrap();
    let temperature = card.temperature.unwrap();
    assert!(temperature > 0.0 && temperature.is_finite());
    let gate = card.ood_gate.as_ref().unwrap();
    assert!(gate.dims >= 1 && gate.dims <= 8);
    assert_eq!(gate.features, pneumoscope::ood::GateFeatures::Layer2Stats);
    // One operating point per class, each keeping 90% of its validation images.
    assert_eq!(card.operating_points.len(), card.classes.len());
    for point in &card.operating_points {
        assert!(point.sensitivity >= 0.9, "{}", point.describe());
        assert_eq!(point.target_sensitivity, 0.9);
    }
    card.verify_weights(&std::fs::read(&weights).unwrap())
        .unwrap();

    let classifier =
        trainer::predict::load_classifier(&weights, Some(&card_path), &Device::Cpu).unwrap();
    assert_eq!(classifier.temperature(), temperature);
    assert!(classifier.has_gate());
    let sample = std::fs::read(data.join("disc/000.png")).unwrap();
    let prediction = classifier.classify_bytes(&sample).unwrap();
    assert!(prediction.in_distribution.is_some());
    assert!(prediction.ood_score.unwrap() >= 0.0);
    let verdicts: Vec<Option<bool>> = card
        .operating_points
        .iter()
        .zip(&prediction.probabilities)
        .map(|(point, &p)| Some(p >= point.threshold))
        .collect();
    assert_eq!(prediction.positive, verdicts);

    // A card naming other features than the gate's tensors were fitted to is refused.
    let mut mismatched = card.clone();
    mismatched.ood_gate.as_mut().unwrap().features = pneumoscope::ood::GateFeatures::Pooled;
    let mismatched_path = dir.path().join("mismatched.json");
    std::fs::write(&mismatched_path, mismatched.to_json()).unwrap();
    let err = trainer::predict::load_classifier(&weights, Some(&mismatched_path), &Device::Cpu)
        .err()
        .expect("a gate of the wrong size is refused");
    assert!(err.to_string().contains("gate reads"), "{err}");

    // check-gate: per kind of image, the gate's verdicts, counted and recorded in the card.
    let kinds = dir.path().join("unlike");
    for kind in ["noise", "same"] {
        std::fs::create_dir_all(kinds.join(kind)).unwrap();
    }
    let (mut noise_files, mut same_files) = (Vec::new(), Vec::new());
    for i in 0..3u32 {
        let noise = ImageBuffer::from_fn(40, 40, |x, y| Rgb([(x * 37 + y * 11 * i) as u8, 0, 255]));
        noise_files.push(kinds.join(format!("noise/{i}.png")));
        noise.save(noise_files.last().unwrap()).unwrap();
        let name = format!("{:03}.png", i * 2);
        same_files.push(kinds.join("same").join(&name));
        std::fs::copy(data.join("disc").join(&name), same_files.last().unwrap()).unwrap();
    }
    std::fs::write(kinds.join("noise/notes.txt"), "not an image").unwrap();
    // A description for a kind that has no folder is refused before anything runs.
    std::fs::write(kinds.join("kinds.json"), r#"{"nois": "typo"}"#).unwrap();
    let typo = trainer::gate_check::CheckGateArgs {
        weights: weights.clone(),
        card: card_path.clone(),
        data: kinds.clone(),
        record: true,
    };
    let err = trainer::gate_check::run(&typo, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("`nois`"), "{err}");
    std::fs::write(kinds.join("kinds.json"), r#"{"noise": "coloured stripes"}"#).unwrap();
    let check = trainer::gate_check::CheckGateArgs {
        weights: weights.clone(),
        card: card_path.clone(),
        data: kinds.clone(),
        record: true,
    };
    let rejection = trainer::gate_check::run(&check, &Device::Cpu).unwrap();
    let flagged_in = |files: &[PathBuf]| {
        files
            .iter()
            .filter(|p| {
                let bytes = std::fs::read(p).unwrap();
                classifier.classify_bytes(&bytes).unwrap().in_distribution == Some(false)
            })
            .count()
    };
    let kinds_seen: Vec<(&str, &str, usize, usize)> = rejection
        .iter()
        .map(|r| (r.kind.as_str(), r.label(), r.flagged, r.total))
        .collect();
    assert_eq!(
        kinds_seen,
        [
            ("noise", "coloured stripes", flagged_in(&noise_files), 3),
            ("same", "same", flagged_in(&same_files), 3)
        ]
    );
    let recorded =
        pneumoscope::ModelCard::from_json(&std::fs::read_to_string(&card_path).unwrap()).unwrap();
    assert_eq!(recorded.ood_gate.unwrap().rejection, rejection);

    // Calibrating against other data is refused: the split would not be the run's.
    let other = dir.path().join("other");
    synthetic_folder(&other, 5);
    let refused = trainer::calibrate::CalibrateArgs {
        data: vec![other],
        ..calibrate
    };
    let err = trainer::calibrate::run(&refused, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("not the data"), "{err}");
}

/// Two sources and an extra class in the training folders, a validation folder of its own, the
/// balanced sampler and every augmentation against shortcuts (framing consistency too): the card
/// records the sources and settings, the split is the folders' and calibrate finds the same data
/// from the card alone.
#[test]
fn multi_source_run_with_balanced_sampling_and_shortcut_augmentation() {
    let dir = tempdir();
    let root = dir.path();
    let (first, second, validation) = (root.join("a"), root.join("b"), root.join("val"));
    synthetic_folder_from(&first, 10, "alpha__");
    synthetic_folder_from(&second, 4, "beta__");
    std::fs::create_dir_all(second.join("extra")).unwrap();
    std::fs::copy(
        first.join("disc/alpha__000.png"),
        second.join("extra/x.png"),
    )
    .unwrap();
    synthetic_folder_from(&validation, 3, "alpha__");
    let out = root.join("out");
    let run = TrainArgs {
        data: vec![first.clone(), second],
        classes: Some(vec!["disc".into(), "ring".into()]),
        val_data: vec![validation],
        balance: Balance::ClassSource,
        samples_per_epoch: 18,
        crop_area_min: 0.5,
        aspect_max: 1.33,
        brightness: 0.1,
        contrast: 0.2,
        gamma: 0.3,
        jpeg_probability: 0.5,
        equalize: true,
        framing_consistency: 1.0,
        framing_zoom: 1.3,
        mixstyle: 1.0,
        mixstyle_groups: 2,
        ..args(&first, &out, 2)
    };
    let card = training::run(&run).unwrap();
    assert!(
        card.preprocessing.equalize,
        "the card tells inference to equalise as training did"
    );
    let data = &card.training.as_ref().unwrap().data;
    assert_eq!(data.files, 28 + 6);
    assert_eq!(data.train_per_class, vec![14, 14]);
    assert_eq!(data.validation_per_class, vec![3, 3]);
    assert_eq!(
        data.train_per_source,
        vec![("alpha".to_string(), 20), ("beta".to_string(), 8)]
    );
    assert!(data.root.contains(" + "), "{}", data.root);
    let config = &card.training.as_ref().unwrap().config;
    assert_eq!(config["balance"], "class-source");
    assert_eq!(config["framing_consistency"], 1.0);
    assert_eq!(config["framing_zoom"], 1.3f32 as f64);
    assert_eq!(config["mixstyle"], 1.0);
    assert_eq!(config["mixstyle_groups"], 2);

    let calibrate = trainer::calibrate::CalibrateArgs {
        weights: out.join(MODEL_FILE),
        card: out.join(CARD_FILE),
        data: Vec::new(),
        gate_features: pneumoscope::ood::GateFeatures::Layer2Stats,
        dims: 4,
        true_accept: 0.95,
        sensitivity: 0.9,
    };
    let calibrated = trainer::calibrate::run(&calibrate, &Device::Cpu).unwrap();
    assert!(calibrated.ood_gate.is_some());
}

/// evaluate's report per source (from `SOURCE__` names) counts every image once, under its
/// source, with the classes that source holds.
#[test]
fn evaluation_reports_each_source() {
    let dir = tempdir();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    synthetic_folder(&data, 6);
    training::run(&args(&data, &out, 1)).unwrap();
    let test = dir.path().join("test");
    synthetic_folder_from(&test, 3, "north__");
    synthetic_folder_from(&test, 2, "south__");
    std::fs::remove_dir_all(test.join("ring")).unwrap();
    std::fs::create_dir_all(test.join("ring")).unwrap();
    let ring = data.join("ring/000.png");
    std::fs::copy(&ring, test.join("ring/north__r.png")).unwrap();
    let classifier = trainer::predict::load_classifier(
        &out.join(MODEL_FILE),
        Some(&out.join(CARD_FILE)),
        &Device::Cpu,
    )
    .unwrap();
    let folder = ImageFolder::scan(&test).unwrap();
    let evaluation = evaluate_folder(&classifier, &folder, 1.0);
    let parts: Vec<(&str, &str, usize)> = evaluation
        .groups
        .iter()
        .map(|g| {
            (
                g.by.as_str(),
                g.name.as_str(),
                g.report.weighted_avg.support,
            )
        })
        .collect();
    assert_eq!(parts, [("source", "north", 4), ("source", "south", 2)]);
    let north_truth: Vec<usize> = evaluation.groups[0]
        .report
        .per_class
        .iter()
        .map(|s| s.support)
        .collect();
    let north_labels = &evaluation.groups[0].report.labels;
    let disc = north_labels.iter().position(|l| l == "disc").unwrap();
    assert_eq!(north_truth[disc], 3);
    assert!(evaluation.groups[1]
        .report
        .labels
        .contains(&"disc".to_string()));
    let text = trainer::evaluate::groups_text(&evaluation.groups);
    assert!(text.contains("north") && text.contains("south"), "{text}");
}

#[test]
fn init_head_classes_keeps_the_rows_of_shared_classes_and_refuses_unrelated_ones() {
    let dir = tempdir();
    let (data, first) = (dir.path().join("data"), dir.path().join("first"));
    synthetic_folder(&data, 8);
    training::run(&args(&data, &first, 1)).unwrap();

    // The same images with one class renamed: "disc" is shared, "ringed" is new.
    let renamed = dir.path().join("renamed");
    std::fs::create_dir_all(&renamed).unwrap();
    std::fs::rename(data.join("ring"), renamed.join("ringed")).unwrap();
    std::fs::rename(data.join("disc"), renamed.join("disc")).unwrap();
    let mut second = args(&renamed, &dir.path().join("second"), 1);
    second.init = Some(first.join(MODEL_FILE));
    second.init_head_classes = Some(vec!["disc".into(), "ring".into()]);
    let card = training::run(&second).unwrap();
    assert_eq!(card.classes, vec!["disc", "ringed"]);
    let initialization = &card.training.as_ref().unwrap().initialization;
    assert!(
        initialization.contains(r#"["disc"] kept"#),
        "{initialization}"
    );

    let mut unrelated = args(&renamed, &dir.path().join("third"), 1);
    unrelated.init = Some(first.join(MODEL_FILE));
    unrelated.init_head_classes = Some(vec!["cat".into(), "dog".into()]);
    let err = training::run(&unrelated).unwrap_err();
    assert!(format!("{err:#}").contains("share none"), "{err:#}");
}
