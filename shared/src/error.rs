//! The one error type of the shared crate.

use thiserror::Error;

/// Everything that can go wrong while decoding, preprocessing or classifying an image, or loading
/// weights and model cards.
#[derive(Debug, Error)]
pub enum Error {
    #[error("the file is empty")]
    EmptyInput,

    #[error("not a PNG, JPEG or DICOM image (unrecognised file signature)")]
    UnsupportedFormat,

    #[error("image is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels")]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },

    #[error("image has a zero dimension ({width}x{height})")]
    ZeroSized { width: u32, height: u32 },

    #[error("could not decode the image: {0}")]
    Decode(String),

    #[error("weights: {0}")]
    Checkpoint(String),

    #[error("weights: tensor `{name}` is missing")]
    MissingTensor { name: String },

    #[error("weights: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("model card: {0}")]
    Card(String),

    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
