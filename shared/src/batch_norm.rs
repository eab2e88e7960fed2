//! Training-mode batch normalisation as one fused CPU op.
//!
//! candle-nn's `forward_train` is built from about eight full-size tensor ops, and autograd keeps
//! every intermediate until the backward pass: for ResNet50 that is most of a training step's
//! memory (batch 32 did not fit in 24 GiB) and much of its time. This op keeps only its input and
//! output and computes the backward in one pass. It computes exactly what PyTorch's
//! `BatchNorm2d` computes in training mode; on other devices candle-nn's version runs instead.

use candle_core::{CpuStorage, CustomOp3, Device, Layout, ModuleT, Result, Shape, Tensor, Var, D};
use candle_nn::BatchNorm;
use rayon::prelude::*;

struct FusedBatchNormTrain {
    eps: f64,
}

/// Per-channel mean and 1/sqrt(biased var + eps) of contiguous (N, C, H*W) data.
fn channel_stats(x: &[f32], n: usize, c: usize, hw: usize, eps: f64) -> Vec<(f64, f64, f64)> {
    let count = (n * hw) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = (0..n).map(|i| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw]);
            let sum: f64 = planes
                .clone()
                .map(|p| p.iter().map(|&v| v as f64).sum::<f64>())
                .sum();
            let mean = sum / count;
            let sq: f64 = planes
                .map(|p| p.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>())
                .sum();
            let var = sq / count;
            (mean, 1.0 / (var + eps).sqrt(), var)
        })
        .collect()
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<f32>()?[start..end]),
        None => candle_core::bail!("fused batch norm needs contiguous f32 input"),
    }
}

impl CustomOp3 for FusedBatchNormTrain {
    fn name(&self) -> &'static str {
        "fused-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        let x = contiguous_f32(s1, l1)?;
        let weight = contiguous_f32(s2, l2)?;
        let bias = contiguous_f32(s3, l3)?;
        let stats = channel_stats(x, n, c, hw, self.eps);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw).enumerate().for_each(|(plane, out)| {
            let ch = plane % c;
            let (mean, inv_std, _) = stats[ch];
            let scale = inv_std * weight[ch] as f64;
            let shift = bias[ch] as f64 - mean * scale;
            let (scale, shift) = (scale as f32, shift as f32);
            for (o, &v) in out.iter_mut().zip(&x[plane * hw..(plane + 1) * hw]) {
                *o = v * scale + shift;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let hw = h * w;
        let count = (n * hw) as f64;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let dy = grad.flatten_all()?.to_vec1::<f32>()?;
        let gamma = weight.to_vec1::<f32>()?;
        let stats = channel_stats(&xs, n, c, hw, self.eps);
        // Per channel: sum(dy) (= d bias) and sum(dy * x_hat) (= d weight).
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mean, inv_std, _) = stats[ch];
                let (mut sum_dy, mut sum_dy_xhat) = (0f64, 0f64);
                for i in 0..n {
                    let range = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                    for (&g, &v) in dy[range.clone()].iter().zip(&xs[range]) {
                        sum_dy += g as f64;
                        sum_dy_xhat += g as f64 * (v as f64 - mean) * inv_std;
                    }
                }
                (sum_dy, sum_dy_xhat)
            })
            .collect();
        let mut dx = vec![0f32; xs.len()];
        dx.par_chunks_mut(hw).enumerate().for_each(|(plane, out)| {
            let ch = plane % c;
            let (mean, inv_std, _) = stats[ch];
            let (sum_dy, sum_dy_xhat) = sums[ch];
            let k = gamma[ch] as f64 * inv_std / count;
            let range = plane * hw..(plane + 1) * hw;
            for ((o, &g), &v) in out.iter_mut().zip(&dy[range.clone()]).zip(&xs[range]) {
                let x_hat = (v as f64 - mean) * inv_std;
                *o = (k * (count * g as f64 - sum_dy - x_hat * sum_dy_xhat)) as f32;
            }
        });
        let device = x.device();
        let d_weight: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
        let d_bias: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(d_weight, c, device)?),
            Some(Tensor::from_vec(d_bias, c, device)?),
        ))
    }
}

/// `bn` in training mode: batch statistics, running statistics updated as PyTorch does
/// (momentum 0.1, unbiased variance). Fused on the CPU, candle-nn's version elsewhere.
pub fn batch_norm_train(bn: &BatchNorm, x: &Tensor) -> Result<Tensor> {
    let fusable = matches!(x.device(), Device::Cpu) && x.dtype() == candle_core::DType::F32;
    let Some((weight, bias)) = bn.weight_and_bias().filter(|_| fusable && x.rank() == 4) else {
        return bn.forward_t(x, true);
    };
    let x = x.contiguous()?;
    let y = x.apply_op3(weight, bias, FusedBatchNormTrain { eps: bn.eps() })?;

    let (n, _, h, w) = x.dims4()?;
    let count = (n * h * w) as f64;
    let m = bn.momentum();
    let detached = x.detach();
    let flat = detached.transpose(0, 1)?.flatten_from(1)?; // (C, N*H*W)
    let mean = flat.mean(D::Minus1)?;
    let var = flat
        .broadcast_sub(&mean.unsqueeze(1)?)?
        .sqr()?
        .mean(D::Minus1)?;
    let running_mean = Var::from_tensor(bn.running_mean())?;
    let running_var = Var::from_tensor(bn.running_var())?;
    running_mean.set(&((running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?)?;
    let unbiased = count / (count - 1.0).max(1.0);
    running_var.set(&((running_var.as_tensor() * (1.0 - m))? + (var * (m * unbiased))?)?)?;
    Ok(y)
}
