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
//! The [`HessianEstimator`] fixes `ĥ` and the preconditioner `D(h)`:
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
//!
//! A coordinate "wins" when its step is not clipped (`|m| / D(h) < 1`); the win rate is the
//! fraction of such coordinates (official guidance: keep it between 0.1 and 0.5 by tuning `ρ`).

use burn::config::Config;
use burn::module::{Module, ParamGroup};
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer, Optimizer, OptimizerRecord, RecordState};
use burn::store::RecordError;
use burn::tensor::{Bytes, Device, Tensor, TensorData};

use crate::LearningRate;
use crate::control::{SophiaControl, SophiaPhase, SophiaStats};
use crate::error::{ConfigError, Validator};

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
}

/// How Sophia turns a refresh input into a diagonal Hessian sample, and `h` into the
/// preconditioner of the update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HessianEstimator {
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

impl HessianEstimator {
    /// The diagonal Hessian sample `ĥ` of one refresh.
    fn sample<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        match self {
            Self::GaussNewtonBartlett { .. } => input.square(),
            Self::Hutchinson { .. } => input,
        }
    }

    /// The preconditioner `D(h)`, strictly positive.
    fn preconditioner<const D: usize>(&self, hessian: Tensor<D>) -> Tensor<D> {
        match *self {
            Self::GaussNewtonBartlett { rho, batch_size, epsilon } => {
                hessian.mul_scalar(rho * batch_size as f64).add_scalar(epsilon)
            }
            Self::Hutchinson { gamma, epsilon } => hessian.mul_scalar(gamma).clamp_min(epsilon),
        }
    }

    /// Whether the refresh schedule starts with a refresh before the first update (SophiaH,
    /// paper) or after the first `k` updates (SophiaG, official training loop).
    fn refresh_before_first_update(&self) -> bool {
        matches!(self, Self::Hutchinson { .. })
    }
}

/// The Sophia optimizer for one parameter group; see the [module docs](self) for the math.
///
/// Built by [`SophiaGConfig`] or [`SophiaHConfig`]. Wrap it in a [`SophiaOptimizer`] (what
/// `init()` returns) or add it to a [`ModuleOptimizer`] with `with_group`, and drive refreshes
/// through its [`SophiaControl`].
#[derive(Clone)]
pub struct Sophia {
    beta_1: f64,
    beta_2: f64,
    weight_decay: f64,
    hessian_interval: usize,
    estimator: HessianEstimator,
    control: SophiaControl,
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
        v.at_least_one("hessian_interval", self.hessian_interval)
    }

    /// Build the bare optimizer, or say which field is invalid.
    pub fn try_build(&self) -> Result<Sophia, ConfigError> {
        self.validate()?;
        Ok(Sophia::new(
            self.beta_1,
            self.beta_2,
            self.weight_decay,
            self.hessian_interval,
            HessianEstimator::GaussNewtonBartlett {
                rho: self.rho,
                batch_size: self.batch_size,
                epsilon: self.epsilon,
            },
        ))
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
        Ok(Sophia::new(
            self.beta_1,
            self.beta_2,
            self.weight_decay,
            self.hessian_interval,
            HessianEstimator::Hutchinson { gamma: self.gamma, epsilon: self.epsilon },
        ))
    }
}

constructors!(SophiaGConfig, Sophia, SophiaOptimizer, "SophiaG");
constructors!(SophiaHConfig, Sophia, SophiaOptimizer, "SophiaH");

impl Sophia {
    fn new(beta_1: f64, beta_2: f64, weight_decay: f64, hessian_interval: usize, estimator: HessianEstimator) -> Self {
        Self {
            beta_1,
            beta_2,
            weight_decay,
            hessian_interval,
            estimator,
            control: SophiaControl::default(),
        }
    }

    /// The handle that switches this optimizer between updates and refreshes.
    pub fn control(&self) -> SophiaControl {
        self.control.clone()
    }

    /// The Hessian estimator (SophiaG or SophiaH) and its constants.
    pub fn estimator(&self) -> HessianEstimator {
        self.estimator
    }

    /// Whether a Hessian refresh is due before the next update, given the number of updates
    /// taken so far: every `k` updates, starting after the first `k` for SophiaG (official
    /// loop) and before the first update for SophiaH (paper).
    pub fn refresh_due(&self, updates_taken: usize) -> bool {
        updates_taken % self.hessian_interval == 0
            && (updates_taken > 0 || self.estimator.refresh_before_first_update())
    }

    fn refresh<const D: usize>(&self, sample_input: Tensor<D>, state: Option<SophiaState<D>>) -> SophiaState<D> {
        let state = state.unwrap_or_else(|| SophiaState {
            momentum: sample_input.zeros_like(),
            hessian: sample_input.zeros_like(),
            step: 0,
        });
        let sample = self.estimator.sample(sample_input);
        let hessian = state.hessian.mul_scalar(self.beta_2).add(sample.mul_scalar(1.0 - self.beta_2));
        self.control.record_refresh(&hessian);
        SophiaState { hessian, ..state }
    }

    fn update<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<SophiaState<D>>,
    ) -> (Tensor<D>, SophiaState<D>) {
        let (momentum, hessian, step) = match state {
            Some(state) => (state.momentum.mul_scalar(self.beta_1), state.hessian, state.step),
            None => (grad.zeros_like(), grad.zeros_like(), 0),
        };
        let momentum = momentum.add(grad.mul_scalar(1.0 - self.beta_1));
        let ratio = momentum
            .clone()
            .div(self.estimator.preconditioner(hessian.clone()))
            .clamp(-1.0, 1.0);
        if self.control.collecting_win_rate() {
            self.control.record_update(ratio.clone().abs().lower_elem(1.0));
        }
        let decay = 1.0 - lr * self.weight_decay;
        let tensor = if decay == 1.0 { tensor } else { tensor.mul_scalar(decay) };
        let tensor = tensor.sub(ratio.mul_scalar(lr));
        (tensor, SophiaState { momentum, hessian, step: step + 1 })
    }
}

impl Optimizer for Sophia {
    type State<const D: usize> = SophiaState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        match self.control.phase() {
            // The weights go back untouched: a refresh never changes a bit of them.
            SophiaPhase::Refresh => (tensor, Some(self.refresh(grad, state))),
            SophiaPhase::Update => {
                let (tensor, state) = self.update(lr, tensor, grad, state);
                (tensor, Some(state))
            }
        }
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        SophiaState {
            momentum: state.momentum.to_device(device),
            hessian: state.hessian.to_device(device),
            step: state.step,
        }
    }
}

impl From<Sophia> for SophiaOptimizer {
    fn from(sophia: Sophia) -> Self {
        Self::new(sophia)
    }
}

/// Sophia for a whole module: Burn's [`ModuleOptimizer`] plus the [`SophiaControl`] of the
/// optimizer inside it, with the two operations as two methods.
///
/// ```text
/// let mut optim = SophiaGConfig::new(tokens_per_step).try_init()?;
/// for step in 0..steps {
///     let grads = GradientsParams::from_grads(loss(&model, &batch).backward(), &model);
///     model = optim.step(lr, model, grads);
///     if optim.refresh_due(step + 1) {
///         let ghat = sampled_label_gradients(&model, &fresh_batch);
///         model = optim.refresh(model, ghat); // weights bit-identical, `h` refreshed
///     }
/// }
/// ```
#[derive(Clone)]
pub struct SophiaOptimizer {
    optim: ModuleOptimizer,
    sophia: Sophia,
}

impl SophiaOptimizer {
    /// Optimize every parameter of a module with `sophia`.
    pub fn new(sophia: Sophia) -> Self {
        Self { optim: ModuleOptimizer::from(sophia.clone()), sophia }
    }

    /// Use another weight decay for the parameters of `group` (e.g. none for biases and
    /// LayerNorm gains); everything else, the control handle included, is shared. See
    /// [`ModuleOptimizer::with_group`] for how groups match.
    pub fn with_weight_decay_group(mut self, group: ParamGroup, weight_decay: f64) -> Result<Self, ConfigError> {
        Validator::new("Sophia").non_negative("weight_decay", weight_decay)?;
        let sophia = Sophia { weight_decay, ..self.sophia.clone() };
        self.optim = self.optim.with_group(group, sophia, None);
        Ok(self)
    }

    /// Take one update step with the training gradients.
    pub fn step<M: Module>(&mut self, lr: impl Into<ModuleLearningRate>, module: M, grads: GradientsParams) -> M {
        self.optim.step(lr, module, grads)
    }

    /// Refresh the Hessian EMA from a diagonal Hessian estimate; see
    /// [`SophiaControl::refresh`]. Every weight comes back bit-identical.
    pub fn refresh<M: Module>(&mut self, module: M, estimate: GradientsParams) -> M {
        self.sophia.control.refresh(&mut self.optim, module, estimate)
    }

    /// Whether a refresh is due before the next update; see [`Sophia::refresh_due`].
    pub fn refresh_due(&self, updates_taken: usize) -> bool {
        self.sophia.refresh_due(updates_taken)
    }

    /// The switch and statistics handle.
    pub fn control(&self) -> &SophiaControl {
        &self.sophia.control
    }

    /// Statistics for logging; see [`SophiaControl::stats`].
    pub fn stats(&self) -> SophiaStats {
        self.sophia.control.stats()
    }

    /// The Hessian estimator (SophiaG or SophiaH) and its constants.
    pub fn estimator(&self) -> HessianEstimator {
        self.sophia.estimator
    }

    /// The module optimizer and the control handle, e.g. to hand the optimizer to a `Learner`
    /// and keep the handle for the refreshes.
    pub fn into_parts(self) -> (ModuleOptimizer, SophiaControl) {
        (self.optim, self.sophia.control)
    }

    /// The optimizer state as a Burn record.
    pub fn to_record(&self) -> OptimizerRecord {
        self.optim.to_record()
    }

    /// Restore the optimizer state from a Burn record.
    pub fn load_record(mut self, record: OptimizerRecord) -> Self {
        self.optim = self.optim.load_record(record);
        self.restore_hessian_stats();
        self
    }

    /// Serialize the optimizer state (burnpack bytes).
    pub fn into_bytes(&self) -> Result<Bytes, RecordError> {
        self.optim.into_bytes()
    }

    /// Restore the optimizer state from burnpack bytes.
    pub fn from_bytes(mut self, bytes: Bytes) -> Result<Self, RecordError> {
        self.optim = self.optim.from_bytes(bytes)?;
        self.restore_hessian_stats();
        Ok(self)
    }

    /// After a load, let the Hessian statistics describe the loaded `h`, as they described it
    /// after the refresh that produced it. An all-zero `h` means no refresh ran yet.
    fn restore_hessian_stats(&self) {
        let Ok(bytes) = self.optim.to_record().into_bytes() else { return };
        let Ok(reader) = burn_pack::Reader::from_bytes(bytes) else { return };
        let device = Device::default();
        let hessians: Vec<Tensor<1>> = reader
            .tensor_names()
            .into_iter()
            .filter(|name| name.ends_with(".hessian"))
            .filter_map(|name| reader.tensor_data(name).ok())
            .map(|bytes| bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect::<Vec<f32>>())
            .map(|values| {
                let len = values.len();
                Tensor::from_data(TensorData::new(values, [len]), &device)
            })
            .collect();
        let refreshed = hessians.iter().any(|h| h.clone().abs().max().into_scalar::<f32>() > 0.0);
        if refreshed {
            self.sophia.control.restore_hessians(hessians);
        }
    }
}
