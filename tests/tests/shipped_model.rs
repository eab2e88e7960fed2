//! The model in `weights/`, the one the page ships: its files agree with each other and with its
//! card, the card's test results are what the model gives, and its out-of-distribution gate flags
//! what is not a chest radiograph of the kind it was trained on while accepting the test split.

use std::path::{Path, PathBuf};

use image::{imageops, Rgb, Rgb32FImage};
use pneumoscope::card::GroupEvaluation;
use pneumoscope::decode::decode_rgb;
use pneumoscope::Classifier;
use pneumoscope_tests::{
    colour_pattern, fixture_dir, shared_data_dir, shipped_model as shipped,
    shipped_model_f32_products, sorted_files,
};
use trainer::data::ImageFolder;
use trainer::evaluate::{at_operating_points, evaluate_folder};

/// Largest share of other hospitals' radiographs (the multi-source test split) the gate may
/// reject: issue 11's 5% (2.5% measured).
const MAX_FALSE_REJECTION: f64 = 0.05;
/// The Kaggle copy's test radiographs (640x640 squashes, re-encoded web images) lie further out:
/// 12.1% of the 66 flagged when measured, 14.0% of the 57; the threshold accepts 95% of each
/// source's held-out images, the Kaggle copy's 50 among them.
const MAX_KAGGLE_COPY_REJECTION: f64 = 0.20;
/// Smallest share of the Kaggle test radiographs, inverted, that the gate must flag (95.5%
/// measured with `trainer check-gate`; the card lists every rate).
const MIN_INVERTED_REJECTION: f64 = 0.85;
/// Rotation by 90 degrees is the gate's weak spot: 90.9% flagged when measured.
const MIN_ROTATED_REJECTION: f64 = 0.70;
/// Photographs, other medical images and synthetic patterns: all flagged when measured.
const MIN_NOT_RADIOGRAPH_REJECTION: f64 = 0.95;
/// Axial CT slices, another modality: issue 11 asks for at least 95% flagged.
const MIN_CT_REJECTION: f64 = 0.95;

fn test_split() -> PathBuf {
    shared_data_dir().join("covid19-kaggle/test")
}

fn test_radiographs() -> Vec<Rgb32FImage> {
    let folder = ImageFolder::scan(&test_split()).expect("the test split");
    folder
        .samples
        .iter()
        .map(|s| decode_rgb(&std::fs::read(&s.path).unwrap()).unwrap())
        .collect()
}

/// Share of `images` the gate flags as unlike the training data.
fn flagged_share(classifier: &Classifier, images: &[Rgb32FImage]) -> f64 {
    let flagged = images
        .iter()
        .filter(|image| {
            let prediction = classifier.classify_image(image).unwrap();
            !prediction
                .in_distribution
                .expect("the shipped model has a gate")
        })
        .count();
    flagged as f64 / images.len() as f64
}

fn inverted(image: &Rgb32FImage) -> Rgb32FImage {
    let mut out = image.clone();
    out.pixels_mut()
        .for_each(|p| *p = Rgb(p.0.map(|v| 1.0 - v)));
    out
}

fn not_radiographs() -> Vec<(String, Rgb32FImage)> {
    let dir = fixture_dir().join("ood/natural");
    let files: Vec<PathBuf> = sorted_files(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    let mut images: Vec<(String, Rgb32FImage)> = files
        .iter()
        .map(|p| (name_of(p), decode_rgb(&std::fs::read(p).unwrap()).unwrap()))
        .collect();
    images.push((
        "colour pattern".into(),
        image::DynamicImage::from(colour_pattern(320, 240)).to_rgb32f(),
    ));
    images
}

fn name_of(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

#[test]
fn gate_accepts_the_test_radiographs() {
    let (classifier, _) = shipped();
    let rejected = flagged_share(&classifier, &test_radiographs());
    assert!(
        rejected <= MAX_KAGGLE_COPY_REJECTION,
        "the gate rejects {:.1}% of the test radiographs",
        rejected * 100.0
    );
}

#[test]
fn gate_flags_inverted_and_rotated_radiographs() {
    let (classifier, _) = shipped();
    let radiographs = test_radiographs();
    let inverted: Vec<Rgb32FImage> = radiographs.iter().map(inverted).collect();
    let rotated: Vec<Rgb32FImage> = radiographs.iter().map(imageops::rotate90).collect();
    for (kind, images, minimum) in [
        ("inverted", inverted, MIN_INVERTED_REJECTION),
        ("rotated 90 degrees", rotated, MIN_ROTATED_REJECTION),
    ] {
        let flagged = flagged_share(&classifier, &images);
        assert!(
            flagged >= minimum,
            "{kind}: the gate flags only {:.1}%",
            flagged * 100.0
        );
    }
}

#[test]
fn gate_flags_ct_slices() {
    let (classifier, _) = shipped();
    let dir = shared_data_dir().join("not-chest-xray/ct-slices");
    let files = sorted_files(&dir);
    assert!(files.len() >= 100, "{} CT slices", files.len());
    let slices: Vec<Rgb32FImage> = files
        .iter()
        .map(|p| decode_rgb(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    let flagged = flagged_share(&classifier, &slices);
    assert!(
        flagged >= MIN_CT_REJECTION,
        "the gate flags only {:.1}% of {} CT slices",
        flagged * 100.0,
        slices.len()
    );
}

#[test]
fn gate_flags_images_that_are_not_radiographs() {
    let (classifier, _) = shipped();
    let images = not_radiographs();
    let accepted: Vec<&str> = images
        .iter()
        .filter(|(_, image)| {
            classifier.classify_image(image).unwrap().in_distribution == Some(true)
        })
        .map(|(name, _)| name.as_str())
        .collect();
    let share = 1.0 - accepted.len() as f64 / images.len() as f64;
    assert!(
        share >= MIN_NOT_RADIOGRAPH_REJECTION,
        "the gate accepts {accepted:?} of {} images that are not radiographs",
        images.len()
    );
}

/// Every evaluation the card states is what the shipped weights give now, on the whole set and on
/// each of its parts (source collections, age groups).
#[test]
fn card_results_are_reproduced() {
    let (classifier, card) = shipped();
    let on_kaggle_test = card
        .evaluations
        .iter()
        .filter(|e| {
            e.data
                .trim_end_matches('/')
                .ends_with("covid19-kaggle/test")
        })
        .count();
    assert!(
        on_kaggle_test >= 2,
        "the card should state the full and the leak-free test results"
    );
    // A model is judged on radiographs from other collections, per source.
    let multisource = card
        .evaluations
        .iter()
        .filter(|e| {
            e.data
                .trim_end_matches('/')
                .ends_with("cxr-multisource/test")
        })
        .collect::<Vec<_>>();
    let as_they_are = multisource
        .iter()
        .find(|e| !e.is_framing_check())
        .expect("the card should state the multi-source test result");
    assert!(
        as_they_are.groups.iter().any(|g| g.by == "source"),
        "the multi-source result should be reported per source"
    );
    // How much the answers depend on collimation, both ways.
    assert!(
        multisource.iter().any(|e| e.zoom < 1.0) && multisource.iter().any(|e| e.zoom > 1.0),
        "the card should state framing checks of the multi-source test, wider and tighter"
    );
    for recorded in &card.evaluations {
        let relative = recorded
            .data
            .rsplit("shared/data/")
            .next()
            .unwrap()
            .trim_end_matches('/');
        let root = shared_data_dir().join(relative);
        let mut folder = ImageFolder::scan_classes(&root, Some(classifier.classes())).unwrap();
        folder.exclude(&recorded.excluded.join("\n")).unwrap();
        let now = evaluate_folder(&classifier, &folder, recorded.zoom);
        assert!(now.failed.is_empty(), "{:?}", now.failed);
        assert_eq!(
            now.report.confusion, recorded.report.confusion,
            "{}",
            recorded.name
        );
        let rejected = now.gate_flagged_rate.expect("the shipped model has a gate");
        // The same count over the same total; the last bit may differ with summation order.
        let recorded_rate = recorded.gate_flagged_rate.expect("a recorded gate rate");
        assert!(
            (rejected - recorded_rate).abs() < 1e-9,
            "{}: gate rate {rejected} now, {recorded_rate} recorded",
            recorded.name
        );
        // A framing check's black margin or cut-off chest is far from anything the gate was
        // fitted on: its rate is only held to the record above.
        let limit = if recorded.data.contains("covid19-kaggle") {
            MAX_KAGGLE_COPY_REJECTION
        } else {
            MAX_FALSE_REJECTION
        };
        assert!(
            recorded.is_framing_check() || rejected <= limit,
            "{}: the gate rejects {:.1}% of these radiographs",
            recorded.name,
            rejected * 100.0
        );
        // Each part's confusion matrix; the scores follow from it (their last bits may not
        // survive the JSON round trip).
        let parts = |groups: &[GroupEvaluation]| -> Vec<_> {
            groups
                .iter()
                .map(|g| {
                    let r = &g.report;
                    (
                        g.by.clone(),
                        g.name.clone(),
                        r.labels.clone(),
                        r.confusion.clone(),
                    )
                })
                .collect()
        };
        assert_eq!(
            parts(&now.groups),
            parts(&recorded.groups),
            "{}",
            recorded.name
        );
        // Sensitivity and specificity at the card's operating points.
        let operating = at_operating_points(&classifier, &now);
        assert_eq!(operating.len(), recorded.at_operating_points.len());
        for (now, then) in operating.iter().zip(&recorded.at_operating_points) {
            assert_eq!(now.class, then.class);
            assert!(
                (now.sensitivity - then.sensitivity).abs() < 1e-9
                    && (now.specificity - then.specificity).abs() < 1e-9,
                "{}: {} now, {} recorded",
                recorded.name,
                now.describe(),
                then.describe()
            );
        }
    }
}

/// Largest accuracy change quantizing may make on any recorded evaluation (issue 12: unchanged
/// within 0.5 percentage points), or one image where a set is too small for that: one of the
/// honest 57 is 1.75 points.
const MAX_QUANTIZATION_CHANGE: f64 = 0.005;

/// Shipped int8 weights: the card names the float model they came from, and on every set both
/// were evaluated on, the int8 model's accuracy is within MAX_QUANTIZATION_CHANGE (or one
/// image) of it, either way.
#[test]
fn quantized_weights_keep_the_float_models_accuracy() {
    let (_, card) = shipped();
    let Some(quantization) = &card.quantization else {
        assert!(
            !card.weights.dtype.contains("int8"),
            "int8 weights without a quantization record"
        );
        return;
    };
    assert_eq!(card.weights.dtype, pneumoscope::quantize::INT8_DTYPE);
    // Framing checks measure the int8 model's dependence on collimation, not quantization.
    let as_they_are: Vec<_> = card
        .evaluations
        .iter()
        .filter(|e| !e.is_framing_check())
        .collect();
    let mut compared = 0;
    for evaluation in &as_they_are {
        let Some((_, before)) = quantization
            .from_accuracy
            .iter()
            .find(|(name, _)| *name == evaluation.name)
        else {
            continue;
        };
        compared += 1;
        let change = evaluation.report.accuracy - before;
        let one_image = 1.0 / evaluation.report.images() as f64;
        assert!(
            change.abs() <= MAX_QUANTIZATION_CHANGE.max(one_image) + 1e-9,
            "{}: {before:.4} as floats, {:.4} as int8",
            evaluation.name,
            evaluation.report.accuracy
        );
    }
    assert_eq!(
        compared,
        as_they_are.len(),
        "every evaluation of the int8 model should have its float counterpart"
    );
}

/// The shipped int8 file computes its products in int8, here and in the page; against the same
/// weights computed with f32 products, on the Kaggle test split: one borderline image of 66
/// changed class and no probability moved by more than 0.08 when measured.
#[test]
fn int8_products_keep_the_shipped_models_answers() {
    let (int8_products, _) = shipped();
    let f32_products = shipped_model_f32_products();
    let images = test_radiographs();
    let (mut changed, mut largest_move) = (0, 0f32);
    for image in &images {
        let f32_answer = f32_products.classify_image(image).unwrap();
        let int8_answer = int8_products.classify_image(image).unwrap();
        changed += usize::from(f32_answer.top != int8_answer.top);
        for (a, b) in f32_answer
            .probabilities
            .iter()
            .zip(&int8_answer.probabilities)
        {
            largest_move = largest_move.max((a - b).abs());
        }
    }
    assert!(
        changed * 20 <= images.len(),
        "{changed} of {} images changed class",
        images.len()
    );
    assert!(
        largest_move > 0.0 && largest_move < 0.2,
        "largest probability change {largest_move}"
    );
}
