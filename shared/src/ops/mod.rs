//! The CPU kernels under the model: convolution as im2col + gemm, batch norm with its ReLU, the
//! residual add + ReLU and the stem's max pool, each with its backward for training; the folded
//! inference convolution with its bias, residual and ReLU; the matrix product and the slice
//! helpers they share. Other devices run candle's own tensor ops instead.

use candle_core::{Result, Tensor};

pub mod batch_norm;
pub mod conv;
pub mod conv_infer;
pub mod conv_int8;
mod cpu_slice;
#[cfg(any(target_arch = "wasm32", test))]
mod int8_rows;
mod matmul;
pub mod max_pool;
pub mod residual;

/// Rows `offset, offset + stride, ...` (`count` of them) of dim 2 and the same columns of dim 3,
/// `x` being padded far enough that `offset + stride * count` fits.
/// (N, C, H, W) -> (N, C, count_h, count_w)
pub(crate) fn strided_view(
    x: &Tensor,
    (offset_y, offset_x): (usize, usize),
    (count_h, count_w): (usize, usize),
    stride: usize,
) -> Result<Tensor> {
    let (n, c, _, w) = x.dims4()?;
    let rows = x.narrow(2, offset_y, stride * count_h)?;
    let rows = if stride == 1 {
        rows
    } else {
        rows.reshape((n, c, count_h, stride, w))?
            .narrow(3, 0, 1)?
            .squeeze(3)?
    };
    let cols = rows.narrow(3, offset_x, stride * count_w)?;
    if stride == 1 {
        return Ok(cols);
    }
    cols.reshape((n, c, count_h, count_w, stride))?
        .narrow(4, 0, 1)?
        .squeeze(4)
}
