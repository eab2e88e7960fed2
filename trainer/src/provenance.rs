//! Where a radiograph came from: its source collection and the patient's age group. A model that
//! learns the source instead of the disease fails on every other hospital's images, so training
//! balances sources and evaluation reports them.
//!
//! Looked up in a `manifest.csv` beside the data folder (or in it) when there is one, with
//! columns `file` (relative to the manifest's folder), `source` and `age_group`; otherwise a
//! `SOURCE__name.jpg` file-name prefix gives the source; otherwise the data set's folder name
//! (`covid19-kaggle` for `covid19-kaggle/train`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub const MANIFEST_FILE: &str = "manifest.csv";
/// Separates the source from the rest of a file name: `kermany__0068decda122a10b.jpg`.
const SOURCE_PREFIX_SEPARATOR: &str = "__";

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Provenance {
    pub source: String,
    /// "adult" or "pediatric" where the manifest says; unknown otherwise.
    pub age_group: Option<String>,
    /// The acquisition batch within the source where the manifest's `origin` column tells it:
    /// the upstream folder above the class folder, e.g. Kermany's own `dataset/test` collection,
    /// whose films are framed and exposed unlike its `dataset/train`.
    pub batch: Option<String>,
}

impl Provenance {
    /// The source, or the source and its acquisition batch with `by_batch` where known: what the
    /// balanced sampler weighs alike.
    pub fn group(&self, by_batch: bool) -> String {
        match (&self.batch, by_batch) {
            (Some(batch), true) => format!("{}:{batch}", self.source),
            _ => self.source.clone(),
        }
    }
}

/// `repo:dataset/test` for `repo:dataset/test/NORMAL/IM-0001.jpeg`: the origin without its class
/// folder and file name.
fn origin_batch(origin: &str) -> Option<String> {
    let mut parts = origin.rsplitn(3, '/');
    let (_file, _class, batch) = (parts.next()?, parts.next()?, parts.next()?);
    (!batch.is_empty()).then(|| batch.to_string())
}

/// Rows of a data set's manifest, by file path relative to the manifest's folder.
#[derive(Debug, Default)]
pub struct Manifest {
    dir: PathBuf,
    rows: HashMap<String, Provenance>,
}

impl Manifest {
    /// Finds and reads the manifest of the data folder `root` (in it or in its parent); none is
    /// an empty manifest. A manifest that exists but cannot be parsed is an error.
    pub fn for_folder(root: &Path) -> Result<Self> {
        for dir in [Some(root), root.parent()].into_iter().flatten() {
            let path = dir.join(MANIFEST_FILE);
            if path.is_file() {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                return Self::parse(dir, &text).with_context(|| format!("{}", path.display()));
            }
        }
        Ok(Self::default())
    }

    /// Parses a comma-separated manifest with a header row naming `file`, `source` and
    /// optionally `age_group` and `origin`.
    pub fn parse(dir: &Path, text: &str) -> Result<Self> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<&str> = lines
            .next()
            .context("empty manifest")?
            .split(',')
            .map(str::trim)
            .collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        let (Some(file), Some(source)) = (column("file"), column("source")) else {
            bail!("the manifest's header has no `file` and `source` columns: {header:?}");
        };
        let (age_group, origin) = (column("age_group"), column("origin"));
        let mut rows = HashMap::new();
        for (number, line) in lines.enumerate() {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() != header.len() {
                bail!(
                    "row {} has {} fields, the header {}",
                    number + 2,
                    fields.len(),
                    header.len()
                );
            }
            let provenance = Provenance {
                source: fields[source].to_string(),
                age_group: age_group
                    .map(|c| fields[c].to_string())
                    .filter(|a| !a.is_empty()),
                batch: origin.and_then(|c| origin_batch(fields[c])),
            };
            rows.insert(fields[file].to_string(), provenance);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            rows,
        })
    }

    /// The provenance of `path` (a file of the data folder `root`).
    pub fn provenance(&self, root: &Path, path: &Path) -> Provenance {
        let listed = path.strip_prefix(&self.dir).ok().and_then(|relative| {
            self.rows
                .get(&relative.to_string_lossy().replace('\\', "/"))
        });
        match listed {
            Some(provenance) => provenance.clone(),
            None => Provenance {
                source: source_from_name(path).unwrap_or_else(|| dataset_name(root)),
                age_group: None,
                batch: None,
            },
        }
    }
}

/// `kermany` for `kermany__0068decda122a10b.jpg`.
fn source_from_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let (source, rest) = name.split_once(SOURCE_PREFIX_SEPARATOR)?;
    (!source.is_empty() && !rest.is_empty()).then(|| source.to_string())
}

/// The data set's name: the folder above a `train`/`val`/`test` split, else the folder itself.
pub fn dataset_name(root: &Path) -> String {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| p.display().to_string())
    };
    let own = name(root);
    match root.parent() {
        Some(parent)
            if ["train", "val", "validation", "test"].contains(&own.as_str())
                && parent.file_name().is_some() =>
        {
            name(parent)
        }
        _ => own,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_rows_win_then_file_prefix_then_dataset_name() {
        let manifest = Manifest::parse(
            Path::new("/data/cxr"),
            "file,split,label,source,age_group,origin\n\
             test/Normal/kermany__01.jpg,test,Normal,kermany,pediatric,u/r:dataset/test/NORMAL/a.jpeg\n\
             test/Normal/kermany__02.jpg,test,Normal,kermany,pediatric,a.jpeg\n",
        )
        .unwrap();
        let root = Path::new("/data/cxr/test");
        let listed = manifest.provenance(root, Path::new("/data/cxr/test/Normal/kermany__01.jpg"));
        assert_eq!(listed.source, "kermany");
        assert_eq!(listed.age_group.as_deref(), Some("pediatric"));
        assert_eq!(listed.batch.as_deref(), Some("u/r:dataset/test"));
        assert_eq!(listed.group(false), "kermany");
        assert_eq!(listed.group(true), "kermany:u/r:dataset/test");
        // An origin without a class folder above the file names no batch.
        let flat = manifest.provenance(root, Path::new("/data/cxr/test/Normal/kermany__02.jpg"));
        assert_eq!(flat.batch, None);
        assert_eq!(flat.group(true), "kermany");
        let prefixed =
            manifest.provenance(root, Path::new("/data/cxr/test/Normal/tb-other__9.jpg"));
        assert_eq!(prefixed.source, "tb-other");
        assert_eq!(prefixed.age_group, None);
        let kaggle = Path::new("/data/covid19-kaggle/train");
        let plain = Manifest::default().provenance(kaggle, &kaggle.join("Normal/0101.jpeg"));
        assert_eq!(plain.source, "covid19-kaggle");
        assert_eq!(dataset_name(Path::new("/data/ood")), "ood");
    }

    #[test]
    fn malformed_manifests_are_refused() {
        assert!(Manifest::parse(Path::new("."), "name,label\na,b\n").is_err());
        assert!(Manifest::parse(Path::new("."), "file,source\na.jpg\n").is_err());
        assert!(Manifest::parse(Path::new("."), "").is_err());
    }
}
