//! `bench throughput`: training tokens per second per preset on one backend, model FLOPs
//! utilisation (MFU) against the peak matmul rate measured on the same backend, and the cost of
//! one SophiaG Hessian refresh relative to one training step.
//!
//! FLOPs per token follow nanoGPT's `estimate_mfu` (PaLM appendix B): `6·N + 12·L·C·T` with `N`
//! the parameters without the position embeddings, `L` layers, `C` width and `T` context; a
//! training step costs that times the batch's tokens. The peak is the best rate of a square f32
//! matmul on the device, so MFU here says how much of what this backend can do on its best
//! kernel the whole training step achieves.

use std::path::Path;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};
use sophia_gpt2::{Gpt2, SampledLabelHessian};
use sophia_train::plot::{Panel, Series};
use sophia_train::train::{OptimizerKind, RunOptimizer, TrainConfig, TrainingStep, tensors};

use crate::BenchError;
use crate::machine::Machine;

/// One preset's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThroughputEntry {
    /// Model preset.
    pub preset: String,
    /// Model parameters.
    pub parameters: usize,
    /// Tokens per training step (`batch × block`).
    pub batch_tokens: usize,
    /// Context length.
    pub block_size: usize,
    /// Training FLOPs per token (`6·N + 12·L·C·T`).
    pub flops_per_token: f64,
    /// Median seconds of a training step (forward, backward, clipping, AdamW update).
    pub step_secs: f64,
    /// Training tokens per second.
    pub tokens_per_sec: f64,
    /// Achieved training FLOP rate, GFLOP/s.
    pub achieved_gflops: f64,
    /// Model FLOPs utilisation: achieved over the measured peak matmul rate.
    pub mfu: f64,
    /// Median seconds of one SophiaG refresh (sampled-label forward and backward, clipping, EMA)
    /// on a batch of the same size.
    pub refresh_secs: f64,
    /// Median seconds of the forward pass alone.
    pub forward_secs: f64,
    /// Median seconds of drawing the refresh's labels from the logits (Gumbel-max over the
    /// vocabulary), the part of a refresh a training step does not have.
    pub sampling_secs: f64,
    /// `refresh_secs / step_secs`.
    pub refresh_to_step: f64,
    /// Share of wall time spent refreshing at `k = 10`: `r / (10 + r)` with `r = refresh_to_step`.
    pub refresh_overhead_k10: f64,
}

/// The JSON written by `bench throughput`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThroughputReport {
    /// Where it ran.
    pub machine: Machine,
    /// Peak f32 matmul rate measured on the backend, GFLOP/s.
    pub peak_matmul_gflops: f64,
    /// Side of the square matrices of the peak measurement.
    pub peak_matmul_size: usize,
    /// Timed repetitions per figure (after one warm-up).
    pub repetitions: usize,
    /// One entry per preset.
    pub entries: Vec<ThroughputEntry>,
}

/// FLOPs of training on one token: `6·N + 12·L·C·T` (nanoGPT's `estimate_mfu`).
pub fn flops_per_token(model: &Gpt2) -> f64 {
    let c = model.config();
    let non_position = model.num_params() - if c.rope { 0 } else { c.block_size * c.n_embd };
    6.0 * non_position as f64 + 12.0 * (c.n_layer * c.n_embd * c.block_size) as f64
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Best rate of an `n × n` by `n × n` f32 matmul on `device` (no autodiff), GFLOP/s.
pub fn peak_matmul_gflops(device: &Device, n: usize, repetitions: usize) -> f64 {
    let device = device.clone().inner();
    let a = Tensor::<2>::random([n, n], Distribution::Normal(0.0, 1.0), &device);
    let b = Tensor::<2>::random([n, n], Distribution::Normal(0.0, 1.0), &device);
    let mut best = f64::INFINITY;
    for round in 0..=repetitions {
        let started = Instant::now();
        let _ = a.clone().matmul(b.clone()).narrow(0, 0, 1).narrow(1, 0, 1).into_scalar::<f32>();
        if round > 0 {
            best = best.min(started.elapsed().as_secs_f64());
        }
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// Measure `presets` at `batch × block` tokens per step.
pub fn run(presets: &[&str], batch: usize, block: usize, repetitions: usize, device: &Device, backend: &str, progress: &mut dyn FnMut(&str)) -> Result<ThroughputReport, BenchError> {
    let v = sophia_optim::Validator::new("bench throughput");
    v.at_least_one("repetitions", repetitions)?;
    v.at_least_one("batch", batch)?;
    v.at_least_one("block", block)?;
    let peak_size = 1024;
    let peak = peak_matmul_gflops(device, peak_size, repetitions);
    progress(&format!("peak matmul ({peak_size}³, f32): {peak:.1} GFLOP/s"));
    let mut entries = Vec::new();
    for &preset in presets {
        let config = |optimizer: OptimizerKind| TrainConfig { optimizer: optimizer.default_config(), preset: preset.into(), block_size: Some(block), batch_size: batch, ..TrainConfig::default() };
        let model_config = config(OptimizerKind::AdamW).model_config()?;
        let mut model = Gpt2::new(&model_config, device, 0)?;
        let synthetic = crate::synthetic_batch(batch, block, model_config.vocab_size);
        let (inputs, _) = tensors(&synthetic, device);
        let mut adamw = RunOptimizer::new(&config(OptimizerKind::AdamW), &model, batch * block)?;
        let mut sophia = RunOptimizer::new(&config(OptimizerKind::SophiaG), &model, batch * block)?;
        let (adamw_step, sophia_step) = (TrainingStep::new(&config(OptimizerKind::AdamW), device)?, TrainingStep::new(&config(OptimizerKind::SophiaG), device)?);
        let refresh_batch = crate::fixed_refresh_batch(synthetic.clone());
        let mut estimator = sophia_step.estimator(&refresh_batch)?;
        let (mut steps, mut refreshes, mut forwards, mut samplings) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let sampler = SampledLabelHessian::new(0);
        for round in 0..=repetitions {
            let started = Instant::now();
            let logits = model.forward(inputs.clone())?;
            let _ = logits.clone().narrow(0, 0, 1).narrow(1, 0, 1).narrow(2, 0, 1).into_scalar::<f32>();
            let forward = started.elapsed().as_secs_f64();
            let started = Instant::now();
            let _ = sampler.sample_labels(logits, round as u64).narrow(0, 0, 1).narrow(1, 0, 1).into_scalar::<i64>();
            let sampling = started.elapsed().as_secs_f64();
            let started = Instant::now();
            model = crate::training_step(&adamw_step, model, &mut adamw, 1e-4, synthetic.clone(), None)?;
            crate::sync(&model);
            let step = started.elapsed().as_secs_f64();
            let started = Instant::now();
            model = crate::hessian_refresh(model, &mut sophia, estimator.as_mut())?;
            crate::sync(&model);
            if round > 0 {
                steps.push(step);
                refreshes.push(started.elapsed().as_secs_f64());
                forwards.push(forward);
                samplings.push(sampling);
            }
        }
        let (step_secs, refresh_secs) = (median(steps), median(refreshes));
        let flops = flops_per_token(&model);
        let tokens_per_sec = (batch * block) as f64 / step_secs;
        let achieved = flops * tokens_per_sec / 1e9;
        let ratio = refresh_secs / step_secs;
        progress(&format!("{preset}: {tokens_per_sec:.0} tokens/s, MFU {:.1}%, refresh {ratio:.2} steps", 100.0 * achieved / peak));
        entries.push(ThroughputEntry {
            preset: preset.into(),
            parameters: model.num_params(),
            batch_tokens: batch * block,
            block_size: block,
            flops_per_token: flops,
            step_secs,
            tokens_per_sec,
            achieved_gflops: achieved,
            mfu: achieved / peak,
            refresh_secs,
            forward_secs: median(forwards),
            sampling_secs: median(samplings),
            refresh_to_step: ratio,
            refresh_overhead_k10: ratio / (10.0 + ratio),
        });
    }
    Ok(ThroughputReport { machine: Machine::detect(backend), peak_matmul_gflops: peak, peak_matmul_size: peak_size, repetitions, entries })
}

/// Write the report as JSON and plot it.
pub fn write(report: &ThroughputReport, json: &Path) -> Result<(), BenchError> {
    crate::write_json(json, report)?;
    plot(report, &json.with_extension(""))
}

/// Tokens/s and MFU against model size; refresh cost in training steps.
pub fn plot(report: &ThroughputReport, stem: &Path) -> Result<(), BenchError> {
    let line = |label: &str, value: fn(&ThroughputEntry) -> f64| Series {
        label: label.into(),
        points: report.entries.iter().map(|e| (e.parameters as f64 / 1e6, value(e))).collect(),
    };
    let panel = |title: String, y_label: &str, series| Panel { title, x_label: "parameters (millions)".into(), y_label: y_label.into(), log_y: false, series };
    Ok(sophia_train::plot::draw(
        stem,
        &[
            panel(format!("Training throughput ({})", report.machine.backend), "tokens/s", vec![line("tokens/s", |e| e.tokens_per_sec)]),
            panel(format!("MFU (peak {:.0} GFLOP/s)", report.peak_matmul_gflops), "% of peak matmul", vec![line("MFU", |e| 100.0 * e.mfu)]),
            panel("SophiaG refresh cost".into(), "training steps", vec![line("refresh / step", |e| e.refresh_to_step)]),
        ],
    )?)
}
