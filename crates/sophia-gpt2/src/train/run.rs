//! The training loop, top to bottom: data, model, optimizer, the step (with Sophia's Hessian
//! refresh), evaluation, logging, checkpoints, plots and the summary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use sophia_optim::{GlobalNormClip, Hutchinson, WarmupCosineConfig, global_norm};

use super::checkpoint::{CheckpointError, CheckpointState, Checkpoints};
use super::config::{NonFinitePolicy, OptimizerKind, TrainConfig};
use super::metrics::{self, MetricRecord, MetricsLog};
use super::optimizer::RunOptimizer;
use crate::data::{Batch, BatchSampler, DataError, Gpt2Tokenizer, TokenFile, prepare};
use crate::generate::GenerateOptions;
use crate::hessian::SampledLabelHessian;
use crate::model::Gpt2;
use crate::plot::{self, Panel, Series};
use crate::ModelError;

/// Batch streams: training, Hessian refresh and evaluation batches never share windows by
/// construction, and each is a pure function of its index.
const STREAM_TRAIN: u64 = 0;
const STREAM_HESSIAN: u64 = 1;
const STREAM_EVAL_VAL: u64 = 2;
const STREAM_EVAL_TRAIN: u64 = 3;

/// Why a run stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting is invalid.
    #[error("invalid training config: {0}")]
    Config(String),
    /// The corpus or token files.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Checkpoints.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Files of the run directory.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The loss or gradient became NaN or infinite.
    #[error("{what} is {value} at step {step}: training diverged. {checkpoint} Lower the learning rate, raise warmup, or set on_nonfinite = \"skip\".")]
    NonFinite {
        /// Step at which it happened.
        step: usize,
        /// Loss or gradient norm.
        what: &'static str,
        /// The value.
        value: f64,
        /// Where the last good checkpoint is.
        checkpoint: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

/// How a run is driven (not part of its config).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the run's latest checkpoint.
    pub resume: bool,
    /// Show a progress bar (otherwise log lines go to stderr).
    pub progress_bar: bool,
    /// Stop after this many completed steps without finishing the run, as if the process had
    /// been killed right after that step (tests of exact resumption).
    pub stop_after: Option<usize>,
}

/// What a finished run reports (also written to `summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Optimizer.
    pub optimizer: String,
    /// Model parameters.
    pub parameters: usize,
    /// Steps completed.
    pub steps: usize,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Training wall time, seconds.
    pub seconds: f64,
    /// Mean training throughput.
    pub tokens_per_sec: f64,
    /// Validation loss at the end.
    pub final_val_loss: f64,
    /// Best validation loss seen.
    pub best_val_loss: f64,
    /// The corpus' unigram baseline (a model that ignores context).
    pub unigram_val_loss: f64,
    /// Hessian refreshes run.
    pub refreshes: u64,
    /// Share of wall time spent in Hessian refreshes.
    pub hessian_time_fraction: f64,
    /// Win rate at the last log (Sophia).
    pub final_win_rate: Option<f64>,
}

/// Train a GPT-2 as `config` says; see the module docs.
pub fn train(config: &TrainConfig, options: &RunOptions) -> Result<TrainSummary, TrainError> {
    // ---- Settings, device, data ---------------------------------------------------------
    config.validate().map_err(TrainError::Config)?;
    let model_config = config.model_config()?;
    let device: Device = config.backend.device().map_err(TrainError::Config)?.autodiff();
    config.precision.check_device(&device).map_err(TrainError::Config)?;
    let say = |line: &str| eprintln!("{line}");
    let data = prepare(&config.data, &config.data_dir, config.val_fraction, &mut |line| say(line))?;
    let (train_tokens, val_tokens) = (data.train()?, data.val()?);
    let block = model_config.block_size;
    let sampler = BatchSampler::new(config.seed, config.batch_size, block);
    let hessian_sampler = BatchSampler::new(config.seed, config.hessian_batch_size(), block);
    sampler.check(&train_tokens, "train split")?;
    sampler.check(&val_tokens, "val split")?;
    let tokens_per_step = config.tokens_per_step(block);

    // ---- Run directory, model, optimizer, checkpoint -------------------------------------
    let run_dir = config.out_dir.join(&config.name);
    let checkpoints = Checkpoints::new(&run_dir, config.keep_checkpoints);
    if !options.resume && run_dir.join("checkpoints").join("latest").exists() {
        return Err(TrainError::Config(format!(
            "{} already holds a run; pass --resume to continue it, or choose another --name",
            run_dir.display()
        )));
    }
    std::fs::create_dir_all(&run_dir).map_err(io_err(&run_dir))?;
    let config_path = run_dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(config).expect("config serializes")).map_err(io_err(&config_path))?;

    let mut model = Gpt2::new(&model_config, &device, config.seed)?.with_precision(config.precision);
    let mut optimizer = RunOptimizer::new(config, &model, tokens_per_step).map_err(TrainError::Config)?;
    let (mut start, mut tokens, mut elapsed_before, mut refreshes_before) = (0, 0u64, 0.0, 0);
    if options.resume {
        let (loaded, record, state) = checkpoints.load_latest(config, &model_config, &data.meta, model)?;
        model = loaded;
        optimizer = optimizer.load_record(record);
        (start, tokens, elapsed_before, refreshes_before) = (state.step, state.tokens, state.elapsed_secs, state.refreshes);
        say(&format!("resuming {} at step {start}", run_dir.display()));
    }
    let log = MetricsLog::open(&run_dir, options.resume.then_some(start)).map_err(io_err(&run_dir))?;
    let schedule = WarmupCosineConfig::new(config.lr, config.warmup_steps, config.max_steps)
        .with_min_lr(config.min_lr)
        .try_init()
        .map_err(|e| TrainError::Config(e.to_string()))?;
    let clip = (config.grad_clip > 0.0)
        .then(|| GlobalNormClip::new(config.grad_clip))
        .transpose()
        .map_err(|e| TrainError::Config(e.to_string()))?;
    let labels = SampledLabelHessian::new(config.seed);
    let hutchinson = Hutchinson::new(config.hutchinson_epsilon, config.seed).map_err(|e| TrainError::Config(e.to_string()))?;
    say(&format!(
        "{} parameters, {} optimizer, {tokens_per_step} tokens/step, {} steps, backend {} ({}); unigram baseline {:.3}",
        model.num_params(),
        config.optimizer,
        config.max_steps,
        config.backend,
        config.precision,
        data.meta.unigram_val_loss
    ));

    let bar = progress_bar(options.progress_bar, config.max_steps, start);
    let clock = Instant::now();
    let (mut hessian_secs, mut last_log) = (0.0, (clock.elapsed().as_secs_f64(), tokens));
    let (mut best_val, mut final_val, mut final_win_rate) = (f64::INFINITY, f64::NAN, None);
    let elapsed = |clock: &Instant| elapsed_before + clock.elapsed().as_secs_f64();

    // ---- The loop ------------------------------------------------------------------------
    for step in start..config.max_steps {
        let lr = schedule.lr_at(step);
        let logging = (step + 1) % config.log_interval == 0 || step + 1 == config.max_steps;
        optimizer.collect_stats(logging);

        // SophiaH refreshes before the update (paper, Algorithm 3).
        if config.optimizer == OptimizerKind::SophiaH
            && let Some(sophia) = optimizer.sophia()
            && sophia.refresh_due(step)
        {
            let started = Instant::now();
            let batch = hessian_sampler.batch(&train_tokens, STREAM_HESSIAN, step as u64);
            let (inputs, targets) = tensors(&batch, &device);
            let estimate = hutchinson.estimate(&model, step as u64, |m| {
                let loss = m.loss(inputs.clone(), targets.clone()).expect("batch fits the model");
                GradientsParams::from_grads(loss.backward(), m)
            });
            model = sophia.refresh(model, estimate);
            hessian_secs += started.elapsed().as_secs_f64();
        }

        // Forward and backward over the micro-batches; the loss is averaged.
        let mut accumulator = GradientsAccumulator::new();
        let mut train_loss = 0.0;
        for micro in 0..config.grad_accum {
            let index = (step * config.grad_accum + micro) as u64;
            let (inputs, targets) = tensors(&sampler.batch(&train_tokens, STREAM_TRAIN, index), &device);
            let loss = model.loss(inputs, targets)?.div_scalar(config.grad_accum as f64);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            train_loss += loss.into_scalar::<f64>();
            accumulator.accumulate(&model, grads);
        }
        let (grads, norm) = match &clip {
            Some(clip) => clip.clip(&model, accumulator.grads()),
            None => {
                let grads = accumulator.grads();
                let norm = global_norm(&model, &grads);
                (grads, norm)
            }
        };

        // NaN/Inf: stop with the last checkpoint intact, or skip the update.
        let bad = if !train_loss.is_finite() {
            Some(("the training loss", train_loss))
        } else if !norm.is_finite() {
            Some(("the gradient norm", norm.total_norm))
        } else {
            None
        };
        if let Some((what, value)) = bad {
            match config.on_nonfinite {
                NonFinitePolicy::Stop => {
                    bar.finish_and_clear();
                    let latest = std::fs::read_to_string(run_dir.join("checkpoints/latest"))
                        .map(|n| format!("The last good checkpoint is {}.", run_dir.join("checkpoints").join(n.trim()).display()))
                        .unwrap_or_else(|_| "No checkpoint was written yet.".into());
                    return Err(TrainError::NonFinite { step, what, value, checkpoint: latest });
                }
                NonFinitePolicy::Skip => {
                    emit(&bar, format!("step {}: {what} is {value}; update skipped", step + 1));
                    let record = record("train", step + 1, tokens, elapsed(&clock), lr);
                    log.append(&MetricRecord { skipped: true, ..record }).map_err(io_err(log.path()))?;
                    bar.inc(1);
                    continue;
                }
            }
        }

        model = optimizer.step(lr, model, grads);
        tokens += tokens_per_step as u64;

        // SophiaG refreshes after every k-th update, on a fresh batch (official loop).
        if config.optimizer == OptimizerKind::SophiaG
            && let Some(sophia) = optimizer.sophia()
            && sophia.refresh_due(step + 1)
        {
            let started = Instant::now();
            let batch = hessian_sampler.batch(&train_tokens, STREAM_HESSIAN, step as u64);
            let (inputs, _) = tensors(&batch, &device);
            let sampled = labels.gradients(&model, inputs, step as u64)?;
            let ghat = match (&clip, config.clip_hessian_grad) {
                (Some(clip), true) => clip.clip(&model, sampled.grads).0,
                _ => sampled.grads,
            };
            model = sophia.refresh(model, ghat);
            hessian_secs += started.elapsed().as_secs_f64();
        }

        // Logging.
        let done = step + 1;
        if logging {
            let now = elapsed(&clock);
            let stats = optimizer.stats();
            let tokens_per_sec = (tokens - last_log.1) as f64 / (clock.elapsed().as_secs_f64() - last_log.0).max(1e-9);
            last_log = (clock.elapsed().as_secs_f64(), tokens);
            final_win_rate = stats.and_then(|s| s.win_rate);
            let entry = MetricRecord {
                train_loss: Some(train_loss),
                grad_norm: Some(norm.total_norm),
                win_rate: final_win_rate,
                hessian_mean: stats.and_then(|s| s.hessian_mean),
                tokens_per_sec: Some(tokens_per_sec),
                ..record("train", done, tokens, now, lr)
            };
            log.append(&entry).map_err(io_err(log.path()))?;
            let win = final_win_rate.map(|w| format!("  win {w:.3}")).unwrap_or_default();
            let line = format!("step {done:>5}  loss {train_loss:.4}  lr {lr:.2e}  |g| {:.3}  {tokens_per_sec:.0} tok/s{win}", norm.total_norm);
            if bar.is_hidden() {
                say(&line);
            } else {
                bar.set_message(line);
            }
        }

        // Evaluation and samples.
        if done % config.eval_interval == 0 || done == config.max_steps {
            let eval_model = model.valid();
            let val = mean_loss(&eval_model, &sampler, &val_tokens, STREAM_EVAL_VAL, config.eval_batches, &device)?;
            let train_eval = mean_loss(&eval_model, &sampler, &train_tokens, STREAM_EVAL_TRAIN, config.eval_batches, &device)?;
            best_val = best_val.min(val);
            final_val = val;
            let entry = MetricRecord { train_loss: Some(train_eval), val_loss: Some(val), ..record("eval", done, tokens, elapsed(&clock), lr) };
            log.append(&entry).map_err(io_err(log.path()))?;
            emit(&bar, format!("step {done:>5}  eval: train {train_eval:.4}  val {val:.4}  (unigram {:.3})", data.meta.unigram_val_loss));
            if config.sample_tokens > 0 {
                let text = sample_text(&eval_model, config, done as u64)?;
                emit(&bar, format!("---- sample at step {done} ----\n{text}\n----"));
                let path = run_dir.join("samples.txt");
                let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
                writeln!(file, "==== step {done} ====\n{text}").map_err(io_err(&path))?;
            }
        }

        // Checkpoint.
        if done % config.checkpoint_interval == 0 || done == config.max_steps {
            let state = CheckpointState {
                step: done,
                tokens,
                elapsed_secs: elapsed(&clock),
                refreshes: refreshes_before + optimizer.refreshes(),
                config: config.clone(),
                model: model_config.clone(),
                data_sha256: data.meta.text_sha256.clone(),
            };
            checkpoints.save(&model, optimizer.to_record(), &state)?;
        }
        bar.inc(1);
        if options.stop_after == Some(done) {
            bar.finish_and_clear();
            return Err(TrainError::Config(format!("stopped after step {done} as asked (stop_after)")));
        }
    }
    bar.finish_and_clear();

    // ---- Results -------------------------------------------------------------------------
    let seconds = elapsed(&clock);
    let train_secs = clock.elapsed().as_secs_f64();
    let model_path = run_dir.join("model.safetensors");
    model.save_safetensors(&model_path)?;
    let summary = TrainSummary {
        run_dir: run_dir.clone(),
        optimizer: config.optimizer.to_string(),
        parameters: model.num_params(),
        steps: config.max_steps,
        tokens,
        seconds,
        tokens_per_sec: tokens as f64 / seconds.max(1e-9),
        final_val_loss: final_val,
        best_val_loss: best_val,
        unigram_val_loss: data.meta.unigram_val_loss,
        refreshes: refreshes_before + optimizer.refreshes(),
        hessian_time_fraction: if train_secs > 0.0 { hessian_secs / train_secs } else { 0.0 },
        final_win_rate,
    };
    let summary_path = run_dir.join("summary.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&summary).expect("summary serializes")).map_err(io_err(&summary_path))?;
    if config.plots {
        plot_run(&run_dir, log.path()).map_err(TrainError::Config)?;
    }
    Ok(summary)
}

fn record(kind: &str, step: usize, tokens: u64, time: f64, lr: f64) -> MetricRecord {
    MetricRecord {
        kind: kind.into(),
        step,
        tokens,
        time,
        lr,
        train_loss: None,
        val_loss: None,
        grad_norm: None,
        win_rate: None,
        hessian_mean: None,
        tokens_per_sec: None,
        skipped: false,
    }
}

/// A batch as `[batch, block]` input and target tensors.
pub(crate) fn tensors(batch: &Batch, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let shape = [batch.batch_size, batch.block_size];
    (
        Tensor::from_data(TensorData::new(batch.inputs.clone(), shape), device),
        Tensor::from_data(TensorData::new(batch.targets.clone(), shape), device),
    )
}

/// Mean loss of `model` over `batches` fixed batches of `stream`.
fn mean_loss(model: &Gpt2, sampler: &BatchSampler, tokens: &TokenFile, stream: u64, batches: usize, device: &Device) -> Result<f64, TrainError> {
    let device = device.clone().inner();
    let mut total = 0.0;
    for index in 0..batches {
        let (inputs, targets) = tensors(&sampler.batch(tokens, stream, index as u64), &device);
        total += model.loss(inputs, targets)?.into_scalar::<f64>();
    }
    Ok(total / batches as f64)
}

fn sample_text(model: &Gpt2, config: &TrainConfig, seed: u64) -> Result<String, TrainError> {
    let tokenizer = Gpt2Tokenizer::new();
    let prompt = tokenizer.encode(&config.sample_prompt);
    let prompt = if prompt.is_empty() { vec![crate::data::END_OF_TEXT] } else { prompt };
    let options = GenerateOptions { max_new_tokens: config.sample_tokens, seed, ..GenerateOptions::default() };
    let new = model.generate(&prompt, &options)?;
    Ok(format!("{}{}", config.sample_prompt, tokenizer.decode(&new)?))
}

/// A line above the progress bar, or on stderr when there is no bar.
fn emit(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn progress_bar(visible: bool, steps: usize, start: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    if visible {
        bar.set_style(
            ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                .expect("valid template"),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_position(start as u64);
    bar
}

/// `training.png` / `training.svg` in the run directory: losses, learning rate, win rate.
pub fn plot_run(run_dir: &Path, metrics_path: &Path) -> Result<(), String> {
    let records = metrics::read(metrics_path).map_err(|e| e.to_string())?;
    let series = |label: &str, kind: &str, value: fn(&MetricRecord) -> Option<f64>| Series {
        label: label.into(),
        points: records.iter().filter(|r| r.kind == kind).filter_map(|r| value(r).map(|v| (r.step as f64, v))).collect(),
    };
    let mut panels = vec![
        Panel {
            title: "Loss".into(),
            x_label: "step".into(),
            y_label: "cross-entropy (nats)".into(),
            log_y: false,
            series: vec![series("train", "train", |r| r.train_loss), series("val", "eval", |r| r.val_loss)],
        },
        Panel {
            title: "Learning rate".into(),
            x_label: "step".into(),
            y_label: "lr".into(),
            log_y: false,
            series: vec![series("lr", "train", |r| Some(r.lr))],
        },
    ];
    let win = series("win rate", "train", |r| r.win_rate);
    if !win.points.is_empty() {
        panels.push(Panel { title: "Sophia win rate".into(), x_label: "step".into(), y_label: "fraction not clipped".into(), log_y: false, series: vec![win] });
    }
    plot::draw(&run_dir.join("training"), &panels)
}
