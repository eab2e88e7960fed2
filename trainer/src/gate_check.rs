//! `trainer check-gate`: how much of each kind of image unlike the training data (inverted or
//! rotated radiographs, photographs, synthetic images...) the out-of-distribution gate flags,
//! optionally recorded in the model card.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use pneumoscope::checkpoint::write_atomic;
use pneumoscope::ood::GateRejection;
use pneumoscope::{Classifier, ModelCard};

use crate::parallel::map_per_image;
use crate::predict::{classify_file, load_classifier};

/// The optional file in a check-gate folder that describes its kinds.
const KIND_DESCRIPTIONS: &str = "kinds.json";

#[derive(Debug, Args)]
pub struct CheckGateArgs {
    #[arg(long)]
    pub weights: PathBuf,
    /// Model card; its gate is the one checked, and --record writes the rates into it.
    #[arg(long)]
    pub card: PathBuf,
    /// One sub-folder per kind of unlike image, e.g. from scripts/make_ood_set.py; an optional
    /// `kinds.json` beside them maps folder names to descriptions, which the card keeps.
    #[arg(long)]
    pub data: PathBuf,
    /// Write the rates into the card's gate record (replacing earlier ones).
    #[arg(long)]
    pub record: bool,
}

/// The entries of `dir` that `keep` accepts (files, or folders), sorted.
fn sorted_entries(dir: &Path, keep: fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if keep(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// `DIR/kinds.json` (folder name -> description), or no descriptions when there is none.
fn kind_descriptions(dir: &Path) -> Result<BTreeMap<String, String>> {
    let path = dir.join(KIND_DESCRIPTIONS);
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected a JSON object of folder name -> description",
            path.display()
        )
    })
}

/// The gate's verdicts on one folder; unreadable files are reported and left out.
fn check_kind(
    classifier: &Classifier,
    kind: String,
    description: Option<String>,
    dir: &Path,
) -> Result<GateRejection> {
    let (mut flagged, mut total) = (0, 0);
    let files = sorted_entries(dir, Path::is_file)?;
    let predictions = map_per_image(&files, classifier.device(), |file| {
        classify_file(classifier, file, 1.0)
    });
    for (file, prediction) in files.iter().zip(predictions) {
        match prediction {
            Ok(prediction) => {
                total += 1;
                flagged += usize::from(prediction.in_distribution == Some(false));
            }
            Err(error) => eprintln!("warning: {}: {error}", file.display()),
        }
    }
    Ok(GateRejection {
        kind,
        description,
        flagged,
        total,
    })
}

pub fn run(args: &CheckGateArgs, device: &Device) -> Result<Vec<GateRejection>> {
    let classifier = load_classifier(&args.weights, Some(&args.card), device)?;
    if !classifier.has_gate() {
        bail!(
            "{} has no out-of-distribution gate (run `trainer calibrate` first)",
            args.weights.display()
        );
    }
    let kinds = sorted_entries(&args.data, Path::is_dir)?;
    if kinds.is_empty() {
        bail!(
            "{} has no sub-folders (one per kind of image)",
            args.data.display()
        );
    }
    let descriptions = kind_descriptions(&args.data)?;
    let folder_names: Vec<String> = kinds
        .iter()
        .map(|dir| {
            dir.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    if let Some(unknown) = descriptions.keys().find(|k| !folder_names.contains(k)) {
        bail!(
            "{KIND_DESCRIPTIONS} describes `{unknown}`, which is not a sub-folder of {}",
            args.data.display()
        );
    }
    let mut rejection = Vec::new();
    println!(
        "{:<24} {:>8} {:>6} {:>8}",
        "kind", "flagged", "total", "rate"
    );
    for (dir, kind) in kinds.iter().zip(folder_names) {
        let description = descriptions.get(&kind).cloned();
        let result = check_kind(&classifier, kind, description, dir)?;
        println!(
            "{:<24} {:>8} {:>6} {:>7.1}%",
            result.kind,
            result.flagged,
            result.total,
            result.rate() * 100.0
        );
        rejection.push(result);
    }
    if args.record {
        let mut card = ModelCard::from_json(&std::fs::read_to_string(&args.card)?)?;
        let Some(gate) = card.ood_gate.as_mut() else {
            bail!("{} records no gate", args.card.display());
        };
        gate.rejection = rejection.clone();
        write_atomic(&args.card, card.to_json().as_bytes())?;
    }
    Ok(rejection)
}
