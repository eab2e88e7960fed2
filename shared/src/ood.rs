//! Out-of-distribution gate: the Mahalanobis distance of an image's pooled features to the
//! nearest class mean, with one covariance shared by the classes (Lee et al., 2018), in a PCA
//! subspace of the 2048-d features (a few hundred training images cannot estimate a 2048-d
//! covariance). Inputs scoring above the threshold are not what the model was trained on.
//!
//! The statistics travel in the weights file as `ood.*` tensors; the threshold and how it was
//! chosen are in the model card.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const MEAN: &str = "ood.mean";
pub const PROJECTION: &str = "ood.projection";
pub const CLASS_MEANS: &str = "ood.class_means";
pub const PRECISION: &str = "ood.precision";

/// What the card says about the gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateRecord {
    pub method: String,
    pub dims: usize,
    /// Squared Mahalanobis distance above which an input is flagged.
    pub threshold: f32,
    /// The share of held-out in-distribution images the threshold was set to accept.
    pub target_true_accept: f64,
    /// How much of each kind of unlike image (inverted radiographs, photographs...) it flags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejection: Vec<GateRejection>,
}

/// The gate's verdicts on one kind of image unlike the training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateRejection {
    pub kind: String,
    pub flagged: usize,
    pub total: usize,
}

impl GateRejection {
    pub fn rate(&self) -> f64 {
        self.flagged as f64 / self.total.max(1) as f64
    }
}

#[derive(Debug, Clone)]
pub struct MahalanobisGate {
    /// (D,) mean of the training features, subtracted before projecting.
    mean: Vec<f32>,
    /// (k, D) principal axes, row-major.
    projection: Vec<f32>,
    /// (C, k) class means in the subspace.
    class_means: Vec<f32>,
    /// (k, k) inverse of the shared within-class covariance.
    precision: Vec<f32>,
    dims: usize,
    pub threshold: f32,
}

fn flat(tensors: &HashMap<String, Tensor>, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let tensor = tensors.get(name).ok_or_else(|| Error::MissingTensor {
        name: name.to_string(),
    })?;
    Ok((
        tensor.dims().to_vec(),
        tensor
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?,
    ))
}

impl MahalanobisGate {
    pub fn new(
        mean: Vec<f32>,
        projection: Vec<f32>,
        class_means: Vec<f32>,
        precision: Vec<f32>,
        threshold: f32,
    ) -> Result<Self> {
        let d = mean.len();
        let dims = projection.len().checked_div(d).unwrap_or(0);
        let consistent = d > 0
            && dims > 0
            && projection.len() == dims * d
            && precision.len() == dims * dims
            && !class_means.is_empty()
            && class_means.len().is_multiple_of(dims);
        if !consistent {
            return Err(Error::Checkpoint(
                "out-of-distribution gate tensors have inconsistent shapes".into(),
            ));
        }
        Ok(Self {
            mean,
            projection,
            class_means,
            precision,
            dims,
            threshold,
        })
    }

    /// Features (D,) -> subspace coordinates (k,).
    pub fn project(&self, features: &[f32]) -> Vec<f32> {
        let d = self.mean.len();
        let centred: Vec<f32> = features
            .iter()
            .zip(&self.mean)
            .map(|(f, m)| f - m)
            .collect();
        (0..self.dims)
            .map(|i| {
                self.projection[i * d..(i + 1) * d]
                    .iter()
                    .zip(&centred)
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect()
    }

    /// Squared Mahalanobis distance to the nearest class mean.
    pub fn score(&self, features: &[f32]) -> f32 {
        let z = self.project(features);
        let k = self.dims;
        self.class_means
            .chunks(k)
            .map(|mu| {
                let diff: Vec<f32> = z.iter().zip(mu).map(|(a, b)| a - b).collect();
                (0..k)
                    .map(|i| {
                        let row = &self.precision[i * k..(i + 1) * k];
                        diff[i] * row.iter().zip(&diff).map(|(p, d)| p * d).sum::<f32>()
                    })
                    .sum::<f32>()
            })
            .fold(f32::INFINITY, f32::min)
    }

    pub fn accepts(&self, features: &[f32]) -> bool {
        self.score(features) <= self.threshold
    }

    /// The `ood.*` tensors to store beside the weights.
    pub fn to_tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let d = self.mean.len();
        let k = self.dims;
        let classes = self.class_means.len() / k;
        Ok(HashMap::from([
            (
                MEAN.to_string(),
                Tensor::from_vec(self.mean.clone(), d, device)?,
            ),
            (
                PROJECTION.to_string(),
                Tensor::from_vec(self.projection.clone(), (k, d), device)?,
            ),
            (
                CLASS_MEANS.to_string(),
                Tensor::from_vec(self.class_means.clone(), (classes, k), device)?,
            ),
            (
                PRECISION.to_string(),
                Tensor::from_vec(self.precision.clone(), (k, k), device)?,
            ),
        ]))
    }

    /// Reads the gate from a weights file's tensors; `None` when the file has none.
    pub fn from_tensors(tensors: &HashMap<String, Tensor>, threshold: f32) -> Result<Option<Self>> {
        if !tensors.contains_key(MEAN) {
            return Ok(None);
        }
        let (_, mean) = flat(tensors, MEAN)?;
        let (_, projection) = flat(tensors, PROJECTION)?;
        let (_, class_means) = flat(tensors, CLASS_MEANS)?;
        let (_, precision) = flat(tensors, PRECISION)?;
        Self::new(mean, projection, class_means, precision, threshold).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Identity projection in 2-d, class means at (0,0) and (4,0), precision diag(1, 4).
    fn gate() -> MahalanobisGate {
        MahalanobisGate::new(
            vec![1.0, 1.0],
            vec![1.0, 0.0, 0.0, 1.0],
            vec![0.0, 0.0, 4.0, 0.0],
            vec![1.0, 0.0, 0.0, 4.0],
            2.0,
        )
        .unwrap()
    }

    #[test]
    fn score_is_the_distance_to_the_nearest_class() {
        let g = gate();
        // Feature (2, 2) -> centred (1, 1): to (0,0): 1 + 4 = 5; to (4,0): 9 + 4 = 13.
        assert!((g.score(&[2.0, 2.0]) - 5.0).abs() < 1e-6);
        // Feature (5, 1) -> (4, 0): distance 0 to the second class.
        assert_eq!(g.score(&[5.0, 1.0]), 0.0);
        assert!(g.accepts(&[5.0, 1.0]));
        assert!(!g.accepts(&[2.0, 2.0]));
    }

    #[test]
    fn tensors_round_trip() {
        let g = gate();
        let tensors = g.to_tensors(&Device::Cpu).unwrap();
        let back = MahalanobisGate::from_tensors(&tensors, 2.0)
            .unwrap()
            .unwrap();
        assert_eq!(back.score(&[2.0, 2.0]), g.score(&[2.0, 2.0]));
        assert!(MahalanobisGate::from_tensors(&HashMap::new(), 1.0)
            .unwrap()
            .is_none());
    }

    #[test]
    fn inconsistent_shapes_are_an_error() {
        assert!(
            MahalanobisGate::new(vec![0.0; 3], vec![0.0; 5], vec![0.0; 2], vec![0.0; 4], 1.0)
                .is_err()
        );
    }
}
