//! The batch results as CSV, for "Download CSV".

use crate::protocol::ImageResult;

/// One row of the batch: a file and what became of it.
pub struct Row<'a> {
    pub file: &'a str,
    pub outcome: Result<&'a ImageResult, &'a str>,
}

/// RFC 4180 quoting: fields with a comma, quote or line break are quoted, quotes doubled.
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Header: file, status, prediction, one probability column per class, one column per class
/// saying whether it reaches the card's operating point (empty without one), the gate's verdict
/// and score, milliseconds. A flagged image keeps its probabilities but its prediction is withheld,
/// as on the page.
pub fn csv(classes: &[String], rows: &[Row]) -> String {
    let mut header = vec!["file".to_string(), "status".into(), "prediction".into()];
    header.extend(classes.iter().map(|c| format!("p({c})")));
    header.extend(classes.iter().map(|c| format!("positive({c})")));
    header.extend([
        "in_distribution".into(),
        "ood_score".into(),
        "ms".into(),
        "error".into(),
    ]);
    let mut lines = vec![header
        .iter()
        .map(|h| field(h))
        .collect::<Vec<_>>()
        .join(",")];
    for row in rows {
        let mut cells = vec![field(row.file)];
        match row.outcome {
            Ok(result) => {
                cells.push("ok".into());
                cells.push(field(&result.verdict(classes)));
                cells.extend(result.probabilities.iter().map(|p| format!("{p:.6}")));
                cells.extend((0..classes.len()).map(|class| {
                    match result.positive.get(class).copied().flatten() {
                        Some(called) => called.to_string(),
                        None => String::new(),
                    }
                }));
                cells.push(
                    result
                        .in_distribution
                        .map(|b| b.to_string())
                        .unwrap_or_default(),
                );
                cells.push(
                    result
                        .ood_score
                        .map(|s| format!("{s:.3}"))
                        .unwrap_or_default(),
                );
                cells.push(format!("{:.1}", result.millis));
                cells.push(String::new());
            }
            Err(message) => {
                cells.push("error".into());
                cells.extend(std::iter::repeat_n(String::new(), 2 * classes.len() + 4));
                cells.push(field(message));
            }
        }
        lines.push(cells.join(","));
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use pneumoscope::preprocess::CropRegion;

    fn result(in_distribution: Option<bool>) -> ImageResult {
        ImageResult {
            width: 10,
            height: 10,
            probabilities: vec![0.7, 0.2, 0.1],
            top: 0,
            crop: CropRegion {
                left: 0.0,
                top: 0.0,
                width: 1.0,
                height: 1.0,
            },
            in_distribution,
            ood_score: Some(12.5),
            positive: vec![Some(true), Some(false), None],
            millis: 101.25,
            stages: Default::default(),
            dicom: None,
            preview: None,
        }
    }

    #[test]
    fn rows_quote_and_align_with_the_header() {
        let classes: Vec<String> = ["Covid", "Normal", "Viral Pneumonia"]
            .map(String::from)
            .into();
        let ok = result(Some(true));
        let flagged = result(Some(false));
        let text = csv(
            &classes,
            &[
                Row {
                    file: "a.png",
                    outcome: Ok(&ok),
                },
                Row {
                    file: "b,\"c\".jpg",
                    outcome: Ok(&flagged),
                },
                Row {
                    file: "d.txt",
                    outcome: Err("not a PNG, JPEG or DICOM image"),
                },
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "file,status,prediction,p(Covid),p(Normal),p(Viral Pneumonia),positive(Covid),positive(Normal),positive(Viral Pneumonia),in_distribution,ood_score,ms,error"
        );
        assert_eq!(
            lines[1],
            "a.png,ok,Covid,0.700000,0.200000,0.100000,true,false,,true,12.500,101.2,"
        );
        assert_eq!(
            lines[2],
            "\"b,\"\"c\"\".jpg\",ok,not a chest X-ray of the trained kind,0.700000,0.200000,0.100000,true,false,,false,12.500,101.2,"
        );
        assert_eq!(
            lines[3],
            "d.txt,error,,,,,,,,,,,\"not a PNG, JPEG or DICOM image\""
        );
        assert_eq!(lines.len(), 4);
    }
}
