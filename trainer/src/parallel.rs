//! Many images on all cores: one image per thread, each image's ops on that thread alone.
//!
//! Splitting one ResNet50 forward pass over two threads gains little at these input sizes (the
//! int8 path's quantizer, patch rows and scaling are short loops per convolution, and layer4 at
//! 112x112 has 16 positions), while two images side by side each keep a core busy. So a folder
//! is classified an image per thread: each worker runs inside its own one-thread rayon pool,
//! where `rayon::current_num_threads()` (what the ops and rten-gemm split their work by) is 1.
//! The arithmetic is the same as one image at a time: no op splits a sum across threads.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::Device;

/// `f` applied to every item, results in the items' order: on `device`'s CPU threads an item
/// per thread (the global rayon pool's size of them), elsewhere (a GPU) one at a time.
pub fn map_per_image<T: Sync, R: Send>(
    items: &[T],
    device: &Device,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = rayon::current_num_threads().min(items.len());
    if !device.is_cpu() || threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut indexed: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .build()
                        .expect("a one-thread pool can be built");
                    pool.install(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(item) = items.get(i) else {
                                break done;
                            };
                            done.push((i, f(item)));
                        }
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| match worker.join() {
                Ok(done) => done,
                // A panic in `f` is the caller's, as it would be without threads.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    indexed.sort_unstable_by_key(|(i, _)| *i);
    indexed.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_once_in_order_each_on_a_one_thread_pool() {
        let items: Vec<usize> = (0..37).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let results = pool.install(|| {
            map_per_image(&items, &Device::Cpu, |&i| {
                // Long enough that the other workers start before the first has taken all.
                std::thread::sleep(std::time::Duration::from_millis(2));
                (
                    i * i,
                    rayon::current_num_threads(),
                    std::thread::current().id(),
                )
            })
        });
        let squares: Vec<usize> = results.iter().map(|r| r.0).collect();
        assert_eq!(squares, items.iter().map(|i| i * i).collect::<Vec<_>>());
        assert!(
            results.iter().all(|r| r.1 == 1),
            "ops saw more than one thread"
        );
        let threads: std::collections::HashSet<_> = results.iter().map(|r| r.2).collect();
        assert!(threads.len() > 1, "every item ran on one thread");
        // One item, or one thread: no workers at all, the caller's pool as it is.
        let alone =
            pool.install(|| map_per_image(&[0], &Device::Cpu, |_| rayon::current_num_threads()));
        assert_eq!(alone, [3]);
    }
}
