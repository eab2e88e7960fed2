//! `trainer predict --report`: the PDF a user keeps, one page per classified image, naming the
//! model and its weights, with the probabilities, verdicts, date and disclaimer.

use candle_core::Device;
use pneumoscope::report::DISCLAIMER;
use pneumoscope_tests::{fixture_dir, repo_root, shared_data_dir};
use trainer::predict::{run, ComputeArgs, PredictArgs};

/// Page objects in a PDF (pdf-writer writes `/Type /Page` on its own line).
fn pages(pdf: &[u8]) -> usize {
    String::from_utf8_lossy(pdf)
        .matches("/Type /Page\n")
        .count()
}

/// The shipped model's card (`weights/model.json`).
fn shipped_card() -> pneumoscope::ModelCard {
    serde_json::from_str(&std::fs::read_to_string(repo_root().join("weights/model.json")).unwrap())
        .unwrap()
}

#[test]
fn predict_writes_a_report_per_image_and_one_for_the_batch() {
    let weights = repo_root().join("weights");
    let card = shipped_card();
    let out = std::env::temp_dir().join(format!("pneumoscope-report-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let images = vec![
        shared_data_dir().join("covid19-kaggle/test/Covid/0100.jpeg"),
        fixture_dir().join("dicom/mono1-12bit.dcm"),
        fixture_dir().join("dicom/broken-truncated.dcm"),
    ];
    let args = PredictArgs {
        weights: weights.join("model.safetensors"),
        card: Some(weights.join("model.json")),
        json: true,
        report: Some(out.clone()),
        compute: ComputeArgs::default(),
        images,
    };
    // The broken file fails on its own: not every image was classified.
    assert!(!run(&args, &Device::Cpu).unwrap());
    let mut written: Vec<String> = std::fs::read_dir(out.as_path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written,
        ["001-0100.pdf", "002-mono1-12bit.pdf", "batch.pdf"]
    );
    let batch = std::fs::read(out.as_path().join("batch.pdf")).unwrap();
    assert!(batch.starts_with(b"%PDF-"));
    let text = String::from_utf8_lossy(&batch);
    for needle in [
        format!("Weights SHA-256: {}", card.weights.sha256),
        DISCLAIMER.to_string(),
        "File: 0100.jpeg".to_string(),
        "File: mono1-12bit.dcm".to_string(),
        "/DCTDecode".to_string(),
    ] {
        assert!(text.contains(&needle), "the report should say {needle}");
    }
    for class in &card.classes {
        assert!(
            text.contains(&format!("  {class}: ")),
            "{class}'s probability"
        );
    }
    assert!(text.contains("Date: 20"), "the date");
    let single = std::fs::read(out.as_path().join("001-0100.pdf")).unwrap();
    assert_eq!((pages(&batch), pages(&single)), (2, 1));

    // Without a card there is nothing to name the model by.
    let no_card = PredictArgs { card: None, ..args };
    let error = run(&no_card, &Device::Cpu).unwrap_err().to_string();
    assert!(error.contains("--report needs --card"), "{error}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_report_without_a_heat_map_says_why() {
    use pneumoscope::cam::HeatMap;
    use pneumoscope::report::{finding_lines, Findings};
    let card = shipped_card();
    let probabilities = vec![0.2, 0.7, 0.1];
    let positive = vec![None; 3];
    let map = HeatMap {
        class: 1,
        width: 2,
        height: 2,
        values: vec![0.0, 0.5, 1.0, 0.25],
    };
    let lines = |heatmap| {
        finding_lines(
            &card,
            &Findings {
                probabilities: &probabilities,
                top: 1,
                in_distribution: Some(true),
                positive: &positive,
                heatmap,
            },
        )
    };
    let without = lines(Err("still being computed when the report was saved"));
    assert_eq!(
        without.last().unwrap(),
        "Heat map: not shown (still being computed when the report was saved)."
    );
    let with = lines(Ok(&map));
    assert!(
        with.last().unwrap().starts_with(&format!(
            "Heat map: LayerCAM on layer2, 2x2 for {}",
            card.classes[1]
        )),
        "{with:?}"
    );
}

#[test]
fn a_report_gives_the_top_answer_s_track_record_unless_the_gate_flags_the_image() {
    use pneumoscope::report::{finding_lines, Findings};
    let card = shipped_card();
    let probabilities = vec![0.05, 0.15, 0.8];
    let positive = vec![None; 3];
    let lines = |in_distribution| {
        finding_lines(
            &card,
            &Findings {
                probabilities: &probabilities,
                top: 2,
                in_distribution,
                positive: &positive,
                heatmap: Err("not asked for"),
            },
        )
    };
    // The multi-source test is the card's largest evaluation of images as they are.
    let multi_source = card
        .evaluations
        .iter()
        .find(|e| e.name.starts_with("cxr-multisource test, three") && !e.is_framing_check())
        .unwrap();
    let column: Vec<usize> = multi_source
        .report
        .confusion
        .iter()
        .map(|row| row[2])
        .collect();
    let expected = format!(
        "Track record: On {}: {} of {} Viral Pneumonia answers were right",
        multi_source.name,
        column[2],
        column.iter().sum::<usize>()
    );
    let accepted = lines(Some(true));
    assert!(accepted[1].starts_with(&expected), "{accepted:?}");
    assert!(
        accepted[1].contains(&format!("{} Normal", column[1])),
        "{accepted:?}"
    );
    let flagged = lines(Some(false));
    assert!(
        flagged.iter().all(|line| !line.starts_with("Track record")),
        "{flagged:?}"
    );
}
