//! Out-of-distribution gate: the Mahalanobis distance of an image's features to the nearest class
//! mean, with one covariance shared by the classes (Lee et al., 2018), in a PCA subspace of the
//! features (a few hundred training images cannot estimate a 1024- or 2048-d covariance), plus
//! the part of the features outside that subspace, scaled by the training data's variance there
//! (as in probabilistic PCA): an image unlike the training data mostly differs in directions the
//! subspace leaves out. Inputs scoring above the threshold are not what the model was trained on.
//!
//! The statistics travel in the weights file as `ood.*` tensors; the threshold and how it was
//! chosen are in the model card.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Every gate tensor's name starts so; the gate is fitted per network, so a new network
/// (averaged, narrowed) drops them until `calibrate` fits them again.
pub const TENSOR_PREFIX: &str = "ood.";
pub const MEAN: &str = "ood.mean";
pub const PROJECTION: &str = "ood.projection";
pub const CLASS_MEANS: &str = "ood.class_means";
pub const PRECISION: &str = "ood.precision";
pub const RESIDUAL_VARIANCE: &str = "ood.residual_variance";

/// Which activations the gate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateFeatures {
    /// The 2048-d global-average-pooled output of `layer4` (what the head sees).
    #[default]
    Pooled,
    /// Each channel's mean and standard deviation over the output of `layer2` (1024-d): image
    /// statistics that the class decision discards, which set inverted, cropped and
    /// non-radiograph images apart from radiographs far better than the pooled features do.
    Layer2Stats,
}

impl GateFeatures {
    /// The length of the feature vector.
    pub fn dim(self) -> usize {
        match self {
            Self::Pooled => crate::model::FEATURE_DIM,
            Self::Layer2Stats => 2 * crate::model::LAYER2_CHANNELS,
        }
    }
}

impl std::str::FromStr for GateFeatures {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "pooled" => Ok(Self::Pooled),
            "layer2-stats" => Ok(Self::Layer2Stats),
            other => Err(format!(
                "unknown gate features {other:?}: pooled or layer2-stats"
            )),
        }
    }
}

/// What the card says about the gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateRecord {
    pub method: String,
    pub dims: usize,
    /// Squared Mahalanobis distance above which an input is flagged.
    pub threshold: f32,
    /// The share of held-out in-distribution images the threshold was set to accept.
    pub target_true_accept: f64,
    /// The activations it reads (cards before this field: the pooled features).
    #[serde(default)]
    pub features: GateFeatures,
    /// How much of each kind of unlike image (inverted radiographs, photographs...) it flags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejection: Vec<GateRejection>,
}

/// The gate's verdicts on one kind of image unlike the training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateRejection {
    /// The kind's folder name, e.g. `rotated90`.
    pub kind: String,
    /// What the kind is, in words for the page, e.g. "test radiographs rotated by 90 degrees".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub flagged: usize,
    pub total: usize,
}

impl GateRejection {
    /// The description when there is one, else the kind's folder name.
    pub fn label(&self) -> &str {
        self.description.as_deref().unwrap_or(&self.kind)
    }

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
    /// Training variance per dimension outside the subspace; `None`: the residual is not scored.
    residual_variance: Option<f32>,
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
        residual_variance: Option<f32>,
        threshold: f32,
    ) -> Result<Self> {
        let d = mean.len();
        let dims = projection.len().checked_div(d).unwrap_or(0);
        let consistent = d > 0
            && dims > 0
            && projection.len() == dims * d
            && precision.len() == dims * dims
            && !class_means.is_empty()
            && class_means.len().is_multiple_of(dims)
            && residual_variance.is_none_or(|v| v.is_finite() && v > 0.0);
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
            residual_variance,
            dims,
            threshold,
        })
    }

    /// The length of the feature vectors it reads.
    pub fn input_dim(&self) -> usize {
        self.mean.len()
    }

    pub fn residual_variance(&self) -> Option<f32> {
        self.residual_variance
    }

    fn centred(&self, features: &[f32]) -> Vec<f32> {
        features
            .iter()
            .zip(&self.mean)
            .map(|(f, m)| f - m)
            .collect()
    }

    fn axis(&self, i: usize) -> &[f32] {
        let d = self.mean.len();
        &self.projection[i * d..(i + 1) * d]
    }

    fn coordinates(&self, centred: &[f32]) -> Vec<f32> {
        (0..self.dims)
            .map(|i| self.axis(i).iter().zip(centred).map(|(a, b)| a * b).sum())
            .collect()
    }

    /// Features (D,) -> subspace coordinates (k,).
    pub fn project(&self, features: &[f32]) -> Vec<f32> {
        self.coordinates(&self.centred(features))
    }

    /// Squared Mahalanobis distance to the nearest class mean in the subspace, plus the squared
    /// length of the part outside it over the training variance there (when the gate has one).
    pub fn score(&self, features: &[f32]) -> f32 {
        let centred = self.centred(features);
        let z = self.coordinates(&centred);
        let k = self.dims;
        let in_subspace = self
            .class_means
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
            .fold(f32::INFINITY, f32::min);
        let Some(variance) = self.residual_variance else {
            return in_subspace;
        };
        // The residual c - P^T z, computed directly: |c|^2 - |z|^2 would cancel badly in f32.
        let mut residual = centred;
        for (i, zi) in z.iter().enumerate() {
            for (r, a) in residual.iter_mut().zip(self.axis(i)) {
                *r -= zi * a;
            }
        }
        in_subspace + residual.iter().map(|r| r * r).sum::<f32>() / variance
    }

    pub fn accepts(&self, features: &[f32]) -> bool {
        self.score(features) <= self.threshold
    }

    /// The `ood.*` tensors to store beside the weights.
    pub fn to_tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let d = self.mean.len();
        let k = self.dims;
        let classes = self.class_means.len() / k;
        let mut tensors = HashMap::from([
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
        ]);
        if let Some(variance) = self.residual_variance {
            tensors.insert(
                RESIDUAL_VARIANCE.to_string(),
                Tensor::new(&[variance], device)?,
            );
        }
        Ok(tensors)
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
        let residual_variance = match tensors.contains_key(RESIDUAL_VARIANCE) {
            true => flat(tensors, RESIDUAL_VARIANCE)?.1.first().copied(),
            false => None,
        };
        Self::new(
            mean,
            projection,
            class_means,
            precision,
            residual_variance,
            threshold,
        )
        .map(Some)
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
            None,
            2.0,
        )
        .unwrap()
    }

    /// A 1-d subspace (the first axis) of 2-d features, class means at 0 and 4, unit precision,
    /// training variance 0.5 off the subspace.
    fn gate_with_residual() -> MahalanobisGate {
        MahalanobisGate::new(
            vec![0.0, 0.0],
            vec![1.0, 0.0],
            vec![0.0, 4.0],
            vec![1.0],
            Some(0.5),
            10.0,
        )
        .unwrap()
    }

    #[test]
    fn residual_off_the_subspace_adds_to_the_score() {
        let g = gate_with_residual();
        // (1, 2): 1 from class 0 in the subspace; residual (0, 2) -> 4 / 0.5 = 8.
        assert!((g.score(&[1.0, 2.0]) - 9.0).abs() < 1e-6);
        // The same point without the off-subspace part scores the subspace distance alone.
        assert!((g.score(&[1.0, 0.0]) - 1.0).abs() < 1e-6);
        let tensors = g.to_tensors(&Device::Cpu).unwrap();
        let back = MahalanobisGate::from_tensors(&tensors, 10.0)
            .unwrap()
            .unwrap();
        assert_eq!(back.score(&[1.0, 2.0]), g.score(&[1.0, 2.0]));
    }

    #[test]
    fn gate_features_parse_from_their_card_names() {
        for features in [GateFeatures::Pooled, GateFeatures::Layer2Stats] {
            let name = serde_json::to_value(features).unwrap();
            assert_eq!(name.as_str().unwrap().parse::<GateFeatures>(), Ok(features));
        }
        assert!("layer3".parse::<GateFeatures>().is_err());
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
        let negative_variance = MahalanobisGate::new(
            vec![0.0; 2],
            vec![1.0, 0.0],
            vec![0.0],
            vec![1.0],
            Some(-1.0),
            1.0,
        );
        assert!(negative_variance.is_err());
        assert!(MahalanobisGate::new(
            vec![0.0; 3],
            vec![0.0; 5],
            vec![0.0; 2],
            vec![0.0; 4],
            None,
            1.0
        )
        .is_err());
    }
}
