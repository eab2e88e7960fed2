//! A weights file a user points `trainer predict` or the page at: it must load or be refused.
#![no_main]

use candle_core::Device;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pneumoscope::Checkpoint::from_bytes(data, &Device::Cpu);
});
