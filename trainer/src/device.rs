//! Choosing where tensors live: the GPU when the trainer is built with `cuda` and one is there.

use anyhow::{bail, Result};
use candle_core::Device;
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum DeviceChoice {
    /// CUDA when built with `--features cuda` and a GPU is present, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

pub fn select(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => {
            if !candle_core::utils::cuda_is_available() {
                bail!("--device cuda: this trainer was built without the `cuda` feature");
            }
            Ok(Device::new_cuda(0)?)
        }
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(device) = Device::new_cuda(0) {
                    return Ok(device);
                }
            }
            Ok(Device::Cpu)
        }
    }
}
