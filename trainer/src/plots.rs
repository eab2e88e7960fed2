//! Figures with plotters: training curves (the paper's Figure 2) and the confusion matrix
//! (its Figure 3).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use pneumoscope::metrics::ClassificationReport;

use crate::training::EpochMetrics;

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

/// Loss and accuracy per epoch, train and validation, side by side.
pub fn curves(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    let root = BitMapBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (left, right) = root.split_horizontally(600);
    let epochs = history.len().max(2) as f64;
    type Series = (&'static str, fn(&EpochMetrics) -> f64, RGBColor);
    let panels: [(&str, [Series; 2]); 2] = [
        (
            "Loss",
            [
                ("train", |m| m.train_loss, BLUE),
                ("validation", |m| m.validation_loss, RED),
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
        let top = history
            .iter()
            .flat_map(|m| series.iter().map(move |s| (s.1)(m)))
            .fold(0f64, f64::max);
        let y_max = if title == "Accuracy" {
            1.0
        } else {
            (top * 1.1).max(1e-3)
        };
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(1f64..epochs, 0f64..y_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .draw()
            .map_err(plot_error)?;
        for (name, value, color) in series {
            let points: Vec<(f64, f64)> =
                history.iter().map(|m| (m.epoch as f64, value(m))).collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_error)?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color));
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
        .build_cartesian_2d(0..n, 0..n)
        .map_err(plot_error)?;
    let label_of = |i: &usize| labels.get(*i).cloned().unwrap_or_default();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("predicted")
        .y_desc("true")
        .x_labels(n)
        .y_labels(n)
        .x_label_formatter(&label_of)
        .y_label_formatter(&|i| label_of(&(n - 1 - i)))
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
                    [(predicted, y), (predicted + 1, y + 1)],
                    fill.filled(),
                )])
                .map_err(plot_error)?;
            let text_color = if shade > 0.6 { WHITE } else { BLACK };
            chart
                .draw_series([Text::new(
                    count.to_string(),
                    (predicted, y + 1),
                    ("sans-serif", 28).into_font().color(&text_color),
                )])
                .map_err(plot_error)?;
        }
    }
    root.present().map_err(plot_error)?;
    Ok(())
}
