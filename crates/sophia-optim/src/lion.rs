//! Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms",
//! <https://arxiv.org/abs/2302.06675>), with a one-pass update on the flex CPU backend:
//!
//! ```text
//! c = β₁ m + (1 − β₁) g
//! θ ← θ (1 − η λ) − η · sign(c)
//! m ← β₂ m + (1 − β₂) g
//! ```
//!
//! Where the feature `flex` applies, the update is one parallel pass over the parameter,
//! gradient and momentum with the same f32 operations as Burn's composed `Lion`, so both give
//! the same bits; elsewhere it is Burn's `Lion`. The state record is Burn's ([`LionState`]), so
//! checkpoints move between the two optimizers unchanged.

use burn::config::Config;
use burn::optim::{LionState, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor};

use crate::LearningRate;
use crate::error::{ConfigError, Validator};

/// Configuration of [`Lion`]; defaults are the paper's.
#[derive(Config, Debug, PartialEq)]
pub struct LionConfig {
    /// Interpolation coefficient `β₁` of the update direction.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// Momentum coefficient `β₂`.
    #[config(default = 0.99)]
    pub beta_2: f64,
    /// Decoupled weight decay `λ`.
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Take the one-pass update of the flex CPU backend where it applies (this crate's feature
    /// `flex`; the same bits as the composed operations); `false` runs Burn's composed
    /// operations everywhere.
    #[config(default = true)]
    pub fused: bool,
}

/// The Lion optimizer; see the [module docs](self).
#[derive(Clone)]
pub struct Lion {
    /// Burn's Lion with the same hyperparameters: the composed path.
    composed: burn::optim::Lion,
    #[cfg_attr(not(feature = "flex"), allow(dead_code))]
    constants: Constants,
}

/// The hyperparameters in f32, as Burn's Lion holds them.
#[derive(Clone, Copy, Debug)]
struct Constants {
    beta_1: f32,
    beta_2: f32,
    weight_decay: f32,
    /// Whether the one-pass update runs where it applies (compiled with the `flex` feature).
    #[cfg_attr(not(feature = "flex"), expect(dead_code, reason = "only the `flex` feature compiles the one-pass update"))]
    fused: bool,
}

impl LionConfig {
    /// Check every field; the error names the field, its value and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let v = Validator::new("Lion");
        v.unit_interval("beta_1", self.beta_1)?;
        v.unit_interval("beta_2", self.beta_2)?;
        v.non_negative("weight_decay", self.weight_decay)
    }

    /// Build the bare optimizer, or say which field is invalid.
    pub fn try_build(&self) -> Result<Lion, ConfigError> {
        self.validate()?;
        let constants = Constants { beta_1: self.beta_1 as f32, beta_2: self.beta_2 as f32, weight_decay: self.weight_decay as f32, fused: self.fused };
        let composed = burn::optim::LionConfig::new().with_beta_1(constants.beta_1).with_beta_2(constants.beta_2).with_weight_decay(constants.weight_decay).build();
        Ok(Lion { composed, constants })
    }
}

constructors!(LionConfig, Lion, ModuleOptimizer, "Lion");

impl Optimizer for Lion {
    type State<const D: usize> = LionState<D>;

    fn step<const D: usize>(&self, lr: LearningRate, tensor: Tensor<D>, grad: Tensor<D>, state: Option<Self::State<D>>) -> (Tensor<D>, Option<Self::State<D>>) {
        #[cfg(feature = "flex")]
        let state = match state {
            Some(state) if self.constants.fused && crate::fused::applies(&[&tensor, &grad, &state.momentum]) => {
                let c = self.constants;
                // Burn's scalars: the factors in f32, the decay in f64.
                let update = crate::fused::LionUpdate {
                    beta_1: c.beta_1,
                    one_minus_beta_1: 1.0 - c.beta_1,
                    beta_2: c.beta_2,
                    one_minus_beta_2: 1.0 - c.beta_2,
                    decay: crate::fused::decay_factor(lr, c.weight_decay as f64),
                    lr: lr as f32,
                };
                let (tensor, momentum) = crate::fused::lion_update(&update, tensor, grad, state.momentum);
                return (tensor, Some(LionState { momentum }));
            }
            state => state,
        };
        self.composed.step(lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        burn::optim::Lion::to_device(state, device)
    }
}
