//! The f32 data of CPU tensors as plain slices, borrowed, for the fused training ops.

use candle_core::{CpuStorage, Layout, Result, Storage};

/// The contiguous f32 data that `layout` describes in `storage`.
pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<f32>()?[start..end]),
        None => candle_core::bail!("a fused op needs contiguous f32 input"),
    }
}

/// The same for a tensor's storage, which must be on the CPU.
pub(crate) fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    match storage {
        Storage::Cpu(cpu) => contiguous_f32(cpu, layout),
        _ => candle_core::bail!("a fused op runs on the CPU only"),
    }
}
