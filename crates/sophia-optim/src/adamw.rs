//! AdamW (Loshchilov & Hutter 2019) with PyTorch's defaults and semantics
//! (`torch.optim.AdamW`, `amsgrad = False`), with a one-pass update on the flex CPU backend:
//!
//! ```text
//! t ← t + 1
//! m ← β₁ m + (1 − β₁) g;   v ← β₂ v + (1 − β₂) g²
//! θ ← θ (1 − η λ) − η · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
//! ```
//!
//! Burn's `AdamW` composes this from about twelve whole-tensor operations; this one runs them
//! as one parallel pass over the parameter, gradient and both moments where the feature `flex`
//! applies, with the same f32 operations in the same order, so both give the same bits. The
//! composed path and the state record are Burn's own ([`AdamWState`]), so checkpoints move
//! between the two optimizers unchanged.

use burn::config::Config;
use burn::optim::{AdamWState, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor};

use crate::LearningRate;
use crate::error::{ConfigError, Validator};

/// Configuration of [`AdamW`]; defaults are PyTorch's.
#[derive(Config, Debug, PartialEq)]
pub struct AdamWConfig {
    /// First-moment coefficient `β₁`.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// Second-moment coefficient `β₂`.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// `ε`, added to `√v̂`.
    #[config(default = 1e-8)]
    pub epsilon: f64,
    /// Decoupled weight decay `λ`.
    #[config(default = 0.01)]
    pub weight_decay: f64,
    /// Take the one-pass update of the flex CPU backend where it applies (this crate's feature
    /// `flex`; the same bits as the composed operations); `false` runs Burn's composed
    /// operations everywhere.
    #[config(default = true)]
    pub fused: bool,
}

/// The AdamW optimizer; see the [module docs](self).
#[derive(Clone)]
pub struct AdamW {
    /// Burn's AdamW with the same hyperparameters: the composed path.
    composed: burn::optim::AdamW,
    #[cfg_attr(not(feature = "flex"), allow(dead_code))]
    constants: Constants,
}

/// The hyperparameters in f32, as Burn's AdamW holds them.
#[derive(Clone, Copy, Debug)]
struct Constants {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    /// Whether the one-pass update runs where it applies (compiled with the `flex` feature).
    #[cfg_attr(not(feature = "flex"), expect(dead_code, reason = "only the `flex` feature compiles the one-pass update"))]
    fused: bool,
}

impl AdamWConfig {
    /// Check every field; the error names the field, its value and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let v = Validator::new("AdamW");
        v.unit_interval("beta_1", self.beta_1)?;
        v.unit_interval("beta_2", self.beta_2)?;
        v.positive("epsilon", self.epsilon)?;
        v.non_negative("weight_decay", self.weight_decay)
    }

    /// Build the bare optimizer, or say which field is invalid.
    pub fn try_build(&self) -> Result<AdamW, ConfigError> {
        self.validate()?;
        let constants =
            Constants { beta_1: self.beta_1 as f32, beta_2: self.beta_2 as f32, epsilon: self.epsilon as f32, weight_decay: self.weight_decay as f32, fused: self.fused };
        let composed = burn::optim::AdamWConfig::new()
            .with_beta_1(constants.beta_1)
            .with_beta_2(constants.beta_2)
            .with_epsilon(constants.epsilon)
            .with_weight_decay(constants.weight_decay)
            .build();
        Ok(AdamW { composed, constants })
    }
}

constructors!(AdamWConfig, AdamW, ModuleOptimizer, "AdamW");

impl Optimizer for AdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(&self, lr: LearningRate, tensor: Tensor<D>, grad: Tensor<D>, state: Option<Self::State<D>>) -> (Tensor<D>, Option<Self::State<D>>) {
        #[cfg(feature = "flex")]
        let state = match state {
            Some(AdamWState { momentum: s })
                if self.constants.fused && s.max_moment_2.is_none() && crate::fused::applies(&[&tensor, &grad, &s.moment_1, &s.moment_2]) =>
            {
                let c = self.constants;
                let time = s.time + 1;
                // Burn's scalars: factors and bias corrections in f32, the decay in f64.
                let update = crate::fused::AdamWUpdate {
                    beta_1: c.beta_1,
                    one_minus_beta_1: 1.0 - c.beta_1,
                    beta_2: c.beta_2,
                    one_minus_beta_2: 1.0 - c.beta_2,
                    bias_correction_1: 1.0 - c.beta_1.powi(time as i32),
                    bias_correction_2: 1.0 - c.beta_2.powi(time as i32),
                    epsilon: c.epsilon,
                    decay: crate::fused::decay_factor(lr, c.weight_decay as f64),
                    lr: lr as f32,
                };
                let (tensor, moment_1, moment_2) = crate::fused::adamw_update(&update, tensor, grad, s.moment_1, s.moment_2);
                let momentum = burn::optim::AdaptiveMomentumState { time, moment_1, moment_2, max_moment_2: None };
                return (tensor, Some(AdamWState { momentum }));
            }
            state => state,
        };
        self.composed.step(lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        burn::optim::AdamW::to_device(state, device)
    }
}
