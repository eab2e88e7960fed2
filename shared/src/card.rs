//! The model card: everything a user needs to know about a set of weights, saved as JSON beside
//! them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::calibration::CalibrationReport;
use crate::error::{Error, Result};
use crate::metrics::ClassificationReport;
use crate::ood::GateRecord;
use crate::preprocess::Preprocessing;

pub const ARCHITECTURE: &str = "resnet50 (torchvision v1.5 layout and parameter names)";

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsInfo {
    /// File name relative to the card.
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    /// "f32", "f16" or `quantize::INT8_DTYPE`.
    pub dtype: String,
}

/// How int8 weights were made from a float model, with that model's accuracies, so the loss
/// from quantizing reads beside the int8 model's own evaluations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizationRecord {
    pub scheme: String,
    pub from_sha256: String,
    pub from_dtype: String,
    /// (evaluation name, accuracy) of the float model.
    pub from_accuracy: Vec<(String, f64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRecord {
    pub root: String,
    /// Image files used (skipped ones excluded).
    pub files: usize,
    /// SHA-256 over the sorted (relative path, file SHA-256) list: it changes when any image, name
    /// or label changes.
    pub content_sha256: String,
    /// (class, images) in class order.
    pub per_class: Vec<(String, usize)>,
    pub train_per_class: Vec<usize>,
    pub validation_per_class: Vec<usize>,
    /// (source collection, training images) where sources are known.
    #[serde(default)]
    pub train_per_source: Vec<(String, usize)>,
    /// Files that could not be decoded and were left out, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// One model of a weight average, with its share of every tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AveragedModel {
    pub sha256: String,
    pub dtype: String,
    pub share: f64,
    pub training: Option<TrainingRecord>,
}

/// The model a narrowed head was cut from (`trainer keep-classes`): the same network answering
/// among fewer of its classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NarrowedHead {
    /// The classes of the model it was cut from, in its head's order.
    pub from_classes: Vec<String>,
    /// That model's weights.
    pub from_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    pub trainer_version: String,
    /// The trainer's full configuration (recipe, augmentation, seed, device), as it ran.
    pub config: serde_json::Value,
    /// "from scratch (seeded)" or the checkpoint it started from, with its SHA-256.
    pub initialization: String,
    pub data: DatasetRecord,
    pub epochs_completed: usize,
    pub best_epoch: usize,
    pub best_validation_accuracy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Short name, e.g. "covid19-kaggle test (57, leaks removed)".
    pub name: String,
    pub data: String,
    pub excluded: Vec<String>,
    pub report: ClassificationReport,
    /// Expected calibration error and Brier score before and after temperature scaling.
    #[serde(default)]
    pub calibration: Option<CalibrationReport>,
    /// Share of this set's images that the out-of-distribution gate flagged.
    #[serde(default)]
    pub gate_flagged_rate: Option<f64>,
    /// The same per source collection and per age group, where the data says.
    #[serde(default)]
    pub groups: Vec<GroupEvaluation>,
    /// Each operating point of the card measured on this set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub at_operating_points: Vec<OperatingPointResult>,
    /// 1: the images as they are. Otherwise a framing check: every image shown at this size in
    /// its own frame (below 1 shrunk into a black margin, above 1 its centre enlarged), which
    /// measures how much the answers depend on how a film is collimated.
    #[serde(default = "as_they_are", skip_serializing_if = "is_as_they_are")]
    pub zoom: f32,
}

fn as_they_are() -> f32 {
    1.0
}

fn is_as_they_are(zoom: &f32) -> bool {
    *zoom == 1.0
}

impl Evaluation {
    /// Whether this evaluation is a framing check (the images reframed), not the images as they are.
    pub fn is_framing_check(&self) -> bool {
        !is_as_they_are(&self.zoom)
    }
}

/// Sensitivity and specificity (one class against the rest) at a card's operating point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatingPointResult {
    pub class: String,
    pub threshold: f32,
    pub sensitivity: f64,
    pub specificity: f64,
}

impl OperatingPointResult {
    pub fn describe(&self) -> String {
        format!(
            "{} (positive at >= {:.3}): sensitivity {:.3}, specificity {:.3}",
            self.class, self.threshold, self.sensitivity, self.specificity
        )
    }
}

/// The results on one part of an evaluation set: the images of one source collection or one age
/// group, so a clinician sees where the model holds and where it does not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupEvaluation {
    /// What the parts are told apart by: "source" or "age group".
    pub by: String,
    pub name: String,
    /// Over the classes this part holds or was given (scikit-learn's default).
    pub report: ClassificationReport,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub name: String,
    pub architecture: String,
    pub classes: Vec<String>,
    pub preprocessing: Preprocessing,
    pub weights: WeightsInfo,
    pub training: Option<TrainingRecord>,
    /// Divide logits by this before the softmax (temperature scaling); absent means 1.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// The out-of-distribution gate, whose statistics are `ood.*` tensors in the weights file.
    #[serde(default)]
    pub ood_gate: Option<GateRecord>,
    #[serde(default)]
    pub evaluations: Vec<Evaluation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantizationRecord>,
    /// Per class, the threshold for a stated sensitivity (`trainer calibrate --sensitivity`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operating_points: Vec<crate::operating_point::OperatingPoint>,
    /// The models whose weights this one averages (`trainer average`); `training` is then the
    /// first one's run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub averaged_from: Vec<AveragedModel>,
    /// Set when the head keeps only some classes of the trained model (`trainer keep-classes`);
    /// `training` is then that model's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_narrowed_from: Option<NarrowedHead>,
    pub intended_use: String,
    #[serde(default)]
    pub limitations: Vec<String>,
}

impl ModelCard {
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Card(format!("not a valid model card: {e}")))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a model card always serialises")
    }

    /// This card for new f32 weights made from the model's (averaged, a narrowed head): the
    /// weights' record replaced, and nothing fitted to the old network's outputs kept
    /// (temperature, gate, operating points, evaluations, quantization).
    pub fn for_new_f32_weights(&self, weights: &[u8]) -> Self {
        Self {
            weights: WeightsInfo {
                file: self.weights.file.clone(),
                sha256: sha256_hex(weights),
                bytes: weights.len() as u64,
                dtype: "f32".into(),
            },
            temperature: None,
            ood_gate: None,
            evaluations: Vec::new(),
            quantization: None,
            operating_points: Vec::new(),
            ..self.clone()
        }
    }

    /// Checks that `weights` are the bytes this card describes.
    pub fn verify_weights(&self, weights: &[u8]) -> Result<()> {
        self.verify_weights_digest(&Sha256::digest(weights))
    }

    /// Checks a SHA-256 digest computed elsewhere (the browser's SubtleCrypto) against the card.
    pub fn verify_weights_digest(&self, sha256: &[u8]) -> Result<()> {
        let found = hex(sha256);
        if found != self.weights.sha256 {
            return Err(Error::Checkpoint(format!(
                "SHA-256 mismatch: the card expects {} but the weights are {found}; \
                 the file is altered, truncated or belongs to another model",
                self.weights.sha256
            )));
        }
        Ok(())
    }
}
