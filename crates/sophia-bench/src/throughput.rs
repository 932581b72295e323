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
use sophia_gpt2::{Gpt2, Kernels, SampledLabelHessian};
use sophia_train::plot::{Panel, Series};
use sophia_train::train::{OptimizerKind, RunOptimizer, TrainConfig, TrainingStep, tensors};

use crate::BenchError;
use crate::machine::Machine;

/// One preset's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThroughputEntry {
    /// Model preset.
    pub preset: String,
    /// The model's kernels (fused where the backend has them, or composed).
    pub kernels: Kernels,
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
    /// Median seconds of drawing labels from the forward pass's logits on their own (inverse CDF
    /// over the vocabulary, `sample_labels_with`): the draw a composed refresh makes as a separate
    /// pass, and the fused refresh inside its LM head and loss kernel.
    pub sampling_secs: f64,
    /// `refresh_secs / step_secs`.
    pub refresh_to_step: f64,
    /// Where the time of a training step goes (medians, seconds).
    pub profile: StepProfile,
    /// Minor page faults per training step (the allocator faulting fresh memory in), over the
    /// timed steps.
    pub minor_faults_per_step: f64,
    /// Share of wall time spent refreshing at `k = 10`: `r / (10 + r)` with `r = refresh_to_step`.
    pub refresh_overhead_k10: f64,
}

/// The time of one training step, stage by stage (medians over the repetitions, seconds). The
/// stages are timed one after the other on the same batch, each ending with a device sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepProfile {
    /// Forward pass of the blocks (embedding, attention, MLP, final LayerNorm): the forward
    /// pass minus the LM head.
    pub blocks_forward_secs: f64,
    /// The LM head and the loss as a training step computes them (`Gpt2::loss`, through
    /// `linear_cross_entropy_with`; with the fused kernels one operation over chunks of the
    /// vocabulary), forward alone; 0 in reports written before it was measured.
    #[serde(default)]
    pub head_loss_forward_secs: f64,
    /// Its backward alone (from the loss to the hidden states and the head's weight).
    #[serde(default)]
    pub head_loss_backward_secs: f64,
    /// The LM head's matrix product `[tokens, C] × [C, vocab]` alone, the logits materialised
    /// (the refresh's label draw, bf16 products or a logit soft-cap, and generation).
    pub head_secs: f64,
    /// Cross-entropy forward on materialised logits (log-softmax over the vocabulary and the
    /// gather).
    pub loss_forward_secs: f64,
    /// Cross-entropy backward on materialised logits alone (from the loss to the logits).
    pub loss_backward_secs: f64,
    /// The whole backward pass (loss to every parameter).
    pub backward_secs: f64,
    /// Global-norm clipping and the optimizer's update (AdamW).
    pub clip_and_update_secs: f64,
}

/// The JSON written by `bench throughput`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThroughputReport {
    /// Where it ran.
    pub machine: Machine,
    /// Peak f32 matrix-product rate of the model's layers on the backend (the fused product
    /// where the backend has one), GFLOP/s.
    pub peak_matmul_gflops: f64,
    /// The same with the backend's own matmul (Burn's composed `linear`), GFLOP/s; 0 in reports
    /// written before it was measured.
    #[serde(default)]
    pub backend_matmul_gflops: f64,
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

/// Timed products of the peak measurement, at least: a 1024³ product takes about 15 ms on two
/// cores, and the best of five of them on a shared machine missed its rate by up to a third
/// (training steps then reached more than 100% of the "peak").
const PEAK_ROUNDS: usize = 20;

/// Best rates of an `n × n` by `n × n` f32 matrix product on `device` (no autodiff) with each of
/// the implementations `kernels` asks for (the one the model's layers use, the backend's own),
/// GFLOP/s in the same order. The products alternate between the implementations round by
/// round, so that a slow spell of a shared machine hits them alike (measured one after the
/// other, the same kernel came out at 172 and 89 GFLOP/s in one run).
pub fn peak_matmul_gflops<const K: usize>(device: &Device, n: usize, repetitions: usize, kernels: [Kernels; K]) -> [f64; K] {
    let device = device.clone().inner();
    let a = Tensor::<2>::random([n, n], Distribution::Normal(0.0, 1.0), &device);
    let b = Tensor::<2>::random([n, n], Distribution::Normal(0.0, 1.0), &device);
    let mut best = [f64::INFINITY; K];
    for round in 0..=repetitions {
        for (best, kernels) in best.iter_mut().zip(kernels) {
            let started = Instant::now();
            let _ = sophia_gpt2::product::product_with(kernels, a.clone(), b.clone()).narrow(0, 0, 1).narrow(1, 0, 1).into_scalar::<f32>();
            if round > 0 {
                *best = best.min(started.elapsed().as_secs_f64());
            }
        }
    }
    best.map(|secs| 2.0 * (n as f64).powi(3) / secs / 1e9)
}

/// Measure `presets` at `batch × block` tokens per step.
#[allow(clippy::too_many_arguments, reason = "the bench's command-line options, each a plain value")]
pub fn run(
    presets: &[&str],
    kernels: &[Kernels],
    batch: usize,
    block: usize,
    repetitions: usize,
    device: &Device,
    backend: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<ThroughputReport, BenchError> {
    let v = sophia_optim::Validator::new("bench throughput");
    v.at_least_one("repetitions", repetitions)?;
    v.at_least_one("batch", batch)?;
    v.at_least_one("block", block)?;
    let peak_size = 1024;
    let peak_rounds = repetitions.max(PEAK_ROUNDS);
    let [peak, backend_peak] = peak_matmul_gflops(device, peak_size, peak_rounds, [Kernels::Fused, Kernels::Composed]);
    progress(&format!("peak matmul ({peak_size}³, f32): {peak:.1} GFLOP/s (the backend's own matmul: {backend_peak:.1})"));
    let mut entries = Vec::new();
    for (&preset, &kernels) in presets.iter().flat_map(|p| kernels.iter().map(move |k| (p, k))) {
        let config = |optimizer: OptimizerKind| TrainConfig {
            optimizer: optimizer.default_config(),
            preset: preset.into(),
            block_size: Some(block),
            batch_size: batch,
            kernels,
            ..TrainConfig::default()
        };
        let model_config = config(OptimizerKind::AdamW).model_config()?;
        let mut model = Gpt2::new(&model_config, device, 0)?.with_kernels(kernels);
        let synthetic = crate::synthetic_batch(batch, block, model_config.vocab_size);
        let (inputs, _) = tensors(&synthetic, device);
        let mut adamw = RunOptimizer::new(&config(OptimizerKind::AdamW), &model, batch * block)?;
        let mut sophia = RunOptimizer::new(&config(OptimizerKind::SophiaG), &model, batch * block)?;
        let (adamw_step, sophia_step) = (TrainingStep::new(&config(OptimizerKind::AdamW), device)?, TrainingStep::new(&config(OptimizerKind::SophiaG), device)?);
        let refresh_batch = crate::fixed_refresh_batch(&config(OptimizerKind::SophiaG), &synthetic);
        let mut estimator = sophia_step.estimator(&refresh_batch)?;
        let (mut steps, mut refreshes, mut forwards, mut samplings) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let sampler = SampledLabelHessian::new(0);
        let mut faults = 0.0;
        for round in 0..=repetitions {
            let started = Instant::now();
            let logits = model.forward(inputs.clone())?;
            let _ = logits.clone().narrow(0, 0, 1).narrow(1, 0, 1).narrow(2, 0, 1).into_scalar::<f32>();
            let forward = started.elapsed().as_secs_f64();
            let started = Instant::now();
            let _ = sampler.sample_labels_with(kernels, logits, round as u64).narrow(0, 0, 1).narrow(1, 0, 1).into_scalar::<i64>();
            let sampling = started.elapsed().as_secs_f64();
            let (started, faults_before) = (Instant::now(), minor_faults());
            model = crate::training_step(&adamw_step, model, &mut adamw, 1e-4, synthetic.clone(), None)?;
            crate::sync(&model);
            let step = started.elapsed().as_secs_f64();
            if round > 0 {
                faults += (minor_faults() - faults_before) as f64;
            }
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
        let profile = profile(&model, &mut adamw, &synthetic, repetitions, device)?;
        let flops = flops_per_token(&model);
        let tokens_per_sec = (batch * block) as f64 / step_secs;
        let achieved = flops * tokens_per_sec / 1e9;
        let ratio = refresh_secs / step_secs;
        progress(&format!("{preset} ({kernels:?} kernels): {tokens_per_sec:.0} tokens/s, MFU {:.1}%, refresh {ratio:.2} steps", 100.0 * achieved / peak));
        entries.push(ThroughputEntry {
            preset: preset.into(),
            kernels,
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
            profile,
            minor_faults_per_step: faults / repetitions as f64,
        });
    }
    Ok(ThroughputReport {
        machine: Machine::detect(backend),
        peak_matmul_gflops: peak,
        backend_matmul_gflops: backend_peak,
        peak_matmul_size: peak_size,
        repetitions,
        entries,
    })
}

/// Minor page faults of this process so far (0 where the platform does not say).
fn minor_faults() -> i64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 { usage.ru_minflt } else { 0 }
}

/// The stages of a training step of `model` on `batch`, timed one after the other.
fn profile(model: &Gpt2, optimizer: &mut RunOptimizer, batch: &sophia_train::data::Batch, repetitions: usize, device: &Device) -> Result<StepProfile, BenchError> {
    let config = model.config();
    let (inputs, targets) = tensors(batch, device);
    let tokens = batch.batch_size * batch.block_size;
    let inner = device.clone().inner();
    let hidden = Tensor::<2>::random([tokens, config.n_embd], Distribution::Normal(0.0, 1.0), &inner);
    let head = model.wte.weight.val().inner();
    let read = |t: Tensor<1>| t.into_scalar::<f64>();
    let hidden_leaf = hidden.clone().autodiff().require_grad();
    let flat_targets = targets.clone().reshape([tokens]);
    let (mut forward, mut head_t, mut loss_f, mut loss_b, mut backward, mut update) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut head_loss_f, mut head_loss_b) = (vec![], vec![]);
    let mut model = model.clone();
    for round in 0..=repetitions {
        let time = |f: &mut dyn FnMut()| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64()
        };
        let mut logits = None;
        let f = time(&mut || {
            let out = model.forward(inputs.clone()).expect("the batch fits the model");
            let _ = out.clone().narrow(0, 0, 1).narrow(1, 0, 1).narrow(2, 0, 1).into_scalar::<f32>();
            logits = Some(out);
        });
        let h = time(&mut || {
            let _ = model.precision().product(model.kernels(), hidden.clone(), head.clone().transpose()).narrow(0, 0, 1).narrow(1, 0, 1).into_scalar::<f32>();
        });
        // The loss on leaf logits: its forward and backward alone.
        let leaf = logits.take().expect("timed above").detach().require_grad();
        let mut loss = None;
        let lf = time(&mut || {
            let value = sophia_gpt2::loss::cross_entropy_with(model.kernels(), leaf.clone(), targets.clone());
            let _ = read(value.clone());
            loss = Some(value);
        });
        let lb = time(&mut || {
            let grads = loss.take().expect("timed above").backward();
            let _ = leaf.grad(&grads).map(|g| g.narrow(0, 0, 1).narrow(1, 0, 1).narrow(2, 0, 1).into_scalar::<f32>());
        });
        // The LM head and the loss as the training step runs them, on leaf hidden states.
        let mut head_loss = None;
        let hlf = time(&mut || {
            let value = sophia_gpt2::loss::linear_cross_entropy_with(model.kernels(), hidden_leaf.clone(), model.wte.weight.val(), flat_targets.clone());
            let _ = read(value.clone());
            head_loss = Some(value);
        });
        let hlb = time(&mut || {
            let grads = head_loss.take().expect("timed above").backward();
            let _ = hidden_leaf.grad(&grads).map(|g| g.narrow(0, 0, 1).narrow(1, 0, 1).into_scalar::<f32>());
        });
        // The whole backward, then clipping and the update.
        let full = model.loss(inputs.clone(), targets.clone())?;
        let _ = read(full.clone());
        let mut grads = None;
        let b = time(&mut || {
            let g = burn::optim::GradientsParams::from_grads(full.clone().backward(), &model);
            let _ = g.get::<1>(model.ln_f.gamma.id).map(|g| g.narrow(0, 0, 1).into_scalar::<f32>());
            grads = Some(g);
        });
        let started = Instant::now();
        let (grads, _) = sophia_optim::GlobalNormClip::new(1.0)?.clip(&model, grads.take().expect("timed above"));
        model = optimizer.step(1e-4, model, grads, None)?;
        crate::sync(&model);
        let u = started.elapsed().as_secs_f64();
        if round > 0 {
            forward.push(f);
            head_t.push(h);
            loss_f.push(lf);
            loss_b.push(lb);
            head_loss_f.push(hlf);
            head_loss_b.push(hlb);
            backward.push(b);
            update.push(u);
        }
    }
    let forward = median(forward);
    let head_secs = median(head_t);
    Ok(StepProfile {
        blocks_forward_secs: (forward - head_secs).max(0.0),
        head_loss_forward_secs: median(head_loss_f),
        head_loss_backward_secs: median(head_loss_b),
        head_secs,
        loss_forward_secs: median(loss_f),
        loss_backward_secs: median(loss_b),
        backward_secs: median(backward),
        clip_and_update_secs: median(update),
    })
}

/// Write the report as JSON and plot it.
pub fn write(report: &ThroughputReport, json: &Path) -> Result<(), BenchError> {
    crate::write_json(json, report)?;
    plot(report, &json.with_extension(""))
}

/// Tokens/s and MFU against model size; refresh cost in training steps.
pub fn plot(report: &ThroughputReport, stem: &Path) -> Result<(), BenchError> {
    let line = |label: &str, value: fn(&ThroughputEntry) -> f64| Series::line(label, report.entries.iter().map(|e| (e.parameters as f64 / 1e6, value(e))).collect());
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
