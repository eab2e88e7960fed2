//! Probability calibration: temperature scaling (Guo et al., 2017) and the measures that say
//! whether probabilities mean what they say (expected calibration error, Brier score).

use serde::{Deserialize, Serialize};

/// Softmax of `logits / temperature`, computed stably.
pub fn softmax_with_temperature(logits: &[f32], temperature: f32) -> Vec<f32> {
    let scaled: Vec<f64> = logits
        .iter()
        .map(|&z| f64::from(z) / f64::from(temperature))
        .collect();
    let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = scaled.iter().map(|z| (z - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / total) as f32).collect()
}

/// Mean negative log-likelihood of `labels` under softmax(logits / t).
pub fn negative_log_likelihood(logits: &[Vec<f32>], labels: &[usize], temperature: f32) -> f64 {
    let total: f64 = logits
        .iter()
        .zip(labels)
        .map(|(z, &y)| {
            let p = softmax_with_temperature(z, temperature)[y];
            -f64::from(p.max(1e-12)).ln()
        })
        .sum();
    total / logits.len().max(1) as f64
}

/// The temperature in [0.05, 20] that minimises the NLL on held-out logits, by golden-section
/// search on log t (the NLL is unimodal in t for a fixed set of logits).
pub fn fit_temperature(logits: &[Vec<f32>], labels: &[usize]) -> f32 {
    let nll = |log_t: f64| negative_log_likelihood(logits, labels, log_t.exp() as f32);
    let (mut lo, mut hi) = (0.05f64.ln(), 20f64.ln());
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let mut a = hi - ratio * (hi - lo);
    let mut b = lo + ratio * (hi - lo);
    let (mut fa, mut fb) = (nll(a), nll(b));
    for _ in 0..80 {
        if fa < fb {
            hi = b;
            b = a;
            fb = fa;
            a = hi - ratio * (hi - lo);
            fa = nll(a);
        } else {
            lo = a;
            a = b;
            fa = fb;
            b = lo + ratio * (hi - lo);
            fb = nll(b);
        }
    }
    ((lo + hi) / 2.0).exp() as f32
}

/// One confidence bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ReliabilityBin {
    /// Mean top-class confidence of the images in the bin.
    pub confidence: f64,
    /// Share of them whose top class is right.
    pub accuracy: f64,
    pub count: usize,
}

/// Top-class confidence against accuracy in `bins` equal-width bins ((0, 1/bins], ...).
pub fn reliability_bins(
    probabilities: &[Vec<f32>],
    labels: &[usize],
    bins: usize,
) -> Vec<ReliabilityBin> {
    let mut sums = vec![ReliabilityBin::default(); bins];
    for (p, &y) in probabilities.iter().zip(labels) {
        let top = crate::classifier::argmax(p);
        let confidence = f64::from(p[top]);
        let bin = &mut sums[((confidence * bins as f64).ceil() as usize).clamp(1, bins) - 1];
        bin.confidence += confidence;
        bin.accuracy += f64::from(u8::from(top == y));
        bin.count += 1;
    }
    for bin in &mut sums {
        if bin.count > 0 {
            bin.confidence /= bin.count as f64;
            bin.accuracy /= bin.count as f64;
        }
    }
    sums
}

/// Expected calibration error with `bins` equal-width confidence bins: the bin-size weighted
/// mean of |accuracy - confidence|, as in Guo et al.
pub fn expected_calibration_error(
    probabilities: &[Vec<f32>],
    labels: &[usize],
    bins: usize,
) -> f64 {
    let n = probabilities.len().max(1) as f64;
    reliability_bins(probabilities, labels, bins)
        .iter()
        .map(|b| b.count as f64 / n * (b.accuracy - b.confidence).abs())
        .sum()
}

/// Multi-class Brier score: mean over images of sum over classes of (p - onehot)^2.
pub fn brier_score(probabilities: &[Vec<f32>], labels: &[usize]) -> f64 {
    let total: f64 = probabilities
        .iter()
        .zip(labels)
        .map(|(p, &y)| {
            p.iter()
                .enumerate()
                .map(|(k, &v)| (f64::from(v) - f64::from(u8::from(k == y))).powi(2))
                .sum::<f64>()
        })
        .sum();
    total / probabilities.len().max(1) as f64
}

/// Calibration measured on one set, before and after temperature scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    pub temperature: f32,
    pub ece_15_bins_before: f64,
    pub ece_15_bins_after: f64,
    pub brier_before: f64,
    pub brier_after: f64,
}

impl CalibrationReport {
    pub fn measure(logits: &[Vec<f32>], labels: &[usize], temperature: f32) -> Self {
        let probs = |t: f32| -> Vec<Vec<f32>> {
            logits
                .iter()
                .map(|z| softmax_with_temperature(z, t))
                .collect()
        };
        let (before, after) = (probs(1.0), probs(temperature));
        Self {
            temperature,
            ece_15_bins_before: expected_calibration_error(&before, labels, 15),
            ece_15_bins_after: expected_calibration_error(&after, labels, 15),
            brier_before: brier_score(&before, labels),
            brier_after: brier_score(&after, labels),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Logits whose labels are drawn from softmax(logits / t_true): the fitted temperature must
    /// come back close to t_true.
    #[test]
    fn fitting_recovers_a_known_temperature() {
        let mut rng = StdRng::seed_from_u64(1);
        for t_true in [0.5f32, 1.0, 2.5] {
            let mut logits = Vec::new();
            let mut labels = Vec::new();
            for _ in 0..4000 {
                let z: Vec<f32> = (0..3).map(|_| rng.random_range(-4.0..4.0)).collect();
                let p = softmax_with_temperature(&z, t_true);
                let u: f32 = rng.random();
                let y = if u < p[0] {
                    0
                } else if u < p[0] + p[1] {
                    1
                } else {
                    2
                };
                logits.push(z);
                labels.push(y);
            }
            let t = fit_temperature(&logits, &labels);
            assert!((t / t_true - 1.0).abs() < 0.1, "fitted {t}, true {t_true}");
        }
    }

    #[test]
    fn ece_and_brier_on_hand_computed_cases() {
        let probs = vec![
            vec![0.9, 0.1],
            vec![0.9, 0.1],
            vec![0.6, 0.4],
            vec![0.2, 0.8],
        ];
        let labels = vec![0, 1, 0, 1];
        // Bins: 0.9 (two images, one right: |0.9 - 0.5| * 2 / 4 = 0.2), 0.6 (|0.6 - 1| / 4 = 0.1),
        // 0.8 (|0.8 - 1| / 4 = 0.05).
        assert!((expected_calibration_error(&probs, &labels, 15) - 0.35).abs() < 1e-6);
        // (0.02 + 1.62 + 0.32 + 0.08) / 4
        assert!((brier_score(&probs, &labels) - 0.51).abs() < 1e-6);
    }

    #[test]
    fn temperature_one_is_plain_softmax() {
        let p = softmax_with_temperature(&[1.0, 2.0, 3.0], 1.0);
        let sum: f32 = p.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!((p[2] - 0.665_240_9).abs() < 1e-6);
        let hot = softmax_with_temperature(&[1.0, 2.0, 3.0], 0.1);
        assert!(hot[2] > 0.9999);
    }
}
