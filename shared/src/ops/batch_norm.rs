//! Training-mode batch normalisation as one fused CPU op.
//!
//! candle-nn's `forward_train` is built from about eight full-size tensor ops, and autograd keeps
//! every intermediate until the backward pass: for ResNet50 that is most of a training step's
//! memory (batch 32 did not fit in 24 GiB) and much of its time. This op keeps only its input and
//! output and computes the backward in one pass. It computes exactly what PyTorch's
//! `BatchNorm2d` computes in training mode, optionally followed by the ReLU that follows most batch
//! norms in ResNet50 (candle's own ReLU backward makes six full-size passes); on other devices
//! candle-nn's version runs instead.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Device, Layout, ModuleT, Result, Shape, Tensor, Var};
use candle_nn::BatchNorm;
use rayon::prelude::*;

use crate::float::relu;
use crate::ops::cpu_slice::{contiguous_f32, cpu_f32};
use crate::ops::residual::relu_grad;

struct FusedBatchNormTrain {
    eps: f64,
    relu: bool,
    /// Filled by the forward pass with each channel's batch statistics, which the backward pass
    /// and the running statistics reuse instead of passing over the activation again.
    batch_stats: Arc<Mutex<Vec<ChannelStats>>>,
}

#[derive(Debug, Clone, Copy)]
struct ChannelStats {
    mean: f64,
    /// 1 / sqrt(biased variance + eps)
    inv_std: f64,
    /// The biased variance.
    var: f64,
}

/// Per-channel batch statistics of contiguous (N, C, H*W) data.
fn channel_stats(x: &[f32], n: usize, c: usize, hw: usize, eps: f64) -> Vec<ChannelStats> {
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
            ChannelStats {
                mean,
                inv_std: 1.0 / (var + eps).sqrt(),
                var,
            }
        })
        .collect()
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
        *self.batch_stats.lock().unwrap_or_else(|e| e.into_inner()) = stats.clone();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw).enumerate().for_each(|(plane, out)| {
            let ch = plane % c;
            let ChannelStats { mean, inv_std, .. } = stats[ch];
            let scale = inv_std * weight[ch] as f64;
            let shift = bias[ch] as f64 - mean * scale;
            let (scale, shift) = (scale as f32, shift as f32);
            for (o, &v) in out.iter_mut().zip(&x[plane * hw..(plane + 1) * hw]) {
                *o = v * scale + shift;
            }
            if self.relu {
                out.iter_mut().for_each(|o| *o = relu(*o));
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let hw = h * w;
        let count = (n * hw) as f64;
        let grad = grad.contiguous()?;
        let (x_storage, x_layout) = x.storage_and_layout();
        let (dy_storage, dy_layout) = grad.storage_and_layout();
        let (y_storage, y_layout) = res.storage_and_layout();
        let xs = cpu_f32(&x_storage, x_layout)?;
        let dy = cpu_f32(&dy_storage, dy_layout)?;
        let ys = cpu_f32(&y_storage, y_layout)?;
        let gamma = weight.to_vec1::<f32>()?;
        let stats = self
            .batch_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // The gradient that reaches the batch norm: the ReLU passes it where its output is > 0.
        let relu = self.relu;
        let upstream = |i: usize| match relu {
            true => relu_grad(dy[i], ys[i]) as f64,
            false => dy[i] as f64,
        };
        // Per channel: sum(dy) (= d bias) and sum(dy * x_hat) (= d weight).
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let ChannelStats { mean, inv_std, .. } = stats[ch];
                let (mut sum_dy, mut sum_dy_xhat) = (0f64, 0f64);
                for i in 0..n {
                    let start = (i * c + ch) * hw;
                    for (j, &v) in (start..).zip(&xs[start..start + hw]) {
                        let g = upstream(j);
                        sum_dy += g;
                        sum_dy_xhat += g * (v as f64 - mean) * inv_std;
                    }
                }
                (sum_dy, sum_dy_xhat)
            })
            .collect();
        let mut dx = vec![0f32; xs.len()];
        dx.par_chunks_mut(hw).enumerate().for_each(|(plane, out)| {
            let ch = plane % c;
            let ChannelStats { mean, inv_std, .. } = stats[ch];
            let (sum_dy, sum_dy_xhat) = sums[ch];
            let k = gamma[ch] as f64 * inv_std / count;
            for (o, j) in out.iter_mut().zip(plane * hw..) {
                let x_hat = (xs[j] as f64 - mean) * inv_std;
                *o = (k * (count * upstream(j) - sum_dy - x_hat * sum_dy_xhat)) as f32;
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

/// `bn` in training mode, then a ReLU if `relu`: batch statistics, running statistics updated as
/// PyTorch does (momentum 0.1, unbiased variance). Fused on the CPU, candle-nn's version elsewhere.
pub fn batch_norm_train(bn: &BatchNorm, x: &Tensor, relu: bool) -> Result<Tensor> {
    let fusable = matches!(x.device(), Device::Cpu) && x.dtype() == candle_core::DType::F32;
    let Some((weight, bias)) = bn.weight_and_bias().filter(|_| fusable && x.rank() == 4) else {
        let y = bn.forward_t(x, true)?;
        return if relu { y.relu() } else { Ok(y) };
    };
    let x = x.contiguous()?;
    let batch_stats = Arc::new(Mutex::new(Vec::new()));
    let op = FusedBatchNormTrain {
        eps: bn.eps(),
        relu,
        batch_stats: batch_stats.clone(),
    };
    let y = x.apply_op3(weight, bias, op)?;
    let (mean, var): (Vec<f32>, Vec<f32>) = batch_stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|s| (s.mean as f32, s.var as f32))
        .unzip();
    let (mean, var) = (
        Tensor::new(mean, x.device())?,
        Tensor::new(var, x.device())?,
    );

    let (n, _, h, w) = x.dims4()?;
    let count = (n * h * w) as f64;
    let m = bn.momentum();
    let running_mean = Var::from_tensor(bn.running_mean())?;
    let running_var = Var::from_tensor(bn.running_var())?;
    running_mean.set(&((running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?)?;
    let unbiased = count / (count - 1.0).max(1.0);
    running_var.set(&((running_var.as_tensor() * (1.0 - m))? + (var * (m * unbiased))?)?)?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grads_of, max_diff_and_scale};

    /// Output, gradients and running statistics of the fused op against candle-nn's
    /// `forward_train` (+ candle's ReLU) and autograd.
    fn check(relu: bool) {
        let device = Device::Cpu;
        let c = 3;
        let x = Var::randn(0.5f32, 2.0, (4, c, 5, 3), &device).unwrap();
        let weight = Var::randn(1f32, 0.3, c, &device).unwrap();
        let bias = Var::randn(0f32, 0.3, c, &device).unwrap();
        let batch_norm = || {
            let running_mean = Tensor::zeros(c, candle_core::DType::F32, &device).unwrap();
            let running_var = Tensor::ones(c, candle_core::DType::F32, &device).unwrap();
            let weight = weight.as_tensor().clone();
            let bias = bias.as_tensor().clone();
            BatchNorm::new(c, running_mean, running_var, weight, bias, 1e-5).unwrap()
        };
        let (fused_bn, reference_bn) = (batch_norm(), batch_norm());
        let fused = batch_norm_train(&fused_bn, x.as_tensor(), relu).unwrap();
        let reference = reference_bn.forward_t(x.as_tensor(), true).unwrap();
        let reference = if relu {
            reference.relu().unwrap()
        } else {
            reference
        };
        let upstream = Tensor::randn(0f32, 1.0, fused.shape(), &device).unwrap();
        let inputs = [x.as_tensor(), weight.as_tensor(), bias.as_tensor()];
        let pairs = [
            (fused.clone(), reference.clone()),
            (
                fused_bn.running_mean().clone(),
                reference_bn.running_mean().clone(),
            ),
            (
                fused_bn.running_var().clone(),
                reference_bn.running_var().clone(),
            ),
        ]
        .into_iter()
        .chain(
            grads_of(&fused, &upstream, &inputs)
                .into_iter()
                .zip(grads_of(&reference, &upstream, &inputs)),
        );
        for (i, (a, b)) in pairs.enumerate() {
            let (diff, _) = max_diff_and_scale(&a, &b);
            assert!(diff < 1e-4, "relu {relu}: value {i} differs by {diff}");
        }
    }

    #[test]
    fn fused_batch_norm_matches_candle_nn_with_and_without_relu() {
        check(false);
        check(true);
    }
}
