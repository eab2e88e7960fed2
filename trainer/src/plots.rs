//! Figures with plotters: training curves (the paper's Figure 2) and the confusion matrix
//! (its Figure 3).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use pneumoscope::calibration::ReliabilityBin;
use pneumoscope::metrics::ClassificationReport;

use crate::training::EpochMetrics;

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A line with its legend entry.
fn labelled_line(
    chart: &mut Chart,
    points: Vec<(f64, f64)>,
    name: &str,
    color: RGBColor,
) -> Result<()> {
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))
        .map_err(plot_error)?
        .label(name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color));
    Ok(())
}

/// Loss (as log10: an untrained network's validation loss can be 1e10 times its final one) and
/// accuracy per epoch, train and validation, side by side.
pub fn curves(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    let root = BitMapBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (left, right) = root.split_horizontally(600);
    let epochs = history.len().max(2) as f64;
    type Series = (&'static str, fn(&EpochMetrics) -> f64, RGBColor);
    let panels: [(&str, [Series; 2]); 2] = [
        (
            "Loss (log10)",
            [
                ("train", |m| m.train_loss.max(1e-6).log10(), BLUE),
                ("validation", |m| m.validation_loss.max(1e-6).log10(), RED),
            ],
        ),
        (
            "Accuracy",
            [
                ("train", |m| m.train_accuracy, BLUE),
                ("validation", |m| m.validation_accuracy, RED),
            ],
        ),
    ];
    for (area, (title, series)) in [left, right].iter().zip(panels) {
        let values: Vec<f64> = history
            .iter()
            .flat_map(|m| series.iter().map(move |s| (s.1)(m)))
            .collect();
        let (y_min, y_max) = if title == "Accuracy" {
            (0.0, 1.0)
        } else {
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            ((lo - 0.2).floor(), (hi + 0.2).ceil().max(lo.floor() + 1.0))
        };
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(1f64..epochs, y_min..y_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_label_formatter(&|v| format!("{v:.1}"))
            .draw()
            .map_err(plot_error)?;
        for (name, value, color) in series {
            let points: Vec<(f64, f64)> =
                history.iter().map(|m| (m.epoch as f64, value(m))).collect();
            labelled_line(&mut chart, points, name, color)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

/// The confusion matrix as a heat map with counts, true classes down, predictions across.
pub fn confusion(path: &Path, report: &ClassificationReport) -> Result<()> {
    let n = report.labels.len();
    let root = BitMapBackend::new(path, (640, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let max = report
        .confusion
        .iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    let labels = report.labels.clone();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Confusion matrix (accuracy {:.3})", report.accuracy),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(140)
        .build_cartesian_2d(
            (0..n.saturating_sub(1)).into_segmented(),
            (0..n.saturating_sub(1)).into_segmented(),
        )
        .map_err(plot_error)?;
    // Rows are drawn bottom-up, so true class `t` sits at y = n - 1 - t.
    let label_at = |value: &SegmentValue<usize>, flip: bool| match value {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
            let index = if flip { n.checked_sub(i + 1) } else { Some(*i) };
            index
                .and_then(|j| labels.get(j).cloned())
                .unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("predicted")
        .y_desc("true")
        .x_labels(n)
        .y_labels(n)
        .x_label_formatter(&|v| label_at(v, false))
        .y_label_formatter(&|v| label_at(v, true))
        .draw()
        .map_err(plot_error)?;
    for (truth, row) in report.confusion.iter().enumerate() {
        for (predicted, &count) in row.iter().enumerate() {
            let y = n - 1 - truth;
            let shade = count as f64 / max as f64;
            let fill = RGBColor(
                (255.0 * (1.0 - 0.8 * shade)) as u8,
                (255.0 * (1.0 - 0.6 * shade)) as u8,
                255,
            );
            chart
                .draw_series([Rectangle::new(
                    [
                        (SegmentValue::Exact(predicted), SegmentValue::Exact(y)),
                        (
                            SegmentValue::Exact(predicted + 1),
                            SegmentValue::Exact(y + 1),
                        ),
                    ],
                    fill.filled(),
                )])
                .map_err(plot_error)?;
            let text_color = if shade > 0.6 { WHITE } else { BLACK };
            chart
                .draw_series([Text::new(
                    count.to_string(),
                    (SegmentValue::CenterOf(predicted), SegmentValue::CenterOf(y)),
                    ("sans-serif", 28)
                        .into_font()
                        .color(&text_color)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                )])
                .map_err(plot_error)?;
        }
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

/// Reliability diagram: accuracy against confidence per bin, before and after temperature
/// scaling, with the diagonal of perfect calibration.
pub fn reliability(
    path: &Path,
    before: &[ReliabilityBin],
    after: &[ReliabilityBin],
    temperature: f32,
) -> Result<()> {
    let root = BitMapBackend::new(path, (640, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Reliability (15 bins, T = {temperature:.3})"),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("confidence")
        .y_desc("accuracy")
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.4)))
        .map_err(plot_error)?;
    for (name, bins, color) in [("before", before, RED), ("after", after, BLUE)] {
        let points: Vec<(f64, f64)> = bins
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| (b.confidence, b.accuracy))
            .collect();
        labelled_line(&mut chart, points.clone(), name, color)?;
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pneumoscope::calibration::reliability_bins;
    use pneumoscope::metrics::ClassificationReport;

    fn decoded_size(path: &Path) -> (u32, u32) {
        let image = image::open(path).unwrap();
        (image.width(), image.height())
    }

    #[test]
    fn curves_and_confusion_are_drawn() {
        let dir = std::env::temp_dir().join(format!("pneumoscope-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let history: Vec<EpochMetrics> = (1..=4)
            .map(|epoch| EpochMetrics {
                epoch,
                lr: 0.1,
                train_loss: 2.0 / epoch as f64,
                train_accuracy: 0.2 * epoch as f64,
                validation_loss: 1e9 / 10f64.powi(epoch as i32 * 2),
                validation_accuracy: 0.15 * epoch as f64,
                images_per_second: 1.0,
                seconds: 1.0,
            })
            .collect();
        curves(&dir.join("curves.png"), &history).unwrap();
        assert_eq!(decoded_size(&dir.join("curves.png")), (1200, 480));
        let report = ClassificationReport::from_confusion(
            vec![vec![5, 1, 0], vec![2, 3, 1], vec![0, 0, 4]],
            vec!["Covid".into(), "Normal".into(), "Viral Pneumonia".into()],
        );
        confusion(&dir.join("confusion.png"), &report).unwrap();
        assert_eq!(decoded_size(&dir.join("confusion.png")), (640, 600));

        let probs = vec![
            vec![0.95, 0.05],
            vec![0.9, 0.1],
            vec![0.55, 0.45],
            vec![0.3, 0.7],
        ];
        let bins = reliability_bins(&probs, &[0, 1, 0, 1], 15);
        assert_eq!((bins[14].accuracy, bins[14].count), (1.0, 1));
        assert_eq!((bins[13].accuracy, bins[13].count), (0.0, 1));
        assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), 4);
        reliability(&dir.join("reliability.png"), &bins, &bins, 1.5).unwrap();
        assert_eq!(decoded_size(&dir.join("reliability.png")), (640, 600));
    }
}
