//! The optimizer of a run, built from its [`OptimizerConfig`]: Sophia (which owns its Hessian
//! refresh), or one of the baselines, with the weight-decay selection as a parameter group.

use burn::module::ParamGroup;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdjustLrFn, GradientsParams, ModuleOptimizer, MuonConfig, OptimizerRecord};
use sophia_gpt2::{Gpt2, Kernels};
use sophia_optim::{AdamWConfig, HessianEstimator, LionConfig, SophiaGConfig, SophiaHConfig, SophiaOptimizer, SophiaStats, TigerConfig};

use super::config::{AdamWSettings, DecaySelection, OptimizerConfig, Rho, TrainConfig};
use crate::error::TrainError;

/// The optimizer of a training run.
pub enum RunOptimizer {
    /// SophiaG or SophiaH, which also refresh their Hessian estimate.
    Sophia(SophiaOptimizer),
    /// A first-order optimizer.
    Plain(ModuleOptimizer),
}

/// The estimator a run's Sophia refreshes from (none for first-order optimizers).
pub type RunEstimator<'a> = Box<dyn HessianEstimator<Gpt2, Error = TrainError> + 'a>;

/// Parameter paths (Burn's, e.g. `h.0.attn.c_attn.weight`) that are *not* weight-decayed.
fn undecayed_paths(model: &Gpt2, decay: DecaySelection) -> Vec<String> {
    model
        .named_params()
        .into_iter()
        .filter(|(name, _, shape)| match decay {
            DecaySelection::All => false,
            DecaySelection::None => true,
            DecaySelection::Matrices => shape.len() < 2,
            DecaySelection::LinearWeights => !(shape.len() == 2 && is_linear_weight(name)),
        })
        .map(|(name, _, _)| burn_path(&name))
        .collect()
}

/// The 2-D weights of the blocks' linear layers (`c_attn`, `c_proj`, `c_fc`).
fn is_linear_weight(name: &str) -> bool {
    name.starts_with("h.") && name.ends_with(".weight") && !name.contains(".ln_")
}

/// Burn's path of a parameter from its Hugging Face name (LayerNorm `weight`/`bias` are
/// `gamma`/`beta` in Burn).
fn burn_path(name: &str) -> String {
    let is_norm = name.contains("ln_");
    match (is_norm, name.rsplit_once('.')) {
        (true, Some((stem, "weight"))) => format!("{stem}.gamma"),
        (true, Some((stem, "bias"))) => format!("{stem}.beta"),
        _ => name.to_string(),
    }
}

fn group(paths: Vec<String>) -> ParamGroup {
    ParamGroup::from_paths(paths)
}

fn adamw(settings: &AdamWSettings, weight_decay: f64, fused: bool) -> Result<sophia_optim::AdamW, TrainError> {
    let config =
        AdamWConfig::new().with_beta_1(settings.beta1).with_beta_2(settings.beta2).with_epsilon(settings.epsilon).with_weight_decay(weight_decay).with_fused(fused);
    Ok(config.try_build()?)
}

impl RunOptimizer {
    /// Build the optimizer `config` asks for, for `model`, with `tokens_per_step` tokens per
    /// update. The config must have passed [`TrainConfig::validate`].
    ///
    /// SophiaG's `bs` is `tokens_per_step` scaled by the refresh batch's share of a training
    /// micro-batch ([`TrainConfig::hessian_batch_size`] / `batch_size`). The sampled-label `ĝ`
    /// has mean zero, so `ĝ²` grows as `1 / (refresh tokens)`; with the scaled `bs`,
    /// `ρ · bs · h` is the same in expectation for every refresh fraction, and equals the
    /// official loop's (`bs` = tokens per step, `ĝ` from one micro-batch) at fraction 1.
    pub fn new(config: &TrainConfig, model: &Gpt2, tokens_per_step: usize) -> Result<Self, TrainError> {
        let no_decay = undecayed_paths(model, config.decay);
        let wd = config.weight_decay;
        let fused = config.kernels == Kernels::Fused;
        Ok(match &config.optimizer {
            OptimizerConfig::SophiaG(s) => {
                let refresh_rows = config.hessian_batch_size().unwrap_or(config.batch_size);
                let bs = (tokens_per_step * refresh_rows / config.batch_size).max(1);
                let sophia = SophiaGConfig::new(bs)
                    .with_beta_1(s.beta1)
                    .with_beta_2(s.beta2)
                    .with_rho(s.rho.initial())
                    .with_auto_rho(s.rho == Rho::Auto)
                    .with_epsilon(s.epsilon)
                    .with_weight_decay(wd)
                    .with_hessian_interval(s.hessian_interval)
                    .with_refresh_grad_clip((s.clip_hessian_grad && config.grad_clip > 0.0).then_some(config.grad_clip))
                    .with_fused(fused)
                    .try_init()?;
                Self::Sophia(sophia.with_weight_decay_group(group(no_decay), 0.0)?)
            }
            OptimizerConfig::SophiaH(s) => {
                let sophia = SophiaHConfig::new()
                    .with_beta_1(s.beta1)
                    .with_beta_2(s.beta2)
                    .with_gamma(s.gamma)
                    .with_epsilon(s.epsilon)
                    .with_weight_decay(wd)
                    .with_hessian_interval(s.hessian_interval)
                    .with_fused(fused)
                    .try_init()?;
                Self::Sophia(sophia.with_weight_decay_group(group(no_decay), 0.0)?)
            }
            OptimizerConfig::AdamW(s) => Self::Plain(ModuleOptimizer::from(adamw(s, wd, fused)?).with_group(group(no_decay), adamw(s, 0.0, fused)?, None)),
            OptimizerConfig::Lion(s) => {
                let lion = |decay: f64| LionConfig::new().with_beta_1(s.beta1).with_beta_2(s.beta2).with_weight_decay(decay).with_fused(fused).try_build();
                Self::Plain(ModuleOptimizer::from(lion(wd)?).with_group(group(no_decay), lion(0.0)?, None))
            }
            OptimizerConfig::Tiger(s) => {
                let tiger = |decay: f64| TigerConfig::new().with_beta(s.beta).with_weight_decay(decay).with_fused(fused).try_build();
                Self::Plain(ModuleOptimizer::from(tiger(wd)?).with_group(group(no_decay), tiger(0.0)?, None))
            }
            OptimizerConfig::Muon(s) => {
                // Muon on the blocks' 2-D weights, AdamW on embeddings, head, biases and norms.
                // `MatchRmsAdamW` scales Muon's update to AdamW's RMS (0.2·√max(rows, cols)), so
                // both groups share one learning rate and the scale does not depend on Burn
                // storing Linear weights [in, out] where PyTorch stores [out, in].
                let matrices: Vec<String> =
                    model.named_params().into_iter().filter(|(name, _, shape)| shape.len() == 2 && is_linear_weight(name)).map(|(name, _, _)| burn_path(&name)).collect();
                let decay = (wd > 0.0 && config.decay != DecaySelection::None).then(|| WeightDecayConfig::new(wd as f32));
                let muon = MuonConfig::new()
                    .with_momentum(MomentumConfig { momentum: s.momentum, dampening: 0.0, nesterov: s.nesterov })
                    .with_ns_steps(s.ns_steps)
                    .with_weight_decay(decay)
                    .with_adjust_lr_fn(AdjustLrFn::MatchRmsAdamW)
                    .build();
                Self::Plain(ModuleOptimizer::from(adamw(&s.adamw, wd, fused)?).with_group(group(no_decay), adamw(&s.adamw, 0.0, fused)?, None).with_group(
                    group(matrices),
                    muon,
                    None,
                ))
            }
        })
    }

    /// One update with the training gradients; Sophia refreshes from `estimator` where its
    /// schedule says (the estimator is required for Sophia, ignored by the others).
    pub fn step(&mut self, lr: impl Into<ModuleLearningRate>, model: Gpt2, grads: GradientsParams, estimator: Option<&mut RunEstimator<'_>>) -> Result<Gpt2, TrainError> {
        match (self, estimator) {
            (Self::Sophia(optim), Some(estimator)) => Ok(optim.step(lr, model, grads, estimator)?),
            (Self::Sophia(_), None) => unreachable!("the training step builds an estimator for every Sophia run"),
            (Self::Plain(optim), _) => Ok(optim.step(lr, model, grads)),
        }
    }

    /// Refresh Sophia's `h` now from `estimator` (what [`step`](Self::step) does when a refresh
    /// is due); nothing for first-order optimizers.
    pub fn refresh(&mut self, model: Gpt2, estimator: Option<&mut RunEstimator<'_>>) -> Result<Gpt2, TrainError> {
        match (self, estimator) {
            (Self::Sophia(optim), Some(estimator)) => Ok(optim.refresh_with(model, estimator)?),
            _ => Ok(model),
        }
    }

    /// The Sophia optimizer, if this run uses one.
    pub fn sophia(&mut self) -> Option<&mut SophiaOptimizer> {
        match self {
            Self::Sophia(optim) => Some(optim),
            Self::Plain(_) => None,
        }
    }

    /// Turn win-rate collection on for the coming update (Sophia only).
    pub fn collect_stats(&self, on: bool) {
        if let Self::Sophia(optim) = self {
            optim.control().collect_win_rate(on);
        }
    }

    /// Sophia's statistics (`None` for other optimizers).
    pub fn stats(&self) -> Option<SophiaStats> {
        match self {
            Self::Sophia(optim) => Some(optim.stats()),
            Self::Plain(_) => None,
        }
    }

    /// Sophia's clipping scale in force (`ρ` or `γ`; it moves with automatic `ρ`).
    pub fn scale(&self) -> Option<f64> {
        match self {
            Self::Sophia(optim) => Some(optim.control().scale()),
            Self::Plain(_) => None,
        }
    }

    /// Hessian refreshes run by this optimizer (0 for first-order optimizers). Unlike
    /// [`stats`](Self::stats) it neither reads the device nor consumes the win-rate counters.
    pub fn refreshes(&self) -> u64 {
        match self {
            Self::Sophia(optim) => optim.control().refreshes(),
            Self::Plain(_) => 0,
        }
    }

    /// The state to checkpoint.
    pub fn to_record(&self) -> OptimizerRecord {
        match self {
            Self::Sophia(optim) => optim.to_record(),
            Self::Plain(optim) => optim.to_record(),
        }
    }

    /// Restore the state from a checkpoint; a Sophia run refuses a record that holds no Sophia
    /// state.
    pub fn load_record(self, record: OptimizerRecord) -> Result<Self, sophia_optim::SophiaRecordError> {
        Ok(match self {
            Self::Sophia(optim) => Self::Sophia(optim.load_record(record)?),
            Self::Plain(optim) => Self::Plain(optim.load_record(record)),
        })
    }
}
