//! Operating points: per class, the calibrated probability at or above which the class is called
//! positive, chosen on validation images for a stated sensitivity (a screening tool misses at most
//! that share of cases). The page and the CLI show the verdict beside the raw probability.

use serde::{Deserialize, Serialize};

use crate::calibration::softmax_with_temperature;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    pub class: String,
    /// Positive when the calibrated probability is at least this.
    pub threshold: f32,
    /// The sensitivity it was chosen for.
    pub target_sensitivity: f64,
    /// Sensitivity and specificity (one class against the rest) on the images it was chosen on.
    pub sensitivity: f64,
    pub specificity: f64,
    pub positives: usize,
    pub negatives: usize,
}

impl OperatingPoint {
    /// The highest threshold that keeps at least `target` of the positives at or above it, for
    /// one class's probabilities `scores` with `positive[i]` saying image i is of that class.
    /// `None` without positives or negatives.
    pub fn choose(class: &str, scores: &[f32], positive: &[bool], target: f64) -> Option<Self> {
        let mut positives: Vec<f32> = scores
            .iter()
            .zip(positive)
            .filter(|(_, &p)| p)
            .map(|(&s, _)| s)
            .collect();
        let negatives = positive.len() - positives.len();
        if positives.is_empty() || negatives == 0 {
            return None;
        }
        positives.sort_by(|a, b| b.total_cmp(a));
        let needed = ((target.clamp(0.0, 1.0) * positives.len() as f64).ceil() as usize)
            .clamp(1, positives.len());
        let threshold = positives[needed - 1];
        let mut point = Self {
            class: class.to_string(),
            threshold,
            target_sensitivity: target,
            sensitivity: 0.0,
            specificity: 0.0,
            positives: positives.len(),
            negatives,
        };
        (point.sensitivity, point.specificity) = point.measure(scores, positive);
        Some(point)
    }

    pub fn is_positive(&self, probability: f32) -> bool {
        probability >= self.threshold
    }

    /// (sensitivity, specificity) of this threshold on `scores` (NaN where a side is empty).
    pub fn measure(&self, scores: &[f32], positive: &[bool]) -> (f64, f64) {
        let (mut true_pos, mut pos, mut true_neg, mut neg) = (0usize, 0usize, 0usize, 0usize);
        for (&score, &is_positive) in scores.iter().zip(positive) {
            let called = self.is_positive(score);
            if is_positive {
                pos += 1;
                true_pos += usize::from(called);
            } else {
                neg += 1;
                true_neg += usize::from(!called);
            }
        }
        (true_pos as f64 / pos as f64, true_neg as f64 / neg as f64)
    }

    /// The verdict for a probability that is (`called`) or is not at this point, in words.
    pub fn verdict(&self, called: bool) -> String {
        format!(
            "{} at the operating point (>= {:.3}, {:.0}% sensitivity on validation)",
            if called { "positive" } else { "below" },
            self.threshold,
            self.target_sensitivity * 100.0
        )
    }

    /// One line for the card panel and reports.
    pub fn describe(&self) -> String {
        format!(
            "{}: positive at probability >= {:.3}, chosen on {} validation images for {:.0}% sensitivity (there: sensitivity {:.3}, specificity {:.3})",
            self.class,
            self.threshold,
            self.positives + self.negatives,
            self.target_sensitivity * 100.0,
            self.sensitivity,
            self.specificity
        )
    }
}

/// A labelled set seen one class against the rest, which is how an operating point is chosen
/// (`trainer calibrate`) and measured (`trainer evaluate`).
pub struct OneVsRest {
    /// Per image, the temperature-scaled probability of every class.
    probabilities: Vec<Vec<f32>>,
    labels: Vec<usize>,
}

impl OneVsRest {
    pub fn new(logits: &[Vec<f32>], labels: &[usize], temperature: f32) -> Self {
        Self {
            probabilities: logits
                .iter()
                .map(|z| softmax_with_temperature(z, temperature))
                .collect(),
            labels: labels.to_vec(),
        }
    }

    /// Each image's probability of `class` and whether it belongs to `class`.
    pub fn class(&self, class: usize) -> (Vec<f32>, Vec<bool>) {
        let scores = self.probabilities.iter().map(|p| p[class]).collect();
        let positive = self.labels.iter().map(|&y| y == class).collect();
        (scores, positive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_vs_rest_gives_each_class_its_probabilities_and_members() {
        // Two images, two classes; temperature 1: softmax([0, ln 3]) = [0.25, 0.75].
        let logits = vec![vec![0.0, 3f32.ln()], vec![3f32.ln(), 0.0]];
        let set = OneVsRest::new(&logits, &[1, 0], 1.0);
        let (scores, positive) = set.class(1);
        assert!((scores[0] - 0.75).abs() < 1e-6 && (scores[1] - 0.25).abs() < 1e-6);
        assert_eq!(positive, [true, false]);
        assert_eq!(set.class(0).1, [false, true]);
    }

    #[test]
    fn the_threshold_keeps_the_target_share_of_positives() {
        // Ten positives at 0.1..1.0, ten negatives at 0.05..0.5.
        let mut scores: Vec<f32> = (1..=10).map(|i| i as f32 / 10.0).collect();
        scores.extend((1..=10).map(|i| i as f32 / 20.0));
        let positive: Vec<bool> = (0..20).map(|i| i < 10).collect();
        let point = OperatingPoint::choose("Covid", &scores, &positive, 0.8).unwrap();
        // 8 of 10 positives are >= 0.3.
        assert!((point.threshold - 0.3).abs() < 1e-6);
        assert_eq!(point.sensitivity, 0.8);
        // Negatives >= 0.3: 0.30, 0.35, ..., 0.50 (5 of 10).
        assert_eq!(point.specificity, 0.5);
        assert!(point.is_positive(0.3) && !point.is_positive(0.29));
        let all = OperatingPoint::choose("Covid", &scores, &positive, 1.0).unwrap();
        assert!((all.threshold - 0.1).abs() < 1e-6);
        assert_eq!(all.sensitivity, 1.0);
        assert!(OperatingPoint::choose("Covid", &scores[..10], &positive[..10], 0.9).is_none());
    }
}
