//! The join at the end of every bottleneck, `relu(out + identity)`, as one training op.
//!
//! As tensor ops it is an add and a ReLU on the block's widest activation, and candle's ReLU
//! backward alone makes six full-size passes; this op makes one each way. Other devices and
//! dtypes use the tensor ops.

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::float::relu;
use crate::ops::cpu_slice::contiguous_f32;

/// Values per parallel task: large enough that scheduling costs nothing next to the work.
const CHUNK: usize = 1 << 16;

/// relu(a + b) for tensors of one shape.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let fusable = matches!(a.device(), Device::Cpu) && a.dtype() == DType::F32;
    if !fusable || a.shape() != b.shape() {
        return (a + b)?.relu();
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

/// `f` of each pair of values, in parallel chunks.
fn map_pairs(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(out, (a, b))| {
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = f(a, b);
            }
        });
    out
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let y = map_pairs(a, b, |a, b| relu(a + b));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let passed = relu_backward(grad, res)?;
        Ok((Some(passed.clone()), Some(passed)))
    }
}

/// The gradient of a ReLU's input from that of its output and the output `y`, in one pass.
pub(crate) fn relu_backward(grad: &Tensor, y: &Tensor) -> Result<Tensor> {
    grad.contiguous()?.apply_op2_no_bwd(y, &ReluGrad)
}

/// The gradient that passes a ReLU back, given its output `y`: where `y > 0`, as PyTorch.
pub(crate) fn relu_grad(grad: f32, y: f32) -> f32 {
    if y > 0.0 {
        grad
    } else {
        0.0
    }
}

/// (grad of relu's output, relu's output) -> grad of its input, by `relu_grad`.
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (grad, y) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let passed = map_pairs(grad, y, relu_grad);
        Ok((CpuStorage::F32(passed), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grads_of, max_diff_and_scale};
    use candle_core::Var;

    #[test]
    fn matches_add_then_relu_and_their_gradients() {
        let device = Device::Cpu;
        let a = Var::randn(0f32, 1.0, (3, 4, 100, 70), &device).unwrap();
        let b = Var::randn(0f32, 1.0, (3, 4, 100, 70), &device).unwrap();
        let upstream = Tensor::randn(0f32, 1.0, (3, 4, 100, 70), &device).unwrap();
        let inputs = [a.as_tensor(), b.as_tensor()];
        let fused = add_relu(&a, &b).unwrap();
        let reference = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
        let pairs = [(fused.clone(), reference.clone())].into_iter().chain(
            grads_of(&fused, &upstream, &inputs)
                .into_iter()
                .zip(grads_of(&reference, &upstream, &inputs)),
        );
        for (fused, reference) in pairs {
            assert_eq!(max_diff_and_scale(&fused, &reference).0, 0.0);
        }
    }
}
