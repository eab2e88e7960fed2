//! `trainer predict`: class probabilities for image files, the reference the browser tests
//! compare against.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Args;
use pneumoscope::decode::decode;
use pneumoscope::dicom::DicomInfo;
use pneumoscope::{Checkpoint, Classifier, ModelCard, Prediction};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Weights (safetensors, torchvision names).
    #[arg(long)]
    pub weights: PathBuf,
    /// Model card (JSON); gives class names and the preprocessing, and its SHA-256 is checked.
    #[arg(long)]
    pub card: Option<PathBuf>,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Image files (PNG, JPEG or DICOM).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum ImageResult {
    Classified {
        file: String,
        probabilities: BTreeMap<String, f32>,
        top: String,
        top_probability: f32,
        /// false: the gate says this is not the kind of image the model was trained on.
        #[serde(skip_serializing_if = "Option::is_none")]
        in_distribution: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ood_score: Option<f32>,
        /// Per class, whether its probability reaches the card's operating point.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        positive: BTreeMap<String, bool>,
        /// How a DICOM file was read (no patient data).
        #[serde(skip_serializing_if = "Option::is_none")]
        dicom: Option<DicomInfo>,
    },
    Failed {
        file: String,
        error: String,
    },
}

/// Loads weights (and the card, checking the weights' SHA-256 against it) into a classifier.
pub fn load_classifier(weights: &Path, card: Option<&Path>, device: &Device) -> Result<Classifier> {
    let bytes =
        std::fs::read(weights).with_context(|| format!("reading weights {}", weights.display()))?;
    let card = match card {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading model card {}", path.display()))?;
            let card = ModelCard::from_json(&text)?;
            card.verify_weights(&bytes)
                .with_context(|| format!("{} against {}", weights.display(), path.display()))?;
            Some(card)
        }
        None => None,
    };
    let checkpoint = Checkpoint::from_bytes(&bytes, device)
        .with_context(|| format!("loading {}", weights.display()))?;
    Ok(Classifier::new(checkpoint, card.as_ref(), device)?)
}

/// Reads and classifies one file; a read or decode failure is the error's message.
pub fn classify_file(classifier: &Classifier, path: &Path) -> Result<Prediction, String> {
    read_and_classify(classifier, path).map(|(prediction, _)| prediction)
}

fn read_and_classify(
    classifier: &Classifier,
    path: &Path,
) -> Result<(Prediction, Option<DicomInfo>), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let decoded = decode(&bytes).map_err(|e| e.to_string())?;
    let prediction = classifier
        .classify_image(&decoded.image)
        .map_err(|e| e.to_string())?;
    Ok((prediction, decoded.dicom))
}

fn classify(classifier: &Classifier, path: &Path) -> ImageResult {
    let file = path.display().to_string();
    match read_and_classify(classifier, path) {
        Ok((prediction, dicom)) => {
            let classes = classifier.classes();
            ImageResult::Classified {
                file,
                probabilities: classes
                    .iter()
                    .cloned()
                    .zip(prediction.probabilities.iter().copied())
                    .collect(),
                top: classes[prediction.top].clone(),
                top_probability: prediction.probabilities[prediction.top],
                in_distribution: prediction.in_distribution,
                ood_score: prediction.ood_score,
                positive: classes
                    .iter()
                    .zip(&prediction.positive)
                    .filter_map(|(class, positive)| Some((class.clone(), (*positive)?)))
                    .collect(),
                dicom,
            }
        }
        Err(error) => ImageResult::Failed { file, error },
    }
}

/// Returns whether every image was classified.
pub fn run(args: &PredictArgs, device: &Device) -> Result<bool> {
    let classifier = load_classifier(&args.weights, args.card.as_deref(), device)?;
    let results: Vec<ImageResult> = args
        .images
        .iter()
        .map(|p| classify(&classifier, p))
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for result in &results {
            match result {
                ImageResult::Classified {
                    file,
                    probabilities,
                    top,
                    in_distribution,
                    positive,
                    dicom,
                    ..
                } => {
                    println!("{file}");
                    if let Some(info) = dicom {
                        println!("  {}", info.summary());
                    }
                    if *in_distribution == Some(false) {
                        println!(
                            "  WARNING: this does not look like a chest X-ray of the kind the model was trained on; do not read the probabilities below as a finding"
                        );
                    }
                    for (class, point) in classifier
                        .classes()
                        .iter()
                        .zip(classifier.operating_points())
                    {
                        let marker = if class == top { "  <- top" } else { "      " };
                        let verdict = match (point, positive.get(class)) {
                            (Some(point), Some(&called)) => format!(
                                "  {} at the operating point (>= {:.3}, {:.0}% sensitivity)",
                                if called { "positive" } else { "negative" },
                                point.threshold,
                                point.target_sensitivity * 100.0
                            ),
                            _ => String::new(),
                        };
                        println!("  {class:<20} {:.4}{marker}{verdict}", probabilities[class]);
                    }
                }
                ImageResult::Failed { file, error } => println!("{file}\n  error: {error}"),
            }
        }
    }
    Ok(results
        .iter()
        .all(|r| matches!(r, ImageResult::Classified { .. })))
}
