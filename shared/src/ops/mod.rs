//! The CPU kernels under the model: convolution as im2col + gemm, batch norm with its ReLU, the
//! residual add + ReLU and the stem's max pool, each with its backward for training; the folded
//! inference convolution with its bias, residual and ReLU, and the inference stem, whose sums
//! run in a fixed order so the page gets the CLI's bits (one channel for grey images); the
//! matrix product and the slice helpers they share. Other devices run candle's own tensor ops
//! instead.

use std::sync::atomic::{AtomicBool, Ordering};

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

/// `f()` on one of rayon's threads when there are several, the others kept looking for its
/// forks meanwhile (`keep_stealing`). A fork from outside the pool wakes its threads from sleep
/// and puts the caller to sleep until they finish; from inside, the other thread steals from
/// the caller's own queue. In this project's 2-core VM a fork of two 100 us halves cost
/// 17-190 us from outside and 2-44 us from inside (the longer the serial gap before it, the
/// more), and a forward pass forks several times per convolution. Work on another device than
/// the CPU stays on the calling thread (a CUDA context is bound to a thread).
pub(crate) fn on_pool<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if !(device.is_cpu() && threads() > 1 && rayon::current_thread_index().is_none()) {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        let caller = rayon::current_thread_index();
        for _ in 1..threads() {
            let done = &done;
            scope.spawn(move |_| keep_stealing(done, caller));
        }
        let result = f();
        done.store(true, Ordering::Release);
        result
    })
}

/// Rounds without work after which `keep_stealing` gives its thread back (a round, a look at
/// every queue, takes about 0.1 us here: 0.38 ms in all, measured through the unit test).
const IDLE_ROUNDS: u32 = 4096;

/// Runs the pool's work as it comes until `done`. An idle rayon thread goes to sleep within
/// microseconds, and the next fork then waits for it to wake; between two convolutions (the
/// serial steps, candle's bookkeeping) it often had (rayon's futex sleep and wake-ups showed in
/// the profile). Kept busy here, it takes each fork at once: one image's forward at 112x112 on
/// two threads took 0.88x the time (README, "Two threads kept awake"). Never on the `caller`'s
/// thread (waiting for a fork of its own, it would wait here for its own `done`), and not for
/// long without work: a thread that took this job while waiting for a fork of another
/// computation (several forwards sharing the pool) goes back to it.
fn keep_stealing(done: &AtomicBool, caller: Option<usize>) {
    if rayon::current_thread_index() == caller {
        return;
    }
    let mut idle = 0;
    while !done.load(Ordering::Acquire) && idle < IDLE_ROUNDS {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => idle = 0,
            _ => {
                idle += 1;
                std::hint::spin_loop();
            }
        }
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

    #[test]
    fn keep_stealing_gives_its_thread_back_without_work() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let never = AtomicBool::new(false);
        // On a pool thread that is not the caller's, with nothing queued: it returns although
        // `done` never comes.
        pool.install(|| keep_stealing(&never, None));
        // On the caller's own thread: at once.
        pool.install(|| keep_stealing(&never, rayon::current_thread_index()));
        // Done: at once.
        pool.install(|| keep_stealing(&AtomicBool::new(true), None));
    }

    /// Forward passes from several threads at once share the global pool: one caller's
    /// stealing job may run on a thread that another caller's forks wait on, and every caller
    /// still finishes with its own results.
    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn concurrent_callers_each_get_their_forks_done() {
        let cpu = &Device::Cpu;
        let sums: Vec<u64> = std::thread::scope(|s| {
            let callers: Vec<_> = (0..4u64)
                .map(|caller| {
                    s.spawn(move || {
                        (0..50u64)
                            .map(|round| {
                                // From outside the pool, as `forward_timed` calls it.
                                on_pool(cpu, || {
                                    let summed = std::sync::atomic::AtomicU64::new(0);
                                    for_each_index(8, |i| {
                                        let v = caller * 1000 + round + i as u64;
                                        summed.fetch_add(v, Ordering::Relaxed);
                                    });
                                    summed.into_inner()
                                })
                            })
                            .sum()
                    })
                })
                .collect();
            callers.into_iter().map(|c| c.join().unwrap()).collect()
        });
        for (caller, sum) in (0u64..).zip(sums) {
            let expected: u64 = (0..50u64)
                .flat_map(|round| (0..8u64).map(move |i| caller * 1000 + round + i))
                .sum();
            assert_eq!(sum, expected, "caller {caller}");
        }
    }
}
