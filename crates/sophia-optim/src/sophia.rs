//! Sophia: a clipped, diagonally preconditioned sign-momentum optimizer.
//!
//! Liu, Li, Hall, Liang, Ma (2023), *Sophia: A Scalable Stochastic Second-order Optimizer for
//! Language Model Pre-training*, <https://arxiv.org/abs/2305.14342>.
//!
//! Per coordinate, with decoupled weight decay `λ`, learning rate `η`, momentum `m` and a
//! diagonal Hessian EMA `h`:
//!
//! ```text
//! update:   θ ← θ · (1 − η λ)
//!           m ← β₁ m + (1 − β₁) g
//!           θ ← θ − η · clip(m / D(h), 1)            clip(z, 1) = max(min(z, 1), −1)
//! refresh:  h ← β₂ h + (1 − β₂) ĥ                     (θ and m untouched)
//! ```
//!
//! The [`SophiaVariant`] fixes `ĥ` and the preconditioner `D(h)`; a
//! [`HessianEstimator`](crate::HessianEstimator) supplies the refresh input:
//!
//! | variant | refresh input | `ĥ` | `D(h)` |
//! |---|---|---|---|
//! | SophiaG (Gauss-Newton-Bartlett) | `ĝ`, gradient of the loss on labels sampled from the model | `ĝ ⊙ ĝ` | `ρ · bs · h + ε` |
//! | SophiaH (Hutchinson) | `u ⊙ (H u)`, `u` Rademacher | `u ⊙ Hu` | `max(γ h, ε)` |
//!
//! SophiaG follows the official implementation (`Liuhong99/Sophia`, `sophia.py`): `bs` is the
//! number of tokens per optimizer step, `h` is an EMA of `ĝ²` *without* the factor `bs`, and
//! the update multiplies it back. Since `D(h) > 0`, `sign(m) · min(|m| / D, 1)` (the official
//! form) equals `clip(m / D, 1)`. SophiaH follows the paper (Algorithms 1 and 3) with no bias
//! correction. The first refresh of SophiaG comes after `k` updates (so the first `k` updates
//! take the sign step `η · sign(m)`), the first refresh of SophiaH comes before the first update.
//! The optimizer owns that schedule and the clipping of `ĝ` (SophiaG: global norm, as the official
//! loop clips it before `update_hessian`): see [`SophiaOptimizer::step`](crate::SophiaOptimizer::step).
//!
//! A coordinate "wins" when its step is not clipped (`|m| / D(h) < 1`); the win rate is the
//! fraction of such coordinates (official guidance: keep it between 0.1 and 0.5 by tuning `ρ`).

use burn::config::Config;
use burn::optim::{Optimizer, RecordState};
use burn::tensor::{Device, Tensor};

use crate::LearningRate;
use crate::auto_rho::AutoRho;
use crate::clip::GlobalNormClip;
use crate::control::{Pass, Schedule, SophiaControl, WinCount};
use crate::error::{ConfigError, Validator};
use crate::optimizer::SophiaOptimizer;

/// Configuration of [SophiaG](Sophia), the Gauss-Newton-Bartlett variant.
///
/// Defaults are the official implementation's (`Liuhong99/Sophia`). `batch_size` is `bs`, the
/// number of tokens (or samples) per optimizer step, and has no default: the official GPT-2
/// small run uses `480 × 1024`.
#[derive(Config, Debug, PartialEq)]
pub struct SophiaGConfig {
    /// `bs`: tokens (or samples) per optimizer step; it scales the preconditioner `ρ · bs · h`.
    pub batch_size: usize,
    /// Momentum EMA coefficient `β₁`.
    #[config(default = 0.965)]
    pub beta_1: f64,
    /// Hessian EMA coefficient `β₂`.
    #[config(default = 0.99)]
    pub beta_2: f64,
    /// Clipping scale `ρ` (the official code's `rho`; the paper's `γ`).
    #[config(default = 0.04)]
    pub rho: f64,
    /// Decoupled weight decay `λ` (the update multiplies `θ` by `1 − η λ`).
    #[config(default = 0.1)]
    pub weight_decay: f64,
    /// `ε` added to the preconditioner.
    #[config(default = 1e-15)]
    pub epsilon: f64,
    /// `k`: run a Hessian refresh after every `k` updates.
    #[config(default = 10)]
    pub hessian_interval: usize,
    /// Global-norm clipping of `ĝ` before it is squared into `h` (the official loop clips it
    /// with the training run's `grad_clip`, 1.0); `None` folds `ĝ` in as given.
    #[config(default = "Some(1.0)")]
    pub refresh_grad_clip: Option<f64>,
    /// Adjust `ρ` at every refresh so that the win rate stays between 0.1 and 0.5 (see
    /// [`AutoRho`]); `rho` is then the starting value.
    #[config(default = false)]
    pub auto_rho: bool,
    /// Take the one-pass update of the flex CPU backend where it applies (this crate's feature
    /// `flex`; the same bits as the composed operations); `false` runs Burn's composed
    /// operations everywhere.
    #[config(default = true)]
    pub fused: bool,
}

/// Configuration of [SophiaH](Sophia), the Hutchinson variant (paper, Algorithms 1 and 3).
///
/// The refresh takes `u ⊙ (H u)` for a Rademacher `u`; Burn has no double backward, so
/// [`hutchinson`](crate::hutchinson) computes `H u` by finite differences of gradients.
#[derive(Config, Debug, PartialEq)]
pub struct SophiaHConfig {
    /// Momentum EMA coefficient `β₁`.
    #[config(default = 0.965)]
    pub beta_1: f64,
    /// Hessian EMA coefficient `β₂`.
    #[config(default = 0.99)]
    pub beta_2: f64,
    /// Clipping scale `γ` of the preconditioner `max(γ h, ε)` (paper's GPT-2 small value).
    #[config(default = 0.01)]
    pub gamma: f64,
    /// Floor `ε` of the preconditioner; it bounds the step where `h ≤ 0`.
    #[config(default = 1e-12)]
    pub epsilon: f64,
    /// Decoupled weight decay `λ`.
    #[config(default = 0.1)]
    pub weight_decay: f64,
    /// `k`: run a Hessian refresh before every `k`-th update, starting with the first.
    #[config(default = 10)]
    pub hessian_interval: usize,
    /// Take the one-pass update of the flex CPU backend where it applies (this crate's feature
    /// `flex`; the same bits as the composed operations); `false` runs Burn's composed
    /// operations everywhere.
    #[config(default = true)]
    pub fused: bool,
}

/// How Sophia turns a refresh input into a diagonal Hessian sample, and `h` into the
/// preconditioner of the update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SophiaVariant {
    /// SophiaG. Refresh input `ĝ`; sample `ĝ ⊙ ĝ`; preconditioner `ρ · bs · h + ε`.
    GaussNewtonBartlett {
        /// `ρ`.
        rho: f64,
        /// `bs`, tokens per optimizer step.
        batch_size: usize,
        /// `ε`.
        epsilon: f64,
    },
    /// SophiaH. Refresh input `u ⊙ Hu`, used as the sample; preconditioner `max(γ h, ε)`.
    Hutchinson {
        /// `γ`.
        gamma: f64,
        /// `ε`.
        epsilon: f64,
    },
}

impl SophiaVariant {
    /// The diagonal Hessian sample `ĥ` of one refresh.
    fn sample<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        match self {
            Self::GaussNewtonBartlett { .. } => input.square(),
            Self::Hutchinson { .. } => input,
        }
    }

    /// The preconditioner `D(h)` with clipping scale `scale` (`ρ` or `γ`), strictly positive.
    fn preconditioner<const D: usize>(&self, hessian: Tensor<D>, scale: f64) -> Tensor<D> {
        match *self {
            Self::GaussNewtonBartlett { batch_size, epsilon, .. } => hessian.mul_scalar(scale * batch_size as f64).add_scalar(epsilon),
            Self::Hutchinson { epsilon, .. } => hessian.mul_scalar(scale).clamp_min(epsilon),
        }
    }

    /// The configured clipping scale: `ρ` (SophiaG) or `γ` (SophiaH).
    pub fn scale(&self) -> f64 {
        match *self {
            Self::GaussNewtonBartlett { rho, .. } => rho,
            Self::Hutchinson { gamma, .. } => gamma,
        }
    }

    /// Whether refreshes come before the update they belong to (SophiaH, paper) or after it
    /// (SophiaG, official training loop).
    fn refreshes_before_update(&self) -> bool {
        matches!(self, Self::Hutchinson { .. })
    }
}

/// The Sophia optimizer for one parameter group; see the [module docs](self) for the math.
///
/// Built by [`SophiaGConfig`] or [`SophiaHConfig`]. Wrap it in a [`SophiaOptimizer`] (what
/// `init()` returns), or add it to a [`ModuleOptimizer`](burn::optim::ModuleOptimizer) with
/// `with_group` and drive that through its [`SophiaControl`]: every update must go through
/// [`SophiaControl::step`], which owns the refresh schedule (a direct
/// `ModuleOptimizer::step` panics, naming the fix, instead of silently never refreshing).
#[derive(Clone)]
pub struct Sophia {
    beta_1: f64,
    beta_2: f64,
    weight_decay: f64,
    variant: SophiaVariant,
    control: SophiaControl,
    /// Whether the one-pass update runs where it applies (compiled with the `flex` feature).
    #[cfg_attr(not(feature = "flex"), expect(dead_code, reason = "only the `flex` feature compiles the one-pass update"))]
    fused: bool,
}

/// Per-parameter state of [`Sophia`]: two tensors of the parameter's shape, like AdamW.
#[derive(RecordState, Clone)]
pub struct SophiaState<const D: usize> {
    /// Momentum EMA `m`.
    pub momentum: Tensor<D>,
    /// Diagonal Hessian EMA `h`.
    pub hessian: Tensor<D>,
    /// Number of updates taken (refreshes do not count), as the official `state['step']`.
    pub step: usize,
    /// The clipping scale in force (`ρ` for SophiaG, `γ` for SophiaH): with automatic `ρ` it
    /// changes at refreshes, and a resumed run continues with it.
    pub scale: f64,
}

impl SophiaGConfig {
    /// Check every field; the error names the field, its value and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let v = Validator::new("SophiaG");
        v.at_least_one("batch_size", self.batch_size)?;
        v.unit_interval("beta_1", self.beta_1)?;
        v.unit_interval("beta_2", self.beta_2)?;
        v.positive("rho", self.rho)?;
        v.non_negative("weight_decay", self.weight_decay)?;
        v.positive("epsilon", self.epsilon)?;
        v.at_least_one("hessian_interval", self.hessian_interval)?;
        if let Some(max_norm) = self.refresh_grad_clip {
            v.positive("refresh_grad_clip", max_norm)?;
        }
        Ok(())
    }

    /// Build the bare optimizer, or say which field is invalid.
    pub fn try_build(&self) -> Result<Sophia, ConfigError> {
        self.validate()?;
        let variant = SophiaVariant::GaussNewtonBartlett { rho: self.rho, batch_size: self.batch_size, epsilon: self.epsilon };
        let clip = self.refresh_grad_clip.map(GlobalNormClip::new).transpose()?;
        let auto = self.auto_rho.then(AutoRho::default);
        Ok(Sophia::new(self.beta_1, self.beta_2, self.weight_decay, self.hessian_interval, variant, clip, auto, self.fused))
    }
}

impl SophiaHConfig {
    /// Check every field; the error names the field, its value and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let v = Validator::new("SophiaH");
        v.unit_interval("beta_1", self.beta_1)?;
        v.unit_interval("beta_2", self.beta_2)?;
        v.positive("gamma", self.gamma)?;
        v.positive("epsilon", self.epsilon)?;
        v.non_negative("weight_decay", self.weight_decay)?;
        v.at_least_one("hessian_interval", self.hessian_interval)
    }

    /// Build the bare optimizer, or say which field is invalid.
    pub fn try_build(&self) -> Result<Sophia, ConfigError> {
        self.validate()?;
        let variant = SophiaVariant::Hutchinson { gamma: self.gamma, epsilon: self.epsilon };
        Ok(Sophia::new(self.beta_1, self.beta_2, self.weight_decay, self.hessian_interval, variant, None, None, self.fused))
    }
}

constructors!(SophiaGConfig, Sophia, SophiaOptimizer, "SophiaG");
constructors!(SophiaHConfig, Sophia, SophiaOptimizer, "SophiaH");

impl Sophia {
    #[allow(clippy::too_many_arguments, reason = "the one constructor behind both configs' `try_build`, every field named at its call")]
    fn new(
        beta_1: f64,
        beta_2: f64,
        weight_decay: f64,
        hessian_interval: usize,
        variant: SophiaVariant,
        refresh_clip: Option<GlobalNormClip>,
        auto_rho: Option<AutoRho>,
        fused: bool,
    ) -> Self {
        let schedule = Schedule::new(hessian_interval, variant.refreshes_before_update());
        let control = SophiaControl::new(schedule, refresh_clip, variant.scale(), auto_rho);
        Self { beta_1, beta_2, weight_decay, variant, control, fused }
    }

    /// The same optimizer with another weight decay (the control handle is shared).
    pub(crate) fn with_weight_decay(&self, weight_decay: f64) -> Self {
        Self { weight_decay, ..self.clone() }
    }

    /// The handle that drives this optimizer's updates and refreshes.
    pub fn control(&self) -> SophiaControl {
        self.control.clone()
    }

    /// The variant (SophiaG or SophiaH) and its constants.
    pub fn variant(&self) -> SophiaVariant {
        self.variant
    }

    fn refresh<const D: usize>(&self, sample_input: Tensor<D>, state: Option<SophiaState<D>>) -> SophiaState<D> {
        let state =
            state.unwrap_or_else(|| SophiaState { momentum: sample_input.zeros_like(), hessian: sample_input.zeros_like(), step: 0, scale: self.control.scale() });
        let sample = self.variant.sample(sample_input);
        let hessian = state.hessian.mul_scalar(self.beta_2).add(sample.mul_scalar(1.0 - self.beta_2));
        SophiaState { hessian, scale: self.control.scale(), ..state }
    }

    fn update<const D: usize>(&self, lr: LearningRate, tensor: Tensor<D>, grad: Tensor<D>, state: Option<SophiaState<D>>, wins: WinCount) -> (Tensor<D>, SophiaState<D>) {
        #[cfg(feature = "flex")]
        let state = match state {
            Some(state) if self.fused && crate::fused::applies(&[&tensor, &grad, &state.momentum, &state.hessian]) => {
                return self.fused_update(lr, tensor, grad, state, wins);
            }
            state => state,
        };
        let (momentum, hessian, step) = match state {
            Some(state) => (state.momentum.mul_scalar(self.beta_1), state.hessian, state.step),
            None => (grad.zeros_like(), grad.zeros_like(), 0),
        };
        let scale = self.control.scale();
        let momentum = momentum.add(grad.mul_scalar(1.0 - self.beta_1));
        let ratio = momentum.clone().div(self.variant.preconditioner(hessian.clone(), scale)).clamp(-1.0, 1.0);
        if wins.any() {
            self.control.record_wins(&ratio.device(), ratio.clone().abs().lower_elem(1.0), wins);
        }
        let decay = 1.0 - lr * self.weight_decay;
        let tensor = if decay == 1.0 { tensor } else { tensor.mul_scalar(decay) };
        let tensor = tensor.sub(ratio.mul_scalar(lr));
        (tensor, SophiaState { momentum, hessian, step: step + 1, scale })
    }

    /// [`update`](Self::update) in one pass (flex, f32, an existing state).
    #[cfg(feature = "flex")]
    fn fused_update<const D: usize>(&self, lr: LearningRate, tensor: Tensor<D>, grad: Tensor<D>, state: SophiaState<D>, wins: WinCount) -> (Tensor<D>, SophiaState<D>) {
        use crate::fused::{Preconditioner, SophiaUpdate};
        let scale = self.control.scale();
        let preconditioner = match self.variant {
            SophiaVariant::GaussNewtonBartlett { batch_size, epsilon, .. } => {
                Preconditioner::Scaled { scale: (scale * batch_size as f64) as f32, epsilon: epsilon as f32 }
            }
            SophiaVariant::Hutchinson { epsilon, .. } => Preconditioner::Floored { scale: scale as f32, epsilon: epsilon as f32 },
        };
        let update = SophiaUpdate {
            beta_1: self.beta_1 as f32,
            one_minus_beta_1: (1.0 - self.beta_1) as f32,
            preconditioner,
            decay: crate::fused::decay_factor(lr, self.weight_decay),
            lr: lr as f32,
        };
        let (device, coordinates) = (tensor.device(), tensor.shape().num_elements() as u64);
        let (tensor, momentum, not_clipped) = crate::fused::sophia_update(&update, tensor, grad, state.momentum, &state.hessian);
        if wins.any() {
            self.control.record_win_count(&device, not_clipped, coordinates, wins);
        }
        (tensor, SophiaState { momentum, step: state.step + 1, scale, ..state })
    }
}

impl Optimizer for Sophia {
    type State<const D: usize> = SophiaState<D>;

    fn step<const D: usize>(&self, lr: LearningRate, tensor: Tensor<D>, grad: Tensor<D>, state: Option<Self::State<D>>) -> (Tensor<D>, Option<Self::State<D>>) {
        let device = tensor.device();
        match self.control.pass(&device) {
            // The weights go back untouched: a refresh never changes a bit of them.
            Pass::Refresh => {
                let state = self.refresh(grad, state);
                self.control.record_refresh(&device, &state.hessian);
                (tensor, Some(state))
            }
            Pass::Update { wins } => {
                let (tensor, state) = self.update(lr, tensor, grad, state, wins);
                self.control.record_update(&device, state.step);
                (tensor, Some(state))
            }
        }
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        SophiaState { momentum: state.momentum.to_device(device), hessian: state.hessian.to_device(device), ..state }
    }
}
