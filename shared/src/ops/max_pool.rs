//! The stem's 3x3, stride-2, padding-1 max pool as one CPU op (training and inference).
//!
//! candle's `max_pool2d` has no backward when kernel != stride; the maximum of nine strided views
//! (the form other devices use) makes autograd pad, copy and mask the stem's activation dozens of
//! times. This op keeps only its input; the backward finds each window's maximum again and routes
//! the gradient to it, the first maximum in row-major order as PyTorch does.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::cpu_slice::contiguous_f32;
use crate::ops::strided_view;

/// The stem's 3x3 max pool, stride 2, padding 1: the fused op for f32 on the CPU (training and
/// inference), candle's tensor ops elsewhere.
/// (N, C, H, W) -> (N, C, (H-1)/2+1, (W-1)/2+1)
pub fn stem_max_pool(x: &Tensor, train: bool) -> Result<Tensor> {
    if matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 {
        return max_pool_3x3_stride2(x);
    }
    stem_max_pool_by_tensor_ops(x, train)
}

/// The same pool from candle's ops.
///
/// Edge replication stands in for PyTorch's -inf padding: every window that reaches into the
/// padding also holds the edge pixel that was replicated, so the maximum is the same. candle's
/// `max_pool2d` has no backward when kernel != stride, so training takes the maximum of the nine
/// strided views, which autograd handles.
pub fn stem_max_pool_by_tensor_ops(x: &Tensor, train: bool) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (out_h, out_w) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    // Enough right/bottom padding that every strided view below has 2 * out rows/cols to fold.
    let padded =
        x.pad_with_same(2, 1, 2 * out_h + 1 - h)?
            .pad_with_same(3, 1, 2 * out_w + 1 - w)?;
    if !train {
        return padded
            .narrow(2, 0, 2 * out_h + 1)?
            .narrow(3, 0, 2 * out_w + 1)?
            .max_pool2d_with_stride(3, 2);
    }
    let mut pooled: Option<Tensor> = None;
    for dy in 0..3 {
        for dx in 0..3 {
            let view = strided_view(&padded, (dy, dx), (out_h, out_w), 2)?;
            pooled = Some(match pooled {
                None => view,
                Some(acc) => acc.maximum(&view)?,
            });
        }
    }
    Ok(pooled.expect("the 3x3 window has nine views"))
}

/// (N, C, H, W) -> (N, C, (H-1)/2+1, (W-1)/2+1), for f32 on the CPU.
pub(crate) fn max_pool_3x3_stride2(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(StemMaxPool)
}

/// The shapes of one plane (one image, one channel).
#[derive(Debug, Clone, Copy)]
struct Plane {
    h: usize,
    w: usize,
}

impl Plane {
    fn out(&self) -> (usize, usize) {
        ((self.h - 1) / 2 + 1, (self.w - 1) / 2 + 1)
    }

    fn out_len(&self) -> usize {
        let (out_h, out_w) = self.out();
        out_h * out_w
    }

    /// Visits each output position (its index in the output plane) with its window maximum as
    /// an index into `plane`; NaN wins, as in PyTorch. Plain loops rather than an iterator
    /// chain, which cost several times the pool's own work (perf).
    fn for_each_argmax(&self, plane: &[f32], mut visit: impl FnMut(usize, usize)) {
        let (out_h, out_w) = self.out();
        let (h, w) = (self.h, self.w);
        for oy in 0..out_h {
            for ox in 0..out_w {
                let rows = (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h);
                let mut best = (2 * oy).saturating_sub(1) * w + (2 * ox).saturating_sub(1);
                for y in rows {
                    for x in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                        let v = plane[y * w + x];
                        if v > plane[best] || v.is_nan() {
                            best = y * w + x;
                        }
                    }
                }
                visit(oy * out_w + ox, best);
            }
        }
    }
}

fn plane_of(layout: &Layout) -> Result<(Plane, Shape)> {
    let (n, c, h, w) = layout.shape().dims4()?;
    if h == 0 || w == 0 {
        candle_core::bail!("max pool of an empty {h}x{w} map");
    }
    let plane = Plane { h, w };
    let (out_h, out_w) = plane.out();
    Ok((plane, Shape::from((n, c, out_h, out_w))))
}

struct StemMaxPool;

impl CustomOp1 for StemMaxPool {
    fn name(&self) -> &'static str {
        "stem-max-pool"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (plane, out_shape) = plane_of(layout)?;
        let x = contiguous_f32(storage, layout)?;
        let mut y = vec![0f32; out_shape.elem_count()];
        y.par_chunks_mut(plane.out_len())
            .zip(x.par_chunks(plane.h * plane.w))
            .for_each(|(y, x)| {
                plane.for_each_argmax(x, |out, i| y[out] = x[i]);
            });
        Ok((CpuStorage::F32(y), out_shape))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.apply_op2_no_bwd(&grad.contiguous()?, &StemMaxPoolGrad)?,
        ))
    }
}

/// (input, grad of the output) -> grad of the input.
struct StemMaxPoolGrad;

impl CustomOp2 for StemMaxPoolGrad {
    fn name(&self) -> &'static str {
        "stem-max-pool-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (plane, _) = plane_of(l1)?;
        let (x, grad) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(plane.h * plane.w)
            .zip(x.par_chunks(plane.h * plane.w))
            .zip(grad.par_chunks(plane.out_len()))
            .for_each(|((dx, x), grad)| {
                plane.for_each_argmax(x, |out, i| dx[i] += grad[out]);
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
