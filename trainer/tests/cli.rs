//! The `trainer predict` command line: table and JSON output, per-file errors, exit codes; and
//! `trainer average`.

use std::process::Command;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use image::{ImageBuffer, Luma};
use pneumoscope::checkpoint::save;
use pneumoscope::{init, ResNet50};

fn trainer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
}

fn random_weights(path: &std::path::Path) {
    seeded_weights(path, 5);
}

fn seeded_weights(path: &std::path::Path, seed: u64) {
    let varmap = VarMap::new();
    ResNet50::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        3,
    )
    .unwrap();
    init::initialize(&varmap, seed).unwrap();
    save(&varmap, path, DType::F32, 0).unwrap();
}

#[test]
fn predict_reports_each_file_and_fails_only_the_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.safetensors");
    random_weights(&weights);
    let good = dir.path().join("good.png");
    ImageBuffer::from_fn(50, 60, |x, y| Luma([(x * 4 + y) as u8]))
        .save(&good)
        .unwrap();
    let bad = dir.path().join("bad.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 truncated").unwrap();

    let output = trainer()
        .args(["predict", "--device", "cpu", "--json", "--weights"])
        .arg(&weights)
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "a failed file makes exit code 2"
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let items = json.as_array().unwrap();
    assert_eq!(items.len(), 2);
    let probabilities = items[0]["probabilities"].as_object().unwrap();
    assert_eq!(probabilities.len(), 3);
    assert!(
        probabilities.contains_key("0"),
        "classes are indices without a card"
    );
    let total: f64 = probabilities.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-5);
    assert!(items[0]["top"].is_string());
    assert!(items[1]["error"].as_str().unwrap().contains("decode"));

    let table = trainer()
        .args(["predict", "--device", "cpu", "--weights"])
        .arg(&weights)
        .arg(&good)
        .output()
        .unwrap();
    assert!(table.status.success());
    assert!(String::from_utf8_lossy(&table.stdout).contains("<- top"));
}

#[test]
fn predict_refuses_bad_weights_and_altered_cards_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let not_weights = dir.path().join("w.safetensors");
    std::fs::write(&not_weights, b"<html>not weights</html>").unwrap();
    let image = dir.path().join("x.png");
    ImageBuffer::from_pixel(8, 8, Luma([9u8]))
        .save(&image)
        .unwrap();
    let output = trainer()
        .args(["predict", "--device", "cpu", "--weights"])
        .arg(&not_weights)
        .arg(&image)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("safetensors"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let weights = dir.path().join("real.safetensors");
    random_weights(&weights);
    let card = dir.path().join("model.json");
    let card_json = serde_json::json!({
        "name": "test", "architecture": "resnet50", "classes": ["a", "b", "c"],
        "preprocessing": pneumoscope::Preprocessing::default(),
        "weights": {"file": "real.safetensors", "sha256": "00ff", "bytes": 1, "dtype": "f32"},
        "training": null, "intended_use": "tests",
    });
    std::fs::write(&card, card_json.to_string()).unwrap();
    let output = trainer()
        .args(["predict", "--device", "cpu", "--weights"])
        .arg(&weights)
        .arg("--card")
        .arg(&card)
        .arg(&image)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SHA-256 mismatch"), "{stderr}");
}

/// A card for `weights` that `--card` accepts (its hash matches).
fn card_for(weights: &std::path::Path, card: &std::path::Path) {
    let bytes = std::fs::read(weights).unwrap();
    let json = serde_json::json!({
        "name": "test", "architecture": "resnet50", "classes": ["a", "b", "c"],
        "preprocessing": pneumoscope::Preprocessing::default(),
        "weights": {"file": "model.safetensors", "sha256": pneumoscope::card::sha256_hex(&bytes),
                    "bytes": bytes.len(), "dtype": "f32"},
        "training": null, "intended_use": "tests",
    });
    std::fs::write(card, json.to_string()).unwrap();
}

#[test]
fn average_writes_a_loadable_model_whose_weights_are_the_mean() {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<std::ffi::OsString> = vec!["average".into()];
    for seed in [1, 2] {
        let weights = dir.path().join(format!("{seed}.safetensors"));
        let card = dir.path().join(format!("{seed}.json"));
        seeded_weights(&weights, seed);
        card_for(&weights, &card);
        args.extend([
            "--weights".into(),
            weights.into(),
            "--card".into(),
            card.into(),
        ]);
    }
    let out = dir.path().join("soup");
    args.extend(["--share", "0.25", "--share", "0.75", "--out"].map(Into::into));
    args.push(out.clone().into());
    let output = trainer().args(&args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let load = |path: std::path::PathBuf| {
        pneumoscope::Checkpoint::from_file(&path, &Device::Cpu)
            .unwrap()
            .tensors()["conv1.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (one, two) = (
        load(dir.path().join("1.safetensors")),
        load(dir.path().join("2.safetensors")),
    );
    let averaged = load(out.join("model.safetensors"));
    for ((a, b), mean) in one.iter().zip(&two).zip(&averaged) {
        assert!((0.25 * a + 0.75 * b - mean).abs() < 1e-6);
    }
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["averaged_from"].as_array().unwrap().len(), 2);

    let image = dir.path().join("x.png");
    ImageBuffer::from_pixel(40, 40, Luma([90u8]))
        .save(&image)
        .unwrap();
    let predicted = trainer()
        .args(["predict", "--device", "cpu", "--weights"])
        .arg(out.join("model.safetensors"))
        .arg("--card")
        .arg(out.join("model.json"))
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        predicted.status.success(),
        "{}",
        String::from_utf8_lossy(&predicted.stderr)
    );

    let refused = trainer()
        .args(["average", "--out"])
        .arg(dir.path().join("one"))
        .arg("--weights")
        .arg(dir.path().join("1.safetensors"))
        .arg("--card")
        .arg(dir.path().join("1.json"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("at least two"));
}
