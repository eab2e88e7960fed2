//! Helpers shared by the cross-crate tests: the formula weights that the PyTorch fixture script
//! computes too, and the location of the real radiographs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use pneumoscope::checkpoint::named_vars;
use pneumoscope::{Checkpoint, Classifier, ModelCard, ResNet50};
use trainer::predict::load_classifier;

/// `../shared/data` beside the repository (read-only, present for developers and CI).
pub fn shared_data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The files in `dir`, sorted by path (a test that reads a folder must say which one failed).
pub fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The model in `weights/` (the one the page ships) and its card, loaded as the page and
/// `trainer predict` load it: the weights' SHA-256 checked against the card.
pub fn shipped_model() -> (Classifier, ModelCard) {
    let (card_path, card) = shipped_card();
    let classifier = load_classifier(
        &repo_root().join("weights").join(&card.weights.file),
        Some(&card_path),
        &Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("the shipped model: {e:#}"));
    (classifier, card)
}

/// `weights/model.json` and what it says.
fn shipped_card() -> (PathBuf, ModelCard) {
    let card_path = repo_root().join("weights").join("model.json");
    let text = std::fs::read_to_string(&card_path)
        .unwrap_or_else(|e| panic!("the shipped card {}: {e}", card_path.display()));
    let card = ModelCard::from_json(&text).expect("a valid card");
    (card_path, card)
}

/// The shipped model computing its products in f32, as the same weights stored as floats
/// would: its int8 file's kernels dequantized without the int8 mark (`Checkpoint::
/// has_int8_kernels`). The smoother instrument where a test compares near-identical inputs:
/// int8 products move in steps of an activation code.
pub fn shipped_model_f32_products() -> Classifier {
    let (_, card) = shipped_card();
    let checkpoint = Checkpoint::from_file(
        &repo_root().join("weights").join(&card.weights.file),
        &Device::Cpu,
    )
    .expect("the shipped weights");
    assert!(checkpoint.has_int8_kernels(), "the shipped file is int8");
    Classifier::new(checkpoint.as_float(), Some(&card), &Device::Cpu)
        .expect("the shipped model with f32 products")
}

/// A fresh training model on a var map (values are whatever the var map starts with).
pub fn varmap_model(num_classes: usize) -> (VarMap, ResNet50) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = ResNet50::new(vb, num_classes).expect("build ResNet50");
    (varmap, model)
}

/// The names and shapes of every ResNet50 tensor, sorted by name.
pub fn parameter_shapes(num_classes: usize) -> Vec<(String, Vec<usize>)> {
    let (varmap, _) = varmap_model(num_classes);
    named_vars(&varmap)
        .expect("var map")
        .into_iter()
        .map(|(name, var)| (name, var.dims().to_vec()))
        .collect()
}

/// Mirrors `hash_uniform` in the fixture script: 2 * frac(sin(t) * 43758.5453) - 1.
fn hash_uniform(t: f64) -> f64 {
    let h = t.sin() * 43758.5453;
    2.0 * (h - h.floor()) - 1.0
}

/// Mirrors `formula_values` in scripts/make_parity_fixture.py.
fn formula_values(index: usize, name: &str, shape: &[usize]) -> Vec<f32> {
    let numel: usize = shape.iter().product();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    (0..numel)
        .map(|i| {
            let base = hash_uniform(0.61 * i as f64 + 0.37 * index as f64);
            let v = if leaf == "weight" && shape.len() == 4 {
                let fan_in = (shape[1] * shape[2] * shape[3]) as f64;
                base * 3f64.sqrt() * (2.0 / fan_in).sqrt()
            } else if name == "fc.weight" {
                base / (shape[1] as f64).sqrt()
            } else if leaf == "weight" {
                1.0 + 0.1 * base
            } else if leaf == "running_var" {
                1.0 + 0.25 * (base + 1.0)
            } else {
                0.1 * base
            };
            v as f32
        })
        .collect()
}

/// The formula weights for a ResNet50 with `num_classes` outputs, by torchvision name.
pub fn formula_weights(num_classes: usize) -> HashMap<String, Tensor> {
    parameter_shapes(num_classes)
        .into_iter()
        .enumerate()
        .map(|(index, (name, shape))| {
            let values = formula_values(index, &name, &shape);
            let tensor = Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor");
            (name, tensor)
        })
        .collect()
}

/// Mirrors `formula_input` in the fixture script: (n, 3, 224, 224).
pub fn formula_input(n: usize) -> Tensor {
    let values: Vec<f32> = (0..n * 3 * 224 * 224)
        .map(|i| (2.0 * hash_uniform(0.0137 * i as f64)) as f32)
        .collect();
    Tensor::from_vec(values, (n, 3, 224, 224), &Device::Cpu).expect("tensor")
}

/// max |a - b| / max |b|: the error relative to the reference's scale.
pub fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len(), "compared tensors differ in size");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

/// A colour test pattern (gradients and a checkerboard): an image nothing like a radiograph.
pub fn colour_pattern(width: u32, height: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 255 / width) as u8,
            ((x / 20 + y / 20) % 2 * 255) as u8,
            (y * 255 / height) as u8,
        ])
    })
}
