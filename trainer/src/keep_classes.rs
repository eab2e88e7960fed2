//! `trainer keep-classes`: the same network answering among only some of its classes, its head
//! cut to their rows (a model trained on five classes shipped as the paper's three). Logits of
//! the kept classes are unchanged, so the answer is the top class among them; the temperature,
//! gate and operating points belong to the full head's outputs and are left for
//! `trainer calibrate` to fit again.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use candle_core::Device;
use clap::Args;
use pneumoscope::card::{ModelCard, NarrowedHead};
use pneumoscope::checkpoint::{add_batches_tracked, to_safetensors_bytes};

use crate::predict::{load_checkpoint, write_model};

#[derive(Debug, Args)]
pub struct KeepClassesArgs {
    /// The trained model's weights (float or int8).
    #[arg(long)]
    pub weights: PathBuf,
    /// Its card.
    #[arg(long)]
    pub card: PathBuf,
    /// The classes to keep, comma-separated; each one of the model's.
    #[arg(long, value_delimiter = ',', required = true)]
    pub classes: Vec<String>,
    /// Folder for the narrowed `model.safetensors` (f32) and its `model.json`.
    #[arg(long)]
    pub out: PathBuf,
}

/// `classes` in the model's order (so they match an ImageFolder's sorted class folders); at
/// least two, each one of the model's, none twice.
pub fn kept_in_model_order(model_classes: &[String], classes: &[String]) -> Result<Vec<String>> {
    for class in classes {
        ensure!(
            model_classes.contains(class),
            "`{class}` is not one of the model's classes {model_classes:?}"
        );
    }
    let kept: Vec<String> = model_classes
        .iter()
        .filter(|c| classes.contains(c))
        .cloned()
        .collect();
    ensure!(
        kept.len() == classes.len(),
        "a class is named twice in {classes:?}"
    );
    ensure!(
        kept.len() >= 2,
        "a classifier needs at least two classes, got {kept:?}"
    );
    Ok(kept)
}

/// The narrowed model's card: the trained model's, with the kept classes, the new weights, where
/// the head came from, and nothing fitted to the full head's outputs.
pub fn narrowed_card(card: &ModelCard, kept: &[String], weights: &[u8]) -> ModelCard {
    ModelCard {
        classes: kept.to_vec(),
        head_narrowed_from: Some(NarrowedHead {
            from_classes: card.classes.clone(),
            from_sha256: card.weights.sha256.clone(),
        }),
        ..card.for_new_f32_weights(weights)
    }
}

pub fn run(args: &KeepClassesArgs) -> Result<ModelCard> {
    let device = Device::Cpu;
    let (checkpoint, card) = load_checkpoint(&args.weights, Some(&args.card), &device)?;
    let card = card.expect("load_checkpoint returns the card it is given");
    let kept = kept_in_model_order(&card.classes, &args.classes)?;
    let narrowed = checkpoint.with_head_narrowed_to(&card.classes, &kept)?;
    let mut tensors = narrowed.tensors().clone();
    tensors.retain(|name, _| !name.starts_with(pneumoscope::ood::TENSOR_PREFIX));
    add_batches_tracked(&mut tensors, 0)?;
    let bytes = to_safetensors_bytes(&tensors)?;
    let narrowed_card = narrowed_card(&card, &kept, &bytes);

    let weights_path = write_model(&args.out, &bytes, &narrowed_card)?;
    println!(
        "{}: {} of {:?}; calibrate it before use",
        weights_path.display(),
        kept.join(", "),
        card.classes
    );
    Ok(narrowed_card)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn kept_classes_follow_the_model_order_and_must_be_its_own() {
        let model = names(&["Bacterial", "Covid", "Normal", "Tuberculosis", "Viral"]);
        let kept = kept_in_model_order(&model, &names(&["Viral", "Covid", "Normal"])).unwrap();
        assert_eq!(kept, names(&["Covid", "Normal", "Viral"]));
        for (classes, says) in [
            (names(&["Covid", "Pneumothorax"]), "`Pneumothorax`"),
            (names(&["Covid", "Covid"]), "twice"),
            (names(&["Covid"]), "at least two"),
        ] {
            let error = kept_in_model_order(&model, &classes).unwrap_err();
            assert!(error.to_string().contains(says), "{classes:?}: {error}");
        }
    }
}
