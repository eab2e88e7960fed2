//! Pneumoscope's trainer as a library: data, augmentation, optimisation, training, evaluation and
//! prediction. The `trainer` binary is a thin clap front end over it.

/// candle allocates a fresh buffer for every tensor op; the system allocator hands large ones
/// back to the kernel at once, so each training step pays for page faults and zeroing again.
/// mimalloc keeps and reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 2's `mimalloc.h` (the crate exports no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to hand freed memory back to the kernel. A training step frees and
/// allocates gigabytes of activations; returning them makes every step fault in and zero fresh
/// pages again (a quarter of the step time, measured with perf).
pub fn keep_freed_memory() {
    // SAFETY: sets a plain integer option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

pub mod augment;
pub mod average;
pub mod calibrate;
pub mod data;
pub mod device;
pub mod evaluate;
pub mod framing;
pub mod gate;
pub mod gate_check;
pub mod keep_classes;
pub mod optim;
pub mod parallel;
pub mod planar;
pub mod plots;
pub mod predict;
pub mod provenance;
pub mod quantize;
pub mod sampler;
pub mod training;
