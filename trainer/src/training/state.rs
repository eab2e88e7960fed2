//! What a run remembers between epochs: the resumable checkpoint (weights, momentum, history).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use pneumoscope::checkpoint::{state_dict, write_atomic};
use pneumoscope::Checkpoint;
use serde::{Deserialize, Serialize};

use crate::optim::Sgd;

use super::{TrainArgs, CHECKPOINT_FILE};

const MOMENTUM_PREFIX: &str = "optimizer.momentum.";
const STATE_KEY: &str = "pneumoscope.train_state";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub validation_loss: f64,
    pub validation_accuracy: f64,
    pub images_per_second: f64,
    pub seconds: f64,
}

/// What a checkpoint remembers besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TrainState {
    pub(super) args: TrainArgs,
    pub(super) epochs_completed: usize,
    pub(super) optimizer_steps: i64,
    pub(super) best_epoch: usize,
    pub(super) best_validation_accuracy: f64,
    pub(super) history: Vec<EpochMetrics>,
}

pub(super) fn save_checkpoint(
    out: &Path,
    varmap: &VarMap,
    sgd: &Sgd,
    state: &TrainState,
) -> Result<()> {
    let mut tensors = state_dict(varmap, DType::F32, state.optimizer_steps)?;
    for (name, momentum) in sgd.state() {
        tensors.insert(format!("{MOMENTUM_PREFIX}{name}"), momentum);
    }
    let metadata = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(state)?)]);
    let views: Vec<(&String, &Tensor)> = tensors.iter().collect();
    let bytes = safetensors::tensor::serialize(views, Some(metadata))?;
    write_atomic(&out.join(CHECKPOINT_FILE), &bytes)?;
    Ok(())
}

pub(super) fn load_checkpoint(
    out: &Path,
    varmap: &VarMap,
    sgd: &mut Sgd,
    device: &Device,
) -> Result<TrainState> {
    let path = out.join(CHECKPOINT_FILE);
    let bytes = std::fs::read(&path)
        .with_context(|| format!("--resume: cannot read {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("--resume: {} is not a checkpoint", path.display()))?;
    let state_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .with_context(|| format!("--resume: {} holds no training state", path.display()))?;
    let state: TrainState = serde_json::from_str(state_json)?;
    let checkpoint = Checkpoint::from_bytes(&bytes, device)?;
    checkpoint.load_into(varmap, false)?;
    sgd.load_state(|name| {
        checkpoint
            .tensors()
            .get(&format!("{MOMENTUM_PREFIX}{name}"))
            .cloned()
    });
    Ok(state)
}
