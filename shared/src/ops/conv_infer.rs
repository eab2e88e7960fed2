//! Inference-mode convolution as one CPU op: a convolution whose batch norm is folded into its
//! weight and bias, with the bottleneck's residual and the ReLU applied in the same pass.
//!
//! candle's `conv2d` copies its input into an im2col matrix even for 1x1 convolutions, writes
//! its product channels-last and transposes it back, and the bias add, residual add and ReLU are
//! three more full passes with three more buffers. Here each image's output starts as bias (plus
//! residual), one threaded gemm accumulates the product into it (a 1x1 stride-1 convolution
//! reads the image itself as its patch matrix), and the ReLU runs over it while it is in cache.
//!
//! Its backward pass treats the weights as frozen: the gradient reaches the input (and the
//! residual) only, through the ReLU's mask and the training op's transposed product. That is
//! what an attribution map on an earlier layer needs (`ResNet50::layer2_gradient`); nothing
//! trains through this op.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use candle_nn::Conv2d;

use rayon::prelude::*;

use crate::float::relu;
use crate::ops::conv::{conv2d_grad_input, Geometry};
use crate::ops::conv_int8::{convolve, quantize_activations, Int8Weight};
use crate::ops::cpu_slice::contiguous_f32;
use crate::ops::matmul::{matmul, Matrix};
use crate::ops::residual::relu_backward;
use crate::ops::threads;

/// relu?(conv(x) + bias + residual?) for a convolution with a bias (a folded batch norm);
/// the product in int8 when `int8` holds the weight's codes and the input has no negative value.
/// (N, C_in, H, W) -> (N, C_out, H_out, W_out); `residual` has the output's shape.
pub fn conv2d_infer(
    x: &Tensor,
    conv: &Conv2d,
    int8: Option<&Arc<Int8Weight>>,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let Some(bias) = conv.bias() else {
        candle_core::bail!("conv2d_infer needs a convolution with a bias (a folded batch norm)")
    };
    let config = *conv.config();
    let fusable = matches!(x.device(), Device::Cpu)
        && x.dtype() == DType::F32
        && config.groups == 1
        && config.dilation == 1;
    if !fusable {
        return by_tensor_ops(x, conv, residual, relu);
    }
    let op = ConvInfer {
        geometry: Geometry::new(x.dims4()?, conv.weight().dims4()?, config)?,
        bias: bias.to_vec1()?,
        relu,
        int8: int8.cloned(),
    };
    let x = x.contiguous()?;
    // Frozen: no gradient is asked of the weight, whatever it was computed from.
    let weight = conv.weight().contiguous()?.detach();
    // Outside autograd (no input tracks a gradient) these record nothing.
    match residual {
        Some(residual) => x.apply_op3(&weight, &residual.contiguous()?, op),
        None => x.apply_op2(&weight, op),
    }
}

/// The same arithmetic from candle's ops, for other devices and dtypes.
fn by_tensor_ops(
    x: &Tensor,
    conv: &Conv2d,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    use candle_core::Module;
    let y = conv.forward(x)?;
    let y = match residual {
        Some(residual) => (y + residual)?,
        None => y,
    };
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

struct ConvInfer {
    geometry: Geometry,
    bias: Vec<f32>,
    relu: bool,
    int8: Option<Arc<Int8Weight>>,
}

impl ConvInfer {
    /// The gradient of the convolution's output before the ReLU.
    fn pre_activation_grad(&self, y: &Tensor, grad: &Tensor) -> Result<Tensor> {
        match self.relu {
            true => relu_backward(grad, y),
            false => grad.contiguous(),
        }
    }

    fn run(&self, x: &[f32], weight: &[f32], residual: Option<&[f32]>) -> (CpuStorage, Shape) {
        let g = self.geometry;
        let positions = g.positions();
        let out_len = g.c_out * positions;
        let mut y = vec![0f32; g.batch * out_len];
        let mut scratch = Vec::new();
        let mut codes = Vec::new();
        for (i, (y, image)) in y.chunks_mut(out_len).zip(x.chunks(g.in_len())).enumerate() {
            let epilogue = Epilogue {
                bias: &self.bias,
                residual: residual.map(|r| &r[i * out_len..][..out_len]),
                relu: self.relu,
                positions,
            };
            if let Some(int8) = &self.int8 {
                if let Some(scale) = quantize_activations(image, g.c_in(), &mut codes) {
                    convolve(y, &g, &codes, int8, scale, &epilogue);
                    continue;
                }
            }
            let patches = g.group_patches(image, &mut scratch, threads());
            let patches = Matrix::row_major(patches, g.patch_len(), positions);
            // Each thread takes a band of output channels: every band reads the whole patch
            // matrix but writes only its own rows, and gemm runs single-threaded inside it.
            let band = g.c_out.div_ceil(threads()).max(1);
            y.par_chunks_mut(band * positions)
                .zip(weight.par_chunks(band * g.patch_len()))
                .enumerate()
                .for_each(|(b, (y, rows))| {
                    epilogue.fill(y, b * band);
                    let rows = Matrix::row_major(rows, rows.len() / g.patch_len(), g.patch_len());
                    matmul(y, rows, patches, true);
                    epilogue.finish(y);
                });
        }
        (CpuStorage::F32(y), g.output())
    }
}

/// What a folded convolution's product is added to, and what follows it: each output starts as
/// its channel's bias plus the residual's value there, and the ReLU may follow the sum.
pub(super) struct Epilogue<'a> {
    pub bias: &'a [f32],
    /// The image's residual, (c_out, positions).
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
    pub positions: usize,
}

impl Epilogue<'_> {
    /// An output's final value from its start plus the product (natively; the page applies
    /// `finish` to the whole output).
    #[cfg(not(target_arch = "wasm32"))]
    #[inline(always)]
    pub fn activate(&self, value: f32) -> f32 {
        match self.relu {
            true => relu(value),
            false => value,
        }
    }

    /// `row`, output channel `c` from position `first_position` on, at its start.
    pub fn fill_row(&self, row: &mut [f32], c: usize, first_position: usize) {
        let bias = self.bias[c];
        match self.residual {
            Some(residual) => {
                let residual = &residual[c * self.positions + first_position..][..row.len()];
                for (value, &r) in row.iter_mut().zip(residual) {
                    *value = r + bias;
                }
            }
            None => row.fill(bias),
        }
    }

    /// `y`, whole rows of output channels `first_channel..`, at their start.
    pub fn fill(&self, y: &mut [f32], first_channel: usize) {
        for (c, row) in (first_channel..).zip(y.chunks_mut(self.positions)) {
            self.fill_row(row, c, 0);
        }
    }

    /// The ReLU over `y` once the product is in, where there is one.
    pub fn finish(&self, y: &mut [f32]) {
        if self.relu {
            y.iter_mut().for_each(|v| *v = relu(*v));
        }
    }
}

impl CustomOp2 for ConvInfer {
    fn name(&self) -> &'static str {
        "conv2d-infer"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok(self.run(contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?, None))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        weight: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = self.pre_activation_grad(y, grad)?;
        Ok((Some(conv2d_grad_input(&grad, weight, self.geometry)?), None))
    }
}

impl CustomOp3 for ConvInfer {
    fn name(&self) -> &'static str {
        "conv2d-infer-residual"
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
        let residual = contiguous_f32(s3, l3)?;
        Ok(self.run(
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            Some(residual),
        ))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        weight: &Tensor,
        _residual: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = self.pre_activation_grad(y, grad)?;
        let grad_x = conv2d_grad_input(&grad, weight, self.geometry)?;
        Ok((Some(grad_x), None, Some(grad)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grads_of, max_diff_and_scale};
    use candle_core::Var;
    use candle_nn::Conv2dConfig;

    /// A random input, a convolution with a bias, and a residual of the output's shape; the
    /// input and residual are variables, so the backward checks can ask for their gradients.
    fn case(
        batch: usize,
        c_in: usize,
        size: usize,
        c_out: usize,
        k: usize,
        stride: usize,
    ) -> (Var, Conv2d, Var) {
        let device = Device::Cpu;
        let padding = k / 2;
        let x = Var::randn(0f32, 1.0, (batch, c_in, size, size), &device).unwrap();
        let weight = Tensor::randn(0f32, 0.3, (c_out, c_in, k, k), &device).unwrap();
        let bias = Tensor::randn(0f32, 1.0, c_out, &device).unwrap();
        let config = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let out = (size + 2 * padding - k) / stride + 1;
        let residual = Var::randn(0f32, 1.0, (batch, c_out, out, out), &device).unwrap();
        (x, Conv2d::new(weight, Some(bias), config), residual)
    }

    /// The fused op against candle's conv2d, bias add, residual add and ReLU.
    fn check(batch: usize, c_in: usize, size: usize, c_out: usize, k: usize, stride: usize) {
        let (x, conv, residual) = case(batch, c_in, size, c_out, k, stride);
        for (residual, relu) in [
            (None, false),
            (None, true),
            (Some(residual.as_tensor()), true),
        ] {
            let fused = conv2d_infer(&x, &conv, None, residual, relu).unwrap();
            let reference = by_tensor_ops(&x, &conv, residual, relu).unwrap();
            assert_eq!(fused.dims(), reference.dims());
            let (diff, scale) = max_diff_and_scale(&fused, &reference);
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "k {k} stride {stride} batch {batch} residual {} relu {relu}: {diff} of {scale}",
                residual.is_some()
            );
        }
    }

    /// The gradients reaching the input and the residual, against candle's autograd.
    fn check_backward(c_in: usize, size: usize, c_out: usize, k: usize, stride: usize) {
        let (x, conv, residual) = case(1, c_in, size, c_out, k, stride);
        let upstream = Tensor::randn(0f32, 1.0, residual.shape(), &Device::Cpu).unwrap();
        for (with_residual, relu) in [(false, false), (false, true), (true, true)] {
            let r = with_residual.then(|| residual.as_tensor());
            let inputs = [x.as_tensor(), residual.as_tensor()];
            let fused = conv2d_infer(&x, &conv, None, r, relu).unwrap();
            let reference = by_tensor_ops(&x, &conv, r, relu).unwrap();
            let fused = grads_of(&fused, &upstream, &inputs[..1 + with_residual as usize]);
            let reference = grads_of(&reference, &upstream, &inputs[..1 + with_residual as usize]);
            for (f, r) in fused.iter().zip(&reference) {
                let (diff, scale) = max_diff_and_scale(f, r);
                assert!(
                    diff <= 1e-4 * scale.max(1.0),
                    "k {k} stride {stride} relu {relu}: {diff} of {scale}"
                );
            }
        }
    }

    #[test]
    fn gradients_reach_the_input_and_the_residual_as_in_candle() {
        check_backward(8, 9, 16, 3, 1);
        check_backward(8, 9, 16, 3, 2);
        check_backward(16, 7, 8, 1, 1);
        check_backward(8, 10, 16, 1, 2);
    }

    #[test]
    fn pointwise_convolutions_match_candle() {
        check(1, 16, 7, 24, 1, 1);
        check(3, 8, 5, 4, 1, 1);
    }

    #[test]
    fn strided_and_spatial_convolutions_match_candle() {
        check(1, 8, 9, 16, 3, 1);
        check(2, 8, 9, 16, 3, 2);
        check(2, 8, 10, 16, 1, 2);
        check(1, 3, 15, 8, 7, 2);
    }

    /// The int8 product against candle's f32 ops: within the quantization error on an input
    /// without negative values (after a ReLU), exactly the f32 op on one with them.
    fn check_int8(batch: usize, c_in: usize, size: usize, c_out: usize, k: usize, stride: usize) {
        let (x, conv, residual) = case(batch, c_in, size, c_out, k, stride);
        let codes = Arc::new(Int8Weight::of_conv(&conv).unwrap());
        let after_relu = x.relu().unwrap();
        for (residual, relu) in [(None, false), (Some(residual.as_tensor()), true)] {
            let int8 = conv2d_infer(&after_relu, &conv, Some(&codes), residual, relu).unwrap();
            let reference = by_tensor_ops(&after_relu, &conv, residual, relu).unwrap();
            let (diff, scale) = max_diff_and_scale(&int8, &reference);
            // Codes of 7 and 8 bits: about 1% of the output's range at these sizes.
            assert!(
                diff <= 0.02 * scale.max(1.0) && diff > 0.0,
                "k {k} stride {stride} batch {batch}: {diff} of {scale}"
            );
            let signed = conv2d_infer(&x, &conv, Some(&codes), residual, relu).unwrap();
            let f32_op = conv2d_infer(&x, &conv, None, residual, relu).unwrap();
            assert_eq!(max_diff_and_scale(&signed, &f32_op).0, 0.0);
        }
    }

    #[test]
    fn int8_products_match_candle_within_the_quantization_error() {
        check_int8(1, 16, 7, 24, 1, 1);
        check_int8(2, 8, 9, 16, 3, 1);
        check_int8(2, 8, 9, 16, 3, 2);
        check_int8(1, 8, 10, 16, 1, 2);
    }

    #[test]
    fn a_convolution_without_bias_is_refused() {
        let device = Device::Cpu;
        let conv = Conv2d::new(
            Tensor::zeros((2, 2, 1, 1), DType::F32, &device).unwrap(),
            None,
            Default::default(),
        );
        let x = Tensor::zeros((1, 2, 3, 3), DType::F32, &device).unwrap();
        assert!(conv2d_infer(&x, &conv, None, None, false).is_err());
    }
}
