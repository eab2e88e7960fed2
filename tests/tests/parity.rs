//! The Rust ResNet50 and preprocessing against PyTorch/torchvision, from the fixture written by
//! scripts/make_parity_fixture.py.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use pneumoscope::checkpoint::{state_dict, Checkpoint, HeadLoad};
use pneumoscope::classifier::argmax;
use pneumoscope::decode::decode_rgb;
use pneumoscope::Preprocessing;
use pneumoscope_tests::{
    fixture_dir, formula_input, formula_weights, relative_error, shared_data_dir, varmap_model,
};

const NUM_CLASSES: usize = 3;
const TOLERANCE: f32 = 1e-4;
/// Formula images per forward, as in the fixture script.
const BATCH: usize = 4;

fn reference() -> HashMap<String, Tensor> {
    let path = fixture_dir().join("parity/reference.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu).expect("parity fixture")
}

fn reference_meta() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir().join("parity/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn assert_close(name: &str, ours: &Tensor, theirs: &Tensor) {
    let err = relative_error(ours, theirs);
    assert!(
        err <= TOLERANCE,
        "{name}: relative error {err:e} > {TOLERANCE:e}"
    );
}

#[test]
fn eval_mode_matches_torchvision() {
    let reference = reference();
    let model = Checkpoint::from_tensors(formula_weights(NUM_CLASSES))
        .into_model(&Device::Cpu)
        .unwrap();
    let out = model.forward_t(&formula_input(BATCH), false).unwrap();
    assert_close("eval logits", &out.logits, &reference["eval.logits"]);
    assert_close("eval features", &out.features, &reference["eval.features"]);
}

#[test]
fn folded_batch_norms_give_the_same_eval_outputs() {
    let reference = reference();
    let mut model = Checkpoint::from_tensors(formula_weights(NUM_CLASSES))
        .into_model(&Device::Cpu)
        .unwrap();
    model.fold_batch_norms().unwrap();
    let out = model.forward_t(&formula_input(BATCH), false).unwrap();
    assert_close("folded eval logits", &out.logits, &reference["eval.logits"]);
    assert_close(
        "folded eval features",
        &out.features,
        &reference["eval.features"],
    );
    assert!(
        model.forward_t(&formula_input(1), true).is_err(),
        "folded models do not train"
    );
}

#[test]
fn train_mode_matches_torchvision_including_running_statistics() {
    let reference = reference();
    let (varmap, model) = varmap_model(NUM_CLASSES);
    let head = Checkpoint::from_tensors(formula_weights(NUM_CLASSES))
        .load_into(&varmap, false)
        .unwrap();
    assert_eq!(head, HeadLoad::Loaded);
    let out = model.forward_t(&formula_input(BATCH), true).unwrap();
    assert_close("train logits", &out.logits, &reference["train.logits"]);
    assert_close(
        "train features",
        &out.features,
        &reference["train.features"],
    );

    let after = state_dict(&varmap, candle_core::DType::F32, 0).unwrap();
    let mut checked = 0;
    for (name, expected) in &reference {
        if let Some(stat) = name.strip_prefix("train.after.") {
            assert_close(stat, &after[stat], expected);
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * 53, "every batch norm's running mean and var");
}

#[test]
fn saved_names_and_shapes_are_torchvisions() {
    let meta = reference_meta();
    let expected: HashMap<String, Vec<usize>> =
        serde_json::from_value(meta["torchvision_keys"].clone()).unwrap();
    let (varmap, _) = varmap_model(NUM_CLASSES);
    let saved = state_dict(&varmap, candle_core::DType::F32, 0).unwrap();
    let saved: HashMap<String, Vec<usize>> = saved
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    assert_eq!(saved.len(), 320);
    assert_eq!(saved, expected);
}

/// Preprocessing of real radiographs: ours against torchvision's tensor path, compared on every
/// 4th pixel of the 224x224 crop; and top-1 of the formula model on the full pipeline.
#[test]
fn preprocessing_and_top1_match_torchvision_on_real_radiographs() {
    let reference = reference();
    let meta = reference_meta();
    let subsample = meta["subsample"].as_u64().unwrap() as usize;
    let images = meta["images"].as_array().unwrap();
    assert_eq!(images.len(), 10);
    let model = Checkpoint::from_tensors(formula_weights(NUM_CLASSES))
        .into_model(&Device::Cpu)
        .unwrap();
    let preprocessing = Preprocessing::default();
    let (mut sum, mut count, mut max) = (0f64, 0usize, 0f32);
    let mut top1_agree = 0;
    for (k, relative) in images.iter().enumerate() {
        let path = shared_data_dir().join(relative.as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ours = preprocessing.apply(&decode_rgb(&bytes).unwrap());
        let theirs = reference[&format!("image{k}.preprocessed_sub4")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let side = 224 / subsample;
        for c in 0..3 {
            for y in 0..side {
                for x in 0..side {
                    let a = ours[c * 224 * 224 + (1 + y * subsample) * 224 + 1 + x * subsample];
                    let b = theirs[(c * side + y) * side + x];
                    sum += f64::from((a - b).abs());
                    count += 1;
                    max = max.max((a - b).abs());
                }
            }
        }
        let input = Tensor::from_vec(ours, (1, 3, 224, 224), &Device::Cpu).unwrap();
        let logits = model.forward_t(&input, false).unwrap().logits;
        let theirs_logits = &reference[&format!("image{k}.logits")];
        let ours_top = argmax(&logits.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let theirs_top = argmax(&theirs_logits.to_vec1::<f32>().unwrap());
        top1_agree += usize::from(ours_top == theirs_top);
    }
    let mean = sum / count as f64;
    println!(
        "preprocessing vs torchvision: mean |diff| {mean:.6}, max {max:.6} (normalised units)"
    );
    assert!(mean < 5e-4, "mean difference {mean}");
    assert!(max < 0.02, "max difference {max}");
    assert_eq!(top1_agree, 10, "top-1 agrees on every image");
}
