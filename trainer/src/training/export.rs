//! The end of a run: the exported model and its card, metrics and curves.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device};
use pneumoscope::card::{
    sha256_hex, DatasetRecord, ModelCard, TrainingRecord, WeightsInfo, ARCHITECTURE,
};
use pneumoscope::checkpoint::{to_safetensors_bytes, write_atomic};

use crate::data::CachedImages;
use crate::plots;

use super::state::{EpochMetrics, TrainState};
use super::{TrainArgs, BEST_FILE, CARD_FILE, METRICS_FILE, MODEL_FILE};

pub(super) fn draw_curves(out: &Path, history: &[EpochMetrics]) {
    if let Err(e) = plots::curves(&out.join("curves.png"), history) {
        eprintln!("warning: could not draw curves.png: {e:#}");
    }
}

pub(super) fn write_metrics_csv(out: &Path, history: &[EpochMetrics]) -> Result<()> {
    let mut csv = String::from(
        "epoch,lr,train_loss,train_accuracy,validation_loss,validation_accuracy,images_per_second,seconds\n",
    );
    for m in history {
        csv += &format!(
            "{},{},{:.6},{:.6},{:.6},{:.6},{:.3},{:.1}\n",
            m.epoch,
            m.lr,
            m.train_loss,
            m.train_accuracy,
            m.validation_loss,
            m.validation_accuracy,
            m.images_per_second,
            m.seconds
        );
    }
    write_atomic(&out.join(METRICS_FILE), csv.as_bytes())?;
    Ok(())
}

/// Writes `model.safetensors` (from the best checkpoint, in f32 or f16) and its card.
pub(super) fn export(
    args: &TrainArgs,
    images: &CachedImages,
    state: &TrainState,
    initialization: String,
    device: &Device,
) -> Result<ModelCard> {
    let best = candle_core::safetensors::load(args.out.join(BEST_FILE), device)?;
    let dtype = if args.f16 { DType::F16 } else { DType::F32 };
    let mut tensors = HashMap::new();
    for (name, tensor) in best {
        let tensor = if tensor.dtype().is_float() {
            tensor.to_dtype(dtype)?
        } else {
            tensor
        };
        tensors.insert(name, tensor);
    }
    let bytes = to_safetensors_bytes(&tensors)?;
    write_atomic(&args.out.join(MODEL_FILE), &bytes)?;
    let card = ModelCard {
        name: "Pneumoscope chest X-ray classifier".into(),
        architecture: ARCHITECTURE.into(),
        classes: images.classes.clone(),
        preprocessing: args.preprocessing(),
        weights: WeightsInfo {
            file: MODEL_FILE.into(),
            sha256: sha256_hex(&bytes),
            bytes: bytes.len() as u64,
            dtype: if args.f16 { "f16" } else { "f32" }.into(),
        },
        training: Some(TrainingRecord {
            trainer_version: env!("CARGO_PKG_VERSION").into(),
            config: serde_json::to_value(args)?,
            initialization,
            data: images.record.clone(),
            epochs_completed: state.epochs_completed,
            best_epoch: state.best_epoch,
            best_validation_accuracy: state.best_validation_accuracy,
        }),
        temperature: None,
        ood_gate: None,
        evaluations: Vec::new(),
        quantization: None,
        operating_points: Vec::new(),
        averaged_from: Vec::new(),
        head_narrowed_from: None,
        intended_use: "Research and teaching: shows what a ResNet50 trained on public chest \
                       X-ray collections answers for a radiograph. A research tool, not a \
                       diagnostic device; never use it for a clinical decision."
            .into(),
        limitations: limitations(&images.record, args),
    };
    write_atomic(&args.out.join(CARD_FILE), card.to_json().as_bytes())?;
    Ok(card)
}

/// Measured on every model trained here (`trainer evaluate --zoom`): what the framing checks
/// recorded in a card quantify.
const FRAMING_LIMITATION: &str = "Answers depend on how a film is framed (measured on every \
    model trained here): the chest filling the frame, as in a tight collimation, is called \
    disease more often, and a film showing more of the body Normal more often. The framing \
    checks among the evaluations measure how much.";

/// What a user must know about a model trained on `data`: a small single-collection set and a
/// multi-source corpus fail in different ways.
fn limitations(data: &DatasetRecord, args: &TrainArgs) -> Vec<String> {
    let mut limits: Vec<String> = if data.train_per_source.len() > 1 {
        vec![
            "Trained on public collections only (sources listed above). Class and source are \
             entangled there: every Covid image is an adult's, from the COVID-19 Radiography \
             Database or publication figures; every Viral Pneumonia image a child's, from one \
             Guangzhou collection (Kermany); only Normal has both. The model may still use age \
             or collection cues; the per-source results show where it holds."
                .into(),
            "Covid labels come from 2020 public collections; radiographs from other hospitals, \
             devices or later variants may look different. Accuracy elsewhere is unknown until \
             measured."
                .into(),
            "11 'Covid' images of the Kaggle copy are SARS (2003) figures, not COVID-19; the \
             Kaggle copy squashed every image to 640x640."
                .into(),
        ]
    } else {
        vec![
            "Trained on a few hundred images of one public Kaggle set (Covid-19 Image Dataset): \
             far too few to generalise; accuracy elsewhere is unknown until measured."
                .into(),
            "Covid images are adult radiographs from publications; Normal and Viral Pneumonia \
             look pediatric (Kermany-style), so the classes differ by source and patient age as \
             well as disease, and the model may have learned the source."
                .into(),
            "11 'Covid' training images are SARS (2003) figures, not COVID-19.".into(),
            "9 images of the public test split are duplicates of training images; the honest \
             test number excludes them."
                .into(),
            "Images were resized to 640x640 by the uploader (aspect ratio squashed).".into(),
        ]
    };
    limits.push(format!(
        "Input {0}x{0} pixels: fine detail is lost, and the heat map is coarse.",
        args.crop
    ));
    limits.push(FRAMING_LIMITATION.into());
    let classes: Vec<&str> = data.per_class.iter().map(|(c, _)| c.as_str()).collect();
    limits.push(format!(
        "{} classes only ({}): any other finding (bacterial pneumonia, tuberculosis...) or \
         any non-chest-X-ray input that passes the gate still gets one of them.",
        classes.len(),
        classes.join(", ")
    ));
    limits
}
