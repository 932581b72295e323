//! Every knob of a training run in one serde config, with presets.
//!
//! A run is described by a JSON or TOML file (any subset of the fields; the rest keep their
//! defaults) plus command-line overrides ([`TrainConfig::set`]). The optimizer's own
//! hyperparameters live in a tagged [`OptimizerConfig`], one variant per optimizer with its own
//! defaults, so a setting an optimizer does not have cannot be given to it by mistake:
//!
//! ```toml
//! lr = 6e-3
//! [optimizer]
//! kind = "sophiag"
//! rho = 0.05
//! ```
//!
//! Everything is checked in one place, [`TrainConfig::validate`], with one typed error
//! ([`ConfigError`]) that names the setting, its value and the allowed range.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sophia_backend::Backend;
use sophia_gpt2::{Gpt2Config, Kernels, Precision};
use sophia_optim::{ConfigError, Validator};

use crate::data::{DatasetMeta, TokenizerKind};
use crate::error::SettingError;

/// The optimizers a run can use, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Sophia with the Gauss-Newton-Bartlett estimator (sampled labels).
    #[default]
    SophiaG,
    /// Sophia with the Hutchinson estimator (finite-difference Hessian-vector products).
    SophiaH,
    /// AdamW (PyTorch semantics).
    AdamW,
    /// Lion.
    Lion,
    /// Tiger (Lion with one β).
    Tiger,
    /// Muon on the blocks' 2-D weights, AdamW on embeddings, head and vectors.
    Muon,
}

impl OptimizerKind {
    /// Every optimizer, in the order the command line lists them.
    pub const ALL: &[Self] = &[Self::SophiaG, Self::SophiaH, Self::AdamW, Self::Lion, Self::Tiger, Self::Muon];

    /// The name (`--optimizer NAME`, `kind` in config files).
    pub fn name(self) -> &'static str {
        match self {
            Self::SophiaG => "sophiag",
            Self::SophiaH => "sophiah",
            Self::AdamW => "adamw",
            Self::Lion => "lion",
            Self::Tiger => "tiger",
            Self::Muon => "muon",
        }
    }

    /// This optimizer with its default hyperparameters.
    pub fn default_config(self) -> OptimizerConfig {
        match self {
            Self::SophiaG => OptimizerConfig::SophiaG(SophiaGSettings::default()),
            Self::SophiaH => OptimizerConfig::SophiaH(SophiaHSettings::default()),
            Self::AdamW => OptimizerConfig::AdamW(AdamWSettings::default()),
            Self::Lion => OptimizerConfig::Lion(LionSettings::default()),
            Self::Tiger => OptimizerConfig::Tiger(TigerSettings::default()),
            Self::Muon => OptimizerConfig::Muon(MuonSettings::default()),
        }
    }
}

impl std::str::FromStr for OptimizerKind {
    type Err = SettingError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let lower = name.to_ascii_lowercase();
        Self::ALL.iter().copied().find(|k| k.name() == lower).ok_or_else(|| SettingError::UnknownName {
            what: "optimizer",
            name: name.to_string(),
            known: Self::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "),
        })
    }
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// SophiaG's `ρ`: a number, or `"auto"` to keep the win rate between 0.1 and 0.5 by adjusting
/// `ρ` at every refresh (starting from 0.05; see `sophia_optim::AutoRho`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rho {
    /// A fixed `ρ`.
    Fixed(f64),
    /// Automatic `ρ`.
    Auto,
}

/// Where an automatic `ρ` starts (the CPU presets' fixed `ρ`).
pub const AUTO_RHO_START: f64 = 0.05;

impl Rho {
    /// The fixed value, or where the automatic one starts.
    pub fn initial(self) -> f64 {
        match self {
            Self::Fixed(rho) => rho,
            Self::Auto => AUTO_RHO_START,
        }
    }
}

impl std::fmt::Display for Rho {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(rho) => write!(f, "{rho}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl std::str::FromStr for Rho {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "auto" => Ok(Self::Auto),
            number => {
                let rho: f64 = number.parse().map_err(|_| format!("expected a number or \"auto\", got `{text}`"))?;
                if rho.is_finite() { Ok(Self::Fixed(rho)) } else { Err("must be a finite number or \"auto\"".into()) }
            }
        }
    }
}

impl Serialize for Rho {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Fixed(rho) => serializer.serialize_f64(*rho),
            Self::Auto => serializer.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Rho {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Rho;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number or \"auto\"")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Rho, E> {
                Ok(Rho::Fixed(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Rho, E> {
                Ok(Rho::Fixed(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Rho, E> {
                Ok(Rho::Fixed(v as f64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Rho, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// SophiaG (Gauss-Newton-Bartlett: sampled-label `ĝ`, refreshed after every `k` updates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SophiaGSettings {
    /// Momentum EMA `β₁` (official 0.965).
    pub beta1: f64,
    /// Hessian EMA `β₂`. 0.95 rather than the official 0.99: a run of a few hundred steps has few
    /// refreshes, and `h` has no bias correction, so a long EMA would stay far below its
    /// steady state.
    pub beta2: f64,
    /// Clipping scale `ρ` (the official code's `rho`), or `"auto"`.
    pub rho: Rho,
    /// `ε` of the preconditioner `ρ·bs·h + ε`.
    pub epsilon: f64,
    /// Refresh interval `k` (updates).
    pub hessian_interval: usize,
    /// Sequences in a refresh batch, as a fraction of `batch_size` (1.0: one training
    /// micro-batch). The default 0.25 keeps the refresh near a quarter of a step (2.5% of wall
    /// time at `k` = 10); the official GPT-2 loop likewise refreshes from one of the several
    /// micro-batches it accumulates per step. Sophia's `bs` is scaled to match, so `ρ` means the
    /// same at every fraction (see [`RunOptimizer::new`](crate::train::RunOptimizer::new)).
    pub hessian_batch_fraction: f64,
    /// Clip `ĝ` to the run's `grad_clip` before it is squared (official: yes).
    pub clip_hessian_grad: bool,
}

impl Default for SophiaGSettings {
    fn default() -> Self {
        Self { beta1: 0.965, beta2: 0.95, rho: Rho::Fixed(0.05), epsilon: 1e-15, hessian_interval: 10, hessian_batch_fraction: 0.25, clip_hessian_grad: true }
    }
}

/// SophiaH (Hutchinson `u ⊙ Hu` by finite differences, refreshed before every `k`-th update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SophiaHSettings {
    /// Momentum EMA `β₁`.
    pub beta1: f64,
    /// Hessian EMA `β₂` (0.95 for short runs, see [`SophiaGSettings::beta2`]).
    pub beta2: f64,
    /// Clipping scale `γ` of the preconditioner `max(γ h, ε)`.
    pub gamma: f64,
    /// Floor `ε` of the preconditioner.
    pub epsilon: f64,
    /// Refresh interval `k` (updates).
    pub hessian_interval: usize,
    /// Sequences in a refresh batch, as a fraction of `batch_size`.
    pub hessian_batch_fraction: f64,
    /// Finite-difference step of the Hessian-vector products.
    pub hutchinson_epsilon: f64,
}

impl Default for SophiaHSettings {
    fn default() -> Self {
        Self { beta1: 0.965, beta2: 0.95, gamma: 0.01, epsilon: 1e-12, hessian_interval: 10, hessian_batch_fraction: 0.25, hutchinson_epsilon: 1e-3 }
    }
}

/// AdamW (PyTorch semantics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWSettings {
    /// First-moment EMA `β₁`.
    pub beta1: f64,
    /// Second-moment EMA `β₂`.
    pub beta2: f64,
    /// `ε` added to `√v̂`.
    pub epsilon: f64,
}

impl Default for AdamWSettings {
    /// nanoGPT's GPT-2 settings.
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.95, epsilon: 1e-8 }
    }
}

/// Lion (Chen et al. 2023).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LionSettings {
    /// Interpolation `β₁` of the update direction.
    pub beta1: f64,
    /// Momentum EMA `β₂`.
    pub beta2: f64,
}

impl Default for LionSettings {
    /// The paper's language-model settings.
    fn default() -> Self {
        Self { beta1: 0.95, beta2: 0.98 }
    }
}

/// Tiger (Lion with one β).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TigerSettings {
    /// Momentum EMA `β`.
    pub beta: f64,
}

impl Default for TigerSettings {
    fn default() -> Self {
        Self { beta: 0.965 }
    }
}

/// Muon on the blocks' 2-D weights (Newton-Schulz orthogonalised momentum), AdamW on the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MuonSettings {
    /// Momentum coefficient.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Newton-Schulz iterations.
    pub ns_steps: usize,
    /// The AdamW of the embeddings, head, biases and norms.
    pub adamw: AdamWSettings,
}

impl Default for MuonSettings {
    /// Keller Jordan's settings.
    fn default() -> Self {
        Self { momentum: 0.95, nesterov: true, ns_steps: 5, adamw: AdamWSettings::default() }
    }
}

/// The optimizer of a run and its own hyperparameters (`kind` names it in config files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// SophiaG.
    SophiaG(SophiaGSettings),
    /// SophiaH.
    SophiaH(SophiaHSettings),
    /// AdamW.
    AdamW(AdamWSettings),
    /// Lion.
    Lion(LionSettings),
    /// Tiger.
    Tiger(TigerSettings),
    /// Muon.
    Muon(MuonSettings),
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self::SophiaG(SophiaGSettings::default())
    }
}

impl OptimizerConfig {
    /// Which optimizer this is.
    pub fn kind(&self) -> OptimizerKind {
        match self {
            Self::SophiaG(_) => OptimizerKind::SophiaG,
            Self::SophiaH(_) => OptimizerKind::SophiaH,
            Self::AdamW(_) => OptimizerKind::AdamW,
            Self::Lion(_) => OptimizerKind::Lion,
            Self::Tiger(_) => OptimizerKind::Tiger,
            Self::Muon(_) => OptimizerKind::Muon,
        }
    }

    /// The names of this optimizer's settings (what `--set` accepts for it).
    pub fn setting_names(&self) -> &'static [&'static str] {
        match self {
            Self::SophiaG(_) => &["beta1", "beta2", "rho", "epsilon", "hessian_interval", "hessian_batch_fraction", "clip_hessian_grad"],
            Self::SophiaH(_) => &["beta1", "beta2", "gamma", "epsilon", "hessian_interval", "hessian_batch_fraction", "hutchinson_epsilon"],
            Self::AdamW(_) => &["beta1", "beta2", "epsilon"],
            Self::Lion(_) => &["beta1", "beta2"],
            Self::Tiger(_) => &["beta"],
            Self::Muon(_) => &["momentum", "nesterov", "ns_steps", "adamw.beta1", "adamw.beta2", "adamw.epsilon"],
        }
    }

    /// Set one of this optimizer's settings from its text; a setting it does not have is
    /// refused, naming the ones it has.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SettingError> {
        let kind = self.kind();
        let known = self.setting_names().join(", ");
        let unknown = || SettingError::NotForOptimizer { key: key.to_string(), optimizer: kind.name(), known: known.clone() };
        match (self, key) {
            (Self::SophiaG(s), "beta1") => s.beta1 = parse(key, value)?,
            (Self::SophiaG(s), "beta2") => s.beta2 = parse(key, value)?,
            (Self::SophiaG(s), "rho") => s.rho = value.parse().map_err(|reason| SettingError::Value { key: key.into(), value: value.into(), reason })?,
            (Self::SophiaG(s), "epsilon") => s.epsilon = parse(key, value)?,
            (Self::SophiaG(s), "hessian_interval") => s.hessian_interval = parse(key, value)?,
            (Self::SophiaG(s), "hessian_batch_fraction") => s.hessian_batch_fraction = parse(key, value)?,
            (Self::SophiaG(s), "clip_hessian_grad") => s.clip_hessian_grad = parse(key, value)?,
            (Self::SophiaH(s), "beta1") => s.beta1 = parse(key, value)?,
            (Self::SophiaH(s), "beta2") => s.beta2 = parse(key, value)?,
            (Self::SophiaH(s), "gamma") => s.gamma = parse(key, value)?,
            (Self::SophiaH(s), "epsilon") => s.epsilon = parse(key, value)?,
            (Self::SophiaH(s), "hessian_interval") => s.hessian_interval = parse(key, value)?,
            (Self::SophiaH(s), "hessian_batch_fraction") => s.hessian_batch_fraction = parse(key, value)?,
            (Self::SophiaH(s), "hutchinson_epsilon") => s.hutchinson_epsilon = parse(key, value)?,
            (Self::AdamW(s), "beta1") | (Self::Muon(MuonSettings { adamw: s, .. }), "adamw.beta1") => s.beta1 = parse(key, value)?,
            (Self::AdamW(s), "beta2") | (Self::Muon(MuonSettings { adamw: s, .. }), "adamw.beta2") => s.beta2 = parse(key, value)?,
            (Self::AdamW(s), "epsilon") | (Self::Muon(MuonSettings { adamw: s, .. }), "adamw.epsilon") => s.epsilon = parse(key, value)?,
            (Self::Lion(s), "beta1") => s.beta1 = parse(key, value)?,
            (Self::Lion(s), "beta2") => s.beta2 = parse(key, value)?,
            (Self::Tiger(s), "beta") => s.beta = parse(key, value)?,
            (Self::Muon(s), "momentum") => s.momentum = parse(key, value)?,
            (Self::Muon(s), "nesterov") => s.nesterov = parse(key, value)?,
            (Self::Muon(s), "ns_steps") => s.ns_steps = parse(key, value)?,
            _ => return Err(unknown()),
        }
        Ok(())
    }

    /// Check every hyperparameter; the error names the optimizer, the field, its value and the
    /// allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Self::SophiaG(s) => {
                let v = Validator::new("SophiaG");
                v.unit_interval("beta1", s.beta1)?;
                v.unit_interval("beta2", s.beta2)?;
                if let Rho::Fixed(rho) = s.rho {
                    v.positive("rho", rho)?;
                }
                v.positive("epsilon", s.epsilon)?;
                v.at_least_one("hessian_interval", s.hessian_interval)?;
                fraction(&v, s.hessian_batch_fraction)
            }
            Self::SophiaH(s) => {
                let v = Validator::new("SophiaH");
                v.unit_interval("beta1", s.beta1)?;
                v.unit_interval("beta2", s.beta2)?;
                v.positive("gamma", s.gamma)?;
                v.positive("epsilon", s.epsilon)?;
                v.at_least_one("hessian_interval", s.hessian_interval)?;
                v.positive("hutchinson_epsilon", s.hutchinson_epsilon)?;
                fraction(&v, s.hessian_batch_fraction)
            }
            Self::AdamW(s) => adamw(&Validator::new("AdamW"), s),
            Self::Lion(s) => {
                let v = Validator::new("Lion");
                v.unit_interval("beta1", s.beta1)?;
                v.unit_interval("beta2", s.beta2)
            }
            Self::Tiger(s) => Validator::new("Tiger").unit_interval("beta", s.beta),
            Self::Muon(s) => {
                let v = Validator::new("Muon");
                v.unit_interval("momentum", s.momentum)?;
                v.at_least_one("ns_steps", s.ns_steps)?;
                adamw(&Validator::new("Muon's AdamW"), &s.adamw)
            }
        }
    }

    /// Refresh interval `k` and refresh-batch fraction, for the Sophia variants.
    pub fn hessian(&self) -> Option<(usize, f64)> {
        match self {
            Self::SophiaG(s) => Some((s.hessian_interval, s.hessian_batch_fraction)),
            Self::SophiaH(s) => Some((s.hessian_interval, s.hessian_batch_fraction)),
            _ => None,
        }
    }
}

fn adamw(v: &Validator, s: &AdamWSettings) -> Result<(), ConfigError> {
    v.unit_interval("beta1", s.beta1)?;
    v.unit_interval("beta2", s.beta2)?;
    v.positive("epsilon", s.epsilon)
}

fn fraction(v: &Validator, value: f64) -> Result<(), ConfigError> {
    v.require(value > 0.0 && value <= 1.0, "hessian_batch_fraction", value, "a number in (0, 1]")
}

/// Which parameters get weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DecaySelection {
    /// Weights of linear layers only (the official Sophia configs).
    #[default]
    LinearWeights,
    /// Every 2-D tensor: linear weights and embeddings (nanoGPT).
    Matrices,
    /// Every parameter.
    All,
    /// None.
    None,
}

/// What to do when the loss or the gradient norm is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NonFinitePolicy {
    /// Stop with an error; the last verified checkpoint stays.
    #[default]
    Stop,
    /// Skip the update and go on (the step is logged as skipped).
    Skip,
}

/// Every setting of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Run name; the run directory is `out_dir/name`.
    pub name: String,
    /// Where run directories go.
    pub out_dir: PathBuf,
    /// Corpus name (see `data::CORPORA`; several joined with `+`) or path to a UTF-8 text file
    /// or folder.
    pub data: String,
    /// Where prepared token files and downloads are kept.
    pub data_dir: PathBuf,
    /// Fraction of the corpus held out for validation.
    pub val_fraction: f64,
    /// Tokenizer: characters (nanoGPT's `shakespeare_char`) or the GPT-2 BPE; unset, the model
    /// preset's own ([`TrainConfig::tokenizer`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerKind>,
    /// Backend.
    pub backend: Backend,
    /// Precision of the model's matrix products (`bf16`: mixed precision with f32 weights,
    /// gradients and optimizer state; see `sophia_gpt2::precision`).
    pub precision: Precision,
    /// `fused`: the kernels of the flex CPU backend for the matrix products of the linear layers
    /// and the LM head, the loss, the sampled labels, the GELU and the one-pass optimizer updates
    /// (other backends run the composed operations);
    /// `composed`: Burn's tensor operations everywhere (the reference they are tested against).
    pub kernels: Kernels,
    /// Model preset (see `sophia_gpt2::PRESETS`), used when `model` is not given.
    pub preset: String,
    /// Full model config; overrides `preset`.
    pub model: Option<Gpt2Config>,
    /// Context length override (must not exceed the preset's).
    pub block_size: Option<usize>,
    /// Dropout override.
    pub dropout: Option<f64>,
    /// The optimizer and its own hyperparameters.
    pub optimizer: OptimizerConfig,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate after the cosine decay.
    pub min_lr: f64,
    /// Linear warmup steps.
    pub warmup_steps: usize,
    /// Optimizer steps in the run (the cosine decays over all of them).
    pub max_steps: usize,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Which parameters are decayed.
    pub decay: DecaySelection,
    /// Global-norm gradient clipping (0 disables).
    pub grad_clip: f64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches accumulated per optimizer step.
    pub grad_accum: usize,
    /// Shards of a micro-batch whose forward and backward passes run concurrently: the
    /// micro-batch's sequences split into this many groups, each on its own thread with its own
    /// copy of the autodiff graph, the loss their sequence-weighted mean and the gradients summed
    /// in shard order (so the result does not depend on the thread count; it differs from one
    /// shard by rounding only). Evaluation batches run this many at a time. On a GPU backend
    /// the shards run one after the other on one thread. Unset: the model's own
    /// ([`TrainConfig::shards()`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    /// Evaluate every this many steps (and at the end).
    pub eval_interval: usize,
    /// Batches per evaluation.
    pub eval_batches: usize,
    /// Log every this many steps.
    pub log_interval: usize,
    /// Save a checkpoint every this many steps (and at the end).
    pub checkpoint_interval: usize,
    /// Checkpoints kept (the oldest are deleted after a new one is complete).
    pub keep_checkpoints: usize,
    /// Tokens of text sampled at each evaluation (0: none).
    pub sample_tokens: usize,
    /// Prompt of the samples.
    pub sample_prompt: String,
    /// NaN/Inf handling.
    pub on_nonfinite: NonFinitePolicy,
    /// Seed of initialisation, batches and label sampling.
    pub seed: u64,
    /// Draw the final PNG/SVG plots.
    pub plots: bool,
}

impl Default for TrainConfig {
    /// nanoGPT's CPU quick start (`shakespeare_char` on a laptop: 4 layers, 4 heads, 128 wide,
    /// context 64, batch 12, 2000 steps, warmup 100, the learning rate decaying to a tenth,
    /// dropout 0) trained with SophiaG at the official β = (0.965, 0.99), weight decay 0.2 and
    /// the `lr` and `ρ` of our sweep on this corpus (see `docs/results.md`).
    fn default() -> Self {
        Self {
            name: "shakespeare-char".into(),
            out_dir: "runs".into(),
            data: "shakespeare".into(),
            data_dir: "data".into(),
            val_fraction: 0.1,
            tokenizer: None,
            backend: Backend::Flex,
            precision: Precision::F32,
            kernels: Kernels::Fused,
            preset: "char".into(),
            model: None,
            block_size: None,
            dropout: None,
            optimizer: OptimizerConfig::SophiaG(SophiaGSettings { beta2: 0.99, rho: Rho::Fixed(DEFAULT_RHO), ..SophiaGSettings::default() }),
            lr: DEFAULT_LR,
            min_lr: DEFAULT_LR / 10.0,
            warmup_steps: 100,
            max_steps: 2000,
            weight_decay: 0.2,
            decay: DecaySelection::LinearWeights,
            grad_clip: 1.0,
            batch_size: 12,
            grad_accum: 1,
            shards: None,
            eval_interval: 250,
            eval_batches: 20,
            log_interval: 10,
            checkpoint_interval: 500,
            keep_checkpoints: 2,
            sample_tokens: 300,
            sample_prompt: "ROMEO:".into(),
            on_nonfinite: NonFinitePolicy::Stop,
            seed: 1337,
            plots: true,
        }
    }
}

/// The default run's peak learning rate (SophiaG on the char model): the best of `bench
/// compare`'s sweep over 3e-4 to 4.8e-3 × ρ ∈ {0.03, 0.1} (`docs/results.md`).
const DEFAULT_LR: f64 = 6e-4;

/// The default run's `ρ`, from the same sweep (0.1 beat 0.03 at the best learning rate; the
/// official 0.05 was not on its grid).
const DEFAULT_RHO: f64 = 0.1;

/// A named set of hyperparameters: the official Sophia README's GPT-2 settings and our CPU
/// settings. Applying one sets the model preset, the optimizer with its hyperparameters, the
/// learning rates and the weight decay.
#[derive(Debug, Clone, PartialEq)]
pub struct HyperparameterPreset {
    /// The name (`--hyperparameters NAME`).
    pub name: &'static str,
    /// The model preset.
    pub model: &'static str,
    /// The optimizer and its hyperparameters.
    pub optimizer: OptimizerConfig,
    /// Peak learning rate (the final one is a tenth of it).
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
}

/// The names [`HyperparameterPreset::named`] knows.
pub const HYPERPARAMETER_PRESETS: &[&str] = &[
    "paper-125m-adamw",
    "paper-125m-lion",
    "paper-125m-sophiag",
    "paper-355m-adamw",
    "paper-355m-lion",
    "paper-355m-sophiag",
    "paper-770m-adamw",
    "paper-770m-lion",
    "paper-770m-sophiag",
    "cpu-sophiag",
    "cpu-sophiah",
    "cpu-adamw",
    "cpu-lion",
    "cpu-tiger",
    "cpu-muon",
    "char-sophiag",
    "char-sophiah",
    "char-adamw",
    "char-lion",
    "char-tiger",
    "char-muon",
];

impl HyperparameterPreset {
    /// The preset called `name`.
    pub fn named(name: &str) -> Result<Self, SettingError> {
        // The official README's GPT-2 runs: AdamW β = (0.9, 0.95), Lion β = (0.95, 0.98),
        // SophiaG β = (0.965, 0.99), k = 10.
        let paper_adamw = || OptimizerConfig::AdamW(AdamWSettings { beta1: 0.9, beta2: 0.95, epsilon: 1e-8 });
        let paper_lion = || OptimizerConfig::Lion(LionSettings { beta1: 0.95, beta2: 0.98 });
        let paper_sophia = |rho| OptimizerConfig::SophiaG(SophiaGSettings { beta2: 0.99, rho: Rho::Fixed(rho), ..SophiaGSettings::default() });
        let preset = |name, model, optimizer, lr, weight_decay| Self { name, model, optimizer, lr, weight_decay };
        let char_adamw = || OptimizerConfig::AdamW(AdamWSettings { beta2: 0.99, ..AdamWSettings::default() });
        Ok(match name {
            "paper-125m-adamw" => preset("paper-125m-adamw", "gpt2", paper_adamw(), 6e-4, 0.1),
            "paper-125m-lion" => preset("paper-125m-lion", "gpt2", paper_lion(), 1e-4, 0.2),
            "paper-125m-sophiag" => preset("paper-125m-sophiag", "gpt2", paper_sophia(0.05), 6e-4, 0.2),
            "paper-355m-adamw" => preset("paper-355m-adamw", "gpt2-medium", paper_adamw(), 3e-4, 0.1),
            "paper-355m-lion" => preset("paper-355m-lion", "gpt2-medium", paper_lion(), 1e-4, 0.2),
            "paper-355m-sophiag" => preset("paper-355m-sophiag", "gpt2-medium", paper_sophia(0.08), 7e-4, 0.2),
            "paper-770m-adamw" => preset("paper-770m-adamw", "gpt2-large", paper_adamw(), 2e-4, 0.1),
            "paper-770m-lion" => preset("paper-770m-lion", "gpt2-large", paper_lion(), 8e-5, 0.2),
            "paper-770m-sophiag" => preset("paper-770m-sophiag", "gpt2-large", paper_sophia(0.05), 3e-4, 0.2),
            "cpu-sophiag" => preset("cpu-sophiag", "cpu-3m", OptimizerKind::SophiaG.default_config(), 6e-3, 0.1),
            "cpu-sophiah" => preset("cpu-sophiah", "cpu-3m", OptimizerKind::SophiaH.default_config(), 6e-3, 0.1),
            "cpu-adamw" => preset("cpu-adamw", "cpu-3m", OptimizerKind::AdamW.default_config(), 6e-3, 0.1),
            "cpu-lion" => preset("cpu-lion", "cpu-3m", OptimizerKind::Lion.default_config(), 2e-3, 0.3),
            "cpu-tiger" => preset("cpu-tiger", "cpu-3m", OptimizerKind::Tiger.default_config(), 2e-3, 0.3),
            "cpu-muon" => preset("cpu-muon", "cpu-3m", OptimizerKind::Muon.default_config(), 6e-3, 0.1),
            // The char regime (nanoGPT's `shakespeare_char`, 2000 steps): AdamW as nanoGPT sets
            // it (β₂ = 0.99 for the small batch), SophiaG as the default run, the sign-based
            // optimizers at a third of AdamW's rate and three times its decay (the same lr·λ).
            "char-sophiag" => preset("char-sophiag", "char", TrainConfig::default().optimizer, DEFAULT_LR, 0.2),
            "char-sophiah" => preset("char-sophiah", "char", OptimizerConfig::SophiaH(SophiaHSettings { beta2: 0.99, ..SophiaHSettings::default() }), DEFAULT_LR, 0.2),
            "char-adamw" => preset("char-adamw", "char", char_adamw(), 1e-3, 0.1),
            "char-lion" => preset("char-lion", "char", OptimizerKind::Lion.default_config(), 3e-4, 0.3),
            "char-tiger" => preset("char-tiger", "char", OptimizerKind::Tiger.default_config(), 3e-4, 0.3),
            "char-muon" => preset(
                "char-muon",
                "char",
                OptimizerConfig::Muon(MuonSettings { adamw: AdamWSettings { beta2: 0.99, ..AdamWSettings::default() }, ..MuonSettings::default() }),
                1e-3,
                0.1,
            ),
            _ => {
                return Err(SettingError::UnknownName { what: "hyperparameter preset", name: name.to_string(), known: HYPERPARAMETER_PRESETS.join(", ") });
            }
        })
    }
}

impl TrainConfig {
    /// This config with a named hyperparameter preset applied.
    pub fn with_hyperparameters(mut self, name: &str) -> Result<Self, SettingError> {
        let preset = HyperparameterPreset::named(name)?;
        self.preset = preset.model.into();
        self.optimizer = preset.optimizer;
        self.lr = preset.lr;
        self.min_lr = preset.lr / 10.0;
        self.weight_decay = preset.weight_decay;
        // The paper's presets train at their model's full context, the char presets at nanoGPT's
        // 12 × 64 tokens, the BPE CPU presets at 8 × 64.
        match preset.model {
            "char" => (self.block_size, self.batch_size) = (None, 12),
            model if model.starts_with("gpt2") => self.block_size = None,
            _ => (self.block_size, self.batch_size) = (Some(64), 8),
        }
        Ok(self)
    }

    /// Read a JSON (`.json`) or TOML (anything else) config file; absent fields keep defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Self, SettingError> {
        let text = std::fs::read_to_string(path).map_err(|e| SettingError::File { path: path.to_path_buf(), reason: e.to_string() })?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        parsed.map_err(|reason| SettingError::File { path: path.to_path_buf(), reason })
    }

    /// Set one setting from its text, as `--set key=value` does: a field of this config, or one
    /// of the optimizer's (`rho`, `beta2`, ...; also written `optimizer.rho`). The value is parsed
    /// as the field's type; a key that is no setting, or one the optimizer does not have, is
    /// refused with the names that exist.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SettingError> {
        let key = key.trim();
        match key {
            "name" => self.name = value.to_string(),
            "out_dir" => self.out_dir = value.into(),
            "data" => self.data = value.to_string(),
            "data_dir" => self.data_dir = value.into(),
            "val_fraction" => self.val_fraction = parse(key, value)?,
            "tokenizer" => {
                self.tokenizer =
                    Some(value.parse().map_err(|e: crate::data::DataError| SettingError::Value { key: key.into(), value: value.into(), reason: e.to_string() })?)
            }
            "backend" => {
                self.backend =
                    value.parse().map_err(|e: sophia_backend::BackendError| SettingError::Value { key: key.into(), value: value.into(), reason: e.to_string() })?
            }
            "precision" => {
                self.precision =
                    value.parse().map_err(|e: sophia_gpt2::ModelError| SettingError::Value { key: key.into(), value: value.into(), reason: e.to_string() })?
            }
            "kernels" => self.kernels = value.parse().map_err(|reason| SettingError::Value { key: key.into(), value: value.into(), reason })?,
            "preset" => self.preset = value.to_string(),
            "block_size" => self.block_size = parse_optional(key, value)?,
            "dropout" => self.dropout = parse_optional(key, value)?,
            "optimizer" | "optimizer.kind" => self.set_optimizer(value.parse::<OptimizerKind>()?),
            "lr" => self.lr = parse(key, value)?,
            "min_lr" => self.min_lr = parse(key, value)?,
            "warmup_steps" => self.warmup_steps = parse(key, value)?,
            "max_steps" | "steps" => self.max_steps = parse(key, value)?,
            "weight_decay" => self.weight_decay = parse(key, value)?,
            "decay" => self.decay = parse_name(key, value)?,
            "grad_clip" => self.grad_clip = parse(key, value)?,
            "batch_size" => self.batch_size = parse(key, value)?,
            "grad_accum" => self.grad_accum = parse(key, value)?,
            "shards" => self.shards = parse_optional(key, value)?,
            "eval_interval" => self.eval_interval = parse(key, value)?,
            "eval_batches" => self.eval_batches = parse(key, value)?,
            "log_interval" => self.log_interval = parse(key, value)?,
            "checkpoint_interval" => self.checkpoint_interval = parse(key, value)?,
            "keep_checkpoints" => self.keep_checkpoints = parse(key, value)?,
            "sample_tokens" => self.sample_tokens = parse(key, value)?,
            "sample_prompt" => self.sample_prompt = value.to_string(),
            "on_nonfinite" => self.on_nonfinite = parse_name(key, value)?,
            "seed" => self.seed = parse(key, value)?,
            "plots" => self.plots = parse(key, value)?,
            _ => {
                let key = key.strip_prefix("optimizer.").unwrap_or(key);
                return match self.optimizer.set(key, value) {
                    Err(SettingError::NotForOptimizer { known, optimizer, .. }) if !self.optimizer_owns_elsewhere(key) => {
                        Err(SettingError::UnknownKey { key: key.to_string(), known: format!("{}; and for {optimizer}: {known}", TRAIN_SETTINGS.join(", ")) })
                    }
                    other => other,
                };
            }
        }
        Ok(())
    }

    /// Train with `kind`: its default hyperparameters, or the ones already set if the config
    /// already names it.
    pub fn set_optimizer(&mut self, kind: OptimizerKind) {
        if self.optimizer.kind() != kind {
            self.optimizer = kind.default_config();
        }
    }

    /// Whether `key` is a setting of some optimizer (so refusing it names the optimizer).
    fn optimizer_owns_elsewhere(&self, key: &str) -> bool {
        OptimizerKind::ALL.iter().any(|k| k.default_config().setting_names().contains(&key))
    }

    /// The model config this run trains: `model`, else the preset, with the overrides.
    pub fn model_config(&self) -> Result<Gpt2Config, sophia_gpt2::ModelError> {
        let mut model = match &self.model {
            Some(model) => model.clone(),
            None => Gpt2Config::preset(&self.preset)?,
        };
        if let Some(block_size) = self.block_size {
            if block_size > model.block_size {
                return Err(sophia_gpt2::ModelError::Invalid {
                    field: "block_size",
                    value: block_size.to_string(),
                    requirement: format!("must not exceed the model's context of {} tokens", model.block_size),
                });
            }
            model.block_size = block_size;
        }
        if let Some(dropout) = self.dropout {
            model.dropout = dropout;
        }
        model.validate()?;
        Ok(model)
    }

    /// The model config for the prepared data: [`model_config`](Self::model_config) with the
    /// tokenizer's vocabulary (a full `model` may have a larger, padded vocabulary).
    pub fn model_config_for(&self, data: &DatasetMeta) -> Result<Gpt2Config, sophia_gpt2::ModelError> {
        self.model_config_with_vocab(data.vocab_size)
    }

    /// [`model_config`](Self::model_config) for a tokenizer of `vocab_size` tokens.
    pub fn model_config_with_vocab(&self, vocab_size: usize) -> Result<Gpt2Config, sophia_gpt2::ModelError> {
        let mut model = self.model_config()?;
        match self.model {
            None => model.vocab_size = vocab_size,
            Some(_) if model.vocab_size < vocab_size => {
                return Err(sophia_gpt2::ModelError::Invalid {
                    field: "vocab_size",
                    value: model.vocab_size.to_string(),
                    requirement: format!("must hold the tokenizer's {vocab_size} tokens ({})", self.tokenizer()),
                });
            }
            Some(_) => {}
        }
        Ok(model)
    }

    /// The tokenizer: the one set, or else the model's own: characters for the `char` preset,
    /// the GPT-2 BPE for every other preset and for a full model config.
    pub fn tokenizer(&self) -> TokenizerKind {
        match self.tokenizer {
            Some(kind) => kind,
            None if self.model.is_none() && self.preset == "char" => TokenizerKind::Char,
            None => TokenizerKind::Gpt2,
        }
    }

    /// Shards per micro-batch: the ones set, or else the model's own: 2 for the `char` preset,
    /// whose operations are too small to keep two cores busy each (measured on 2 cores: about
    /// 1.25x the tokens/s of one shard), 1 for every other preset and a full model config, whose
    /// matrix products already fill the cores (2 shards cost the 3.4M BPE model about 10%).
    pub fn shards(&self) -> usize {
        match self.shards {
            Some(shards) => shards,
            None if self.model.is_none() && self.preset == "char" => 2.min(self.batch_size),
            None => 1,
        }
    }

    /// This config with the settings that follow the model when unset ([`tokenizer`](Self::tokenizer),
    /// [`shards`](Self::shards)) written out as the run uses them: what `--print-config` shows.
    pub fn resolved(&self) -> Self {
        Self { tokenizer: Some(self.tokenizer()), shards: Some(self.shards()), ..self.clone() }
    }

    /// Tokens per optimizer step (Sophia's `bs`).
    pub fn tokens_per_step(&self, block_size: usize) -> usize {
        self.batch_size * self.grad_accum * block_size
    }

    /// Sequences in a Hessian refresh batch (`None` for optimizers without one).
    pub fn hessian_batch_size(&self) -> Option<usize> {
        let (_, fraction) = self.optimizer.hessian()?;
        Some(((self.batch_size as f64 * fraction).round() as usize).max(1))
    }

    /// Check every setting that does not depend on the data or the model, the optimizer's
    /// included; the error names the setting, its value and the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let v = Validator::new("training");
        v.positive("lr", self.lr)?;
        v.require(self.min_lr >= 0.0 && self.min_lr <= self.lr, "min_lr", self.min_lr, "a number in [0, lr]")?;
        v.at_least_one("max_steps", self.max_steps)?;
        v.require(self.warmup_steps < self.max_steps, "warmup_steps", self.warmup_steps, "an integer below max_steps")?;
        v.non_negative("weight_decay", self.weight_decay)?;
        v.non_negative("grad_clip", self.grad_clip)?;
        for (field, value) in [
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("eval_interval", self.eval_interval),
            ("eval_batches", self.eval_batches),
            ("log_interval", self.log_interval),
            ("checkpoint_interval", self.checkpoint_interval),
            ("keep_checkpoints", self.keep_checkpoints),
        ] {
            v.at_least_one(field, value)?;
        }
        v.require(self.val_fraction > 0.0 && self.val_fraction < 1.0, "val_fraction", self.val_fraction, "a number in (0, 1)")?;
        v.require(
            !self.name.is_empty() && !self.name.contains(['/', '\\']) && self.name != "." && self.name != "..",
            "name",
            format!("{:?}", self.name),
            "a non-empty file name (no slashes)",
        )?;
        v.require(!self.data.trim().is_empty(), "data", format!("{:?}", self.data), "a corpus name or a path")?;
        if let Some(block_size) = self.block_size {
            v.at_least_one("block_size", block_size)?;
        }
        if let Some(shards) = self.shards {
            v.require((1..=self.batch_size).contains(&shards), "shards", shards, "an integer from 1 to batch_size (a shard holds whole sequences)")?;
        }
        if let Some(dropout) = self.dropout {
            v.require((0.0..1.0).contains(&dropout), "dropout", dropout, "a number in [0, 1)")?;
        }
        self.optimizer.validate()
    }
}

/// The settings of [`TrainConfig`] that `--set` accepts (the optimizer's come on top).
pub const TRAIN_SETTINGS: &[&str] = &[
    "name",
    "out_dir",
    "data",
    "data_dir",
    "val_fraction",
    "tokenizer",
    "backend",
    "precision",
    "kernels",
    "preset",
    "block_size",
    "dropout",
    "optimizer",
    "lr",
    "min_lr",
    "warmup_steps",
    "max_steps",
    "weight_decay",
    "decay",
    "grad_clip",
    "batch_size",
    "grad_accum",
    "shards",
    "eval_interval",
    "eval_batches",
    "log_interval",
    "checkpoint_interval",
    "keep_checkpoints",
    "sample_tokens",
    "sample_prompt",
    "on_nonfinite",
    "seed",
    "plots",
];

/// `value` as the type of setting `key`; the error names both, and non-finite numbers are
/// refused here (a NaN learning rate is never a setting anyone means).
fn parse<T: std::str::FromStr + ParseCheck>(key: &str, value: &str) -> Result<T, SettingError>
where
    T::Err: std::fmt::Display,
{
    let parsed: T = value.trim().parse().map_err(|e: T::Err| SettingError::Value { key: key.into(), value: value.into(), reason: e.to_string() })?;
    parsed.check().map_err(|reason| SettingError::Value { key: key.into(), value: value.into(), reason })?;
    Ok(parsed)
}

/// `none`/`null` or a value.
fn parse_optional<T: std::str::FromStr + ParseCheck>(key: &str, value: &str) -> Result<Option<T>, SettingError>
where
    T::Err: std::fmt::Display,
{
    match value.trim() {
        "none" | "null" => Ok(None),
        _ => parse(key, value).map(Some),
    }
}

/// A unit enum by its serde name.
fn parse_name<T: serde::de::DeserializeOwned>(key: &str, value: &str) -> Result<T, SettingError> {
    serde_json::from_value(serde_json::Value::String(value.trim().to_string())).map_err(|e| SettingError::Value {
        key: key.into(),
        value: value.into(),
        reason: e.to_string(),
    })
}

/// What a parsed value must satisfy whatever its setting.
trait ParseCheck {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl ParseCheck for f64 {
    fn check(&self) -> Result<(), String> {
        if self.is_finite() { Ok(()) } else { Err("must be a finite number".into()) }
    }
}
impl ParseCheck for usize {}
impl ParseCheck for u64 {}
impl ParseCheck for bool {}
