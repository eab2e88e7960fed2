//! The CPU kernels under the model: convolution as im2col + gemm, batch norm with its ReLU, the
//! residual add + ReLU and the stem's max pool, each with its backward for training; the folded
//! inference convolution with its bias, residual and ReLU, and the inference stem, whose sums
//! run in a fixed order so the page gets the CLI's bits (one channel for grey images); the
//! matrix product and the slice helpers they share. Other devices run candle's own tensor ops
//! instead.

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

pub mod batch_norm;
pub mod conv;
pub mod conv_infer;
pub mod conv_int8;
mod cpu_slice;
#[cfg(any(target_arch = "wasm32", test))]
mod int8_rows;
mod matmul;
pub mod max_pool;
mod ordered_product;
mod quantize_tile;
pub mod residual;
pub mod stem_infer;

/// Threads for one image's work: the current rayon pool's natively (the global one sized by
/// RAYON_NUM_THREADS, or a one-thread pool per image when a folder runs an image per core), one
/// in the page's worker.
pub(crate) fn threads() -> usize {
    if cfg!(target_arch = "wasm32") {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// `f()` on one of rayon's threads when there are several. A fork from outside the pool wakes
/// its threads from sleep and puts the caller to sleep until they finish; from inside, the
/// other thread steals from the caller's own queue. In this project's 2-core VM a fork of two
/// 100 us halves cost 17-190 us from outside and 2-44 us from inside (the longer the serial
/// gap before it, the more), and a forward pass forks several times per convolution. Work on
/// another device than the CPU stays on the calling thread (a CUDA context is bound to a
/// thread).
pub(crate) fn on_pool<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if device.is_cpu() && threads() > 1 && rayon::current_thread_index().is_none() {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

/// `f(index, chunk)` for each of `data`'s chunks of `size`: spread over rayon's threads when
/// there are several, in a plain loop when there is one (rayon's machinery around the int8
/// path's quantizer and scaling cost a single thread about 30% of the forward pass).
pub(crate) fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    size: usize,
    f: impl Fn(usize, &mut [T]) + Send + Sync,
) {
    let size = size.max(1);
    if threads() > 1 {
        data.par_chunks_mut(size)
            .enumerate()
            .for_each(|(i, chunk)| f(i, chunk));
    } else {
        data.chunks_mut(size)
            .enumerate()
            .for_each(|(i, chunk)| f(i, chunk));
    }
}

/// `f(i)` for each `i` in `0..count`: spread over rayon's threads when there are several, in a
/// plain loop when there is one.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn for_each_index(count: usize, f: impl Fn(usize) + Send + Sync) {
    if threads() > 1 {
        (0..count).into_par_iter().for_each(f);
    } else {
        (0..count).for_each(f);
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_pool_runs_on_a_pool_thread_where_there_are_several() {
        // From the test's own thread: on a pool thread when the global pool has two or more.
        let cpu = &Device::Cpu;
        assert_eq!(
            on_pool(cpu, || rayon::current_thread_index().is_some()),
            threads() > 1
        );
        // Already on a pool thread: right there, on the same thread.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            let here = std::thread::current().id();
            assert_eq!(on_pool(cpu, || std::thread::current().id()), here);
        });
        assert_eq!(on_pool(cpu, || 6 * 7), 42);
    }
}
