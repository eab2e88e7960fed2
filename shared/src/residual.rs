//! The join at the end of every bottleneck, `relu(out + identity)`, as one training op.
//!
//! As tensor ops it is an add and a ReLU on the block's widest activation, and candle's ReLU
//! backward alone makes six full-size passes; this op makes one each way. Other devices and
//! dtypes use the tensor ops.

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::batch_norm::contiguous_f32;

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
        let mut y = vec![0f32; a.len()];
        y.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(y, (a, b))| {
                for ((y, a), b) in y.iter_mut().zip(a).zip(b) {
                    *y = (a + b).max(0.0);
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let passed = grad.contiguous()?.apply_op2_no_bwd(res, &ReluGrad)?;
        Ok((Some(passed.clone()), Some(passed)))
    }
}

/// (grad of relu's output, relu's output) -> grad of its input: passed where the output is > 0.
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
        let mut passed = vec![0f32; grad.len()];
        passed
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
            .for_each(|(passed, (grad, y))| {
                for ((p, &g), &y) in passed.iter_mut().zip(grad).zip(y) {
                    *p = if y > 0.0 { g } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(passed), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn matches_add_then_relu_and_their_gradients() {
        let device = Device::Cpu;
        let a = Var::randn(0f32, 1.0, (3, 4, 100, 70), &device).unwrap();
        let b = Var::randn(0f32, 1.0, (3, 4, 100, 70), &device).unwrap();
        let upstream = Tensor::randn(0f32, 1.0, (3, 4, 100, 70), &device).unwrap();
        let run = |y: Tensor| {
            let grads = (&y * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            [
                y,
                grads.get(&a).unwrap().clone(),
                grads.get(&b).unwrap().clone(),
            ]
        };
        let fused = run(add_relu(&a, &b).unwrap());
        let reference = run((a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap());
        for (fused, reference) in fused.iter().zip(&reference) {
            let diff = (fused - reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        }
    }
}
