//! Every knob of a training run in one serde config, with presets.
//!
//! A run is described by a JSON or TOML file (any subset of the fields; the rest keep their
//! defaults) plus command-line overrides. The defaults train a ~10M-parameter GPT on
//! Shakespeare with SophiaG on a 2-core CPU in about ten minutes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::backend::Backend;
use crate::config::Gpt2Config;
use crate::precision::Precision;

/// The optimizers a run can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Sophia with the Gauss-Newton-Bartlett estimator (sampled labels).
    #[default]
    SophiaG,
    /// Sophia with the Hutchinson estimator (finite-difference Hessian-vector products).
    SophiaH,
    /// Burn's AdamW (PyTorch semantics).
    AdamW,
    /// Burn's Lion.
    Lion,
    /// Tiger (Lion with one β).
    Tiger,
    /// Burn's Muon on the 2-D hidden matrices, AdamW on embeddings, head and vectors.
    Muon,
}

/// The names `--optimizer` accepts.
pub const OPTIMIZERS: &str = "sophiag, sophiah, adamw, lion, tiger, muon";

impl std::str::FromStr for OptimizerKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(name.to_ascii_lowercase()))
            .map_err(|_| format!("unknown optimizer `{name}`; choose one of {OPTIMIZERS}"))
    }
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = serde_json::to_value(self).expect("serializes");
        f.write_str(value.as_str().expect("a string"))
    }
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
    /// Stop with an error; the last good checkpoint stays.
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
    /// Backend.
    pub backend: Backend,
    /// Precision of the model's matrix products (`bf16`: mixed precision with f32 weights,
    /// gradients and optimizer state; see `sophia_gpt2::precision`).
    pub precision: Precision,
    /// Model preset (see `PRESETS`), used when `model` is not given.
    pub preset: String,
    /// Full model config; overrides `preset`.
    pub model: Option<Gpt2Config>,
    /// Context length override (must not exceed the preset's).
    pub block_size: Option<usize>,
    /// Dropout override.
    pub dropout: Option<f64>,
    /// Optimizer.
    pub optimizer: OptimizerKind,
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
    /// β₁ (momentum) of every optimizer that has one.
    pub beta1: f64,
    /// β₂ (second moment / Hessian EMA).
    pub beta2: f64,
    /// SophiaG's ρ.
    pub rho: f64,
    /// SophiaH's γ.
    pub gamma: f64,
    /// Hessian refresh interval `k` (Sophia).
    pub hessian_interval: usize,
    /// Sequences in a Hessian refresh batch, as a fraction of `batch_size` (1.0: the full
    /// training micro-batch, as the official loop).
    pub hessian_batch_fraction: f64,
    /// Clip the sampled-label (refresh) gradient to `grad_clip` as well (official: yes).
    pub clip_hessian_grad: bool,
    /// Finite-difference step of SophiaH's Hessian-vector products.
    pub hutchinson_epsilon: f64,
    /// Global-norm gradient clipping (0 disables).
    pub grad_clip: f64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches accumulated per optimizer step.
    pub grad_accum: usize,
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
    fn default() -> Self {
        Self {
            name: "shakespeare-sophiag".into(),
            out_dir: "runs".into(),
            data: "shakespeare".into(),
            data_dir: "data".into(),
            val_fraction: 0.1,
            backend: Backend::Flex,
            precision: Precision::F32,
            preset: "cpu-3m".into(),
            model: None,
            block_size: Some(64),
            dropout: None,
            optimizer: OptimizerKind::SophiaG,
            lr: 6e-3,
            min_lr: 6e-4,
            warmup_steps: 20,
            max_steps: 300,
            weight_decay: 0.1,
            decay: DecaySelection::LinearWeights,
            beta1: 0.965,
            // Shorter than the official 0.99: a 300-step run has only 30 refreshes, and h has
            // no bias correction, so a long EMA would stay far below its steady state.
            beta2: 0.95,
            rho: 0.05,
            gamma: 0.01,
            hessian_interval: 10,
            hessian_batch_fraction: 1.0,
            clip_hessian_grad: true,
            hutchinson_epsilon: 1e-3,
            grad_clip: 1.0,
            batch_size: 8,
            grad_accum: 1,
            eval_interval: 100,
            eval_batches: 4,
            log_interval: 10,
            checkpoint_interval: 100,
            keep_checkpoints: 2,
            sample_tokens: 48,
            sample_prompt: "ROMEO:".into(),
            on_nonfinite: NonFinitePolicy::Stop,
            seed: 1337,
            plots: true,
        }
    }
}

/// Hyperparameters of the paper's GPT-2 runs (official Sophia README) and our CPU presets.
///
/// `(name, preset, optimizer, lr, rho, weight_decay)`; AdamW and Lion use the paper's betas.
pub const HYPERPARAMETER_PRESETS: &[(&str, &str, OptimizerKind, f64, f64, f64)] = &[
    ("paper-125m-adamw", "gpt2", OptimizerKind::AdamW, 6e-4, 0.0, 0.1),
    ("paper-125m-lion", "gpt2", OptimizerKind::Lion, 1e-4, 0.0, 0.2),
    ("paper-125m-sophiag", "gpt2", OptimizerKind::SophiaG, 6e-4, 0.05, 0.2),
    ("paper-355m-adamw", "gpt2-medium", OptimizerKind::AdamW, 3e-4, 0.0, 0.1),
    ("paper-355m-lion", "gpt2-medium", OptimizerKind::Lion, 1e-4, 0.0, 0.2),
    ("paper-355m-sophiag", "gpt2-medium", OptimizerKind::SophiaG, 7e-4, 0.08, 0.2),
    ("paper-770m-adamw", "gpt2-large", OptimizerKind::AdamW, 2e-4, 0.0, 0.1),
    ("paper-770m-lion", "gpt2-large", OptimizerKind::Lion, 8e-5, 0.0, 0.2),
    ("paper-770m-sophiag", "gpt2-large", OptimizerKind::SophiaG, 3e-4, 0.05, 0.2),
    ("cpu-sophiag", "cpu-3m", OptimizerKind::SophiaG, 6e-3, 0.05, 0.1),
    ("cpu-sophiah", "cpu-3m", OptimizerKind::SophiaH, 6e-3, 0.0, 0.1),
    ("cpu-adamw", "cpu-3m", OptimizerKind::AdamW, 6e-3, 0.0, 0.1),
    ("cpu-lion", "cpu-3m", OptimizerKind::Lion, 2e-3, 0.0, 0.3),
    ("cpu-tiger", "cpu-3m", OptimizerKind::Tiger, 2e-3, 0.0, 0.3),
    ("cpu-muon", "cpu-3m", OptimizerKind::Muon, 6e-3, 0.0, 0.1),
];

impl TrainConfig {
    /// Apply a named hyperparameter preset (see [`HYPERPARAMETER_PRESETS`]).
    pub fn with_hyperparameters(mut self, name: &str) -> Result<Self, String> {
        let Some(&(_, preset, optimizer, lr, rho, weight_decay)) =
            HYPERPARAMETER_PRESETS.iter().find(|p| p.0 == name)
        else {
            let known: Vec<&str> = HYPERPARAMETER_PRESETS.iter().map(|p| p.0).collect();
            return Err(format!("unknown hyperparameter preset `{name}`; known: {}", known.join(", ")));
        };
        self.preset = preset.into();
        self.optimizer = optimizer;
        self.lr = lr;
        self.min_lr = lr / 10.0;
        self.weight_decay = weight_decay;
        match optimizer {
            OptimizerKind::SophiaG => self.rho = rho,
            OptimizerKind::AdamW | OptimizerKind::Muon => (self.beta1, self.beta2) = (0.9, 0.95),
            OptimizerKind::Lion => (self.beta1, self.beta2) = (0.95, 0.98),
            OptimizerKind::Tiger => self.beta1 = 0.965,
            OptimizerKind::SophiaH => {}
        }
        if preset.starts_with("gpt2") {
            self.block_size = None;
        }
        Ok(self)
    }

    /// Read a JSON (`.json`) or TOML (anything else) config file; absent fields keep defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
        } else {
            toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
        }
    }

    /// The model config this run trains: `model`, else the preset, with the overrides.
    pub fn model_config(&self) -> Result<Gpt2Config, crate::ModelError> {
        let mut model = match &self.model {
            Some(model) => model.clone(),
            None => Gpt2Config::preset(&self.preset)?,
        };
        if let Some(block_size) = self.block_size {
            if block_size > model.block_size {
                return Err(crate::ModelError::Config(format!(
                    "block_size {block_size} exceeds the model's {}",
                    model.block_size
                )));
            }
            model.block_size = block_size;
        }
        if let Some(dropout) = self.dropout {
            model.dropout = dropout;
        }
        model.validate()?;
        Ok(model)
    }

    /// Tokens per optimizer step (Sophia's `bs`).
    pub fn tokens_per_step(&self, block_size: usize) -> usize {
        self.batch_size * self.grad_accum * block_size
    }

    /// Sequences in a Hessian refresh batch.
    pub fn hessian_batch_size(&self) -> usize {
        ((self.batch_size as f64 * self.hessian_batch_fraction).round() as usize).max(1)
    }

    /// Check the settings that do not depend on the data; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, value: f64| {
            if value > 0.0 && value.is_finite() { Ok(()) } else { Err(format!("`{name}` = {value} must be a finite number > 0")) }
        };
        let count = |name: &str, value: usize| {
            if value >= 1 { Ok(()) } else { Err(format!("`{name}` = {value} must be at least 1")) }
        };
        positive("lr", self.lr)?;
        if !(self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return Err(format!("`min_lr` = {} must be in [0, lr = {}]", self.min_lr, self.lr));
        }
        count("max_steps", self.max_steps)?;
        if self.warmup_steps >= self.max_steps {
            return Err(format!("`warmup_steps` = {} must be less than `max_steps` = {}", self.warmup_steps, self.max_steps));
        }
        count("batch_size", self.batch_size)?;
        count("grad_accum", self.grad_accum)?;
        count("eval_interval", self.eval_interval)?;
        count("eval_batches", self.eval_batches)?;
        count("log_interval", self.log_interval)?;
        count("checkpoint_interval", self.checkpoint_interval)?;
        count("keep_checkpoints", self.keep_checkpoints)?;
        count("hessian_interval", self.hessian_interval)?;
        if !(self.hessian_batch_fraction > 0.0 && self.hessian_batch_fraction <= 1.0) {
            return Err(format!("`hessian_batch_fraction` = {} must be in (0, 1]", self.hessian_batch_fraction));
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return Err(format!("`val_fraction` = {} must be in (0, 1)", self.val_fraction));
        }
        if !(self.grad_clip >= 0.0 && self.grad_clip.is_finite()) {
            return Err(format!("`grad_clip` = {} must be >= 0 (0 disables clipping)", self.grad_clip));
        }
        if self.name.is_empty() || self.name.contains(['/', '\\']) {
            return Err(format!("`name` = {:?} must be a non-empty file name", self.name));
        }
        Ok(())
    }
}
