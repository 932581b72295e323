#![warn(missing_docs)]
//! Benchmarks of sophia-burn. Every benchmark writes JSON first and plots from the JSON, so
//! results measured on one machine can be plotted anywhere; [`report`] turns the JSON files into
//! `docs/results.md`.
//!
//! - [`compare`]: the optimizers trained side by side, each at its best swept learning rate;
//!   steps to reach AdamW's final loss.
//! - [`step`]: the time of one optimizer step on GPT-2-shaped parameter sets, as ratios to AdamW
//!   measured in one process.
//! - [`memory`]: optimizer state bytes per parameter (exact) and the peak resident memory of a
//!   training step.
//! - [`throughput`]: training tokens/s, model FLOPs utilisation against the measured peak matmul
//!   rate, and the cost of a Sophia Hessian refresh relative to a training step.

pub mod compare;
pub mod machine;
pub mod memory;
pub mod report;
pub mod step;
pub mod throughput;

use std::path::{Path, PathBuf};

use burn::optim::GradientsParams;
use burn::tensor::Device;
use serde::Serialize;
use sophia_gpt2::{Gpt2, ModelError};
use sophia_optim::{ConfigError, Refresh};
use sophia_train::TrainError;
use sophia_train::data::Batch;
use sophia_train::plot::PlotError;
use sophia_train::train::{RunEstimator, RunOptimizer, TrainConfig, TrainingStep};

/// Why a benchmark could not run or write its results.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A benchmark setting is out of range.
    #[error("invalid benchmark setting: {0}")]
    Config(#[from] ConfigError),
    /// Training (the measured step, a compared run).
    #[error(transparent)]
    Train(#[from] TrainError),
    /// The model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A figure.
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// Reading or writing a result file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A result file that is not a result of this version of the benches.
    #[error("{path} is not a result of this version of the benches: {reason}")]
    Result {
        /// The file.
        path: PathBuf,
        /// What does not parse.
        reason: String,
    },
    /// A measurement that this machine cannot make.
    #[error("{0}")]
    Unsupported(&'static str),
    /// A run of a configuration chosen for not diverging diverged with another seed.
    #[error("{run} diverged: {why}; the comparison needs every seed of the chosen configuration (try smaller --lr-multipliers)")]
    Diverged {
        /// Which run.
        run: String,
        /// The training error.
        why: String,
    },
}

/// Write `value` as pretty JSON, crash-safe.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), BenchError> {
    sophia_train::fs::write_json(path, value).map_err(|source| BenchError::Io { path: path.to_path_buf(), source })
}

/// Write `text` (a markdown table, a page), crash-safe.
pub fn write_text(path: &Path, text: &str) -> Result<(), BenchError> {
    sophia_train::fs::write_atomic(path, text.as_bytes()).map_err(|source| BenchError::Io { path: path.to_path_buf(), source })
}

/// Read a JSON result written by one of the benches.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| BenchError::Result { path: path.to_path_buf(), reason: e.to_string() })
}

/// A deterministic batch of `batch` sequences of `block` token ids and their next-token
/// targets, ids below `vocab`; timings do not depend on the text.
pub fn synthetic_batch(batch: usize, block: usize, vocab: usize) -> Batch {
    let ids: Vec<i64> = (0..batch * block).map(|i| (i * 7919 % vocab.saturating_sub(1).max(1)) as i64).collect();
    let targets: Vec<i64> = ids.iter().map(|i| (i + 1) % vocab as i64).collect();
    Batch { batch_size: batch, block_size: block, inputs: ids, targets }
}

/// Gradients of the model's own loss on a fixed batch: realistic magnitudes, every parameter.
pub fn gradients(model: &Gpt2, device: &Device) -> Result<GradientsParams, BenchError> {
    let config = model.config();
    let (inputs, targets) = sophia_train::train::tensors(&synthetic_batch(2, config.block_size.min(32), config.vocab_size), device);
    Ok(GradientsParams::from_grads(model.loss(inputs, targets)?.backward(), model))
}

/// Gradients are consumed by a step: give each step its own copy (cheap, reference-counted).
pub fn grads_clone(grads: &GradientsParams, model: &Gpt2) -> GradientsParams {
    let mut copy = GradientsParams::new();
    for (_, id, shape) in model.named_params() {
        match shape.len() {
            1 => copy.register(id, grads.get::<1>(id).expect("every parameter has a gradient")),
            _ => copy.register(id, grads.get::<2>(id).expect("every parameter has a gradient")),
        }
    }
    copy
}

/// Wait for the device by reading one value of the model.
pub fn sync(model: &Gpt2) {
    let _ = model.ln_f.gamma.val().narrow(0, 0, 1).into_scalar::<f32>();
}

/// One training step on `batch`, exactly as the training loop takes it ([`TrainingStep::run`]:
/// forward, backward, clipping, the optimizer's step with its refresh when due).
pub fn training_step(
    step: &TrainingStep,
    model: Gpt2,
    optimizer: &mut RunOptimizer,
    lr: f64,
    batch: Batch,
    estimator: Option<&mut RunEstimator<'_>>,
) -> Result<Gpt2, BenchError> {
    Ok(step.run(model, optimizer, lr, std::iter::once(batch), estimator)?.model)
}

/// One Hessian refresh of a Sophia optimizer (none for the others), the one the training
/// loop's optimizer runs when a refresh is due ([`RunOptimizer::refresh`]).
pub fn hessian_refresh(model: Gpt2, optimizer: &mut RunOptimizer, estimator: Option<&mut RunEstimator<'_>>) -> Result<Gpt2, BenchError> {
    Ok(optimizer.refresh(model, estimator)?)
}

/// An estimator whose estimate is the model's own loss gradient on a small synthetic batch,
/// for measurements where a refresh must be possible but its content does not matter.
pub fn loss_gradient_estimator(device: &Device) -> RunEstimator<'_> {
    Box::new(sophia_optim::EstimateFn(move |model: &Gpt2, _: Refresh| {
        let config = model.config();
        let (inputs, targets) = sophia_train::train::tensors(&synthetic_batch(2, config.block_size.min(32), config.vocab_size), device);
        Ok::<_, TrainError>(GradientsParams::from_grads(model.loss(inputs, targets)?.backward(), model))
    }))
}

/// A refresh-batch function that always gives the refresh batch `config` takes from the
/// training batch `batch`: its first [`TrainConfig::hessian_batch_size`] sequences (benchmarks
/// measure one batch shape).
pub fn fixed_refresh_batch(config: &TrainConfig, batch: &Batch) -> impl Fn(Refresh) -> Batch + use<> {
    let refresh = batch.first(config.hessian_batch_size().unwrap_or(batch.batch_size));
    move |_| refresh.clone()
}
