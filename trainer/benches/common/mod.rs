//! What the benchmarks that read the shipped model and the shared data have in common.

use std::path::{Path, PathBuf};

use pneumoscope::ModelCard;

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The first `count` files (sorted by name) of each class folder of `set` under
/// `../shared/data`, class by class.
pub fn first_files(set: &str, classes: &[&str], count: usize) -> Vec<PathBuf> {
    let folder = root().join("../shared/data").join(set);
    let mut chosen = Vec::new();
    for class in classes {
        let mut files: Vec<PathBuf> = std::fs::read_dir(folder.join(class))
            .unwrap_or_else(|e| panic!("{}: {e}", folder.join(class).display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        chosen.extend(files.into_iter().take(count));
    }
    chosen
}

/// The shipped model's card (`weights/model.json`).
pub fn shipped_card() -> ModelCard {
    let path = root().join("weights/model.json");
    let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ModelCard::from_json(&json).unwrap()
}
