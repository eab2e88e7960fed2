//! An answer's track record: of the times the model gave this answer on a recorded evaluation
//! set, how often it was right and what the images really were (the answer's column of the
//! confusion matrix, in counts). A user reads "Viral Pneumonia 97%" beside "89 of its 124 Viral
//! Pneumonia answers were right; 33 were Normal", which a probability alone cannot say.

use crate::card::{Evaluation, ModelCard};

/// One class's answers on one evaluation set.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerRecord {
    /// The evaluation's name, e.g. "cxr-multisource test, three paper classes (848)".
    pub evaluation: String,
    pub class: String,
    /// How many of the set's images got this answer.
    pub answers: usize,
    pub right: usize,
    /// The true classes of the wrong answers with their counts, most first.
    pub wrong: Vec<(String, usize)>,
}

impl AnswerRecord {
    /// The record of `class`'s answers on the evaluation that says most about them: the largest
    /// set of images as they are (framing checks aside; the first recorded among sets of equal
    /// size) that has `class` among its labels. None when no such evaluation exists or the model
    /// never gave that answer there.
    pub fn from_evaluations(evaluations: &[Evaluation], class: &str) -> Option<Self> {
        let (evaluation, column) = evaluations
            .iter()
            .filter(|e| !e.is_framing_check())
            .filter_map(|e| Some((e, e.report.labels.iter().position(|l| l == class)?)))
            .reduce(|best, next| {
                if next.0.report.images() > best.0.report.images() {
                    next
                } else {
                    best
                }
            })?;
        let report = &evaluation.report;
        let answers: usize = report.confusion.iter().map(|row| row[column]).sum();
        if answers == 0 {
            return None;
        }
        let mut wrong: Vec<(String, usize)> = report
            .labels
            .iter()
            .zip(&report.confusion)
            .enumerate()
            .filter(|&(truth, (_, row))| truth != column && row[column] > 0)
            .map(|(_, (label, row))| (label.clone(), row[column]))
            .collect();
        wrong.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        Some(Self {
            evaluation: evaluation.name.clone(),
            class: class.to_string(),
            answers,
            right: report.confusion[column][column],
            wrong,
        })
    }

    /// In words, e.g. "On cxr-multisource test (848): 89 of 124 Viral Pneumonia answers were
    /// right (72%); the others were 33 Normal, 2 Covid."
    pub fn describe(&self) -> String {
        let mut text = format!(
            "On {}: {} of {} {} answers were right ({:.0}%)",
            self.evaluation,
            self.right,
            self.answers,
            self.class,
            100.0 * self.right as f64 / self.answers as f64
        );
        if self.wrong.is_empty() {
            text.push('.');
        } else {
            let others: Vec<String> = self
                .wrong
                .iter()
                .map(|(truth, count)| format!("{count} {truth}"))
                .collect();
            text.push_str(&format!("; the others were {}.", others.join(", ")));
        }
        text
    }
}

impl ModelCard {
    /// The track record of an answer of class `class` (an index into `classes`).
    pub fn answer_record(&self, class: usize) -> Option<AnswerRecord> {
        AnswerRecord::from_evaluations(&self.evaluations, self.classes.get(class)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ClassificationReport;

    fn evaluation(
        name: &str,
        labels: &[&str],
        confusion: Vec<Vec<usize>>,
        zoom: f32,
    ) -> Evaluation {
        Evaluation {
            name: name.into(),
            data: "data".into(),
            excluded: Vec::new(),
            report: ClassificationReport::from_confusion(
                confusion,
                labels.iter().map(|l| l.to_string()).collect(),
            ),
            calibration: None,
            gate_flagged_rate: None,
            groups: Vec::new(),
            at_operating_points: Vec::new(),
            zoom,
        }
    }

    const CLASSES: [&str; 3] = ["Covid", "Normal", "Viral Pneumonia"];

    fn recorded() -> Vec<Evaluation> {
        vec![
            evaluation(
                "small",
                &CLASSES,
                vec![vec![5, 0, 0], vec![0, 5, 0], vec![0, 0, 5]],
                1.0,
            ),
            // Rows are the true classes, columns the answers.
            evaluation(
                "large",
                &CLASSES,
                vec![vec![276, 39, 2], vec![28, 380, 33], vec![0, 1, 89]],
                1.0,
            ),
            evaluation(
                "larger, reframed",
                &CLASSES,
                vec![vec![900, 0, 0], vec![0, 900, 0], vec![0, 0, 900]],
                1.25,
            ),
        ]
    }

    #[test]
    fn an_answer_is_judged_on_the_largest_set_of_images_as_they_are() {
        let record = AnswerRecord::from_evaluations(&recorded(), "Viral Pneumonia").unwrap();
        assert_eq!(record.evaluation, "large");
        assert_eq!((record.answers, record.right), (124, 89));
        assert_eq!(
            record.wrong,
            vec![("Normal".to_string(), 33), ("Covid".to_string(), 2)]
        );
        assert_eq!(
            record.describe(),
            "On large: 89 of 124 Viral Pneumonia answers were right (72%); \
             the others were 33 Normal, 2 Covid."
        );
    }

    #[test]
    fn the_answer_is_found_by_name_whatever_the_evaluation_s_label_order() {
        let reordered = vec![evaluation(
            "reordered",
            &["Viral Pneumonia", "Covid"],
            vec![vec![7, 1], vec![0, 4]],
            1.0,
        )];
        let record = AnswerRecord::from_evaluations(&reordered, "Covid").unwrap();
        assert_eq!((record.answers, record.right), (5, 4));
        assert_eq!(record.wrong, vec![("Viral Pneumonia".to_string(), 1)]);
    }

    #[test]
    fn of_sets_of_equal_size_the_first_recorded_counts() {
        let diagonal = vec![vec![5, 0, 0], vec![0, 5, 0], vec![0, 0, 5]];
        let twins = vec![
            evaluation("first", &CLASSES, diagonal.clone(), 1.0),
            evaluation("second", &CLASSES, diagonal, 1.0),
        ];
        let record = AnswerRecord::from_evaluations(&twins, "Normal").unwrap();
        assert_eq!(record.evaluation, "first");
    }

    #[test]
    fn an_answer_always_right_names_no_others() {
        let record = AnswerRecord::from_evaluations(&recorded()[..1], "Covid").unwrap();
        assert!(record.wrong.is_empty());
        assert_eq!(
            record.describe(),
            "On small: 5 of 5 Covid answers were right (100%)."
        );
    }

    #[test]
    fn no_record_without_an_evaluation_that_saw_the_answer() {
        let evaluations = recorded();
        assert_eq!(
            AnswerRecord::from_evaluations(&evaluations, "Tuberculosis"),
            None
        );
        assert_eq!(
            AnswerRecord::from_evaluations(&evaluations[2..], "Covid"),
            None
        );
        assert_eq!(AnswerRecord::from_evaluations(&[], "Covid"), None);
        let never_answered = vec![evaluation(
            "never",
            &["Covid", "Normal"],
            vec![vec![0, 3], vec![0, 2]],
            1.0,
        )];
        assert_eq!(
            AnswerRecord::from_evaluations(&never_answered, "Covid"),
            None
        );
    }
}
