//! Seeded initialisation with torchvision's ResNet rules.
//!
//! candle's CPU random generator cannot be seeded, so every parameter is drawn here from one
//! `StdRng`, in sorted name order, which makes a run reproducible from its seed.

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::error::Result;

/// How torchvision initialises a ResNet tensor of this name and shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InitRule {
    Const(f32),
    /// kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out).
    KaimingNormalFanOut {
        std: f32,
    },
    /// nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias alike.
    Uniform {
        bound: f32,
    },
}

/// The rule for one parameter or buffer, from its torchvision name and shape.
pub fn rule_for(name: &str, shape: &[usize]) -> InitRule {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let in_head = name.starts_with("fc.");
    match (leaf, shape.len()) {
        ("weight", 4) => {
            let fan_out = shape[0] * shape[2] * shape[3];
            InitRule::KaimingNormalFanOut {
                std: (2.0 / fan_out as f32).sqrt(),
            }
        }
        ("weight" | "bias", _) if in_head => {
            let fan_in = if leaf == "weight" {
                shape[1]
            } else {
                crate::model::FEATURE_DIM
            };
            InitRule::Uniform {
                bound: 1.0 / (fan_in as f32).sqrt(),
            }
        }
        ("weight" | "running_var", _) => InitRule::Const(1.0),
        _ => InitRule::Const(0.0),
    }
}

fn sample(rule: InitRule, len: usize, rng: &mut StdRng) -> Vec<f32> {
    match rule {
        InitRule::Const(value) => vec![value; len],
        InitRule::KaimingNormalFanOut { std } => {
            let normal = Normal::new(0.0, std).expect("a positive standard deviation");
            (0..len).map(|_| normal.sample(rng)).collect()
        }
        InitRule::Uniform { bound } => (0..len).map(|_| rng.random_range(-bound..bound)).collect(),
    }
}

/// Overwrites the given variables with fresh values drawn from `seed`.
pub fn initialize_vars(vars: &[(String, Var)], seed: u64) -> Result<()> {
    let mut sorted: Vec<&(String, Var)> = vars.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rng = StdRng::seed_from_u64(seed);
    for (name, var) in sorted {
        let shape = var.dims().to_vec();
        let values = sample(rule_for(name, &shape), var.elem_count(), &mut rng);
        let fresh = Tensor::from_vec(values, shape, var.device())?.to_dtype(var.dtype())?;
        var.set(&fresh)?;
    }
    Ok(())
}

/// Initialises every variable of `varmap` (the whole network) from `seed`.
pub fn initialize(varmap: &VarMap, seed: u64) -> Result<()> {
    initialize_vars(&crate::checkpoint::named_vars(varmap)?, seed)
}

/// torchvision's `zero_init_residual=True`: the last batch norm of every bottleneck starts with
/// zero scale, so each block begins as the identity. From scratch on a few hundred images the
/// plain init's activations grow block by block and the first epochs diverge.
pub fn zero_init_residual(varmap: &VarMap) -> Result<()> {
    for (name, var) in crate::checkpoint::named_vars(varmap)? {
        if name.starts_with("layer") && name.ends_with(".bn3.weight") {
            var.set(&var.zeros_like()?)?;
        }
    }
    Ok(())
}
