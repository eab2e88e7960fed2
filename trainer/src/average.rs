//! `trainer average`: one model whose every weight is the weighted mean of several models'
//! (weight-space ensembling: WiSE-FT, Wortsman et al. 2022; model soups). Models fine-tuned from
//! one another stay in one basin of the loss, so their average is a working network that often
//! holds better than either on data unlike their training data, at one network's cost.
//!
//! Batch-norm running statistics are averaged like the weights. The gate, temperature and
//! operating points belong to one network's outputs, so the average has none until
//! `trainer calibrate` fits them again.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, ensure, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use pneumoscope::card::{AveragedModel, ModelCard};
use pneumoscope::checkpoint::{add_batches_tracked, to_safetensors_bytes};
use pneumoscope::ood::TENSOR_PREFIX;
use pneumoscope::Checkpoint;

use crate::predict::{load_checkpoint, write_model};

#[derive(Debug, Args)]
pub struct AverageArgs {
    /// Each model's weights (float or int8), in the order of --card.
    #[arg(long, required = true)]
    pub weights: Vec<PathBuf>,
    /// Each model's card.
    #[arg(long, required = true)]
    pub card: Vec<PathBuf>,
    /// Each model's share of the average, adding up to 1 (default: equal shares).
    #[arg(long)]
    pub share: Vec<f64>,
    /// Folder for the averaged `model.safetensors` (f32) and its `model.json`.
    #[arg(long)]
    pub out: PathBuf,
}

/// The shares to use: as given, or equal; each positive and together 1.
pub fn shares(given: &[f64], models: usize) -> Result<Vec<f64>> {
    ensure!(
        models >= 2,
        "an average needs at least two models, got {models}"
    );
    if given.is_empty() {
        return Ok(vec![1.0 / models as f64; models]);
    }
    ensure!(
        given.len() == models,
        "{} shares for {models} models: give one --share per --weights, or none",
        given.len()
    );
    ensure!(
        given.iter().all(|s| s.is_finite() && *s > 0.0),
        "every share must be a positive number, got {given:?}"
    );
    let total: f64 = given.iter().sum();
    ensure!(
        (total - 1.0).abs() < 1e-6,
        "the shares add up to {total}, not 1"
    );
    Ok(given.to_vec())
}

/// Every network tensor as the share-weighted sum of the models' (f32). The models must hold the
/// same tensors with the same shapes; gate tensors are left out.
pub fn average_tensors(models: &[(f64, &Checkpoint)]) -> Result<HashMap<String, Tensor>> {
    let Some((_, first)) = models.first() else {
        bail!("no models to average");
    };
    let network = |checkpoint: &Checkpoint| -> Vec<String> {
        let mut names: Vec<String> = checkpoint
            .tensors()
            .keys()
            .filter(|name| !name.starts_with(TENSOR_PREFIX))
            .cloned()
            .collect();
        names.sort();
        names
    };
    let names = network(first);
    let mut averaged = HashMap::with_capacity(names.len());
    for (index, (_, checkpoint)) in models.iter().enumerate().skip(1) {
        ensure!(
            network(checkpoint) == names,
            "model {} does not hold the same tensors as model 1 (another architecture or class count)",
            index + 1
        );
    }
    for name in names {
        let mut sum: Option<Tensor> = None;
        for (index, (share, checkpoint)) in models.iter().enumerate() {
            let tensor = &checkpoint.tensors()[&name];
            if let Some(total) = &sum {
                ensure!(
                    tensor.dims() == total.dims(),
                    "`{name}` has shape {:?} in model {} but {:?} in model 1",
                    tensor.dims(),
                    index + 1,
                    total.dims()
                );
            }
            let term = (tensor * *share)?;
            sum = Some(match sum {
                Some(total) => (total + term)?,
                None => term,
            });
        }
        averaged.insert(name, sum.expect("models is not empty"));
    }
    Ok(averaged)
}

/// The average's card: the first model's, with the new weights, every model recorded in
/// `averaged_from`, and nothing fitted to one network's outputs (temperature, gate, operating
/// points, evaluations). All models must share classes and preprocessing.
pub fn averaged_card(cards: &[ModelCard], shares: &[f64], weights: &[u8]) -> Result<ModelCard> {
    let Some(first) = cards.first() else {
        bail!("no models to average");
    };
    for (index, card) in cards.iter().enumerate().skip(1) {
        ensure!(
            card.classes == first.classes,
            "model {} has classes {:?}, model 1 {:?}",
            index + 1,
            card.classes,
            first.classes
        );
        ensure!(
            card.preprocessing == first.preprocessing,
            "model {} was trained with other preprocessing than model 1 ({:?} against {:?})",
            index + 1,
            card.preprocessing,
            first.preprocessing
        );
    }
    let averaged_from = cards
        .iter()
        .zip(shares)
        .map(|(card, share)| AveragedModel {
            sha256: card.weights.sha256.clone(),
            dtype: card.weights.dtype.clone(),
            share: *share,
            training: card.training.clone(),
        })
        .collect();
    Ok(ModelCard {
        averaged_from,
        ..first.for_new_f32_weights(weights)
    })
}

pub fn run(args: &AverageArgs) -> Result<ModelCard> {
    ensure!(
        args.weights.len() == args.card.len(),
        "{} --weights but {} --card: give each model's card",
        args.weights.len(),
        args.card.len()
    );
    let shares = shares(&args.share, args.weights.len())?;
    let device = Device::Cpu;
    let mut cards = Vec::with_capacity(args.card.len());
    let mut checkpoints = Vec::with_capacity(args.weights.len());
    for (weights, card_path) in args.weights.iter().zip(&args.card) {
        let (checkpoint, card) = load_checkpoint(weights, Some(card_path), &device)?;
        checkpoints.push(checkpoint);
        cards.push(card.expect("load_checkpoint returns the card it is given"));
    }
    let models: Vec<(f64, &Checkpoint)> = shares.iter().copied().zip(&checkpoints).collect();
    let mut tensors = average_tensors(&models)?;
    add_batches_tracked(&mut tensors, 0)?;
    let bytes = to_safetensors_bytes(&tensors)?;
    let card = averaged_card(&cards, &shares, &bytes)?;

    let weights_path = write_model(&args.out, &bytes, &card)?;
    println!(
        "{} = {}; calibrate it before use",
        weights_path.display(),
        args.weights
            .iter()
            .zip(&shares)
            .map(|(w, s)| format!("{s:.3} x {}", w.display()))
            .collect::<Vec<_>>()
            .join(" + ")
    );
    Ok(card)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pneumoscope::card::sha256_hex;
    use pneumoscope::Preprocessing;

    fn checkpoint(values: &[(&str, Vec<f32>)]) -> Checkpoint {
        let tensors = values
            .iter()
            .map(|(name, v)| {
                let tensor = Tensor::from_vec(v.clone(), v.len(), &Device::Cpu).unwrap();
                (name.to_string(), tensor)
            })
            .collect();
        Checkpoint::from_tensors(tensors)
    }

    fn card(classes: &[&str]) -> ModelCard {
        ModelCard::from_json(
            &serde_json::json!({
                "name": "test", "architecture": "resnet50",
                "classes": classes,
                "preprocessing": Preprocessing::default(),
                "weights": {"file": "model.safetensors", "sha256": "00", "bytes": 1, "dtype": "int8"},
                "training": null, "temperature": 1.5, "intended_use": "tests",
            })
            .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn shares_default_to_equal_and_must_be_positive_and_add_up_to_one() {
        assert_eq!(shares(&[], 4).unwrap(), vec![0.25; 4]);
        assert_eq!(shares(&[0.3, 0.7], 2).unwrap(), vec![0.3, 0.7]);
        for (given, models) in [
            (&[][..], 1),
            (&[0.5, 0.5][..], 3),
            (&[1.2, -0.2][..], 2),
            (&[0.5, 0.4][..], 2),
            (&[f64::NAN, 0.5][..], 2),
        ] {
            assert!(shares(given, models).is_err(), "{given:?} for {models}");
        }
    }

    #[test]
    fn every_tensor_is_the_share_weighted_mean_and_the_gate_is_left_out() {
        let a = checkpoint(&[("conv1.weight", vec![1.0, 2.0]), ("ood.mean", vec![9.0])]);
        let b = checkpoint(&[("conv1.weight", vec![3.0, 6.0])]);
        let averaged = average_tensors(&[(0.25, &a), (0.75, &b)]).unwrap();
        assert_eq!(averaged.len(), 1, "{:?}", averaged.keys());
        let values = averaged["conv1.weight"].to_vec1::<f32>().unwrap();
        assert_eq!(values, vec![2.5, 5.0]);
    }

    #[test]
    fn models_with_other_tensors_or_shapes_are_refused() {
        let a = checkpoint(&[("conv1.weight", vec![1.0, 2.0])]);
        let other_shape = checkpoint(&[("conv1.weight", vec![1.0, 2.0, 3.0])]);
        let other_names = checkpoint(&[("fc.weight", vec![1.0, 2.0])]);
        let error = average_tensors(&[(0.5, &a), (0.5, &other_shape)]).unwrap_err();
        assert!(error.to_string().contains("shape"), "{error}");
        let error = average_tensors(&[(0.5, &a), (0.5, &other_names)]).unwrap_err();
        assert!(error.to_string().contains("same tensors"), "{error}");
    }

    #[test]
    fn the_card_records_every_model_and_drops_what_was_fitted_to_one() {
        let cards = [card(&["a", "b"]), card(&["a", "b"])];
        let averaged = averaged_card(&cards, &[0.4, 0.6], b"weights").unwrap();
        assert_eq!(averaged.weights.sha256, sha256_hex(b"weights"));
        assert_eq!(averaged.weights.dtype, "f32");
        assert_eq!(averaged.temperature, None);
        let recorded: Vec<f64> = averaged.averaged_from.iter().map(|m| m.share).collect();
        assert_eq!(recorded, vec![0.4, 0.6]);
        assert_eq!(averaged.averaged_from[0].dtype, "int8");

        let error =
            averaged_card(&[card(&["a", "b"]), card(&["b", "a"])], &[0.5, 0.5], b"w").unwrap_err();
        assert!(error.to_string().contains("classes"), "{error}");
    }
}
