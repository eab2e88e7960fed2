//! Fitting the out-of-distribution gate and the temperature on a trained model's outputs.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use nalgebra::{DMatrix, SymmetricEigen};
use pneumoscope::ood::MahalanobisGate;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Sources with fewer training images of a class than this join that class's largest source:
/// a mean of a handful of images would be noise.
pub const MIN_GROUP_IMAGES: usize = 30;

/// The gate's groups: one per (class, source) pair with at least `min_images` images, smaller
/// sources folded into their class's largest. One mean per class alone sits between the
/// sources and calls a small source's images unlike (the Kaggle copy, 251 of 7,143 training
/// images, was half flagged). Returns each image's group and each group's "class / source" name.
pub fn class_source_groups(
    labels: &[usize],
    sources: &[&str],
    min_images: usize,
) -> (Vec<usize>, Vec<String>) {
    let mut counts: BTreeMap<(usize, &str), usize> = BTreeMap::new();
    for (&label, &source) in labels.iter().zip(sources) {
        *counts.entry((label, source)).or_insert(0) += 1;
    }
    // The largest source of each class (the first by name on a tie).
    let mut largest: BTreeMap<usize, (&str, usize)> = BTreeMap::new();
    for (&(label, source), &count) in &counts {
        let best = largest.entry(label).or_insert((source, count));
        if count > best.1 {
            *best = (source, count);
        }
    }
    let key = |label: usize, source: &str| -> (usize, String) {
        if counts[&(label, source)] >= min_images {
            (label, source.to_string())
        } else {
            (label, largest[&label].0.to_string())
        }
    };
    let mut names: BTreeMap<(usize, String), usize> = BTreeMap::new();
    for (&label, &source) in labels.iter().zip(sources) {
        names.entry(key(label, source)).or_insert(0);
    }
    for (index, group) in names.values_mut().enumerate() {
        *group = index;
    }
    let groups = labels
        .iter()
        .zip(sources)
        .map(|(&label, &source)| names[&key(label, source)])
        .collect();
    let names = names
        .keys()
        .map(|(label, source)| format!("{label}/{source}"))
        .collect();
    (groups, names)
}

/// Fits group means (classes, or classes within sources) and a shared covariance to `features`
/// (n, D) in the subspace of their top `dims` principal axes (fewer when the data have fewer
/// independent directions), and the variance per dimension left outside that subspace, which
/// scales the residual term of the score. The threshold is left at infinity;
/// `threshold_for_true_accept` sets it.
pub fn fit_mahalanobis(
    features: &[Vec<f32>],
    groups: &[usize],
    group_count: usize,
    dims: usize,
) -> Result<MahalanobisGate> {
    let (labels, classes) = (groups, group_count);
    let n = features.len();
    if n <= classes + 1 {
        bail!(
            "the gate needs more than {} training images, got {n}",
            classes + 1
        );
    }
    let d = features[0].len();
    let mean: Vec<f64> = (0..d)
        .map(|j| features.iter().map(|f| f64::from(f[j])).sum::<f64>() / n as f64)
        .collect();
    let centred = DMatrix::from_fn(n, d, |i, j| f64::from(features[i][j]) - mean[j]);
    // Principal axes through the n x n Gram matrix when n <= D, else the D x D scatter matrix:
    // an eigen-decomposition costs the cube of its side (7,000 corpus images vs 1,024 features).
    let gram_side = n <= d;
    let eigen = SymmetricEigen::new(if gram_side {
        &centred * centred.transpose()
    } else {
        centred.transpose() * &centred
    });
    let mut order: Vec<usize> = (0..eigen.eigenvalues.len()).collect();
    order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
    let largest = eigen.eigenvalues[order[0]].max(f64::MIN_POSITIVE);
    let kept: Vec<usize> = order
        .into_iter()
        .filter(|&i| eigen.eigenvalues[i] > 1e-8 * largest)
        .take(dims.min(n - classes - 1))
        .collect();
    let k = kept.len();
    if k == 0 {
        bail!("the training features have no variance; the gate cannot be fitted");
    }
    // Total variance minus the kept axes', spread over the dimensions left out.
    let total: f64 = eigen.eigenvalues.iter().map(|v| v.max(0.0)).sum();
    let kept_sum: f64 = kept.iter().map(|&i| eigen.eigenvalues[i]).sum();
    let residual_variance =
        ((total - kept_sum) / (n - 1) as f64 / d.saturating_sub(k).max(1) as f64) as f32;
    let residual_variance = (d > k && residual_variance > 0.0).then_some(residual_variance);
    // Gram side: axis i = Xc^T v_i / sqrt(lambda_i), unit length in feature space; scatter
    // side: v_i itself.
    let mut axes = DMatrix::<f64>::zeros(k, d);
    for (row, &i) in kept.iter().enumerate() {
        let axis = if gram_side {
            centred.transpose() * eigen.eigenvectors.column(i) / eigen.eigenvalues[i].sqrt()
        } else {
            eigen.eigenvectors.column(i).into_owned()
        };
        axes.row_mut(row).copy_from(&axis.transpose());
    }
    let projected = &centred * axes.transpose(); // (n, k)
    let mut class_means = DMatrix::<f64>::zeros(classes, k);
    let mut counts = vec![0usize; classes];
    for (i, &y) in labels.iter().enumerate() {
        let mut row = class_means.row_mut(y);
        row += projected.row(i);
        counts[y] += 1;
    }
    for (c, &count) in counts.iter().enumerate() {
        if count == 0 {
            bail!("group {c} has no training image; the gate cannot be fitted");
        }
        class_means.row_mut(c).scale_mut(1.0 / count as f64);
    }
    let mut scatter = DMatrix::<f64>::zeros(k, k);
    for (i, &y) in labels.iter().enumerate() {
        let diff = projected.row(i) - class_means.row(y);
        scatter += diff.transpose() * diff;
    }
    let mut covariance = scatter / (n - classes) as f64;
    // A small ridge keeps the inverse finite when a direction has (almost) no within-class spread.
    let ridge = 1e-6 * covariance.trace() / k as f64 + 1e-12;
    for i in 0..k {
        covariance[(i, i)] += ridge;
    }
    let Some(precision) = covariance.try_inverse() else {
        bail!("the within-class covariance is singular");
    };
    let to_f32 = |m: &DMatrix<f64>| -> Vec<f32> {
        // nalgebra is column-major; the gate wants row-major.
        m.transpose().iter().map(|&v| v as f32).collect()
    };
    Ok(MahalanobisGate::new(
        mean.iter().map(|&v| v as f32).collect(),
        to_f32(&axes),
        to_f32(&class_means),
        to_f32(&precision),
        residual_variance,
        f32::INFINITY,
    )?)
}

/// Share of a source's training images held out of the gate's fit when the validation split has
/// none of its images, so the threshold can be set on images the gate did not see.
pub const HELD_OUT_SHARE: f64 = 0.2;
/// Sources with fewer held-out images than this do not set the threshold: their quantile is noise.
pub const MIN_HELD_OUT: usize = 20;

/// Which training images the gate holds out of its fit: for each source with no validation
/// image, a seeded `share` of its training images. `train_sources[i]` is training image i's
/// source.
pub fn held_out_of_fit(
    train_sources: &[&str],
    validation_sources: &[&str],
    share: f64,
    seed: u64,
) -> Vec<bool> {
    let mut by_source: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, &source) in train_sources.iter().enumerate() {
        by_source.entry(source).or_default().push(i);
    }
    let mut held_out = vec![false; train_sources.len()];
    let mut rng = StdRng::seed_from_u64(seed);
    for (source, mut images) in by_source {
        if validation_sources.contains(&source) {
            continue;
        }
        images.shuffle(&mut rng);
        let count = (share * images.len() as f64).round() as usize;
        for &i in &images[..count] {
            held_out[i] = true;
        }
    }
    held_out
}

/// The threshold that accepts at least `true_accept` of every source's held-out images (the
/// largest of the per-source thresholds, over sources with at least `min_images`; all images
/// pooled when none has that many), and each source's own threshold.
pub fn threshold_per_source(
    scores: &[(&str, f32)],
    true_accept: f64,
    min_images: usize,
) -> (f32, Vec<(String, usize, f32)>) {
    let mut by_source: BTreeMap<&str, Vec<f32>> = BTreeMap::new();
    for &(source, score) in scores {
        by_source.entry(source).or_default().push(score);
    }
    let per_source: Vec<(String, usize, f32)> = by_source
        .into_iter()
        .filter(|(_, s)| s.len() >= min_images)
        .map(|(source, s)| {
            (
                source.to_string(),
                s.len(),
                threshold_for_true_accept(&s, true_accept),
            )
        })
        .collect();
    let threshold = per_source
        .iter()
        .map(|&(_, _, t)| t)
        .reduce(f32::max)
        .unwrap_or_else(|| {
            let all: Vec<f32> = scores.iter().map(|&(_, s)| s).collect();
            threshold_for_true_accept(&all, true_accept)
        });
    (threshold, per_source)
}

/// The smallest threshold that accepts at least `true_accept` of `scores` (in-distribution).
pub fn threshold_for_true_accept(scores: &[f32], true_accept: f64) -> f32 {
    let mut sorted = scores.to_vec();
    sorted.sort_by(f32::total_cmp);
    let needed = ((true_accept * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[needed - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};
    use rand_distr::{Distribution, Normal};

    /// Two Gaussian classes in 50-d with a known shared covariance (variance 1 on the first
    /// 5 coordinates, 0.01 elsewhere): in-class points score around the subspace dimension,
    /// points far along a low-variance direction score very high.
    #[test]
    fn gate_separates_known_gaussians_from_outliers() {
        let mut rng = StdRng::seed_from_u64(4);
        let noise = Normal::new(0.0f32, 1.0).unwrap();
        let d = 50;
        let sample = |class: usize, rng: &mut StdRng| -> Vec<f32> {
            (0..d)
                .map(|j| {
                    let sd = if j < 5 { 1.0 } else { 0.1 };
                    let centre = if j == 0 { 6.0 * class as f32 } else { 0.0 };
                    centre + sd * noise.sample(rng)
                })
                .collect()
        };
        let labels: Vec<usize> = (0..400).map(|i| i % 2).collect();
        let features: Vec<Vec<f32>> = labels.iter().map(|&c| sample(c, &mut rng)).collect();
        let gate = fit_mahalanobis(&features, &labels, 2, 10).unwrap();

        let held_out: Vec<f32> = (0..200)
            .map(|i| gate.score(&sample(i % 2, &mut rng)))
            .collect();
        let threshold = threshold_for_true_accept(&held_out, 0.95);
        let accepted = held_out.iter().filter(|&&s| s <= threshold).count();
        assert!(accepted >= 190, "{accepted} of 200 accepted");
        // An in-class point scores about 1 per dimension: 10 in the subspace, about 40 off it.
        let mean: f32 = held_out.iter().sum::<f32>() / 200.0;
        assert!((40.0..65.0).contains(&mean), "mean in-class score {mean}");

        let mut outlier = sample(0, &mut rng);
        outlier[7] += 3.0; // 30 standard deviations along a quiet direction
        assert!(gate.score(&outlier) > 10.0 * threshold);
        // Off the 10-d subspace the training variance is that of the quiet directions (0.01),
        // a little less since the subspace took the largest of them.
        let residual = gate.residual_variance().unwrap();
        assert!((0.007..0.0105).contains(&residual), "{residual}");
        // A shift of 0.5 (5 sd) on every quiet coordinate lies mostly outside the subspace.
        let spread: Vec<f32> = sample(1, &mut rng)
            .iter()
            .enumerate()
            .map(|(j, v)| if j >= 5 { v + 0.5 } else { *v })
            .collect();
        assert!(gate.score(&spread) > 10.0 * threshold);
        let beyond: Vec<f32> = (0..d).map(|j| if j == 0 { 26.0 } else { 0.0 }).collect();
        assert!(
            gate.score(&beyond) > 3.0 * threshold,
            "20 sd past the last class mean"
        );
    }

    #[test]
    fn small_sources_join_their_class_largest_source() {
        let labels = [0, 0, 0, 0, 0, 1, 1, 1];
        let sources = ["a", "a", "b", "b", "c", "a", "d", "d"];
        let (groups, names) = class_source_groups(&labels, &sources, 2);
        // Class 0: a (2) and b (2) are groups, c (1) joins a (first largest by name).
        // Class 1: d (2) is the largest; a (1) joins it.
        assert_eq!(names, ["0/a", "0/b", "1/d"]);
        assert_eq!(groups, [0, 0, 1, 1, 0, 2, 2, 2]);
        let (groups, names) = class_source_groups(&labels, &sources, 1);
        assert_eq!(names.len(), 5);
        assert_eq!(groups, [0, 0, 1, 1, 2, 3, 4, 4]);
    }

    /// A class drawn from a large source and a small one (5%) with a shifted mean: one mean per
    /// class lies near the large source and flags the small one's held-out images; a mean per
    /// source accepts them, and still flags a point far from both.
    #[test]
    fn a_mean_per_source_accepts_a_small_shifted_source() {
        let mut rng = StdRng::seed_from_u64(9);
        let noise = Normal::new(0.0f32, 1.0).unwrap();
        let d = 20;
        let sample = |shift: f32, rng: &mut StdRng| -> Vec<f32> {
            (0..d)
                .map(|j| noise.sample(rng) + if (1..=5).contains(&j) { shift } else { 0.0 })
                .collect()
        };
        let sources: Vec<&str> = (0..600)
            .map(|i| if i % 20 == 0 { "small" } else { "large" })
            .collect();
        let features: Vec<Vec<f32>> = sources
            .iter()
            .map(|&s| sample(if s == "small" { 10.0 } else { 0.0 }, &mut rng))
            .collect();
        let labels = vec![0; 600];
        let held_out_large: Vec<Vec<f32>> = (0..200).map(|_| sample(0.0, &mut rng)).collect();
        let held_out_small: Vec<Vec<f32>> = (0..100).map(|_| sample(10.0, &mut rng)).collect();
        let flagged_small = |gate: &MahalanobisGate| -> usize {
            let scores: Vec<f32> = held_out_large.iter().map(|f| gate.score(f)).collect();
            let threshold = threshold_for_true_accept(&scores, 0.95);
            held_out_small
                .iter()
                .filter(|f| gate.score(f) > threshold)
                .count()
        };
        let by_class = fit_mahalanobis(&features, &labels, 1, 10).unwrap();
        let (groups, names) = class_source_groups(&labels, &sources, MIN_GROUP_IMAGES);
        assert_eq!(names, ["0/large", "0/small"]);
        let by_source = fit_mahalanobis(&features, &groups, names.len(), 10).unwrap();
        assert!(
            flagged_small(&by_class) > 50,
            "{}",
            flagged_small(&by_class)
        );
        assert!(
            flagged_small(&by_source) < 15,
            "{}",
            flagged_small(&by_source)
        );
        let far = sample(-10.0, &mut rng);
        let scores: Vec<f32> = held_out_large.iter().map(|f| by_source.score(f)).collect();
        assert!(by_source.score(&far) > 2.0 * threshold_for_true_accept(&scores, 0.95));
    }

    #[test]
    fn sources_without_validation_images_lend_a_seeded_share() {
        let train: Vec<&str> = (0..100)
            .map(|i| if i < 60 { "big" } else { "small" })
            .collect();
        let held = held_out_of_fit(&train, &["big"], 0.2, 3);
        assert!(held[..60].iter().all(|&h| !h), "big has validation images");
        assert_eq!(held[60..].iter().filter(|&&h| h).count(), 8);
        assert_eq!(held, held_out_of_fit(&train, &["big"], 0.2, 3));
        assert_ne!(held, held_out_of_fit(&train, &["big"], 0.2, 4));
    }

    #[test]
    fn the_threshold_accepts_every_large_enough_source() {
        let mut scores: Vec<(&str, f32)> = (1..=100).map(|i| ("a", i as f32)).collect();
        scores.extend((1..=20).map(|i| ("b", 10.0 * i as f32)));
        scores.extend((1..=5).map(|i| ("tiny", 1000.0 * i as f32)));
        let (threshold, per_source) = threshold_per_source(&scores, 0.95, 20);
        assert_eq!(threshold, 190.0, "b's 19th of 20");
        assert_eq!(
            per_source,
            vec![("a".to_string(), 100, 95.0), ("b".to_string(), 20, 190.0)]
        );
        let (pooled, none) = threshold_per_source(&scores[..10], 0.9, 20);
        assert!(none.is_empty());
        assert_eq!(pooled, 9.0);
    }

    #[test]
    fn threshold_accepts_the_requested_share() {
        let scores: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        assert_eq!(threshold_for_true_accept(&scores, 0.95), 95.0);
        assert_eq!(threshold_for_true_accept(&scores, 1.0), 100.0);
        assert_eq!(threshold_for_true_accept(&scores[..3], 0.5), 2.0);
    }
}
