//! Pneumoscope's shared crate: the ResNet50, image decoding and preprocessing, metrics and the
//! model card. The trainer and the web app both build on it, so training and in-browser inference
//! cannot disagree.

pub mod calibration;
pub mod cam;
pub mod card;
pub mod checkpoint;
pub mod classifier;
pub mod decode;
pub mod dicom;
pub mod error;
pub mod float;
pub mod init;
pub mod metrics;
pub mod model;
pub mod ood;
pub mod operating_point;
pub mod ops;
pub mod preprocess;
pub mod quantize;
pub mod report;
pub mod stage_times;
#[cfg(test)]
mod test_util;
pub mod track_record;

pub use card::ModelCard;
pub use checkpoint::Checkpoint;
pub use classifier::{Classifier, Layer2Map, Prediction};
pub use error::{Error, Result};
pub use model::{ResNet50, ResNetOutput};
pub use preprocess::Preprocessing;
