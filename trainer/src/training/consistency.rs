//! Framing consistency, after AugMix's Jensen-Shannon consistency loss (Hendrycks et al., 2020):
//! every training draw is also shown reframed, wider or tighter, and the loss asks the two
//! answers to agree. Zoom drawn for all classes alike only adds noise to a framing that differs by
//! class in the data (sick patients' films are collimated tighter); asking for the same answer
//! at both framings takes the cue away by construction.

use anyhow::Result;
use candle_core::{Tensor, D};
use candle_nn::ops::log_softmax;

use crate::augment::Augmentation;
use crate::framing::{random_zoom, reframe_chw};

/// `--framing-consistency` and `--framing-zoom`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FramingConsistency {
    /// Weight of the Jensen-Shannon term beside the cross-entropy.
    pub weight: f32,
    /// Zooms are drawn in [1 / zoom_max, zoom_max].
    pub zoom_max: f32,
}

/// Keeps the zoom draws apart from the augmentation's own random stream.
const ZOOM_STREAM: u64 = 0x7a6f_6f6d;

impl FramingConsistency {
    /// Each of `views` (3, side, side) reframed at its own zoom, drawn from the run's seed, the
    /// epoch and the draw's number, as the augmentation is.
    pub fn reframed(
        &self,
        views: &[Vec<f32>],
        side: usize,
        seed: u64,
        epoch: usize,
        first_draw: usize,
    ) -> Vec<Vec<f32>> {
        views
            .iter()
            .enumerate()
            .map(|(n, view)| {
                let mut rng = Augmentation::rng(seed ^ ZOOM_STREAM, epoch, first_draw + n);
                reframe_chw(view, side, random_zoom(&mut rng, self.zoom_max))
            })
            .collect()
    }
}

/// Mean Jensen-Shannon divergence, in nats (at most ln 2), between the class distributions of
/// two batches of logits, each (n, classes).
pub fn jensen_shannon(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (log_p, log_q) = (log_softmax(a, D::Minus1)?, log_softmax(b, D::Minus1)?);
    let (p, q) = (log_p.exp()?, log_q.exp()?);
    let log_m = ((&p + &q)? * 0.5)?.clamp(1e-7, 1.0)?.log()?;
    let divergence = |p: &Tensor, log_p: &Tensor| -> Result<Tensor> {
        Ok((p * (log_p - &log_m)?)?.sum(D::Minus1)?)
    };
    let js = ((divergence(&p, &log_p)? + divergence(&q, &log_q)?)? * 0.5)?;
    Ok(js.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn logits(rows: &[[f32; 3]]) -> Tensor {
        let flat: Vec<f32> = rows.concat();
        Tensor::from_vec(flat, (rows.len(), 3), &Device::Cpu).unwrap()
    }

    fn js(a: &[[f32; 3]], b: &[[f32; 3]]) -> f32 {
        jensen_shannon(&logits(a), &logits(b))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn jensen_shannon_is_zero_for_the_same_answers_and_ln2_for_opposite_certain_ones() {
        let same = [[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]];
        assert!(js(&same, &same).abs() < 1e-6);
        let certain_a = [[40.0, 0.0, 0.0]];
        let certain_b = [[0.0, 40.0, 0.0]];
        assert!((js(&certain_a, &certain_b) - std::f32::consts::LN_2).abs() < 1e-4);
        // Symmetric, and between the two for a partial disagreement.
        let (a, b) = ([[1.0, 0.0, -1.0]], [[0.0, 1.0, -1.0]]);
        let (ab, ba) = (js(&a, &b), js(&b, &a));
        assert!((ab - ba).abs() < 1e-6);
        assert!(ab > 0.01 && ab < 0.5, "{ab}");
    }

    #[test]
    fn reframed_views_are_seeded_per_draw() {
        let side = 16;
        let view: Vec<f32> = (0..3 * side * side).map(|i| (i % 7) as f32 / 7.0).collect();
        let views = vec![view.clone(), view.clone()];
        let consistency = FramingConsistency {
            weight: 1.0,
            zoom_max: 1.5,
        };
        let first = consistency.reframed(&views, side, 5, 0, 0);
        assert_eq!(first, consistency.reframed(&views, side, 5, 0, 0));
        assert_eq!(first[0].len(), view.len());
        assert_ne!(first[0], first[1], "two draws, two zooms");
        assert_ne!(first, consistency.reframed(&views, side, 5, 1, 0));
    }
}
