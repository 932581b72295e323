//! Tiger: Lion with a single momentum coefficient (Su 2023, <https://github.com/bojone/tiger>).
//!
//! ```text
//! m ← β m + (1 − β) g
//! θ ← θ · (1 − η λ) − η · sign(m)
//! ```
//!
//! With `β₁ = β₂` Lion's interpolation and its momentum are the same tensor, so Tiger keeps one
//! state tensor per parameter and needs no extra buffer for gradient accumulation.
//!
//! With [`TigerConfig::scale_by_rms`] the reference implementation's per-tensor learning rate
//! `η · RMS(θ)` is used for both the sign step and the decay (like LAMB's trust ratio, it makes
//! the step relative to the size of the weights; a tensor of zeros then never moves, as in the
//! reference). The reference's other extras (half learning rate and no decay for bias/norm
//! tensors, its NaN guard, built-in gradient accumulation) are left to the training loop.

use burn::config::Config;
use burn::optim::{Optimizer, RecordState};
use burn::tensor::{Device, Tensor};

use crate::LearningRate;
use crate::error::{ConfigError, Validator};
use burn::optim::ModuleOptimizer;

/// Configuration of [`Tiger`]; defaults are the reference implementation's.
#[derive(Config, Debug, PartialEq)]
pub struct TigerConfig {
    /// Momentum coefficient `β` (Lion's `β₁ = β₂`).
    #[config(default = 0.965)]
    pub beta: f64,
    /// Decoupled weight decay `λ`.
    #[config(default = 0.01)]
    pub weight_decay: f64,
    /// Scale the learning rate of each tensor by its root-mean-square value.
    #[config(default = false)]
    pub scale_by_rms: bool,
    /// Take the one-pass update of the flex CPU backend where it applies (this crate's feature
    /// `flex`; the same bits as the composed operations); `false` runs Burn's composed
    /// operations everywhere.
    #[config(default = true)]
    pub fused: bool,
}

/// The Tiger optimizer; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Tiger {
    beta: f64,
    weight_decay: f64,
    scale_by_rms: bool,
    /// Whether the one-pass update runs where it applies (compiled with the `flex` feature).
    #[cfg_attr(not(feature = "flex"), expect(dead_code, reason = "only the `flex` feature compiles the one-pass update"))]
    fused: bool,
}

/// Per-parameter state of [`Tiger`]: one tensor of the parameter's shape.
#[derive(RecordState, Clone)]
pub struct TigerState<const D: usize> {
    /// Momentum EMA `m`.
    pub momentum: Tensor<D>,
}

impl TigerConfig {
    /// Check every field; the error names the field, its value and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let v = Validator::new("Tiger");
        v.unit_interval("beta", self.beta)?;
        v.non_negative("weight_decay", self.weight_decay)
    }

    /// Build the bare optimizer, or say which field is invalid.
    pub fn try_build(&self) -> Result<Tiger, ConfigError> {
        self.validate()?;
        Ok(Tiger { beta: self.beta, weight_decay: self.weight_decay, scale_by_rms: self.scale_by_rms, fused: self.fused })
    }
}

constructors!(TigerConfig, Tiger, ModuleOptimizer, "Tiger");

impl Optimizer for Tiger {
    type State<const D: usize> = TigerState<D>;

    fn step<const D: usize>(&self, lr: LearningRate, tensor: Tensor<D>, grad: Tensor<D>, state: Option<Self::State<D>>) -> (Tensor<D>, Option<Self::State<D>>) {
        #[cfg(feature = "flex")]
        let state = match state {
            Some(state) if self.fused && !self.scale_by_rms && crate::fused::applies(&[&tensor, &grad, &state.momentum]) => {
                // Lion's pass with β₁ = β₂ = β (`1 − β` computed in f64, then rounded, as the
                // composed path below rounds it).
                let (beta, one_minus_beta) = (self.beta as f32, (1.0 - self.beta) as f32);
                let update = crate::fused::LionUpdate {
                    beta_1: beta,
                    one_minus_beta_1: one_minus_beta,
                    beta_2: beta,
                    one_minus_beta_2: one_minus_beta,
                    decay: crate::fused::decay_factor(lr, self.weight_decay),
                    lr: lr as f32,
                };
                let (tensor, momentum) = crate::fused::lion_update(&update, tensor, grad, state.momentum);
                return (tensor, Some(TigerState { momentum }));
            }
            state => state,
        };
        let momentum = match state {
            Some(state) => state.momentum.mul_scalar(self.beta).add(grad.mul_scalar(1.0 - self.beta)),
            None => grad.mul_scalar(1.0 - self.beta),
        };
        let tensor = if self.scale_by_rms {
            // lr · RMS(θ), kept on the device as a one-element tensor.
            let lr = tensor.clone().square().mean().sqrt().mul_scalar(lr);
            let lr = lr.reshape([1; D]);
            let decayed = tensor.clone().sub(tensor.mul(lr.clone()).mul_scalar(self.weight_decay));
            decayed.sub(momentum.clone().sign().mul(lr))
        } else {
            let decay = 1.0 - lr * self.weight_decay;
            let tensor = if decay == 1.0 { tensor } else { tensor.mul_scalar(decay) };
            tensor.sub(momentum.clone().sign().mul_scalar(lr))
        };
        (tensor, Some(TigerState { momentum }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        TigerState { momentum: state.momentum.to_device(device) }
    }
}
