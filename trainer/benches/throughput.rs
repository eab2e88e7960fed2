//! Throughput of a random-weight ResNet50 on this machine: inference latency at batch 1 and 8,
//! at 224x224, and training images/s (forward, backward, SGD step) at 224x224 batch 8 and at the
//! shipped recipe's 112x112 batch 32.
//!
//! `cargo bench -p trainer --bench throughput` prints a table. Threads: candle's default (all
//! cores); set RAYON_NUM_THREADS to pin.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use pneumoscope::checkpoint::named_vars;
use pneumoscope::{init, ResNet50};
use trainer::optim::{Sgd, SgdConfig};

const CLASSES: usize = 3;

fn model() -> (VarMap, ResNet50) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = ResNet50::new(vb, CLASSES).unwrap();
    init::initialize(&varmap, 0).unwrap();
    (varmap, model)
}

fn input(batch: usize, size: usize) -> Tensor {
    Tensor::randn(0f32, 1.0, (batch, 3, size, size), &Device::Cpu).unwrap()
}

/// Median seconds of `runs` timed calls after one warm-up.
fn median_seconds(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[runs / 2]
}

fn main() {
    trainer::keep_freed_memory();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("random-weight ResNet50, f32, CPU, {threads} threads available");
    println!("| what | batch | ms per batch | ms per image | images/s |");
    println!("|---|---|---|---|---|");
    let inference_batches: &[usize] = if std::env::var_os("BENCH_TRAIN_ONLY").is_some() {
        &[]
    } else {
        &[1, 8]
    };
    let (varmap, model) = model();
    let mut folded = model.clone();
    folded.fold_batch_norms().unwrap();
    for (what, net) in [
        ("inference (eval forward)", &model),
        ("inference, batch norms folded (Classifier)", &folded),
    ] {
        for &batch in inference_batches {
            let x = input(batch, 224);
            let runs = if batch == 1 { 9 } else { 3 };
            let s = median_seconds(runs, || {
                net.forward_t(&x, false)
                    .unwrap()
                    .logits
                    .to_vec2::<f32>()
                    .unwrap();
            });
            row(what, batch, s);
        }
    }
    let params = named_vars(&varmap)
        .unwrap()
        .into_iter()
        .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
        .collect();
    let config = SgdConfig {
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 0.0,
        nesterov: false,
    };
    let mut sgd = Sgd::new(params, config);
    // The README's table row at 224 and batch 8, and the shipped recipe's 112 at batch 32.
    for (batch, size) in [(8, 224), (32, 112)] {
        let x = input(batch, size);
        let labels: Vec<u32> = (0..batch as u32).map(|i| i % CLASSES as u32).collect();
        let labels = Tensor::new(labels, &Device::Cpu).unwrap();
        let s = median_seconds(3, || {
            let logits = model.forward_t(&x, true).unwrap().logits;
            let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
            sgd.step(&loss.backward().unwrap(), 0.01).unwrap();
        });
        row(
            &format!("training step (fwd+bwd+SGD), {size}x{size}"),
            batch,
            s,
        );
    }
}

fn row(what: &str, batch: usize, seconds: f64) {
    println!(
        "| {what} | {batch} | {:.1} | {:.1} | {:.2} |",
        seconds * 1e3,
        seconds * 1e3 / batch as f64,
        batch as f64 / seconds
    );
}
