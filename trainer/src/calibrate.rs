//! `trainer calibrate`: fits temperature scaling and each class's operating point on the
//! validation split and the out-of-distribution gate on the training split of the run that made
//! the weights, then writes them into the weights file (`ood.*` tensors) and the model card.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use pneumoscope::calibration::{fit_temperature, negative_log_likelihood, CalibrationReport};
use pneumoscope::card::{sha256_hex, ModelCard};
use pneumoscope::checkpoint::{to_safetensors_bytes, write_atomic};
use pneumoscope::ood::{GateFeatures, GateRecord};
use pneumoscope::operating_point::{OneVsRest, OperatingPoint};
use pneumoscope::Classifier;

use crate::data::{normalized_batch, CachedImages};
use crate::gate::{
    class_source_groups, fit_mahalanobis, held_out_of_fit, threshold_per_source, HELD_OUT_SHARE,
    MIN_GROUP_IMAGES, MIN_HELD_OUT,
};
use crate::predict::load_classifier;
use crate::training::{prepare_data, PreparedData, TrainArgs};

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Weights to calibrate; rewritten with the gate's tensors.
    #[arg(long)]
    pub weights: PathBuf,
    /// The run's model card; gets the temperature and the gate.
    #[arg(long)]
    pub card: PathBuf,
    /// The training ImageFolder(s) the run used, where they have moved since (default: the paths
    /// in the card); their content hash must match the card's.
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// What the gate reads: layer2-stats (each layer2 channel's mean and standard deviation) or
    /// pooled (the 2048-d features the head sees).
    #[arg(long, default_value = "layer2-stats")]
    pub gate_features: GateFeatures,
    /// Principal components the gate keeps.
    #[arg(long, default_value_t = 64)]
    pub dims: usize,
    /// Share of held-out (validation) images the gate's threshold must accept.
    #[arg(long, default_value_t = 0.95)]
    pub true_accept: f64,
    /// Sensitivity each class's operating point is chosen for on the validation images.
    #[arg(long, default_value_t = 0.95)]
    pub sensitivity: f64,
}

/// One row per image.
type Rows = Vec<Vec<f32>>;

/// (logits, the gate's input features) of every cached image, in batches.
fn outputs(
    classifier: &Classifier,
    pixels: &[Vec<f32>],
    gate_features: GateFeatures,
    device: &Device,
) -> Result<(Rows, Rows)> {
    let (mut logits, mut features) = (Vec::new(), Vec::new());
    let side = classifier.preprocessing().crop as usize;
    for chunk in pixels.chunks(16) {
        let batch = normalized_batch(chunk.to_vec(), side, classifier.preprocessing(), device)?;
        for prediction in classifier.classify_batch(&batch)? {
            features.push(prediction.gate_input(gate_features).to_vec());
            logits.push(prediction.logits);
        }
    }
    Ok((logits, features))
}

/// Each class's operating point for `sensitivity` on calibrated validation probabilities.
fn operating_points(
    logits: &[Vec<f32>],
    labels: &[usize],
    temperature: f32,
    classes: &[String],
    sensitivity: f64,
) -> Vec<OperatingPoint> {
    let set = OneVsRest::new(logits, labels, temperature);
    classes
        .iter()
        .enumerate()
        .filter_map(|(class, name)| {
            let (scores, positive) = set.class(class);
            OperatingPoint::choose(name, &scores, &positive, sensitivity)
        })
        .collect()
}

/// The run's images of the model's classes, relabelled in its order, with the split renumbered.
/// A model whose head keeps only some of the run's classes (`trainer keep-classes`) is
/// calibrated on those classes' images alone; otherwise the data's classes must be the model's.
fn of_model_classes(data: PreparedData, model_classes: &[String]) -> Result<PreparedData> {
    if data.images.classes == model_classes {
        return Ok(data);
    }
    let PreparedData {
        images,
        train,
        validation,
    } = data;
    let label_of: Vec<Option<usize>> = images
        .classes
        .iter()
        .map(|class| model_classes.iter().position(|c| c == class))
        .collect();
    if model_classes.iter().any(|c| !images.classes.contains(c)) {
        bail!(
            "the data has classes {:?}, the model {:?}",
            images.classes,
            model_classes
        );
    }
    let mut new_index = vec![None; images.samples.len()];
    let mut samples = Vec::new();
    let mut pixels = Vec::new();
    for (i, (mut sample, image)) in images.samples.into_iter().zip(images.pixels).enumerate() {
        if let Some(label) = label_of[sample.label] {
            sample.label = label;
            new_index[i] = Some(samples.len());
            samples.push(sample);
            pixels.push(image);
        }
    }
    let renumber = |indices: Vec<usize>| -> Vec<usize> {
        indices.into_iter().filter_map(|i| new_index[i]).collect()
    };
    Ok(PreparedData {
        images: CachedImages {
            classes: model_classes.to_vec(),
            samples,
            pixels,
            record: images.record,
        },
        train: renumber(train),
        validation: renumber(validation),
    })
}

pub fn run(args: &CalibrateArgs, device: &Device) -> Result<ModelCard> {
    let mut card = ModelCard::from_json(
        &std::fs::read_to_string(&args.card)
            .with_context(|| format!("reading {}", args.card.display()))?,
    )?;
    let training = card
        .training
        .clone()
        .context("the card records no training run, so its split is unknown")?;
    let mut run_args: TrainArgs = serde_json::from_value(training.config.clone())
        .context("the card's training configuration cannot be read")?;
    if !args.data.is_empty() {
        run_args.data = args.data.clone();
    }
    // Raw logits: calibrate against the uncalibrated model.
    card.temperature = None;
    card.ood_gate = None;
    card.operating_points.clear();
    let classifier = {
        let bytes = std::fs::read(&args.weights)?;
        card.verify_weights(&bytes)?;
        let checkpoint = pneumoscope::Checkpoint::from_bytes(&bytes, device)?;
        Classifier::new(checkpoint, Some(&card), device)?
    };
    let prepared = prepare_data(&run_args, classifier.preprocessing())?;
    if prepared.images.record.content_sha256 != training.data.content_sha256 {
        bail!(
            "{} is not the data this model was trained on (content hash differs); the split would not be its split",
            prepared.images.record.root
        );
    }
    let PreparedData {
        images,
        train: train_idx,
        validation: val_idx,
    } = of_model_classes(prepared, classifier.classes())?;
    let labels: Vec<usize> = images.samples.iter().map(|s| s.label).collect();
    println!(
        "computing outputs for {} training and {} validation images",
        train_idx.len(),
        val_idx.len()
    );
    let (logits, features) = outputs(&classifier, &images.pixels, args.gate_features, device)?;
    let pick = |v: &Vec<Vec<f32>>, idx: &[usize]| -> Vec<Vec<f32>> {
        idx.iter().map(|&i| v[i].clone()).collect()
    };
    let pick_labels = |idx: &[usize]| -> Vec<usize> { idx.iter().map(|&i| labels[i]).collect() };

    let (val_logits, val_labels) = (pick(&logits, &val_idx), pick_labels(&val_idx));
    let temperature = fit_temperature(&val_logits, &val_labels);
    let calibration = CalibrationReport::measure(&val_logits, &val_labels, temperature);
    println!(
        "temperature {temperature:.4}: validation NLL {:.4} -> {:.4}, ECE {:.4} -> {:.4}, Brier {:.4} -> {:.4}",
        negative_log_likelihood(&val_logits, &val_labels, 1.0),
        negative_log_likelihood(&val_logits, &val_labels, temperature),
        calibration.ece_15_bins_before,
        calibration.ece_15_bins_after,
        calibration.brier_before,
        calibration.brier_after
    );

    card.operating_points = operating_points(
        &val_logits,
        &val_labels,
        temperature,
        &images.classes,
        args.sensitivity,
    );
    for point in &card.operating_points {
        println!("operating point {}", point.describe());
    }

    let source_of = |i: usize| images.samples[i].provenance.source.as_str();
    let val_sources: Vec<&str> = val_idx.iter().map(|&i| source_of(i)).collect();
    let train_sources: Vec<&str> = train_idx.iter().map(|&i| source_of(i)).collect();
    let held = held_out_of_fit(&train_sources, &val_sources, HELD_OUT_SHARE, run_args.seed);
    let (lent, fit): (Vec<_>, Vec<_>) = train_idx.iter().zip(&held).partition(|&(_, &h)| h);
    let (fit_idx, lent_idx): (Vec<usize>, Vec<usize>) = (
        fit.into_iter().map(|(&i, _)| i).collect(),
        lent.into_iter().map(|(&i, _)| i).collect(),
    );
    let fit_sources: Vec<&str> = fit_idx.iter().map(|&i| source_of(i)).collect();
    let (groups, group_names) =
        class_source_groups(&pick_labels(&fit_idx), &fit_sources, MIN_GROUP_IMAGES);
    println!("gate groups (class/source): {}", group_names.join(", "));
    let mut gate = fit_mahalanobis(
        &pick(&features, &fit_idx),
        &groups,
        group_names.len(),
        args.dims,
    )?;
    let held_out_scores: Vec<(&str, f32)> = val_idx
        .iter()
        .chain(&lent_idx)
        .map(|&i| (source_of(i), gate.score(&features[i])))
        .collect();
    let (threshold, per_source) =
        threshold_per_source(&held_out_scores, args.true_accept, MIN_HELD_OUT);
    gate.threshold = threshold;
    let kept_dims = gate.project(&features[0]).len();
    for (source, count, own) in &per_source {
        let accepted = held_out_scores
            .iter()
            .filter(|&&(s, score)| s == source && score <= threshold)
            .count();
        println!(
            "gate: {source}: {count} held-out images, own threshold {own:.2}, {:.1}% accepted",
            100.0 * accepted as f64 / *count as f64
        );
    }
    println!(
        "gate: {kept_dims} dims, threshold {threshold:.2} ({} training images lent by sources without validation images)",
        lent_idx.len()
    );

    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&args.weights, device)?;
    tensors.retain(|name, _| !name.starts_with(pneumoscope::ood::TENSOR_PREFIX));
    tensors.extend(gate.to_tensors(device)?);
    let bytes = to_safetensors_bytes(&tensors)?;
    write_atomic(&args.weights, &bytes)?;
    card.weights.sha256 = sha256_hex(&bytes);
    card.weights.bytes = bytes.len() as u64;
    card.temperature = Some(temperature);
    card.ood_gate = Some(GateRecord {
        method: format!(
            "Mahalanobis distance to the nearest of {} class-within-source means (shared covariance; sources under {MIN_GROUP_IMAGES} images of a class join its largest) in the top {kept_dims} principal components of the training split's {}, plus the residual off that subspace over its training variance; threshold accepting {:.0}% of every source's held-out images (validation, or {:.0}% of a source's training images held out of the fit when validation has none)",
            group_names.len(),
            match args.gate_features {
                GateFeatures::Pooled => "pooled features",
                GateFeatures::Layer2Stats => "layer2 channel means and standard deviations",
            },
            100.0 * args.true_accept,
            100.0 * HELD_OUT_SHARE
        ),
        dims: kept_dims,
        threshold: gate.threshold,
        target_true_accept: args.true_accept,
        features: args.gate_features,
        // A new gate: rejection rates measured on the old one no longer hold.
        rejection: Vec::new(),
    });
    write_atomic(&args.card, card.to_json().as_bytes())?;
    // The rewritten pair must load.
    load_classifier(&args.weights, Some(&args.card), device)?;
    Ok(card)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Sample;
    use crate::provenance::Provenance;
    use pneumoscope::card::DatasetRecord;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn a_narrowed_model_is_calibrated_on_its_own_classes_only() {
        let labels = [0, 1, 2, 1, 0, 2];
        let images = CachedImages {
            classes: names(&["Bacterial", "Covid", "Normal"]),
            samples: labels
                .iter()
                .enumerate()
                .map(|(i, &label)| Sample {
                    path: PathBuf::from(format!("{i}.png")),
                    relative: format!("{i}.png"),
                    label,
                    provenance: Provenance::default(),
                })
                .collect(),
            pixels: (0..labels.len()).map(|i| vec![i as f32]).collect(),
            record: DatasetRecord {
                root: "data".into(),
                files: labels.len(),
                content_sha256: "00".into(),
                per_class: Vec::new(),
                train_per_class: Vec::new(),
                validation_per_class: Vec::new(),
                train_per_source: Vec::new(),
                skipped: Vec::new(),
            },
        };
        let data = PreparedData {
            images,
            train: vec![0, 1, 2, 3],
            validation: vec![4, 5],
        };
        let kept = of_model_classes(data, &names(&["Covid", "Normal"])).unwrap();
        assert_eq!(kept.images.classes, names(&["Covid", "Normal"]));
        let relabelled: Vec<(f32, usize)> = kept
            .images
            .samples
            .iter()
            .zip(&kept.images.pixels)
            .map(|(s, p)| (p[0], s.label))
            .collect();
        assert_eq!(relabelled, [(1.0, 0), (2.0, 1), (3.0, 0), (5.0, 1)]);
        assert_eq!(kept.train, [0, 1, 2]);
        assert_eq!(kept.validation, [3]);

        let data = PreparedData {
            images: kept.images,
            train: kept.train,
            validation: kept.validation,
        };
        let error = of_model_classes(data, &names(&["Covid", "Viral"]))
            .err()
            .unwrap();
        assert!(error.to_string().contains("the model"), "{error}");
    }
}
