//! `trainer predict`: class probabilities for image files, the reference the browser tests
//! compare against.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use pneumoscope::cam::HeatMap;
use pneumoscope::checkpoint::write_atomic;
use pneumoscope::decode::{decode, Decoded};
use pneumoscope::dicom::DicomInfo;
use pneumoscope::report::{finding_lines, overlay, report_pdf, Findings, ReportEntry};
use pneumoscope::stage_times::Stopwatch;
use pneumoscope::{Checkpoint, Classifier, ModelCard, Prediction};
use serde::Serialize;

use crate::framing::reframe;
use crate::parallel::map_per_image;

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Weights (safetensors, torchvision names).
    #[arg(long)]
    pub weights: PathBuf,
    /// Model card (JSON); gives class names and the preprocessing, and its SHA-256 is checked.
    #[arg(long)]
    pub card: Option<PathBuf>,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write a PDF report per image into this folder (and `batch.pdf` with all of them):
    /// the picture with its heat map, probabilities, verdicts, model and weights hash, date.
    /// Needs --card.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Image files (PNG, JPEG or DICOM).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// How a loaded model computes (`trainer predict` and `trainer evaluate`).
#[derive(Debug, Default, Args)]
pub struct ComputeArgs {
    /// Compute every convolution after the stem with int8 products (7-bit activations, int8
    /// weights, exact i32 sums) even when the weights file stores float kernels (an int8 file,
    /// the shipped model's, always computes so, here and in the page).
    #[arg(long)]
    pub int8_products: bool,
}

impl ComputeArgs {
    /// `load_classifier`, then the compute asked for.
    pub fn load(&self, weights: &Path, card: Option<&Path>, device: &Device) -> Result<Classifier> {
        let mut classifier = load_classifier(weights, card, device)?;
        if self.int8_products {
            classifier.use_int8_products()?;
        }
        Ok(classifier)
    }
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum ImageResult {
    Classified {
        file: String,
        probabilities: BTreeMap<String, f32>,
        top: String,
        top_probability: f32,
        /// false: the gate says this is not the kind of image the model was trained on.
        #[serde(skip_serializing_if = "Option::is_none")]
        in_distribution: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ood_score: Option<f32>,
        /// Per class, whether its probability reaches the card's operating point.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        positive: BTreeMap<String, bool>,
        /// The top class's activation map, scaled to [0, 1], row-major `map_height` x
        /// `map_width` (what the page's heat map draws).
        top_map: Vec<f32>,
        map_width: usize,
        map_height: usize,
        /// The top class's fine map (LayerCAM on layer2), scaled to [0, 1], row-major
        /// `fine_map_height` x `fine_map_width`: what the page draws once it has computed it.
        top_fine_map: Vec<f32>,
        fine_map_width: usize,
        fine_map_height: usize,
        /// How a DICOM file was read (no patient data).
        #[serde(skip_serializing_if = "Option::is_none")]
        dicom: Option<Box<DicomInfo>>,
    },
    Failed {
        file: String,
        error: String,
    },
}

/// The heat map's opacity in reports: the page's default.
const REPORT_OPACITY: f32 = 0.6;

/// Reads a model card.
pub fn load_card(path: &Path) -> Result<ModelCard> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading model card {}", path.display()))?;
    Ok(ModelCard::from_json(&text)?)
}

/// Loads weights (and the card, checking the weights' SHA-256 against it) into a classifier.
pub fn load_classifier(weights: &Path, card: Option<&Path>, device: &Device) -> Result<Classifier> {
    let (checkpoint, card) = load_checkpoint(weights, card, device)?;
    Ok(Classifier::new(checkpoint, card.as_ref(), device)?)
}

/// Writes a new model into `out` (created when missing): `weights` as the card's weights file,
/// the card as `model.json`; then loads the pair back, so a written model is known to load.
/// Returns the weights' path.
pub fn write_model(out: &Path, weights: &[u8], card: &ModelCard) -> Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let weights_path = out.join(&card.weights.file);
    let card_path = out.join("model.json");
    write_atomic(&weights_path, weights)?;
    write_atomic(&card_path, card.to_json().as_bytes())?;
    load_classifier(&weights_path, Some(&card_path), &Device::Cpu)?;
    Ok(weights_path)
}

/// Reads weights, and their card when given, checking the weights' SHA-256 against it.
pub fn load_checkpoint(
    weights: &Path,
    card: Option<&Path>,
    device: &Device,
) -> Result<(Checkpoint, Option<ModelCard>)> {
    let bytes =
        std::fs::read(weights).with_context(|| format!("reading weights {}", weights.display()))?;
    let card = match card {
        Some(path) => {
            let card = load_card(path)?;
            card.verify_weights(&bytes)
                .with_context(|| format!("{} against {}", weights.display(), path.display()))?;
            Some(card)
        }
        None => None,
    };
    let checkpoint = Checkpoint::from_bytes(&bytes, device)
        .with_context(|| format!("loading {}", weights.display()))?;
    Ok((checkpoint, card))
}

/// Reads and classifies one file, reframed at `zoom` (1: as it is, see `framing::reframe`); a
/// read or decode failure is the error's message.
pub fn classify_file(
    classifier: &Classifier,
    path: &Path,
    zoom: f32,
) -> Result<Prediction, String> {
    let decoded = read_decoded(path)?;
    let image = if zoom == 1.0 {
        decoded.image
    } else {
        reframe(&decoded.image, zoom)
    };
    classifier.classify_image(&image).map_err(|e| e.to_string())
}

fn read_decoded(path: &Path) -> Result<Decoded, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    decode(&bytes).map_err(|e| e.to_string())
}

/// The report page of one classified image: its picture with the top class's fine heat map.
fn report_entry(
    classifier: &Classifier,
    card: &ModelCard,
    path: &Path,
    classified: &Classified,
) -> ReportEntry {
    let Classified {
        prediction,
        decoded,
        fine_map,
    } = classified;
    let image = &decoded.image;
    let picture = image::DynamicImage::ImageRgb32F(image.clone()).to_rgb8();
    let crop = classifier
        .preprocessing()
        .crop_region(image.width(), image.height());
    let findings = Findings {
        probabilities: &prediction.probabilities,
        top: prediction.top,
        in_distribution: prediction.in_distribution,
        positive: &prediction.positive,
        heatmap: Ok(fine_map),
    };
    ReportEntry {
        file_name: file_name(path),
        picture: overlay(&picture, fine_map, crop, REPORT_OPACITY),
        lines: finding_lines(card, &findings),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Writes one PDF per entry (named after its file, numbered) and `batch.pdf` with all.
fn write_reports(dir: &Path, card: &ModelCard, entries: &[ReportEntry]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    for (i, entry) in entries.iter().enumerate() {
        let stem = Path::new(&entry.file_name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = dir.join(format!("{:03}-{stem}.pdf", i + 1));
        let pdf = report_pdf(card, &date, std::slice::from_ref(entry))?;
        write_atomic(&path, &pdf).with_context(|| format!("writing {}", path.display()))?;
    }
    write_atomic(&dir.join("batch.pdf"), &report_pdf(card, &date, entries)?)?;
    println!(
        "reports: {} PDF(s) and batch.pdf in {}",
        entries.len(),
        dir.display()
    );
    Ok(())
}

/// What `predict` holds of one classified file.
struct Classified {
    prediction: Prediction,
    decoded: Decoded,
    /// The top class's fine heat map.
    fine_map: HeatMap,
}

fn read_and_classify(classifier: &Classifier, path: &Path) -> Result<Classified, String> {
    let decoded = read_decoded(path)?;
    let input = classifier
        .input_tensor(&decoded.image)
        .map_err(|e| e.to_string())?;
    let (prediction, layer2) = classifier
        .classify_input_timed(&input, &mut Stopwatch::off())
        .map_err(|e| e.to_string())?;
    let fine_map = classifier
        .fine_map(&layer2, prediction.top)
        .map_err(|e| e.to_string())?;
    Ok(Classified {
        prediction,
        decoded,
        fine_map,
    })
}

/// One file's result, and its report page when `report_card` is given.
fn classify(
    classifier: &Classifier,
    path: &Path,
    report_card: Option<&ModelCard>,
) -> (ImageResult, Option<ReportEntry>) {
    let file = path.display().to_string();
    match read_and_classify(classifier, path) {
        Ok(classified) => {
            let entry = report_card.map(|card| report_entry(classifier, card, path, &classified));
            let Classified {
                prediction,
                decoded,
                fine_map,
            } = classified;
            let classes = classifier.classes();
            let result = ImageResult::Classified {
                file,
                probabilities: classes
                    .iter()
                    .cloned()
                    .zip(prediction.probabilities.iter().copied())
                    .collect(),
                top: classes[prediction.top].clone(),
                top_probability: prediction.probabilities[prediction.top],
                in_distribution: prediction.in_distribution,
                ood_score: prediction.ood_score,
                positive: classes
                    .iter()
                    .zip(&prediction.positive)
                    .filter_map(|(class, positive)| Some((class.clone(), (*positive)?)))
                    .collect(),
                top_map: prediction.cams.normalized(prediction.top),
                map_width: prediction.cams.width,
                map_height: prediction.cams.height,
                top_fine_map: fine_map.values,
                fine_map_width: fine_map.width,
                fine_map_height: fine_map.height,
                dicom: decoded.dicom.map(Box::new),
            };
            (result, entry)
        }
        Err(error) => (ImageResult::Failed { file, error }, None),
    }
}

/// Returns whether every image was classified.
pub fn run(args: &PredictArgs, device: &Device) -> Result<bool> {
    let classifier = args
        .compute
        .load(&args.weights, args.card.as_deref(), device)?;
    let report_card = match (&args.report, &args.card) {
        (Some(_), Some(card)) => Some(load_card(card)?),
        (Some(_), None) => {
            bail!("--report needs --card (the report names the model and its weights)")
        }
        (None, _) => None,
    };
    let (results, entries): (Vec<ImageResult>, Vec<Option<ReportEntry>>) =
        map_per_image(&args.images, device, |p| {
            classify(&classifier, p, report_card.as_ref())
        })
        .into_iter()
        .unzip();
    if let (Some(dir), Some(card)) = (&args.report, &report_card) {
        let entries: Vec<ReportEntry> = entries.into_iter().flatten().collect();
        write_reports(dir, card, &entries)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for result in &results {
            match result {
                ImageResult::Classified {
                    file,
                    probabilities,
                    top,
                    in_distribution,
                    positive,
                    dicom,
                    ..
                } => {
                    println!("{file}");
                    if let Some(info) = dicom {
                        println!("  {}", info.summary());
                    }
                    if *in_distribution == Some(false) {
                        println!(
                            "  WARNING: this does not look like a chest X-ray of the kind the model was trained on; do not read the probabilities below as a finding"
                        );
                    }
                    for (class, point) in classifier
                        .classes()
                        .iter()
                        .zip(classifier.operating_points())
                    {
                        let marker = if class == top { "  <- top" } else { "      " };
                        let verdict = match (point, positive.get(class)) {
                            (Some(point), Some(&called)) => format!("  {}", point.verdict(called)),
                            _ => String::new(),
                        };
                        println!("  {class:<20} {:.4}{marker}{verdict}", probabilities[class]);
                    }
                }
                ImageResult::Failed { file, error } => println!("{file}\n  error: {error}"),
            }
        }
    }
    Ok(results
        .iter()
        .all(|r| matches!(r, ImageResult::Classified { .. })))
}
