//! `bench memory`: optimizer state bytes per parameter, exact, from the serialized optimizer
//! record after a step (and a Hessian refresh for Sophia); and the peak resident memory of a
//! training step.
//!
//! The peak is read from the kernel (`VmHWM` after resetting it through `/proc/self/clear_refs`),
//! so each (preset, optimizer) pair must run in a fresh process: allocator caches from an earlier
//! measurement would hide part of the next one. `cargo xtask bench memory` does that.

use std::path::Path;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use sophia_gpt2::Gpt2;
use sophia_train::plot::{Panel, Series};
use sophia_train::train::{OptimizerKind, RunOptimizer, TrainConfig, TrainingStep};

use crate::BenchError;
use crate::machine::Machine;

/// The state of `config`'s optimizer for `model`, in bytes, after one training step and one
/// refresh (Sophia).
pub fn state_bytes(config: &TrainConfig, model: &Gpt2, device: &Device) -> Result<u64, BenchError> {
    let mut optimizer = RunOptimizer::new(config, model, config.tokens_per_step(model.config().block_size))?;
    let step = TrainingStep::new(config, device)?;
    let batch = crate::synthetic_batch(1, model.config().block_size.min(8), model.config().vocab_size);
    let refresh_batch = crate::fixed_refresh_batch(config, &batch);
    let mut estimator = step.estimator(&refresh_batch)?;
    let model = crate::training_step(&step, model.clone(), &mut optimizer, 1e-4, batch, estimator.as_mut())?;
    crate::hessian_refresh(model, &mut optimizer, estimator.as_mut())?;
    record_bytes(&optimizer)
}

/// Bytes of the state tensors in `optimizer`'s serialized record.
fn record_bytes(optimizer: &RunOptimizer) -> Result<u64, BenchError> {
    let unreadable = |e: String| BenchError::Result { path: "optimizer record".into(), reason: e };
    let bytes = optimizer.to_record().into_bytes().map_err(|e| unreadable(format!("{e:?}")))?;
    let reader = burn_pack::Reader::from_bytes(bytes).map_err(|e| unreadable(format!("{e:?}")))?;
    reader.tensor_names().into_iter().map(|name| reader.tensor_data(name).map(|d| d.len() as u64).map_err(|e| unreadable(format!("state tensor {name}: {e:?}")))).sum()
}

/// One (preset, optimizer) measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryEntry {
    /// Optimizer.
    pub optimizer: String,
    /// Model preset.
    pub preset: String,
    /// Model parameters.
    pub parameters: usize,
    /// Optimizer state, bytes.
    pub state_bytes: u64,
    /// State bytes per parameter (8 = two f32 tensors per parameter).
    pub state_bytes_per_param: f64,
    /// Resident memory before the training steps, bytes (model, optimizer, runtime).
    pub baseline_rss_bytes: u64,
    /// Peak resident memory during the training steps, bytes.
    pub peak_rss_bytes: u64,
    /// Tokens in the measured step's batch.
    pub batch_tokens: usize,
}

/// The JSON written by `bench memory`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryReport {
    /// Where it ran.
    pub machine: Machine,
    /// One entry per preset and optimizer.
    pub entries: Vec<MemoryEntry>,
}

/// Resident memory now and its peak since the last reset, bytes (Linux; zeros elsewhere).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Measure one optimizer on one preset in this process: the peak resident memory of two
/// training steps (each followed by a refresh for Sophia) of `batch × block` tokens, then the
/// bytes of the optimizer state they built. Run it in a fresh process per pair for a meaningful peak.
pub fn measure(preset: &str, optimizer: OptimizerKind, batch: usize, block: usize, device: &Device) -> Result<MemoryEntry, BenchError> {
    let config = TrainConfig { optimizer: optimizer.default_config(), preset: preset.into(), block_size: Some(block), batch_size: batch, ..TrainConfig::default() };
    let model_config = config.model_config()?;
    let mut model = Gpt2::new(&model_config, device, 0)?;
    let parameters = model.num_params();
    let mut stepper = RunOptimizer::new(&config, &model, batch * block)?;
    let step = TrainingStep::new(&config, device)?;
    let synthetic = crate::synthetic_batch(batch, block, model_config.vocab_size);
    let refresh_batch = crate::fixed_refresh_batch(&config, &synthetic);
    let mut estimator = step.estimator(&refresh_batch)?;
    crate::sync(&model);
    // Writing 5 resets the peak (VmHWM) to the current resident size.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let (baseline, _) = rss();
    for _ in 0..2 {
        model = crate::training_step(&step, model, &mut stepper, 1e-4, synthetic.clone(), estimator.as_mut())?;
        model = crate::hessian_refresh(model, &mut stepper, estimator.as_mut())?;
        crate::sync(&model);
    }
    let (_, peak) = rss();
    let state = record_bytes(&stepper)?;
    if !reset {
        return Err(BenchError::Unsupported("cannot reset the peak-memory counter (/proc/self/clear_refs): peak memory is measured on Linux only"));
    }
    Ok(MemoryEntry {
        optimizer: optimizer.to_string(),
        preset: preset.into(),
        parameters,
        state_bytes: state,
        state_bytes_per_param: state as f64 / parameters as f64,
        baseline_rss_bytes: baseline,
        peak_rss_bytes: peak,
        batch_tokens: batch * block,
    })
}

/// Write the report as JSON and plot it.
pub fn write(report: &MemoryReport, json: &Path) -> Result<(), BenchError> {
    crate::write_json(json, report)?;
    plot(report, &json.with_extension(""))
}

/// State bytes per parameter and peak step memory against model size, one line per optimizer.
pub fn plot(report: &MemoryReport, stem: &Path) -> Result<(), BenchError> {
    let mut names: Vec<&str> = report.entries.iter().map(|e| e.optimizer.as_str()).collect();
    names.dedup();
    let series = |value: fn(&MemoryEntry) -> f64| -> Vec<Series> {
        names
            .iter()
            .map(|name| Series::line(*name, report.entries.iter().filter(|e| e.optimizer == *name).map(|e| (e.parameters as f64 / 1e6, value(e))).collect()))
            .collect()
    };
    let panels = [
        Panel {
            title: "Optimizer state".into(),
            x_label: "parameters (millions)".into(),
            y_label: "bytes per parameter".into(),
            log_y: false,
            series: series(|e| e.state_bytes_per_param),
        },
        Panel {
            title: format!("Peak memory of a training step ({})", report.machine.backend),
            x_label: "parameters (millions)".into(),
            y_label: "peak resident memory (MiB)".into(),
            log_y: false,
            series: series(|e| e.peak_rss_bytes as f64 / (1024.0 * 1024.0)),
        },
    ];
    Ok(sophia_train::plot::draw(stem, &panels)?)
}
