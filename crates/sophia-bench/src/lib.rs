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

use std::path::Path;

use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Serialize;
use sophia_gpt2::Gpt2;
use sophia_gpt2::hessian::SampledLabelHessian;
use sophia_gpt2::train::RunOptimizer;
use sophia_optim::{GlobalNormClip, HessianEstimator, Hutchinson};

/// Write `value` as pretty JSON (through a temporary file, so a crash leaves the old file).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)).map_err(|e| format!("{}: {e}", path.display()))
}

/// Read a JSON result written by one of the benches.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not a result of this version of the benches: {e}", path.display()))
}

/// A deterministic `[batch, block]` batch of token ids and its next-token targets; timings do
/// not depend on the text.
pub fn synthetic_batch(batch: usize, block: usize, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let ids: Vec<i64> = (0..batch * block).map(|i| (i * 7919 % 50_000) as i64).collect();
    let targets: Vec<i64> = ids.iter().map(|i| (i + 1) % 50_000).collect();
    (Tensor::from_data(TensorData::new(ids, [batch, block]), device), Tensor::from_data(TensorData::new(targets, [batch, block]), device))
}

/// Gradients of the model's own loss on a fixed batch: realistic magnitudes, every parameter.
pub fn gradients(model: &Gpt2, device: &Device) -> GradientsParams {
    let (inputs, targets) = synthetic_batch(2, model.config().block_size.min(32), device);
    let loss = model.loss(inputs, targets).expect("the batch fits the model");
    GradientsParams::from_grads(loss.backward(), model)
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

/// One training step as the training loop takes it: forward, backward, global-norm clipping to
/// 1, the optimizer's update.
pub fn training_step(model: Gpt2, optimizer: &mut RunOptimizer, inputs: Tensor<2, Int>, targets: Tensor<2, Int>, lr: f64) -> Result<Gpt2, String> {
    let loss = model.loss(inputs, targets).map_err(|e| e.to_string())?;
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let (grads, _) = GlobalNormClip::new(1.0).map_err(|e| e.to_string())?.clip(&model, grads);
    Ok(optimizer.step(lr, model, grads))
}

/// One Hessian refresh of a Sophia optimizer (none for the others): SophiaG's sampled-label
/// gradient (clipped like the training gradient, as the official loop does) or SophiaH's
/// Hutchinson estimate, on `inputs` (and `targets` for SophiaH's loss).
pub fn hessian_refresh(model: Gpt2, optimizer: &mut RunOptimizer, inputs: Tensor<2, Int>, targets: Tensor<2, Int>, draw: u64) -> Result<Gpt2, String> {
    let Some(sophia) = optimizer.sophia() else { return Ok(model) };
    let estimate = match sophia.estimator() {
        HessianEstimator::GaussNewtonBartlett { .. } => {
            let sampled = SampledLabelHessian::new(0).gradients(&model, inputs, draw).map_err(|e| e.to_string())?;
            GlobalNormClip::new(1.0).map_err(|e| e.to_string())?.clip(&model, sampled.grads).0
        }
        HessianEstimator::Hutchinson { .. } => Hutchinson::new(1e-3, 0).map_err(|e| e.to_string())?.estimate(&model, draw, |m| {
            let loss = m.loss(inputs.clone(), targets.clone()).expect("the batch fits the model");
            GradientsParams::from_grads(loss.backward(), m)
        }),
    };
    Ok(sophia.refresh(model, estimate))
}
