//! Loading and saving weights: torchvision names, transfer from another class count, clear errors.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use pneumoscope::checkpoint::{state_dict, to_safetensors_bytes, Checkpoint, HeadLoad};
use pneumoscope::{init, Error};
use pneumoscope_tests::{formula_weights, relative_error, varmap_model};

fn bytes_of(tensors: &HashMap<String, Tensor>) -> Vec<u8> {
    to_safetensors_bytes(tensors).unwrap()
}

#[test]
fn zero_init_residual_zeroes_exactly_the_last_norm_scale_of_each_bottleneck() {
    let (varmap, _) = varmap_model(3);
    init::initialize(&varmap, 7).unwrap();
    init::zero_init_residual(&varmap).unwrap();
    let tensors = state_dict(&varmap, DType::F32, 0).unwrap();
    let is_zero = |name: &str| {
        // num_batches_tracked is int64.
        let tensor = tensors[name].to_dtype(DType::F32).unwrap();
        let values = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        values.iter().all(|v| *v == 0.0)
    };
    let zeroed: Vec<&String> = tensors.keys().filter(|name| is_zero(name)).collect();
    // 3 + 4 + 6 + 3 bottlenecks; biases and running means start at zero anyway.
    let scales: Vec<&&String> = zeroed.iter().filter(|n| n.ends_with(".weight")).collect();
    assert_eq!(scales.len(), 16, "{scales:?}");
    assert!(scales.iter().all(|n| n.ends_with(".bn3.weight")));
    assert!(!is_zero("layer1.0.bn2.weight") && !is_zero("bn1.weight"));
    assert!(!is_zero("layer1.0.downsample.1.weight"));
}

#[test]
fn imagenet_head_loads_backbone_and_keeps_a_fresh_head() {
    let imagenet = Checkpoint::from_tensors(formula_weights(1000));
    let (varmap, _) = varmap_model(3);
    init::initialize(&varmap, 7).unwrap();
    let fresh_head = state_dict(&varmap, DType::F32, 0).unwrap()["fc.weight"].clone();

    let head = imagenet.load_into(&varmap, true).unwrap();
    assert_eq!(
        head,
        HeadLoad::KeptFresh {
            checkpoint_classes: 1000
        }
    );
    let loaded = state_dict(&varmap, DType::F32, 0).unwrap();
    assert_eq!(relative_error(&loaded["fc.weight"], &fresh_head), 0.0);
    let conv = "layer3.5.conv2.weight";
    assert_eq!(
        relative_error(&loaded[conv], &imagenet.tensors()[conv]),
        0.0
    );
    // PyTorch's nn.Linear init: U(-1/sqrt(2048), 1/sqrt(2048)).
    let bound = 1.0 / 2048f32.sqrt();
    let head_values = fresh_head.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(head_values.iter().all(|v| v.abs() <= bound));
    assert!(head_values.iter().any(|v| v.abs() > bound / 2.0));

    let before = state_dict(&varmap, DType::F32, 0).unwrap()[conv]
        .copy()
        .unwrap();
    let (untouched, _) = varmap_model(3);
    let err = imagenet.load_into(&untouched, false).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { name, .. } if name.starts_with("fc.")),
        "{err}"
    );
    // Nothing was loaded: the refused checkpoint left the model as it was.
    let after = state_dict(&untouched, DType::F32, 0).unwrap();
    assert!(after[conv]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| *v == 0.0));
    assert_eq!(
        relative_error(&state_dict(&varmap, DType::F32, 0).unwrap()[conv], &before),
        0.0
    );
}

#[test]
fn missing_tensor_is_named() {
    let mut weights = formula_weights(3);
    weights.remove("layer2.0.downsample.1.running_var");
    let err = Checkpoint::from_tensors(weights.clone())
        .into_model(&Device::Cpu)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("layer2.0.downsample.1.running_var"),
        "{err}"
    );
    let (varmap, _) = varmap_model(3);
    let err = Checkpoint::from_tensors(weights)
        .load_into(&varmap, true)
        .unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name } if name == "layer2.0.downsample.1.running_var")
    );
}

#[test]
fn shape_mismatch_is_named() {
    let mut weights = formula_weights(3);
    weights.insert(
        "layer1.0.conv2.weight".into(),
        Tensor::zeros((64, 64, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    let err = Checkpoint::from_tensors(weights)
        .into_model(&Device::Cpu)
        .unwrap_err();
    match err {
        Error::ShapeMismatch {
            name,
            expected,
            found,
        } => {
            assert_eq!(name, "layer1.0.conv2.weight");
            assert_eq!(expected, vec![64, 64, 3, 3]);
            assert_eq!(found, vec![64, 64, 1, 1]);
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn save_and_load_round_trip_in_f32_and_f16() {
    let (varmap, _) = varmap_model(3);
    init::initialize(&varmap, 11).unwrap();
    let original = state_dict(&varmap, DType::F32, 0).unwrap();
    let dir = std::env::temp_dir().join(format!("pneumoscope-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (dtype, tolerance) in [(DType::F32, 0.0), (DType::F16, 1e-3)] {
        let path = dir.join(format!("{dtype:?}.safetensors"));
        pneumoscope::checkpoint::save(&varmap, &path, dtype, 42).unwrap();
        let raw = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        assert_eq!(raw.len(), 320, "267 tensors + 53 num_batches_tracked");
        let tracked = &raw["layer4.2.bn3.num_batches_tracked"];
        assert_eq!(tracked.dtype(), DType::I64);
        assert_eq!(tracked.to_scalar::<i64>().unwrap(), 42);
        let loaded = Checkpoint::from_file(&path, &Device::Cpu).unwrap();
        assert_eq!(loaded.tensors().len(), 267);
        for (name, tensor) in &original {
            if name.ends_with("num_batches_tracked") {
                continue;
            }
            let err = relative_error(&loaded.tensors()[name], tensor);
            assert!(err <= tolerance, "{name} {dtype:?}: {err}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// int8 files (`trainer quantize`) load through the same `Checkpoint::from_bytes`: convolution
/// kernels within half a quantization step of their channel's largest weight, the rest exact,
/// and the checkpoint knows it came from int8 kernels (a classifier then computes in int8).
#[test]
fn int8_weights_load_dequantized() {
    let (varmap, _) = varmap_model(3);
    init::initialize(&varmap, 12).unwrap();
    let original = state_dict(&varmap, DType::F32, 0).unwrap();
    let bytes = pneumoscope::quantize::to_int8_safetensors(&original).unwrap();
    assert!(
        bytes.len() < bytes_of(&original).len() / 3,
        "about a quarter of f32"
    );
    let loaded = Checkpoint::from_bytes(&bytes, &Device::Cpu).unwrap();
    assert!(loaded.has_int8_kernels());
    assert!(!Checkpoint::from_bytes(&bytes_of(&original), &Device::Cpu)
        .unwrap()
        .has_int8_kernels());
    assert_eq!(
        loaded.tensors().len(),
        267,
        "scales are not tensors of the model"
    );
    for (name, tensor) in &original {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let err = relative_error(&loaded.tensors()[name], tensor);
        let quantized = pneumoscope::quantize::is_quantized(name, tensor.dims());
        let tolerance = if quantized { 0.5 / 127.0 + 1e-6 } else { 0.0 };
        assert!(err <= tolerance, "{name}: {err}");
        assert!(!quantized || err > 0.0, "{name} should have been quantized");
    }
    loaded.into_model(&Device::Cpu).unwrap();
}

#[test]
fn unreadable_weights_files_are_clear_errors() {
    let cpu = Device::Cpu;
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("text", b"<html>404 not found</html>".to_vec()),
        ("truncated", bytes_of(&formula_weights(3))[..5000].to_vec()),
    ] {
        let err = Checkpoint::from_bytes(&bytes, &cpu).unwrap_err();
        assert!(matches!(err, Error::Checkpoint(_)), "{what}: {err}");
    }
    let err = Checkpoint::from_file(std::path::Path::new("/nonexistent/w.safetensors"), &cpu)
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/w.safetensors"));

    let mut ints = HashMap::new();
    ints.insert(
        "fc.weight".to_string(),
        Tensor::zeros((3, 2048), DType::I64, &cpu).unwrap(),
    );
    let err = Checkpoint::from_bytes(&bytes_of(&ints), &cpu).unwrap_err();
    assert!(err.to_string().contains("fc.weight"), "{err}");
}

#[test]
fn another_architecture_is_rejected_by_name() {
    let mut other = HashMap::new();
    other.insert(
        "features.0.weight".to_string(),
        Tensor::zeros((64, 3, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let checkpoint = Checkpoint::from_bytes(&bytes_of(&other), &Device::Cpu).unwrap();
    let err = checkpoint.into_model(&Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name } if name == "fc.weight"),
        "{err}"
    );
}

/// The card's SHA-256 check, whether the page hashes in wasm or hands a digest from SubtleCrypto:
/// the shipped weights pass both ways, one changed byte fails both ways, naming both hashes.
#[test]
fn the_card_checks_weights_and_digests_alike() {
    use sha2::{Digest, Sha256};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../weights");
    let card = pneumoscope::ModelCard::from_json(
        &std::fs::read_to_string(root.join("model.json")).unwrap(),
    )
    .unwrap();
    let mut weights = std::fs::read(root.join(&card.weights.file)).unwrap();
    card.verify_weights(&weights).unwrap();
    card.verify_weights_digest(&Sha256::digest(&weights))
        .unwrap();
    let middle = weights.len() / 2;
    weights[middle] ^= 1;
    let by_bytes = card.verify_weights(&weights).unwrap_err().to_string();
    let by_digest = card
        .verify_weights_digest(&Sha256::digest(&weights))
        .unwrap_err()
        .to_string();
    assert_eq!(by_bytes, by_digest);
    assert!(by_bytes.contains(&card.weights.sha256), "{by_bytes}");
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn head_row(tensors: &HashMap<String, Tensor>, name: &str, row: usize) -> Tensor {
    tensors[name].get(row).unwrap()
}

#[test]
fn head_matched_by_class_name_keeps_shared_rows_and_starts_the_others_fresh() {
    let trained = Checkpoint::from_tensors(formula_weights(3));
    let trained_classes = names(&["Covid", "Normal", "Viral Pneumonia"]);
    let model_classes = names(&[
        "Bacterial Pneumonia",
        "Covid",
        "Normal",
        "Tuberculosis",
        "Viral Pneumonia",
    ]);
    let (varmap, _) = varmap_model(5);
    init::initialize(&varmap, 7).unwrap();
    let fresh = state_dict(&varmap, DType::F32, 0).unwrap();

    let (remapped, kept) = trained
        .clone()
        .with_head_for(&trained_classes, &model_classes, &varmap)
        .unwrap();
    assert_eq!(kept, trained_classes);
    assert_eq!(
        remapped.load_into(&varmap, false).unwrap(),
        HeadLoad::Loaded
    );
    let loaded = state_dict(&varmap, DType::F32, 0).unwrap();
    for name in ["fc.weight", "fc.bias"] {
        assert_eq!(loaded[name].dims()[0], 5);
        // Model row <- checkpoint row: Covid 1 <- 0, Normal 2 <- 1, Viral Pneumonia 4 <- 2.
        for (model_row, trained_row) in [(1, 0), (2, 1), (4, 2)] {
            let err = relative_error(
                &head_row(&loaded, name, model_row),
                &head_row(trained.tensors(), name, trained_row),
            );
            assert_eq!(err, 0.0, "{name} row {model_row}");
        }
        for new_row in [0, 3] {
            let err = relative_error(
                &head_row(&loaded, name, new_row),
                &head_row(&fresh, name, new_row),
            );
            assert_eq!(err, 0.0, "{name} row {new_row} should be the fresh one");
        }
    }
    let conv = "layer2.1.conv1.weight";
    assert_eq!(relative_error(&loaded[conv], &trained.tensors()[conv]), 0.0);

    // Back from five classes to three, in another order: each row follows its class.
    let five = Checkpoint::from_tensors(loaded);
    let (three_model, _) = varmap_model(3);
    init::initialize(&three_model, 8).unwrap();
    let reordered = names(&["Viral Pneumonia", "Covid", "Normal"]);
    let (back, kept) = five
        .with_head_for(&model_classes, &reordered, &three_model)
        .unwrap();
    assert_eq!(kept, reordered);
    let weight = &back.tensors()["fc.weight"];
    let err = relative_error(
        &weight.get(0).unwrap(),
        &head_row(trained.tensors(), "fc.weight", 2),
    );
    assert_eq!(err, 0.0);
}

#[test]
fn head_matching_refuses_wrong_class_lists() {
    let trained = Checkpoint::from_tensors(formula_weights(3));
    let (varmap, _) = varmap_model(2);
    init::initialize(&varmap, 7).unwrap();
    let too_few = trained
        .clone()
        .with_head_for(
            &names(&["Covid", "Normal"]),
            &names(&["Covid", "Normal"]),
            &varmap,
        )
        .unwrap_err();
    assert!(too_few.to_string().contains("3 rows"), "{too_few}");
    let disjoint = trained
        .with_head_for(
            &names(&["Covid", "Normal", "Viral Pneumonia"]),
            &names(&["Tuberculosis", "Bacterial Pneumonia"]),
            &varmap,
        )
        .unwrap_err();
    assert!(disjoint.to_string().contains("share none"), "{disjoint}");
}

#[test]
fn a_head_narrowed_to_some_classes_keeps_their_rows_and_the_backbone() {
    let five_classes = names(&[
        "Bacterial Pneumonia",
        "Covid",
        "Normal",
        "Tuberculosis",
        "Viral Pneumonia",
    ]);
    let five = Checkpoint::from_tensors(formula_weights(5));
    let three = names(&["Covid", "Normal", "Viral Pneumonia"]);
    let narrowed = five
        .clone()
        .with_head_narrowed_to(&five_classes, &three)
        .unwrap();
    assert_eq!(narrowed.num_classes().unwrap(), 3);
    for name in ["fc.weight", "fc.bias"] {
        for (row, five_row) in [(0, 1), (1, 2), (2, 4)] {
            let err = relative_error(
                &head_row(narrowed.tensors(), name, row),
                &head_row(five.tensors(), name, five_row),
            );
            assert_eq!(err, 0.0, "{name} row {row}");
        }
    }
    let conv = "layer4.2.conv3.weight";
    assert_eq!(
        relative_error(&narrowed.tensors()[conv], &five.tensors()[conv]),
        0.0
    );
    let unknown = five
        .with_head_narrowed_to(&five_classes, &names(&["Covid", "Pneumothorax"]))
        .unwrap_err();
    assert!(unknown.to_string().contains("`Pneumothorax`"), "{unknown}");
}
