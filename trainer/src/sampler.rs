//! Which training images an epoch sees. A plain shuffle lets the largest source of each class
//! dominate what the network learns about that class; the balanced sampler draws (with
//! replacement) so every class gets the same share and, within a class, each source a share that
//! grows only as `count^power` (0: all sources alike, 1: as they come).
//!
//! Equal classes are not equal within a source: a network tells sources apart at a glance, so it
//! learns each source's class mix as a prior. With Normal split over three sources and Viral
//! Pneumonia over two, a pediatric image was drawn as Viral Pneumonia twice as often as Normal.
//! `class-source-group` weighs every (class, source) group alike (by `count^power`), which
//! keeps the classes of one source near-equal.

use std::collections::HashMap;

use anyhow::{bail, Result};
use clap::ValueEnum;
use rand::distr::{weighted::WeightedIndex, Distribution};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Every training image once per epoch, shuffled (the paper's recipe).
    None,
    /// Classes equal, sources within a class by `count^power`.
    #[serde(alias = "ClassSource")] // checkpoints of the first multi-source run
    ClassSource,
    /// Every (class, source) group by `count^power`, so a source's classes are near-equal.
    ClassSourceGroup,
}

/// Per-image drawing weights over a training set.
#[derive(Debug, Clone)]
pub struct BalancedSampler {
    weights: Vec<f64>,
}

impl BalancedSampler {
    /// `labels[i]` and `sources[i]` describe training image i.
    pub fn new(labels: &[usize], sources: &[&str], balance: Balance, power: f64) -> Result<Self> {
        if labels.len() != sources.len() || labels.is_empty() {
            bail!("the sampler needs one source per label, and at least one image");
        }
        let mut group_sizes: HashMap<(usize, &str), usize> = HashMap::new();
        for (&label, &source) in labels.iter().zip(sources) {
            *group_sizes.entry((label, source)).or_default() += 1;
        }
        // A group's mass is size^power over the total of its class (class-source: each class
        // sums to 1) or of all groups (class-source-group); its images share it.
        let mut total_mass: HashMap<Option<usize>, f64> = HashMap::new();
        let pool = |label: usize| match balance {
            Balance::ClassSourceGroup => None,
            _ => Some(label),
        };
        for (&(label, _), &size) in &group_sizes {
            *total_mass.entry(pool(label)).or_default() += (size as f64).powf(power);
        }
        let weights = labels
            .iter()
            .zip(sources)
            .map(|(&label, &source)| {
                let size = group_sizes[&(label, source)] as f64;
                size.powf(power) / total_mass[&pool(label)] / size
            })
            .collect();
        Ok(Self { weights })
    }

    /// `count` positions into the training set, drawn with replacement.
    pub fn draw(&self, count: usize, rng: &mut StdRng) -> Vec<usize> {
        let distribution = WeightedIndex::new(&self.weights).expect("positive finite weights");
        (0..count).map(|_| distribution.sample(rng)).collect()
    }
}

/// The positions (into the training set of `len` images) an epoch visits, in order.
pub fn epoch_order(
    len: usize,
    sampler: Option<&BalancedSampler>,
    samples_per_epoch: usize,
    rng: &mut StdRng,
) -> Vec<usize> {
    match sampler {
        Some(sampler) => sampler.draw(samples_per_epoch.max(1), rng),
        None => {
            let mut order: Vec<usize> = (0..len).collect();
            order.shuffle(rng);
            order
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Class 0: 900 images of source "big" and 100 of "small"; class 1: 50 of "big".
    fn skewed() -> (Vec<usize>, Vec<&'static str>) {
        let mut labels = vec![0; 1000];
        labels.extend([1; 50]);
        let mut sources = vec!["big"; 900];
        sources.extend(["small"; 100]);
        sources.extend(["big"; 50]);
        (labels, sources)
    }

    fn shares(draws: &[usize], of: impl Fn(usize) -> bool) -> f64 {
        draws.iter().filter(|&&i| of(i)).count() as f64 / draws.len() as f64
    }

    #[test]
    fn classes_are_balanced_and_sources_tempered() {
        let (labels, sources) = skewed();
        let draws = |power: f64| {
            BalancedSampler::new(&labels, &sources, Balance::ClassSource, power)
                .unwrap()
                .draw(40_000, &mut StdRng::seed_from_u64(5))
        };
        let equal = draws(0.0);
        assert!((shares(&equal, |i| labels[i] == 1) - 0.5).abs() < 0.02);
        assert!((shares(&equal, |i| (900..1000).contains(&i)) - 0.25).abs() < 0.02);
        // power 0.5: within class 0, "small" gets sqrt(100) / (sqrt(900) + sqrt(100)) = 1/4.
        let tempered = draws(0.5);
        assert!((shares(&tempered, |i| labels[i] == 1) - 0.5).abs() < 0.02);
        assert!((shares(&tempered, |i| (900..1000).contains(&i)) - 0.125).abs() < 0.015);
        // power 1: sources as they come within the class.
        let natural = draws(1.0);
        assert!((shares(&natural, |i| (900..1000).contains(&i)) - 0.05).abs() < 0.01);
    }

    #[test]
    fn draws_are_seeded() {
        let (labels, sources) = skewed();
        let sampler = BalancedSampler::new(&labels, &sources, Balance::ClassSource, 0.5).unwrap();
        let a = sampler.draw(100, &mut StdRng::seed_from_u64(1));
        assert_eq!(a, sampler.draw(100, &mut StdRng::seed_from_u64(1)));
        assert_ne!(a, sampler.draw(100, &mut StdRng::seed_from_u64(2)));
        assert!(a.iter().all(|&i| i < labels.len()));
    }

    #[test]
    fn without_a_sampler_an_epoch_is_a_permutation() {
        let mut order = epoch_order(10, None, 0, &mut StdRng::seed_from_u64(3));
        order.sort_unstable();
        assert_eq!(order, (0..10).collect::<Vec<_>>());
        assert!(BalancedSampler::new(&[0, 1], &["a"], Balance::ClassSource, 0.5).is_err());
    }

    #[test]
    fn groups_alike_keep_a_sources_classes_equal() {
        // Source "a": 800 of class 0 and 200 of class 1; source "b": 100 of class 0.
        let mut labels = vec![0; 800];
        labels.extend([1; 200]);
        labels.extend([0; 100]);
        let mut sources = vec!["a"; 1000];
        sources.extend(["b"; 100]);
        let draws = BalancedSampler::new(&labels, &sources, Balance::ClassSourceGroup, 0.0)
            .unwrap()
            .draw(30_000, &mut StdRng::seed_from_u64(9));
        for group in [0..800, 800..1000, 1000..1100] {
            assert!((shares(&draws, |i| group.contains(&i)) - 1.0 / 3.0).abs() < 0.02);
        }
        // class-source would give class 1 (one group) half of all draws.
        let by_class = BalancedSampler::new(&labels, &sources, Balance::ClassSource, 0.0)
            .unwrap()
            .draw(30_000, &mut StdRng::seed_from_u64(9));
        assert!((shares(&by_class, |i| labels[i] == 1) - 0.5).abs() < 0.02);
    }
}
