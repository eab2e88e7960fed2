//! Which heat map shows what the shipped model's answer rests on: the deletion metric (Petsiuk
//! et al., RISE, 2018) for the maps the page could draw.
//!
//! `cargo bench -p trainer --bench attribution` takes the first 30 radiographs of each of the
//! three paper classes in `../shared/data/cxr-multisource/test`, and for each map removes the
//! input's pixels from the most to the least important in 16 steps (set to 0, the dataset mean
//! after normalisation), recording the probability of the class the model first chose. The area
//! under that curve is lower when the map found what the answer depends on. A random map is the
//! floor of the comparison. Prints a table; no test depends on it.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use image::imageops::{self, FilterType};
use image::{ImageBuffer, Luma};
use pneumoscope::calibration::softmax_with_temperature;
use pneumoscope::cam::{grad_cam, layer_cam, ClassActivationMaps};
use pneumoscope::classifier::argmax;
use pneumoscope::decode::decode_rgb;
use pneumoscope::{Checkpoint, ResNet50};
use rand::{Rng, SeedableRng};

const CLASSES: [&str; 3] = ["Covid", "Normal", "Viral Pneumonia"];
const PER_CLASS: usize = 30;
const STEPS: usize = 16;
const SEED: u64 = 7;

fn images() -> Vec<PathBuf> {
    common::first_files("cxr-multisource/test", &CLASSES, PER_CLASS)
        .into_iter()
        .map(|sample| sample.path)
        .collect()
}

/// A (h, w) map upsampled smoothly to `side` x `side`, as the page draws it.
fn upsampled(map: &Tensor, side: u32) -> Vec<f32> {
    let (h, w) = map.dims2().unwrap();
    let values = map.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let small: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(w as u32, h as u32, values).unwrap();
    imageops::resize(&small, side, side, FilterType::Triangle).into_raw()
}

/// Area under the probability of `class` as the pixels go, most important first.
fn deletion_auc(model: &ResNet50, input: &Tensor, map: &[f32], class: usize, t: f32) -> f32 {
    let (_, channels, side, _) = input.dims4().unwrap();
    let plane = side * side;
    let mut order: Vec<usize> = (0..plane).collect();
    order.sort_by(|&a, &b| map[b].total_cmp(&map[a]));
    let original = input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut batch = Vec::with_capacity((STEPS + 1) * original.len());
    for step in 0..=STEPS {
        let mut image = original.clone();
        for &pixel in &order[..plane * step / STEPS] {
            for c in 0..channels {
                image[c * plane + pixel] = 0.0;
            }
        }
        batch.extend(image);
    }
    let batch = Tensor::from_vec(batch, (STEPS + 1, channels, side, side), &Device::Cpu).unwrap();
    let logits = model.forward_t(&batch, false).unwrap().logits;
    let curve: Vec<f32> = logits
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .map(|l| softmax_with_temperature(l, t)[class])
        .collect();
    // Trapezoids over [0, 1].
    curve.windows(2).map(|p| (p[0] + p[1]) / 2.0).sum::<f32>() / STEPS as f32
}

fn mean_and_sd(values: &[f32]) -> (f32, f32) {
    let n = values.len() as f32;
    let mean = values.iter().sum::<f32>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / (n - 1.0);
    (mean, var.sqrt())
}

fn main() {
    let dir = common::root().join("weights");
    let card = common::shipped_card();
    let mut model = Checkpoint::from_file(&dir.join(&card.weights.file), &Device::Cpu)
        .unwrap()
        .into_model(&Device::Cpu)
        .unwrap();
    model.fold_batch_norms().unwrap();
    let t = card.temperature.unwrap_or(1.0);
    let side = card.preprocessing.crop;
    let names = [
        "random map",
        "CAM of layer4 (what the page drew before)",
        "Grad-CAM on layer2",
        "LayerCAM on layer2 (the page's heat map)",
    ];
    let mut aucs: Vec<Vec<f32>> = vec![Vec::new(); names.len()];
    let mut millis = vec![0f64; names.len()];
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let images = images();
    for path in &images {
        let image = decode_rgb(&std::fs::read(path).unwrap()).unwrap();
        let s = side as usize;
        let input =
            Tensor::from_vec(card.preprocessing.apply(&image), (1, 3, s, s), &Device::Cpu).unwrap();
        let start = Instant::now();
        let output = model.forward_t(&input, false).unwrap();
        let forward = start.elapsed().as_secs_f64() * 1000.0;
        let logits = output.logits.get(0).unwrap().to_vec1::<f32>().unwrap();
        let class = argmax(&logits);
        let layer2 = output.layer2_map.get(0).unwrap();

        let random: Vec<f32> = (0..s * s).map(|_| rng.random::<f32>()).collect();
        let cam =
            ClassActivationMaps::compute(&output.feature_map.get(0).unwrap(), model.head_weight())
                .unwrap();
        let (h, w) = (cam.height, cam.width);
        let cam = Tensor::from_vec(cam.maps[class].clone(), (h, w), &Device::Cpu).unwrap();
        let start = Instant::now();
        let gradient = model.layer2_gradient(&layer2, class).unwrap();
        let backward = start.elapsed().as_secs_f64() * 1000.0;
        let maps = [
            random,
            upsampled(&cam, side),
            upsampled(&grad_cam(&layer2, &gradient).unwrap(), side),
            upsampled(&layer_cam(&layer2, &gradient).unwrap(), side),
        ];
        for (i, map) in maps.iter().enumerate() {
            aucs[i].push(deletion_auc(&model, &input, map, class, t));
        }
        millis[1] += forward;
        millis[2] += forward + backward;
        millis[3] += forward + backward;
    }
    println!(
        "shipped model `{}`, {} radiographs of cxr-multisource/test ({PER_CLASS} per class, \
         first by name), {side}x{side}, deletion in {STEPS} steps to 0 (the mean)\n",
        card.name,
        images.len()
    );
    println!("| map | deletion AUC, mean (lower: the map found what the answer rests on) | sd | paired difference from the random map, mean ± standard error | ms per image (forward + backward) |");
    println!("|---|---|---|---|---|");
    for (i, name) in names.iter().enumerate() {
        let (mean, sd) = mean_and_sd(&aucs[i]);
        let differences: Vec<f32> = aucs[i].iter().zip(&aucs[0]).map(|(a, r)| a - r).collect();
        let (difference, difference_sd) = mean_and_sd(&differences);
        let standard_error = difference_sd / (differences.len() as f32).sqrt();
        let (paired, cost) = match i {
            0 => ("-".to_string(), "-".to_string()),
            _ => (
                format!("{difference:+.3} ± {standard_error:.3}"),
                format!("{:.0}", millis[i] / images.len() as f64),
            ),
        };
        println!("| {name} | {mean:.3} | {sd:.3} | {paired} | {cost} |");
    }
}
