//! `trainer quantize`: int8 weights for the page's download (`pneumoscope::quantize`), with a
//! card that records what they were made from. The float model's evaluations do not hold for the
//! int8 one, so they move to the card's quantization record and are measured again
//! (`trainer evaluate --record`, `trainer check-gate --record`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use pneumoscope::card::{sha256_hex, ModelCard, QuantizationRecord};
use pneumoscope::quantize::{is_quantized, to_int8_safetensors, INT8_DTYPE};

use crate::predict::write_model;

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Float weights (calibrated: the gate's tensors are kept as they are).
    #[arg(long)]
    pub weights: PathBuf,
    /// Their model card.
    #[arg(long)]
    pub card: PathBuf,
    /// Folder for the int8 `model.safetensors` and its `model.json`.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: &QuantizeArgs) -> Result<ModelCard> {
    let device = Device::Cpu;
    let bytes = std::fs::read(&args.weights)
        .with_context(|| format!("reading {}", args.weights.display()))?;
    let mut card = ModelCard::from_json(
        &std::fs::read_to_string(&args.card)
            .with_context(|| format!("reading {}", args.card.display()))?,
    )?;
    card.verify_weights(&bytes)?;
    if card.quantization.is_some() {
        bail!("{} is already quantized", args.weights.display());
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, &device)
        .with_context(|| format!("reading {}", args.weights.display()))?;
    let int8 = to_int8_safetensors(&tensors)?;
    report_error(&tensors, &int8, &device)?;

    card.quantization = Some(QuantizationRecord {
        scheme: "symmetric int8 per output channel (scale = max |w| / 127) for every convolution kernel; batch norms, head and gate as they were; products computed in int8 (7-bit activations, one scale per image and layer, exact i32 sums)".into(),
        from_sha256: card.weights.sha256.clone(),
        from_dtype: card.weights.dtype.clone(),
        from_accuracy: card
            .evaluations
            .iter()
            .map(|e| (e.name.clone(), e.report.accuracy))
            .collect(),
    });
    card.weights.sha256 = sha256_hex(&int8);
    card.weights.bytes = int8.len() as u64;
    card.weights.dtype = INT8_DTYPE.into();
    card.evaluations.clear();
    if let Some(gate) = card.ood_gate.as_mut() {
        gate.rejection.clear();
    }
    let weights_path = write_model(&args.out, &int8, &card)?;
    println!(
        "{} ({:.1} MB) -> {} ({:.1} MB); evaluate it again with --record",
        args.weights.display(),
        bytes.len() as f64 / 1e6,
        weights_path.display(),
        int8.len() as f64 / 1e6
    );
    Ok(card)
}

/// Prints the largest weight change relative to its channel's range, read back from the file.
fn report_error(
    tensors: &std::collections::HashMap<String, Tensor>,
    int8: &[u8],
    device: &Device,
) -> Result<()> {
    let back = pneumoscope::Checkpoint::from_bytes(int8, device)?;
    let mut worst = (0f32, String::new());
    for (name, tensor) in tensors {
        if !is_quantized(name, tensor.dims()) {
            continue;
        }
        let original = tensor.to_dtype(DType::F32)?;
        let range = original
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?
            .max(f32::MIN_POSITIVE);
        let error = (&back.tensors()[name] - &original)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?
            / range;
        if error > worst.0 {
            worst = (error, name.clone());
        }
    }
    if worst.1.is_empty() {
        println!("every kernel was already on its int8 grid: no weight changed");
    } else {
        println!(
            "largest change {:.5} of a tensor's largest |w| (in {})",
            worst.0, worst.1
        );
    }
    Ok(())
}
