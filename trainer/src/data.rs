//! ImageFolder data: scanning, hashing, decoding into an in-memory cache, and the stratified
//! train/validation split.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use pneumoscope::card::{sha256_hex, DatasetRecord};
use pneumoscope::decode::decode_rgb;
use pneumoscope::Preprocessing;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use rayon::prelude::*;

use crate::provenance::{Manifest, Provenance};

/// One labelled file of an ImageFolder tree.
#[derive(Debug, Clone)]
pub struct Sample {
    pub path: PathBuf,
    /// "class/file.png", the name used in exclude lists and reports.
    pub relative: String,
    pub label: usize,
    pub provenance: Provenance,
}

/// An ImageFolder tree: one sub-folder per class, class names from the sorted folder names; or
/// several such trees with the same classes, read as one.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    pub roots: Vec<PathBuf>,
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
    /// Class folders that `scan_classes` was told to leave out.
    pub left_out_classes: Vec<String>,
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read data folder {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.retain(|p| {
        !p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
    });
    entries.sort();
    Ok(entries)
}

/// The names of `root`'s sub-folders, sorted.
fn class_folder_names(root: &Path) -> Result<Vec<String>> {
    Ok(sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect())
}

impl ImageFolder {
    /// Scans `root`. Fewer than two classes, or a class folder without files, is an error.
    pub fn scan(root: &Path) -> Result<Self> {
        Self::scan_classes(root, None)
    }

    /// Scans `root`, keeping only the class folders named in `only` (when given; each must
    /// exist), so a three-class model can read a five-class corpus.
    pub fn scan_classes(root: &Path, only: Option<&[String]>) -> Result<Self> {
        let mut classes = class_folder_names(root)?;
        let mut left_out_classes = Vec::new();
        if let Some(only) = only {
            if let Some(missing) = only.iter().find(|c| !classes.contains(c)) {
                bail!(
                    "{} has no class folder `{missing}` (it has {classes:?})",
                    root.display()
                );
            }
            (classes, left_out_classes) = classes.into_iter().partition(|c| only.contains(c));
        }
        if classes.len() < 2 {
            bail!(
                "{} has {} class folder(s); an ImageFolder needs one folder per class and at least two classes",
                root.display(),
                classes.len()
            );
        }
        let manifest = Manifest::for_folder(root)?;
        let mut samples = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let dir = root.join(class);
            let files: Vec<PathBuf> = sorted_entries(&dir)?
                .into_iter()
                .filter(|p| p.is_file())
                .collect();
            if files.is_empty() {
                bail!("class folder {} is empty", dir.display());
            }
            for path in files {
                let relative = format!("{class}/{}", path.file_name().unwrap().to_string_lossy());
                let provenance = manifest.provenance(root, &path);
                samples.push(Sample {
                    path,
                    relative,
                    label,
                    provenance,
                });
            }
        }
        Ok(Self {
            roots: vec![root.to_path_buf()],
            classes,
            samples,
            left_out_classes,
        })
    }

    /// Scans every root (keeping the classes in `only`, when given) and reads them as one
    /// folder. Without `only` all must have the same classes. With it, a root may hold only some
    /// of them (a three-class collection beside a five-class corpus), as long as together the
    /// roots hold every one; labels follow the sorted class names, as for one root.
    pub fn scan_all(roots: &[PathBuf], only: Option<&[String]>) -> Result<Self> {
        let Some((first, rest)) = roots.split_first() else {
            bail!("no data folder given");
        };
        if let (Some(only), false) = (only, rest.is_empty()) {
            return Self::scan_union(roots, only);
        }
        let mut merged = Self::scan_classes(first, only)?;
        for root in rest {
            let next = Self::scan_classes(root, only)?;
            next.expect_classes(&merged.classes)?;
            merged.roots.extend(next.roots);
            merged.samples.extend(next.samples);
        }
        Ok(merged)
    }

    fn scan_union(roots: &[PathBuf], only: &[String]) -> Result<Self> {
        let mut classes = only.to_vec();
        classes.sort();
        classes.dedup();
        let mut merged = Self {
            roots: Vec::new(),
            classes,
            samples: Vec::new(),
            left_out_classes: Vec::new(),
        };
        for root in roots {
            let held: Vec<String> = class_folder_names(root)?
                .into_iter()
                .filter(|c| merged.classes.contains(c))
                .collect();
            let part = Self::scan_classes(root, Some(&held))?;
            for mut sample in part.samples {
                let class = &part.classes[sample.label];
                sample.label = merged.classes.iter().position(|c| c == class).unwrap();
                merged.samples.push(sample);
            }
            merged.roots.extend(part.roots);
            for class in part.left_out_classes {
                if !merged.left_out_classes.contains(&class) {
                    merged.left_out_classes.push(class);
                }
            }
        }
        let held = |class: usize| merged.samples.iter().any(|s| s.label == class);
        if let Some(missing) = (0..merged.classes.len()).find(|&c| !held(c)) {
            bail!(
                "no class folder `{}` in {}",
                merged.classes[missing],
                merged.describe()
            );
        }
        Ok(merged)
    }

    /// The folder paths, joined by " + ".
    pub fn describe(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// Checks that this folder has exactly the model's classes, in the same order.
    pub fn expect_classes(&self, expected: &[String]) -> Result<()> {
        if self.classes != expected {
            bail!(
                "{} has classes {:?}, the model has {:?}",
                self.describe(),
                self.classes,
                expected
            );
        }
        Ok(())
    }

    /// Leaves out the samples named in `exclude` ("class/file" per line, `#` comments allowed);
    /// returns the names that were removed. A name that matches nothing is an error, so a typo
    /// cannot silently change what a number means.
    pub fn exclude(&mut self, exclude: &str) -> Result<Vec<String>> {
        let names: HashSet<&str> = exclude
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .collect();
        let present: HashSet<&str> = self.samples.iter().map(|s| s.relative.as_str()).collect();
        let mut unknown: Vec<&&str> = names.iter().filter(|n| !present.contains(**n)).collect();
        if !unknown.is_empty() {
            unknown.sort();
            bail!(
                "exclude list names files not in {}: {unknown:?}",
                self.describe()
            );
        }
        let mut removed: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        removed.sort();
        self.samples
            .retain(|s| !names.contains(s.relative.as_str()));
        Ok(removed)
    }
}

/// Decoded, resized and cropped images in [0, 1], channel-major (3, crop, crop), held in memory
/// so an epoch never decodes a file again.
pub struct CachedImages {
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
    pub pixels: Vec<Vec<f32>>,
    pub record: DatasetRecord,
}

/// Decodes every sample in parallel. Files that fail are skipped with a warning naming them, and
/// recorded; a class left with no image is an error.
pub fn load(folder: &ImageFolder, preprocessing: &Preprocessing) -> Result<CachedImages> {
    let decoded: Vec<(String, std::result::Result<Vec<f32>, String>)> = folder
        .samples
        .par_iter()
        .map(|sample| {
            let outcome = std::fs::read(&sample.path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    let hash = sha256_hex(&bytes);
                    decode_rgb(&bytes)
                        .map(|image| (hash, preprocessing.resized_crop(&image)))
                        .map_err(|e| e.to_string())
                });
            match outcome {
                Ok((hash, pixels)) => (hash, Ok(pixels)),
                Err(e) => (String::new(), Err(e)),
            }
        })
        .collect();

    let mut samples = Vec::new();
    let mut pixels = Vec::new();
    let mut skipped = Vec::new();
    let mut manifest = String::new();
    for (sample, (hash, outcome)) in folder.samples.iter().zip(decoded) {
        match outcome {
            Ok(p) => {
                manifest += &format!("{}\t{hash}\n", sample.relative);
                samples.push(sample.clone());
                pixels.push(p);
            }
            Err(error) => {
                eprintln!("warning: skipping {}: {error}", sample.path.display());
                skipped.push((sample.relative.clone(), error));
            }
        }
    }
    let per_class: Vec<(String, usize)> = folder
        .classes
        .iter()
        .enumerate()
        .map(|(label, class)| {
            let count = samples.iter().filter(|s| s.label == label).count();
            (class.clone(), count)
        })
        .collect();
    if let Some((class, _)) = per_class.iter().find(|(_, n)| *n == 0) {
        bail!(
            "class `{class}` has no readable image in {}",
            folder.describe()
        );
    }
    let record = DatasetRecord {
        root: folder.describe(),
        files: samples.len(),
        content_sha256: sha256_hex(manifest.as_bytes()),
        per_class,
        train_per_class: Vec::new(),
        validation_per_class: Vec::new(),
        train_per_source: Vec::new(),
        skipped,
    };
    Ok(CachedImages {
        classes: folder.classes.clone(),
        samples,
        pixels,
        record,
    })
}

/// Normalises cached (3, side, side) images and stacks them into a (N, 3, side, side) batch.
pub fn normalized_batch(
    images: Vec<Vec<f32>>,
    side: usize,
    preprocessing: &Preprocessing,
    device: &candle_core::Device,
) -> Result<candle_core::Tensor> {
    let n = images.len();
    let mut data = Vec::with_capacity(n * 3 * side * side);
    for mut chw in images {
        preprocessing.normalize(&mut chw);
        data.extend_from_slice(&chw);
    }
    Ok(candle_core::Tensor::from_vec(
        data,
        (n, 3, side, side),
        device,
    )?)
}

/// A stratified split: within each class, shuffle with `seed` and hold out
/// `round(fraction * n)` images (at least one when the class has two or more) for validation.
/// Returns (train, validation) sample indices, each sorted.
pub fn stratified_split(
    labels: &[usize],
    num_classes: usize,
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for class in 0..num_classes {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        members.shuffle(&mut rng);
        let mut held_out = (fraction * members.len() as f64).round() as usize;
        if held_out == 0 && members.len() >= 2 && fraction > 0.0 {
            held_out = 1;
        }
        validation.extend_from_slice(&members[..held_out]);
        train.extend_from_slice(&members[held_out..]);
    }
    train.sort_unstable();
    validation.sort_unstable();
    (train, validation)
}

/// Images per source (and acquisition batch, with `by_batch`: `Provenance::group`) among
/// `indices`, sorted by name.
pub fn source_counts(
    samples: &[Sample],
    indices: &[usize],
    by_batch: bool,
) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for &i in indices {
        *counts
            .entry(samples[i].provenance.group(by_batch))
            .or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

/// Images per class among `indices`.
pub fn class_counts(labels: &[usize], indices: &[usize], num_classes: usize) -> Vec<usize> {
    let mut counts = vec![0; num_classes];
    for &i in indices {
        counts[labels[i]] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stratified_and_reproducible() {
        let labels: Vec<usize> = (0..100)
            .map(|i| usize::from(i >= 60) + usize::from(i >= 90))
            .collect();
        let (train, val) = stratified_split(&labels, 3, 0.15, 7);
        assert_eq!(class_counts(&labels, &val, 3), vec![9, 5, 2]); // round(0.15 * [60, 30, 10])
        assert_eq!(class_counts(&labels, &train, 3), vec![51, 25, 8]);
        let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>(), "a partition");
        assert_eq!(
            stratified_split(&labels, 3, 0.15, 7),
            (train.clone(), val.clone())
        );
        assert_ne!(stratified_split(&labels, 3, 0.15, 8).1, val);
    }

    #[test]
    fn exclude_removes_listed_files_and_refuses_unknown_names() {
        let mut folder = ImageFolder {
            roots: vec![PathBuf::from("/data")],
            classes: vec!["a".into(), "b".into()],
            left_out_classes: Vec::new(),
            samples: ["a/1.png", "a/2.png", "b/3.png"]
                .iter()
                .map(|r| Sample {
                    path: PathBuf::from(r),
                    relative: r.to_string(),
                    label: usize::from(r.starts_with('b')),
                    provenance: Provenance::default(),
                })
                .collect(),
        };
        let removed = folder
            .exclude("# leaks\na/2.png\n\nb/3.png  # dup\n")
            .unwrap();
        assert_eq!(removed, vec!["a/2.png", "b/3.png"]);
        assert_eq!(folder.samples.len(), 1);
        assert!(folder
            .exclude("a/9.png")
            .unwrap_err()
            .to_string()
            .contains("a/9.png"));
    }

    fn class_tree(root: &Path, classes: &[&str]) {
        for class in classes {
            std::fs::create_dir_all(root.join(class)).unwrap();
            std::fs::write(root.join(class).join(format!("{class}.png")), b"x").unwrap();
        }
    }

    #[test]
    fn roots_may_hold_part_of_the_classes_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let (corpus, kaggle) = (dir.path().join("corpus"), dir.path().join("kaggle"));
        class_tree(&corpus, &["a", "b", "c", "d"]);
        class_tree(&kaggle, &["b", "d"]);
        let only: Vec<String> = ["d", "a", "b"].iter().map(|c| c.to_string()).collect();
        let folder = ImageFolder::scan_all(&[kaggle.clone(), corpus.clone()], Some(&only)).unwrap();
        assert_eq!(folder.classes, ["a", "b", "d"]);
        assert_eq!(folder.left_out_classes, ["c"]);
        let labelled: Vec<(String, &str)> = folder
            .samples
            .iter()
            .map(|s| (s.relative.clone(), folder.classes[s.label].as_str()))
            .collect();
        let expected = [("b/b.png", "b"), ("d/d.png", "d"), ("a/a.png", "a")];
        for (relative, class) in expected {
            assert!(
                labelled.contains(&(relative.to_string(), class)),
                "{labelled:?}"
            );
        }
        assert_eq!(folder.samples.len(), 5);

        let only_kaggle = ImageFolder::scan_all(&[kaggle.clone(), kaggle.clone()], Some(&only));
        let error = only_kaggle.unwrap_err().to_string();
        assert!(error.contains("no class folder `a`"), "{error}");
        let unlike = ImageFolder::scan_all(&[corpus, kaggle], None).unwrap_err();
        assert!(unlike.to_string().contains("has classes"), "{unlike}");
    }
}
