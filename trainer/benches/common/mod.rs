//! What the benchmarks that read the shipped model and the shared data have in common.

use std::path::{Path, PathBuf};

use pneumoscope::ModelCard;
use trainer::data::{ImageFolder, Sample};

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The first `count` files (sorted by name, as `ImageFolder` lists them) of each of `classes`
/// in the ImageFolder `set` under `../shared/data`, class by class.
pub fn first_files(set: &str, classes: &[&str], count: usize) -> Vec<Sample> {
    let only: Vec<String> = classes.iter().map(|c| c.to_string()).collect();
    let folder = root().join("../shared/data").join(set);
    let folder = ImageFolder::scan_classes(&folder, Some(&only))
        .unwrap_or_else(|e| panic!("{}: {e:#}", folder.display()));
    (0..folder.classes.len())
        .flat_map(|label| {
            let samples = folder.samples.iter().filter(move |s| s.label == label);
            samples.take(count).cloned()
        })
        .collect()
}

/// The shipped model's card (`weights/model.json`).
pub fn shipped_card() -> ModelCard {
    let path = root().join("weights/model.json");
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ModelCard::from_json(&json).unwrap()
}
