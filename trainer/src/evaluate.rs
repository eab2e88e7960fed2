//! `trainer evaluate`: the classification report (scikit-learn's layout), the confusion matrix and
//! its plot, optionally recorded in the model card.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use pneumoscope::calibration::{reliability_bins, softmax_with_temperature, CalibrationReport};
use pneumoscope::card::{Evaluation, GroupEvaluation, ModelCard, OperatingPointResult};
use pneumoscope::checkpoint::write_atomic;
use pneumoscope::metrics::{confusion_matrix, ClassificationReport};
use pneumoscope::operating_point::OneVsRest;
use pneumoscope::Classifier;

use crate::data::{ImageFolder, Sample};
use crate::parallel::map_per_image;
use crate::plots;
use crate::predict::{classify_file, ComputeArgs};

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    #[arg(long)]
    pub weights: PathBuf,
    /// Model card: class names and preprocessing; --record writes the result into it.
    #[arg(long)]
    pub card: Option<PathBuf>,
    /// ImageFolder with the model's classes; class folders the model does not have (e.g. the
    /// corpus's Tuberculosis) are left out, and said so.
    #[arg(long)]
    pub data: PathBuf,
    /// File listing "class/file" names to leave out (e.g. test-leaks.txt).
    #[arg(long)]
    pub exclude: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Folder for report.txt and confusion.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Record the evaluation in the card under this name (replacing one of the same name).
    #[arg(long, requires = "card")]
    pub record: Option<String>,
    /// Classify every radiograph reframed: shown at this size in the same frame (0.8: shrunk
    /// into a black margin, as a wider field; 1.25: its centre enlarged, as a tighter
    /// collimation). Measures how much the answers depend on framing; 1 leaves images as they are.
    /// With --record, the card keeps it as a framing check beside the results on the images as
    /// they are.
    #[arg(long, default_value_t = 1.0, value_parser = parse_zoom)]
    pub zoom: f32,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// What classifying a labelled folder gave.
pub struct FolderEvaluation {
    pub report: ClassificationReport,
    /// Raw logits and true labels of the classified images.
    pub logits: Vec<Vec<f32>>,
    pub labels: Vec<usize>,
    /// (file, error) for files that could not be classified; they are left out of the report.
    pub failed: Vec<(String, String)>,
    pub calibration: Option<CalibrationReport>,
    pub gate_flagged_rate: Option<f64>,
    /// Per source and per age group, where known.
    pub groups: Vec<GroupEvaluation>,
}

/// One report per value of `key` among the classified samples (values seen in sorted order;
/// samples without a value are left out).
fn reports_by(
    by: &str,
    key: impl Fn(&Sample) -> Option<&str>,
    classified: &[(&Sample, usize)],
    labels: &[String],
) -> Vec<GroupEvaluation> {
    let mut names: Vec<&str> = classified.iter().filter_map(|(s, _)| key(s)).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let pairs: Vec<(usize, usize)> = classified
                .iter()
                .filter(|(s, _)| key(s) == Some(name))
                .map(|(s, predicted)| (s.label, *predicted))
                .collect();
            GroupEvaluation {
                by: by.into(),
                name: name.into(),
                report: ClassificationReport::of_present_classes(&pairs, labels),
            }
        })
        .collect()
}

/// Reports per source collection and per age group of `(sample, predicted class)`.
pub fn group_reports(classified: &[(&Sample, usize)], labels: &[String]) -> Vec<GroupEvaluation> {
    let mut groups = reports_by(
        "source",
        |s| Some(s.provenance.source.as_str()),
        classified,
        labels,
    );
    groups.extend(reports_by(
        "age group",
        |s| s.provenance.age_group.as_deref(),
        classified,
        labels,
    ));
    groups
}

/// One line per group: images, accuracy and each class's recall (with its support).
pub fn groups_text(groups: &[GroupEvaluation]) -> String {
    let mut text = String::new();
    for group in groups {
        text += &format!(
            "{:>9} {:<22} {:>5} images  accuracy {:.3}  recall {}\n",
            group.by,
            group.name,
            group.report.weighted_avg.support,
            group.report.accuracy,
            group.report.recalls_text()
        );
    }
    text
}

fn parse_zoom(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(zoom) if (0.25..=4.0).contains(&zoom) => Ok(zoom),
        _ => Err(format!("{text:?}: a zoom between 0.25 and 4")),
    }
}

/// Classifies every sample of `folder` (each reframed at `zoom`, see `framing::reframe`);
/// unreadable files are reported and left out.
pub fn evaluate_folder(
    classifier: &Classifier,
    folder: &ImageFolder,
    zoom: f32,
) -> FolderEvaluation {
    let mut pairs = Vec::new();
    let mut classified = Vec::new();
    let mut logits = Vec::new();
    let mut flagged = 0usize;
    let mut failed = Vec::new();
    let predictions = map_per_image(&folder.samples, classifier.device(), |sample| {
        classify_file(classifier, &sample.path, zoom)
    });
    for (sample, prediction) in folder.samples.iter().zip(predictions) {
        match prediction {
            Ok(prediction) => {
                pairs.push((sample.label, prediction.top));
                classified.push((sample, prediction.top));
                flagged += usize::from(prediction.in_distribution == Some(false));
                logits.push(prediction.logits);
            }
            Err(error) => {
                eprintln!("warning: {}: {error}", sample.path.display());
                failed.push((sample.relative.clone(), error));
            }
        }
    }
    let labels = classifier.classes().to_vec();
    let truth: Vec<usize> = pairs.iter().map(|p| p.0).collect();
    let confusion = confusion_matrix(&pairs, labels.len());
    let calibrated = classifier.temperature() != 1.0;
    let groups = group_reports(&classified, &labels);
    FolderEvaluation {
        groups,
        report: ClassificationReport::from_confusion(confusion, labels),
        calibration: calibrated
            .then(|| CalibrationReport::measure(&logits, &truth, classifier.temperature())),
        logits,
        labels: truth,
        failed,
        gate_flagged_rate: classifier
            .has_gate()
            .then(|| flagged as f64 / pairs.len().max(1) as f64),
    }
}

/// Each of the classifier's operating points measured on an evaluated folder.
pub fn at_operating_points(
    classifier: &Classifier,
    evaluation: &FolderEvaluation,
) -> Vec<OperatingPointResult> {
    let set = OneVsRest::new(
        &evaluation.logits,
        &evaluation.labels,
        classifier.temperature(),
    );
    classifier
        .operating_points()
        .iter()
        .enumerate()
        .filter_map(|(class, point)| {
            let point = point.as_ref()?;
            let (scores, positive) = set.class(class);
            let (sensitivity, specificity) = point.measure(&scores, &positive);
            Some(OperatingPointResult {
                class: point.class.clone(),
                threshold: point.threshold,
                sensitivity,
                specificity,
            })
        })
        .collect()
}

pub fn confusion_text(report: &ClassificationReport) -> String {
    let width = report.labels.iter().map(|l| l.len()).max().unwrap_or(8);
    let mut text = format!("{:>width$}  predicted ->\n", "true");
    for (label, row) in report.labels.iter().zip(&report.confusion) {
        let cells: Vec<String> = row.iter().map(|n| format!("{n:>6}")).collect();
        text += &format!("{label:>width$}  {}\n", cells.join(""));
    }
    text
}

pub fn run(args: &EvaluateArgs, device: &Device) -> Result<ClassificationReport> {
    if args.compute.int8_products && args.record.is_some() {
        bail!("--record keeps the card's results for the model as the page runs it (int8 products for an int8 weights file, f32 for a float one); evaluate with --int8-products without it");
    }
    let classifier = args
        .compute
        .load(&args.weights, args.card.as_deref(), device)?;
    let mut folder = ImageFolder::scan_classes(&args.data, Some(classifier.classes()))?;
    if !folder.left_out_classes.is_empty() {
        println!(
            "leaving out class folders the model does not have: {:?}",
            folder.left_out_classes
        );
    }
    let excluded = match &args.exclude {
        Some(path) => {
            let list = std::fs::read_to_string(path)
                .with_context(|| format!("reading exclude list {}", path.display()))?;
            folder.exclude(&list)?
        }
        None => Vec::new(),
    };
    let evaluation = evaluate_folder(&classifier, &folder, args.zoom);
    let (report, failed) = (&evaluation.report, &evaluation.failed);
    let operating = at_operating_points(&classifier, &evaluation);
    let operating_text: String = operating
        .iter()
        .map(|r| format!("at the operating point: {}\n", r.describe()))
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} images ({} excluded, {} unreadable){}\n",
            folder.samples.len() - failed.len(),
            excluded.len(),
            failed.len(),
            if args.zoom == 1.0 {
                String::new()
            } else {
                format!(", each reframed at zoom {}", args.zoom)
            }
        );
        println!("{}", report.to_text());
        println!("{}", confusion_text(report));
        if evaluation.groups.len() > 1 {
            println!("{}", groups_text(&evaluation.groups));
        }
        if let Some(c) = &evaluation.calibration {
            println!(
                "calibration (T = {:.3}): ECE(15 bins) {:.4} -> {:.4}, Brier {:.4} -> {:.4}",
                c.temperature,
                c.ece_15_bins_before,
                c.ece_15_bins_after,
                c.brier_before,
                c.brier_after
            );
        }
        if let Some(rate) = evaluation.gate_flagged_rate {
            println!(
                "out-of-distribution gate flagged {:.1}% of these images",
                rate * 100.0
            );
        }
        print!("{operating_text}");
    }
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        let mut text = format!(
            "{}\n{}{operating_text}",
            report.to_text(),
            confusion_text(report)
        );
        for group in &evaluation.groups {
            text += &format!(
                "\n{} {}\n\n{}\n{}",
                group.by,
                group.name,
                group.report.to_text(),
                confusion_text(&group.report)
            );
        }
        write_atomic(&out.join("report.txt"), text.as_bytes())?;
        plots::confusion(&out.join("confusion.png"), report)?;
        if let Some(c) = &evaluation.calibration {
            let probabilities = |t: f32| -> Vec<Vec<f32>> {
                evaluation
                    .logits
                    .iter()
                    .map(|z| softmax_with_temperature(z, t))
                    .collect()
            };
            let bins = |t: f32| reliability_bins(&probabilities(t), &evaluation.labels, 15);
            plots::reliability(
                &out.join("reliability.png"),
                &bins(1.0),
                &bins(c.temperature),
                c.temperature,
            )?;
        }
    }
    if let (Some(name), Some(card_path)) = (&args.record, &args.card) {
        let mut card = ModelCard::from_json(&std::fs::read_to_string(card_path)?)?;
        card.evaluations.retain(|e| &e.name != name);
        card.evaluations.push(Evaluation {
            name: name.clone(),
            data: args.data.display().to_string(),
            excluded,
            report: report.clone(),
            calibration: evaluation.calibration.clone(),
            gate_flagged_rate: evaluation.gate_flagged_rate,
            groups: evaluation.groups.clone(),
            at_operating_points: operating,
            zoom: args.zoom,
        });
        write_atomic(card_path, card.to_json().as_bytes())?;
    }
    Ok(evaluation.report)
}
