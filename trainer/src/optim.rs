//! SGD with momentum, with PyTorch's update rule, and the StepLR schedule.
//!
//! candle-nn's `SGD` has no momentum, so the optimizer of the seed paper is written here.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// `torch.optim.SGD`: with g = grad + wd * p, the buffer b = g on the first step and
/// b = momentum * b + (1 - dampening) * g after; the step is g + momentum * b with Nesterov, else
/// b; then p -= lr * step.
pub struct Sgd {
    params: Vec<(String, Var)>,
    velocity: Vec<Option<Tensor>>,
    config: SgdConfig,
}

impl Sgd {
    pub fn new(params: Vec<(String, Var)>, config: SgdConfig) -> Self {
        let velocity = vec![None; params.len()];
        Self {
            params,
            velocity,
            config,
        }
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        let c = self.config;
        for ((_, param), velocity) in self.params.iter().zip(self.velocity.iter_mut()) {
            let Some(grad) = grads.get(param) else {
                continue;
            };
            // Detached: arithmetic on a `Var` records an op graph, and a momentum buffer built
            // from one would chain every earlier step's intermediates and keep them in memory.
            let value = param.as_tensor().detach();
            let mut grad = grad.detach();
            if c.weight_decay != 0.0 {
                grad = (grad + (&value * c.weight_decay)?)?;
            }
            if c.momentum != 0.0 {
                let buffer = match velocity.take() {
                    None => grad.clone(),
                    Some(b) => ((b * c.momentum)? + (&grad * (1.0 - c.dampening))?)?,
                };
                grad = if c.nesterov {
                    (grad + (&buffer * c.momentum)?)?
                } else {
                    buffer.clone()
                };
                *velocity = Some(buffer);
            }
            param.set(&(value - (grad * lr)?)?)?;
        }
        Ok(())
    }

    /// Momentum buffers by parameter name, for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.velocity)
            .filter_map(|((name, _), v)| v.as_ref().map(|v| (name.clone(), v.clone())))
            .collect()
    }

    /// Restores momentum buffers saved by `state`.
    pub fn load_state(&mut self, lookup: impl Fn(&str) -> Option<Tensor>) {
        for ((name, _), velocity) in self.params.iter().zip(self.velocity.iter_mut()) {
            *velocity = lookup(name);
        }
    }
}

/// `torch.optim.lr_scheduler.StepLR`: lr * gamma^(epoch / step_size), epochs counted from 0.
pub fn step_lr(base_lr: f64, step_size: usize, gamma: f64, epoch: usize) -> f64 {
    base_lr * gamma.powi((epoch / step_size.max(1)) as i32)
}

/// Linear warm-up: `lr * (epoch + 1) / (warmup_epochs + 1)` for the first `warmup_epochs` epochs
/// (counted from 0), `lr` after.
pub fn warm_up(lr: f64, warmup_epochs: usize, epoch: usize) -> f64 {
    lr * ((epoch + 1) as f64 / (warmup_epochs + 1) as f64).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn run(config: SgdConfig, steps: usize) -> Vec<f32> {
        // loss = sum(p^2 * k) with k = [1, 2]: grad = 2 * k * p.
        let p = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let k = Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let mut sgd = Sgd::new(vec![("p".into(), p.clone())], config);
        for _ in 0..steps {
            let loss = (p.as_tensor().sqr().unwrap() * &k)
                .unwrap()
                .sum_all()
                .unwrap();
            sgd.step(&loss.backward().unwrap(), 0.1).unwrap();
        }
        p.as_tensor().to_vec1().unwrap()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    /// Worked by hand, and equal to torch.optim.SGD(lr=0.1, momentum=0.9) on the same problem.
    #[test]
    fn momentum_matches_pytorch_by_hand() {
        let config = SgdConfig {
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        };
        // Step 1: g = [2, -8], b = g, p = [1, -2] - 0.1 * [2, -8] = [0.8, -1.2].
        assert!(close(&run(config, 1), &[0.8, -1.2]));
        // Step 2: g = [1.6, -4.8], b = 0.9 * [2, -8] + g = [3.4, -12.0], p = [0.46, 0.0].
        assert!(close(&run(config, 2), &[0.46, 0.0]));
    }

    #[test]
    fn nesterov_and_weight_decay_match_pytorch_by_hand() {
        let config = SgdConfig {
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.5,
            nesterov: true,
        };
        // Step 1: g = [2, -8] + 0.5 * [1, -2] = [2.5, -9], b = g, step = g + 0.9 b = [4.75, -17.1],
        // p = [1 - 0.475, -2 + 1.71] = [0.525, -0.29].
        assert!(close(&run(config, 1), &[0.525, -0.29]));
        // Step 2: g = [1.05, -1.16] + [0.2625, -0.145] = [1.3125, -1.305],
        // b = 0.9 * [2.5, -9] + g = [3.5625, -9.405], step = g + 0.9 b = [4.51875, -9.7695],
        // p = [0.525 - 0.451875, -0.29 + 0.97695] = [0.073125, 0.68695].
        assert!(close(&run(config, 2), &[0.073125, 0.68695]));
    }

    /// With weight decay the update reads the parameter itself; the kept buffers must still be
    /// plain values, or each step would hold on to all earlier steps' tensors.
    #[test]
    fn momentum_buffers_hold_no_op_graph() {
        let config = SgdConfig {
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 1e-4,
            nesterov: true,
        };
        let p = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let mut sgd = Sgd::new(vec![("p".into(), p.clone())], config);
        for _ in 0..3 {
            let loss = p.as_tensor().sqr().unwrap().sum_all().unwrap();
            sgd.step(&loss.backward().unwrap(), 0.1).unwrap();
        }
        let (_, buffer) = &sgd.state()[0];
        assert!(
            !buffer.track_op(),
            "the momentum buffer records an op graph"
        );
    }

    #[test]
    fn warm_up_rises_linearly_then_leaves_the_schedule_alone() {
        let lrs: Vec<f64> = (0..4).map(|e| warm_up(0.03, 2, e)).collect();
        let expected = [0.01, 0.02, 0.03, 0.03];
        assert!(
            lrs.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-12),
            "{lrs:?}"
        );
        assert_eq!(warm_up(0.1, 0, 0), 0.1);
    }

    #[test]
    fn step_lr_decays_every_ten_epochs() {
        let lrs: Vec<f64> = (0..25).map(|e| step_lr(0.1, 10, 0.1, e)).collect();
        assert!((lrs[0] - 0.1).abs() < 1e-12 && (lrs[9] - 0.1).abs() < 1e-12);
        assert!((lrs[10] - 0.01).abs() < 1e-12 && (lrs[19] - 0.01).abs() < 1e-12);
        assert!((lrs[20] - 0.001).abs() < 1e-12);
    }
}
