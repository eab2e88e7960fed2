//! Inference of the shipped model, stage by stage, beside onnxruntime on the same weights.
//!
//! `cargo bench -p trainer --bench inference` classifies 10 radiographs of
//! `../shared/data/covid19-kaggle/test` one at a time at 112, 176 (shipped) and 224 pixels, as
//! `trainer predict` does (decode, preprocess, forward, maps, gate), and prints the median time of
//! each stage. It then hands the same preprocessed inputs and our logits to
//! `scripts/onnx_peer.py` (onnxruntime, developers only: `pip install onnx onnxruntime
//! safetensors`), which exports the weights to ONNX, checks its logits against ours and times its
//! forward pass at the same thread count; the last table gives the ratios. Ours runs twice: with
//! int8 products (what the shipped int8 file computes with, here and in the page) and with f32
//! products (the same weights, as a float file would compute). Threads:
//! candle's default (all cores); `RAYON_NUM_THREADS=1` pins both sides to one.
//!
//! A folder, last: the same radiographs classified as `trainer predict` and `evaluate` run a
//! folder (an image per thread, `trainer::parallel`), everything per image, beside
//! onnxruntime's forward pass alone in batches of as many images as threads.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use candle_core::{Device, Tensor};
use pneumoscope::decode::decode_rgb;
use pneumoscope::stage_times::{StageTimes, Stopwatch};
use pneumoscope::{Checkpoint, Classifier, ModelCard};
use trainer::parallel::map_per_image;

const CROPS: [u32; 3] = [112, 176, 224];
const IMAGES_PER_CLASS: usize = 5;
const REPEATS: usize = 3;

/// The first `IMAGES_PER_CLASS` Covid and Normal files of the Kaggle test set, named by class.
fn images() -> Vec<(String, Vec<u8>)> {
    common::first_files(
        "covid19-kaggle/test",
        &["Covid", "Normal"],
        IMAGES_PER_CLASS,
    )
    .into_iter()
    .map(|sample| (sample.relative, std::fs::read(&sample.path).unwrap()))
    .collect()
}

/// The shipped model with its preprocessing moved to `crop` (the resize keeps the card's ratio),
/// with int8 or f32 products.
fn classifier(card: &ModelCard, crop: u32, int8: bool) -> Classifier {
    let mut card = card.clone();
    let ratio = card.preprocessing.resize_shorter as f32 / card.preprocessing.crop as f32;
    card.preprocessing.resize_shorter = (crop as f32 * ratio).round() as u32;
    card.preprocessing.crop = crop;
    let weights = common::root().join("weights/model.safetensors");
    let checkpoint = Checkpoint::from_file(&weights, &Device::Cpu).unwrap();
    // An int8 file computes in int8 already; a float file only when asked.
    let float_file = !checkpoint.has_int8_kernels();
    let checkpoint = if int8 {
        checkpoint
    } else {
        checkpoint.as_float()
    };
    let mut classifier = Classifier::new(checkpoint, Some(&card), &Device::Cpu).unwrap();
    if int8 && float_file {
        classifier.use_int8_products().unwrap();
    }
    classifier
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

struct CropResult {
    crop: u32,
    /// Per stage, its median over images and repeats.
    stages: StageTimes,
    /// Median of the whole per-image time.
    total: f64,
    /// Median of stem .. head.
    forward: f64,
}

const FORWARD_STAGES: [&str; 6] = ["stem", "layer1", "layer2", "layer3", "layer4", "head"];

/// Times every image `REPEATS` times after one warm-up and, given `out`, writes the inputs and
/// logits for the peer there.
fn bench_crop(
    card: &ModelCard,
    crop: u32,
    images: &[(String, Vec<u8>)],
    int8: bool,
    out: Option<&Path>,
) -> CropResult {
    let classifier = classifier(card, crop, int8);
    let clock_origin = Instant::now();
    let clock = move || clock_origin.elapsed().as_secs_f64() * 1000.0;
    let mut runs: Vec<StageTimes> = Vec::new();
    let mut inputs = Vec::new();
    let mut logits = Vec::new();
    for (_, bytes) in images {
        let image = decode_rgb(bytes).unwrap();
        inputs.extend(classifier.preprocessing().apply(&image));
        logits.extend(classifier.classify_image(&image).unwrap().logits);
    }
    for _ in 0..REPEATS {
        for (_, bytes) in images {
            let mut watch = Stopwatch::new(&clock);
            let image = decode_rgb(bytes).unwrap();
            watch.lap("decode");
            classifier.classify_image_timed(&image, &mut watch).unwrap();
            runs.push(watch.into_times());
        }
    }
    if let Some(out) = out {
        let n = images.len();
        let c = crop as usize;
        Tensor::from_vec(inputs, (n, 3, c, c), &Device::Cpu)
            .unwrap()
            .write_npy(out.join(format!("input-{crop}.npy")))
            .unwrap();
        let classes = logits.len() / n;
        Tensor::from_vec(logits, (n, classes), &Device::Cpu)
            .unwrap()
            .write_npy(out.join(format!("logits-{crop}.npy")))
            .unwrap();
    }
    let mut stages = StageTimes::default();
    for (name, _) in &runs[0].0 {
        stages.add(
            name,
            median(runs.iter().filter_map(|r| r.get(name)).collect()),
        );
    }
    let forward = median(
        runs.iter()
            .map(|r| FORWARD_STAGES.iter().filter_map(|s| r.get(s)).sum())
            .collect(),
    );
    CropResult {
        crop,
        stages,
        total: median(runs.iter().map(StageTimes::total).collect()),
        forward,
    }
}

/// Milliseconds per image, everything from the file's bytes on, when `REPEATS` copies of
/// `images` are classified as a folder (an image per thread), after one warm-up pass.
fn bench_folder(card: &ModelCard, crop: u32, images: &[(String, Vec<u8>)]) -> f64 {
    let classifier = classifier(card, crop, true);
    let files: Vec<&[u8]> = (0..REPEATS)
        .flat_map(|_| images.iter().map(|(_, bytes)| bytes.as_slice()))
        .collect();
    let classify_all = |files: &[&[u8]]| {
        map_per_image(files, &Device::Cpu, |bytes| {
            classifier.classify_bytes(bytes).unwrap().top
        })
    };
    classify_all(&files[..images.len()]);
    let start = Instant::now();
    classify_all(&files);
    start.elapsed().as_secs_f64() * 1000.0 / files.len() as f64
}

#[derive(serde::Deserialize)]
struct PeerResult {
    crop: u32,
    median_ms: f64,
    batched_per_image_ms: f64,
    max_logit_diff: f64,
    onnxruntime: String,
}

/// onnxruntime's forward pass on the same inputs, or why there is none.
fn peer(out: &Path, threads: usize) -> Result<Vec<PeerResult>, String> {
    let script = common::root().join("scripts/onnx_peer.py");
    let onnx = out.join("model.onnx");
    let run = |args: &[&str]| -> Result<String, String> {
        let output = Command::new("python3")
            .arg(&script)
            .args(args)
            .output()
            .map_err(|e| format!("python3 could not start: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let weights = common::root().join("weights/model.safetensors");
    run(&[
        "export",
        &weights.to_string_lossy(),
        &onnx.to_string_lossy(),
    ])?;
    let stdout = run(&[
        "bench",
        &onnx.to_string_lossy(),
        &out.to_string_lossy(),
        "--threads",
        &threads.to_string(),
    ])?;
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).map_err(|e| format!("{e}: {line}")))
        .collect()
}

fn print_stages(products: &str, results: &[CropResult]) {
    let crops: Vec<String> = results.iter().map(|r| format!("{0}x{0}", r.crop)).collect();
    println!(
        "| stage, {products} products (median ms) | {} |",
        crops.join(" | ")
    );
    println!("|---|{}", "---|".repeat(results.len()));
    for (name, _) in &results[0].stages.0 {
        let cells: Vec<String> = results
            .iter()
            .map(|r| format!("{:.1}", r.stages.get(name).unwrap_or(0.0)))
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    let totals: Vec<String> = results
        .iter()
        .map(|r| format!("**{:.1}**", r.total))
        .collect();
    println!("| per image, everything | {} |", totals.join(" | "));
}

fn main() {
    // The allocator settings `trainer predict` runs with.
    trainer::keep_freed_memory();
    let threads = candle_core::utils::get_num_threads();
    let card = common::shipped_card();
    let out = common::root().join("target/bench/inference");
    std::fs::create_dir_all(&out).unwrap();
    let images = images();
    println!(
        "shipped model `{}` ({}), {} radiographs of covid19-kaggle/test one at a time, {REPEATS} \
         repeats, {threads} thread(s)\n",
        card.name,
        card.weights.dtype,
        images.len()
    );
    let results: Vec<CropResult> = CROPS
        .iter()
        .map(|&crop| bench_crop(&card, crop, &images, false, Some(&out)))
        .collect();
    let int8_results: Vec<CropResult> = CROPS
        .iter()
        .map(|&crop| bench_crop(&card, crop, &images, true, None))
        .collect();
    print_stages("f32", &results);
    println!();
    print_stages("int8", &int8_results);
    println!();
    match peer(&out, threads) {
        Err(why) => println!("no onnxruntime column: {}", why.trim()),
        Ok(peers) => {
            println!(
                "| input | ours: everything | ours: forward (stem .. head) | ours, int8 products: forward | onnxruntime {}: forward | ours forward / onnxruntime | ours int8 / onnxruntime | largest logit difference (f32) |",
                peers.first().map(|p| p.onnxruntime.as_str()).unwrap_or("?")
            );
            println!("|---|---|---|---|---|---|---|---|");
            for (result, int8) in results.iter().zip(&int8_results) {
                let Some(p) = peers.iter().find(|p| p.crop == result.crop) else {
                    continue;
                };
                println!(
                    "| {0}x{0} | {1:.1} ms | {2:.1} ms | {3:.1} ms | {4:.1} ms | {5:.2}x | {6:.2}x | {7:.1e} |",
                    result.crop,
                    result.total,
                    result.forward,
                    int8.forward,
                    p.median_ms,
                    result.forward / p.median_ms,
                    int8.forward / p.median_ms,
                    p.max_logit_diff
                );
            }
            println!();
            print_folder(&card, &images, threads, &peers);
        }
    }
}

fn print_folder(
    card: &ModelCard,
    images: &[(String, Vec<u8>)],
    threads: usize,
    peers: &[PeerResult],
) {
    println!(
        "| a folder, {threads} thread(s) | ours, int8 products: everything per image (an image per thread) | onnxruntime: forward per image (batches of {threads}) | onnxruntime: forward, one image at a time | ours / onnxruntime's faster |"
    );
    println!("|---|---|---|---|---|");
    for &crop in &CROPS {
        let Some(p) = peers.iter().find(|p| p.crop == crop) else {
            continue;
        };
        let ours = bench_folder(card, crop, images);
        let peer = p.batched_per_image_ms.min(p.median_ms);
        println!(
            "| {crop}x{crop} | {ours:.1} ms | {:.1} ms | {:.1} ms | {:.2}x |",
            p.batched_per_image_ms,
            p.median_ms,
            ours / peer
        );
    }
}
