//! int8 weights for a smaller download: every convolution kernel (99% of ResNet50's parameters)
//! stored as i8 with one f32 scale per output channel (symmetric, scale = max |w| / 127), the
//! scale beside it as `<name>_scale`, as compressed-tensors names it. Everything else keeps its
//! dtype. Loading dequantizes to f32 (`Checkpoint::from_bytes`), and a classifier built from such
//! a file computes its convolutions' products in int8 again (`ops::conv_int8`).
//! In PyTorch: `w = st[name].float() * st[name + "_scale"].view(-1, 1, 1, 1)`.

use std::borrow::Cow;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, View};

use crate::error::{Error, Result};
use crate::float::{larger, round, smaller};

pub const SCALE_SUFFIX: &str = "_scale";
/// What the card's `weights.dtype` says of a file written here.
pub const INT8_DTYPE: &str = "int8 convolutions (per-output-channel f32 scales), f16 elsewhere";

/// Whether `to_int8_safetensors` stores the tensor `name` as int8: convolution kernels.
pub fn is_quantized(name: &str, dims: &[usize]) -> bool {
    dims.len() == 4 && name.ends_with(".weight")
}

/// Symmetric int8 codes and one scale per row (output channel) of a row-major `values`.
pub fn quantize_rows(values: &[f32], rows: usize) -> (Vec<i8>, Vec<f32>) {
    let per_row = values.len() / rows.max(1);
    let mut codes = vec![0i8; values.len()];
    let mut scales = Vec::with_capacity(rows);
    // Into a slice rather than `extend`, which V8 ran 3x slower (the page requantizes every
    // folded kernel while it loads: 23.5M values).
    for (row, out) in values
        .chunks(per_row.max(1))
        .zip(codes.chunks_mut(per_row.max(1)))
    {
        let largest = row.iter().fold(0f32, |m, v| larger(m, v.abs()));
        let scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
        for (code, v) in out.iter_mut().zip(row) {
            *code = smaller(larger(round(v / scale), -127.0), 127.0) as i8;
        }
        scales.push(scale);
    }
    (codes, scales)
}

/// The f32 values of int8 `codes` with one scale per row.
pub fn dequantize_rows(codes: &[i8], scales: &[f32]) -> Vec<f32> {
    let per_row = codes.len() / scales.len().max(1);
    // Row by row into one allocation: a flat_map chain cannot size its output and does not
    // vectorise, and this runs over every weight while the page loads.
    let mut values = Vec::with_capacity(codes.len());
    for (row, &scale) in codes.chunks(per_row.max(1)).zip(scales) {
        values.extend(row.iter().map(|&c| f32::from(c) * scale));
    }
    values
}

/// Reads the int8 tensor `name` of a safetensors file with its scale, as f32.
pub fn load_int8(
    file: &safetensors::SafeTensors<'_>,
    name: &str,
    device: &Device,
) -> Result<Tensor> {
    let view = file
        .tensor(name)
        .map_err(|e| Error::Checkpoint(format!("`{name}`: {e}")))?;
    let dims = view.shape().to_vec();
    let scale_name = format!("{name}{SCALE_SUFFIX}");
    let scale = file.tensor(&scale_name).map_err(|_| {
        Error::Checkpoint(format!(
            "int8 tensor `{name}` has no `{scale_name}` beside it"
        ))
    })?;
    if scale.dtype() != Dtype::F32 || scale.shape() != [dims.first().copied().unwrap_or(0)] {
        return Err(Error::Checkpoint(format!(
            "`{scale_name}` must be f32 with one scale per output channel of `{name}` {dims:?}"
        )));
    }
    let codes: Vec<i8> = view.data().iter().map(|&b| b as i8).collect();
    let scales: Vec<f32> = scale
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if scales.iter().any(|s| !s.is_finite()) {
        return Err(Error::Checkpoint(format!("`{scale_name}` is not finite")));
    }
    Ok(Tensor::from_vec(
        dequantize_rows(&codes, &scales),
        dims,
        device,
    )?)
}

/// A tensor as written: one of ours, or int8 codes / f32 scales made here.
enum Stored<'a> {
    Tensor(&'a Tensor),
    Bytes {
        dtype: Dtype,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    },
}

impl View for &Stored<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            Stored::Tensor(t) => View::dtype(*t),
            Stored::Bytes { dtype, .. } => *dtype,
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            Stored::Tensor(t) => t.dims(),
            Stored::Bytes { shape, .. } => shape,
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            Stored::Tensor(t) => View::data(*t),
            Stored::Bytes { bytes, .. } => Cow::Borrowed(bytes),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            Stored::Tensor(t) => View::data_len(*t),
            Stored::Bytes { bytes, .. } => bytes.len(),
        }
    }
}

/// Serialises `tensors` with every convolution kernel as int8 plus its scales.
pub fn to_int8_safetensors(tensors: &HashMap<String, Tensor>) -> Result<Vec<u8>> {
    let mut stored: Vec<(String, Stored)> = Vec::with_capacity(tensors.len() * 2);
    for (name, tensor) in tensors {
        if !is_quantized(name, tensor.dims()) {
            stored.push((name.clone(), Stored::Tensor(tensor)));
            continue;
        }
        let values = tensor
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (codes, scales) = quantize_rows(&values, tensor.dims()[0]);
        stored.push((
            name.clone(),
            Stored::Bytes {
                dtype: Dtype::I8,
                shape: tensor.dims().to_vec(),
                bytes: codes.iter().map(|&c| c as u8).collect(),
            },
        ));
        stored.push((
            format!("{name}{SCALE_SUFFIX}"),
            Stored::Bytes {
                dtype: Dtype::F32,
                shape: vec![scales.len()],
                bytes: scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            },
        ));
    }
    safetensors::tensor::serialize(stored.iter().map(|(n, s)| (n, s)), None)
        .map_err(|e| Error::Checkpoint(format!("cannot serialise: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_within_half_a_step_per_channel() {
        // Two channels with very different ranges: each gets its own scale.
        let values = [0.5f32, -1.0, 0.25, 0.0, 0.001, -0.002, 0.0005, 0.0];
        let (codes, scales) = quantize_rows(&values, 2);
        assert_eq!(scales, vec![1.0 / 127.0, 0.002 / 127.0]);
        assert_eq!(codes[1], -127);
        assert_eq!(codes[5], -127);
        let back = dequantize_rows(&codes, &scales);
        for (row, scale) in [(0..4, scales[0]), (4..8, scales[1])] {
            for i in row {
                assert!((back[i] - values[i]).abs() <= scale / 2.0 + 1e-9, "{i}");
            }
        }
        // An all-zero channel stays zero (scale 1, not a division by zero).
        let (codes, scales) = quantize_rows(&[0.0; 4], 1);
        assert_eq!((codes, scales), (vec![0; 4], vec![1.0]));
    }

    #[test]
    fn only_convolution_kernels_are_stored_as_int8() {
        let device = Device::Cpu;
        let kernel = Tensor::arange(0f32, 16.0, &device)
            .unwrap()
            .affine(0.1, -0.8)
            .unwrap()
            .reshape((4, 1, 2, 2))
            .unwrap();
        let bias = Tensor::new(&[1f32, 2.0], &device).unwrap();
        let tensors = HashMap::from([
            ("conv1.weight".to_string(), kernel.clone()),
            ("bn1.bias".to_string(), bias),
        ]);
        let bytes = to_int8_safetensors(&tensors).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(file.tensor("conv1.weight").unwrap().dtype(), Dtype::I8);
        assert_eq!(file.tensor("conv1.weight_scale").unwrap().shape(), [4]);
        assert_eq!(file.tensor("bn1.bias").unwrap().dtype(), Dtype::F32);
        let back = load_int8(&file, "conv1.weight", &device).unwrap();
        let error = (back - kernel)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(error <= 0.8 / 127.0 / 2.0 + 1e-6, "{error}");
    }

    #[test]
    fn an_int8_tensor_without_its_scale_is_a_clear_error() {
        let stored = [(
            "conv1.weight",
            Stored::Bytes {
                dtype: Dtype::I8,
                shape: vec![1, 1, 1, 1],
                bytes: vec![3],
            },
        )];
        let bytes =
            safetensors::tensor::serialize(stored.iter().map(|(n, s)| (*n, s)), None).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let error = load_int8(&file, "conv1.weight", &Device::Cpu).unwrap_err();
        assert!(error.to_string().contains("conv1.weight_scale"), "{error}");
    }
}
