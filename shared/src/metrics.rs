//! Classification metrics in the layout of scikit-learn's `classification_report`, so numbers
//! compare directly with the literature.

use serde::{Deserialize, Serialize};

/// Rows are true classes, columns predicted classes.
pub type ConfusionMatrix = Vec<Vec<usize>>;

/// Builds a confusion matrix from (true, predicted) class indices.
pub fn confusion_matrix(pairs: &[(usize, usize)], num_classes: usize) -> ConfusionMatrix {
    let mut matrix = vec![vec![0; num_classes]; num_classes];
    for &(truth, predicted) in pairs {
        matrix[truth][predicted] += 1;
    }
    matrix
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    #[serde(rename = "f1-score")]
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    pub labels: Vec<String>,
    pub per_class: Vec<ClassScores>,
    pub accuracy: f64,
    pub macro_avg: ClassScores,
    pub weighted_avg: ClassScores,
    pub confusion: ConfusionMatrix,
}

/// scikit-learn's `zero_division=0`: an undefined ratio counts as 0.
fn ratio(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

fn f1(precision: f64, recall: f64) -> f64 {
    if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

impl ClassificationReport {
    /// How many images the report counts.
    pub fn images(&self) -> usize {
        self.confusion.iter().flatten().sum()
    }

    pub fn from_confusion(confusion: ConfusionMatrix, labels: Vec<String>) -> Self {
        let n = confusion.len();
        let total: usize = confusion.iter().flatten().sum();
        let correct: usize = (0..n).map(|i| confusion[i][i]).sum();
        let per_class: Vec<ClassScores> = (0..n)
            .map(|i| {
                let support: usize = confusion[i].iter().sum();
                let predicted: usize = confusion.iter().map(|row| row[i]).sum();
                let precision = ratio(confusion[i][i], predicted);
                let recall = ratio(confusion[i][i], support);
                ClassScores {
                    precision,
                    recall,
                    f1: f1(precision, recall),
                    support,
                }
            })
            .collect();
        let average = |weight: &dyn Fn(&ClassScores) -> f64| {
            let weights: f64 = per_class.iter().map(weight).sum();
            let mean = |field: fn(&ClassScores) -> f64| {
                if weights == 0.0 {
                    0.0
                } else {
                    per_class.iter().map(|s| weight(s) * field(s)).sum::<f64>() / weights
                }
            };
            ClassScores {
                precision: mean(|s| s.precision),
                recall: mean(|s| s.recall),
                f1: mean(|s| s.f1),
                support: total,
            }
        };
        let macro_avg = average(&|_| 1.0);
        let weighted_avg = average(&|s| s.support as f64);
        Self {
            labels,
            per_class,
            accuracy: ratio(correct, total),
            macro_avg,
            weighted_avg,
            confusion,
        }
    }

    /// scikit-learn's `classification_report(y_true, y_pred)` without `labels`: only the classes
    /// that occur among the true or the predicted ones, in `labels`' order. For a part of a test
    /// set that holds some classes only (one source, one age group).
    pub fn of_present_classes(pairs: &[(usize, usize)], labels: &[String]) -> Self {
        let present: Vec<usize> = (0..labels.len())
            .filter(|&c| pairs.iter().any(|&(t, p)| t == c || p == c))
            .collect();
        let position = |c: usize| present.iter().position(|&x| x == c).expect("present");
        let remapped: Vec<(usize, usize)> = pairs
            .iter()
            .map(|&(t, p)| (position(t), position(p)))
            .collect();
        Self::from_confusion(
            confusion_matrix(&remapped, present.len()),
            present.iter().map(|&c| labels[c].clone()).collect(),
        )
    }

    /// "Normal recall 0.912 (441)"-style parts for the classes with support, joined by ", ":
    /// where a part of a test set holds and where it does not, in one line.
    pub fn recalls_text(&self) -> String {
        self.labels
            .iter()
            .zip(&self.per_class)
            .filter(|(_, s)| s.support > 0)
            .map(|(label, s)| format!("{label} {:.3} ({})", s.recall, s.support))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The report as scikit-learn prints it (digits=4).
    pub fn to_text(&self) -> String {
        let width = self
            .labels
            .iter()
            .map(|l| l.len())
            .chain(["weighted avg".len()])
            .max()
            .unwrap_or(12);
        let row = |name: &str, s: &ClassScores| {
            format!(
                "{name:>width$} {:>9.4} {:>9.4} {:>9.4} {:>9}\n",
                s.precision, s.recall, s.f1, s.support
            )
        };
        let total: usize = self.per_class.iter().map(|s| s.support).sum();
        let mut text = format!(
            "{:>width$} {:>9} {:>9} {:>9} {:>9}\n\n",
            "", "precision", "recall", "f1-score", "support"
        );
        for (label, scores) in self.labels.iter().zip(&self.per_class) {
            text += &row(label, scores);
        }
        text += "\n";
        text += &format!(
            "{:>width$} {:>9} {:>9} {:>9.4} {:>9}\n",
            "accuracy", "", "", self.accuracy, total
        );
        text += &row("macro avg", &self.macro_avg);
        text += &row("weighted avg", &self.weighted_avg);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checked against sklearn.metrics.classification_report on the same matrix.
    #[test]
    fn report_matches_scikit_learn_on_a_known_matrix() {
        let confusion = vec![vec![5, 1, 0], vec![2, 3, 1], vec![0, 0, 4]];
        let labels = vec!["a".into(), "b".into(), "c".into()];
        let report = ClassificationReport::from_confusion(confusion, labels);
        let close = |x: f64, y: f64| (x - y).abs() < 1e-4;
        assert!(close(report.per_class[0].precision, 5.0 / 7.0));
        assert!(close(report.per_class[1].recall, 0.5));
        assert!(close(report.per_class[2].f1, 0.8889));
        assert!(close(report.accuracy, 12.0 / 16.0));
        assert!(close(report.macro_avg.f1, 0.7527));
        assert!(close(report.weighted_avg.precision, 0.7491));
        assert_eq!(report.weighted_avg.support, 16);
    }

    #[test]
    fn a_part_reports_only_the_classes_it_holds_or_was_given() {
        let labels: Vec<String> = ["Covid", "Normal", "Viral"].map(String::from).to_vec();
        // Normal and Viral radiographs; one Normal called Covid, none called Viral.
        let report = ClassificationReport::of_present_classes(&[(1, 1), (1, 0), (2, 1)], &labels);
        assert_eq!(report.labels, ["Covid", "Normal", "Viral"]);
        assert_eq!(
            report.confusion,
            vec![vec![0, 0, 0], vec![1, 1, 0], vec![0, 1, 0]]
        );
        let normals = ClassificationReport::of_present_classes(&[(1, 1), (1, 1)], &labels);
        assert_eq!(normals.labels, ["Normal"]);
        assert_eq!(normals.per_class[0].recall, 1.0);
        assert_eq!(normals.accuracy, 1.0);
    }

    #[test]
    fn a_class_never_predicted_scores_zero_not_nan() {
        let report = ClassificationReport::from_confusion(
            vec![vec![2, 0], vec![1, 0]],
            vec!["x".into(), "y".into()],
        );
        assert_eq!(report.per_class[1].precision, 0.0);
        assert_eq!(report.per_class[1].f1, 0.0);
        assert!(report.to_text().contains("accuracy"));
    }
}
