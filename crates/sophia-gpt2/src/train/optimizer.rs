//! The optimizer of a run, built from its config: Sophia (with its refresh), or one of the
//! baselines, with the weight-decay selection as a parameter group.

use burn::module::ParamGroup;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{AdamWConfig, GradientsParams, LionConfig, ModuleOptimizer, MuonConfig, OptimizerRecord, AdjustLrFn};
use sophia_optim::{SophiaGConfig, SophiaHConfig, SophiaOptimizer, SophiaStats, TigerConfig};

use super::config::{DecaySelection, OptimizerKind, TrainConfig};
use crate::model::Gpt2;

/// The optimizer of a training run.
pub enum RunOptimizer {
    /// SophiaG or SophiaH, which also refresh their Hessian estimate.
    Sophia(SophiaOptimizer),
    /// A first-order optimizer.
    Plain(ModuleOptimizer),
}

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

impl RunOptimizer {
    /// Build the optimizer `config` asks for, for `model`, with `bs` tokens per step.
    pub fn new(config: &TrainConfig, model: &Gpt2, tokens_per_step: usize) -> Result<Self, String> {
        let no_decay = undecayed_paths(model, config.decay);
        let wd = config.weight_decay;
        let err = |e: sophia_optim::ConfigError| e.to_string();
        Ok(match config.optimizer {
            OptimizerKind::SophiaG => {
                let sophia = SophiaGConfig::new(tokens_per_step)
                    .with_beta_1(config.beta1)
                    .with_beta_2(config.beta2)
                    .with_rho(config.rho)
                    .with_weight_decay(wd)
                    .with_hessian_interval(config.hessian_interval)
                    .try_init()
                    .map_err(err)?;
                Self::Sophia(sophia.with_weight_decay_group(group(no_decay), 0.0).map_err(err)?)
            }
            OptimizerKind::SophiaH => {
                let sophia = SophiaHConfig::new()
                    .with_beta_1(config.beta1)
                    .with_beta_2(config.beta2)
                    .with_gamma(config.gamma)
                    .with_weight_decay(wd)
                    .with_hessian_interval(config.hessian_interval)
                    .try_init()
                    .map_err(err)?;
                Self::Sophia(sophia.with_weight_decay_group(group(no_decay), 0.0).map_err(err)?)
            }
            OptimizerKind::AdamW => {
                let adamw = |decay: f64| {
                    AdamWConfig::new()
                        .with_beta_1(config.beta1 as f32)
                        .with_beta_2(config.beta2 as f32)
                        .with_epsilon(1e-8)
                        .with_weight_decay(decay as f32)
                };
                Self::Plain(adamw(wd).init().with_group(group(no_decay), adamw(0.0).build(), None))
            }
            OptimizerKind::Lion => {
                let lion = |decay: f64| {
                    LionConfig::new().with_beta_1(config.beta1 as f32).with_beta_2(config.beta2 as f32).with_weight_decay(decay as f32)
                };
                Self::Plain(lion(wd).init().with_group(group(no_decay), lion(0.0).build(), None))
            }
            OptimizerKind::Tiger => {
                let tiger = |decay: f64| TigerConfig::new().with_beta(config.beta1).with_weight_decay(decay).try_build();
                Self::Plain(ModuleOptimizer::from(tiger(wd).map_err(err)?).with_group(group(no_decay), tiger(0.0).map_err(err)?, None))
            }
            OptimizerKind::Muon => {
                // Muon on the blocks' 2-D weights, AdamW on embeddings, head, biases and norms.
                // `MatchRmsAdamW` scales Muon's update to AdamW's RMS (0.2·√max(rows, cols)), so
                // both groups share one learning rate and the scale does not depend on Burn
                // storing Linear weights [in, out] where PyTorch stores [out, in].
                let adamw = |decay: f64| {
                    AdamWConfig::new()
                        .with_beta_1(0.9)
                        .with_beta_2(0.95)
                        .with_epsilon(1e-8)
                        .with_weight_decay(decay as f32)
                };
                let matrices: Vec<String> = model
                    .named_params()
                    .into_iter()
                    .filter(|(name, _, shape)| shape.len() == 2 && is_linear_weight(name))
                    .map(|(name, _, _)| burn_path(&name))
                    .collect();
                let muon = MuonConfig::new().with_adjust_lr_fn(AdjustLrFn::MatchRmsAdamW).build();
                Self::Plain(
                    adamw(wd)
                        .init()
                        .with_group(group(no_decay), adamw(0.0).build(), None)
                        .with_group(group(matrices), muon, None),
                )
            }
        })
    }

    /// One update with the training gradients.
    pub fn step(&mut self, lr: impl Into<ModuleLearningRate>, model: Gpt2, grads: GradientsParams) -> Gpt2 {
        match self {
            Self::Sophia(optim) => optim.step(lr, model, grads),
            Self::Plain(optim) => optim.step(lr, model, grads),
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

    /// Restore the state from a checkpoint.
    pub fn load_record(self, record: OptimizerRecord) -> Self {
        match self {
            Self::Sophia(optim) => Self::Sophia(optim.load_record(record)),
            Self::Plain(optim) => Self::Plain(optim.load_record(record)),
        }
    }
}
