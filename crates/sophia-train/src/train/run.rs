//! The training loop, top to bottom: data, model, optimizer, the step (with Sophia's Hessian
//! refresh inside the optimizer's own step), evaluation, logging, checkpoints, plots and the
//! summary. [`TrainingStep`] is the step the loop runs, exposed so the benchmarks time it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::DispatchDevice;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sophia_gpt2::{GenerateOptions, Gpt2, SampledLabels};
use sophia_optim::{GlobalNormClip, GradNorm, Hutchinson, Refresh, WarmupCosineConfig, global_norm};

use super::checkpoint::{CheckpointState, Checkpoints};
use super::config::{NonFinitePolicy, OptimizerConfig, TrainConfig};
use super::metrics::{self, MetricRecord, MetricsLog};
use super::optimizer::{RunEstimator, RunOptimizer};
use crate::data::{Batch, BatchSampler, TokenFile, Tokenizer, prepare};
use crate::error::{TrainError, io_err};
use crate::plot::{self, Panel, Series};

/// Batch streams: training, Hessian refresh and evaluation batches never share windows by
/// construction, and each is a pure function of its index.
const STREAM_TRAIN: u64 = 0;
const STREAM_HESSIAN: u64 = 1;
const STREAM_EVAL_VAL: u64 = 2;
const STREAM_EVAL_TRAIN: u64 = 3;

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
    /// Share of wall time spent evaluating the train and validation loss.
    #[serde(default)]
    pub eval_time_fraction: f64,
    /// Share of wall time spent writing the samples of the evaluations.
    #[serde(default)]
    pub sample_time_fraction: f64,
    /// Share of wall time spent writing checkpoints.
    #[serde(default)]
    pub checkpoint_time_fraction: f64,
    /// Win rate at the last log (Sophia).
    pub final_win_rate: Option<f64>,
}

impl TrainSummary {
    /// Seconds spent outside the steps: `[evaluations, samples, checkpoints]`.
    pub fn seconds_outside_steps(&self) -> [f64; 3] {
        [self.eval_time_fraction, self.sample_time_fraction, self.checkpoint_time_fraction].map(|fraction| fraction * self.seconds)
    }
}

/// Hold `run_dir` (created if missing) for this process: an exclusive lock on its `.lock` file,
/// released when the returned file is dropped or the process ends, however it ends. Two
/// processes writing one run's checkpoints and metrics would corrupt each other's.
fn lock_run_dir(run_dir: &Path) -> Result<std::fs::File, TrainError> {
    std::fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
    let path = run_dir.join(".lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(TrainError::RunInUse(run_dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(io_err(&path)(source)),
    }
}

/// Train a GPT-2 as `config` says; see the module docs.
pub fn train(config: &TrainConfig, options: &RunOptions) -> Result<TrainSummary, TrainError> {
    // ---- Settings, device, data ---------------------------------------------------------
    config.validate()?;
    config.model_config()?;
    let device: Device = config.backend.device()?.autodiff();
    config.precision.check_device(&device)?;
    let say = |line: &str| eprintln!("{line}");
    let data = prepare(&config.data, &config.data_dir, config.val_fraction, config.tokenizer(), &mut |line| say(line))?;
    let tokenizer = data.tokenizer()?;
    let model_config = config.model_config_for(&data.meta)?;
    let (train_tokens, val_tokens) = (data.train()?, data.val()?);
    let block = model_config.block_size;
    let sampler = BatchSampler::new(config.seed, config.batch_size, block);
    let hessian_sampler = BatchSampler::new(config.seed, config.hessian_batch_size().unwrap_or(config.batch_size), block);
    sampler.check(&train_tokens, "train split")?;
    sampler.check(&val_tokens, "val split")?;
    let tokens_per_step = config.tokens_per_step(block);

    // ---- Run directory, model, optimizer, checkpoint -------------------------------------
    let run_dir = config.out_dir.join(&config.name);
    let checkpoints = Checkpoints::new(&run_dir, config.keep_checkpoints);
    let _lock = lock_run_dir(&run_dir)?;
    if !options.resume && run_dir.join("checkpoints").join("latest").exists() {
        return Err(TrainError::RunExists(run_dir));
    }
    let mut model = Gpt2::new(&model_config, &device, config.seed)?.with_precision(config.precision).with_kernels(config.kernels);
    let mut optimizer = RunOptimizer::new(config, &model, tokens_per_step)?;
    let (mut start, mut tokens, mut elapsed_before, mut refreshes_before) = (0, 0u64, 0.0, 0);
    if options.resume {
        let resumed = checkpoints.load_latest(config, &model_config, &data.meta, model)?;
        for skipped in &resumed.skipped {
            say(&format!("skipping a checkpoint that does not verify: {skipped}"));
        }
        model = resumed.model;
        optimizer = optimizer.load_record(resumed.optimizer).map_err(|e| super::CheckpointError::Optimizer(e.to_string()))?;
        let state = resumed.state;
        (start, tokens, elapsed_before, refreshes_before) = (state.step, state.tokens, state.elapsed_secs, state.refreshes);
        say(&format!("resuming {} at step {start}", run_dir.display()));
    }
    let config_path = run_dir.join("config.json");
    crate::fs::write_json(&config_path, config).map_err(io_err(&config_path))?;
    let tokenizer_path = run_dir.join("tokenizer.json");
    crate::fs::write_json(&tokenizer_path, &tokenizer.spec()).map_err(io_err(&tokenizer_path))?;
    let log = MetricsLog::open(&run_dir, options.resume.then_some(start)).map_err(io_err(&run_dir))?;
    let schedule = WarmupCosineConfig::new(config.lr, config.warmup_steps, config.max_steps).with_min_lr(config.min_lr).try_init()?;
    let step_fn = TrainingStep::new(config, &device)?;
    let refresh_batch = |refresh: Refresh| hessian_sampler.batch(&train_tokens, STREAM_HESSIAN, refresh.update as u64);
    let mut estimator = step_fn.estimator(&refresh_batch)?;
    say(&format!(
        "{} parameters, {} optimizer, {tokens_per_step} tokens/step, {} steps, backend {} ({}); unigram baseline {:.3}",
        model.num_params(),
        config.optimizer.kind(),
        config.max_steps,
        config.backend,
        config.precision,
        data.meta.unigram_val_loss
    ));

    let bar = progress_bar(options.progress_bar, config.max_steps, start);
    let clock = Instant::now();
    let (mut hessian_secs, mut last_log) = (0.0, (clock.elapsed().as_secs_f64(), tokens));
    // Wall time of this process outside the steps: evaluations, samples, checkpoints.
    let (mut eval_secs, mut sample_secs, mut checkpoint_secs) = (0.0, 0.0, 0.0);
    let (mut best_val, mut final_val, mut final_win_rate) = (f64::INFINITY, f64::NAN, None);
    let elapsed = |clock: &Instant| elapsed_before + clock.elapsed().as_secs_f64();

    // ---- The loop ------------------------------------------------------------------------
    for step in start..config.max_steps {
        let lr = schedule.lr_at(step);
        let logging = (step + 1) % config.log_interval == 0 || step + 1 == config.max_steps;
        optimizer.collect_stats(logging);

        // The step: gradients, clipping, the update (Sophia refreshes inside it when due).
        let micro_batches = (0..config.grad_accum).map(|micro| sampler.batch(&train_tokens, STREAM_TRAIN, (step * config.grad_accum + micro) as u64));
        let refreshes_before_step = optimizer.refreshes();
        let started = Instant::now();
        let outcome = step_fn.run(model, &mut optimizer, lr, micro_batches, estimator.as_mut())?;
        if optimizer.refreshes() > refreshes_before_step {
            hessian_secs += outcome.refresh_secs(started.elapsed().as_secs_f64());
        }
        model = outcome.model;
        let (train_loss, norm) = (outcome.loss, outcome.norm);

        // NaN/Inf: stop with the last checkpoint intact, or skip the update.
        if let Some((what, value)) = outcome.non_finite {
            match config.on_nonfinite {
                NonFinitePolicy::Stop => {
                    bar.finish_and_clear();
                    let latest = checkpoints
                        .latest_verified()
                        .map_or_else(|| "No checkpoint was written yet.".to_string(), |dir| format!("The last good checkpoint is {}.", dir.display()));
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
        tokens += tokens_per_step as u64;

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
                rho: optimizer.scale(),
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
            let started = Instant::now();
            let eval_model = model.valid();
            let eval = |tokens, stream| mean_loss(&eval_model, &sampler, tokens, stream, config.eval_batches, config.shards(), &device);
            let (val, train_eval) = (eval(&val_tokens, STREAM_EVAL_VAL)?, eval(&train_tokens, STREAM_EVAL_TRAIN)?);
            best_val = best_val.min(val);
            final_val = val;
            let entry = MetricRecord { train_loss: Some(train_eval), val_loss: Some(val), ..record("eval", done, tokens, elapsed(&clock), lr) };
            log.append(&entry).map_err(io_err(log.path()))?;
            emit(&bar, format!("step {done:>5}  eval: train {train_eval:.4}  val {val:.4}  (unigram {:.3})", data.meta.unigram_val_loss));
            eval_secs += started.elapsed().as_secs_f64();
            if config.sample_tokens > 0 {
                let started = Instant::now();
                let options = GenerateOptions { max_new_tokens: config.sample_tokens, seed: done as u64, ..GenerateOptions::default() };
                let text = sample_text(&eval_model, &tokenizer, &config.sample_prompt, &options)?;
                emit(&bar, format!("---- sample at step {done} ----\n{text}\n----"));
                let path = run_dir.join("samples.txt");
                let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
                writeln!(file, "==== step {done} ====\n{text}").map_err(io_err(&path))?;
                sample_secs += started.elapsed().as_secs_f64();
            }
        }

        // Checkpoint.
        if done % config.checkpoint_interval == 0 || done == config.max_steps {
            let started = Instant::now();
            let state = CheckpointState {
                step: done,
                tokens,
                elapsed_secs: elapsed(&clock),
                refreshes: refreshes_before + optimizer.refreshes(),
                config: config.clone(),
                model: model_config.clone(),
                data_sha256: data.meta.text_sha256.clone(),
                tokenizer: tokenizer.spec(),
            };
            checkpoints.save(&model, optimizer.to_record(), &state)?;
            checkpoint_secs += started.elapsed().as_secs_f64();
        }
        bar.inc(1);
        if options.stop_after == Some(done) {
            bar.finish_and_clear();
            return Err(TrainError::Stopped(done));
        }
    }
    bar.finish_and_clear();

    // ---- Results -------------------------------------------------------------------------
    let seconds = elapsed(&clock);
    let train_secs = clock.elapsed().as_secs_f64();
    let share = |secs: f64| if train_secs > 0.0 { secs / train_secs } else { 0.0 };
    let model_path = run_dir.join("model.safetensors");
    crate::fs::write_atomic(&model_path, &model.to_safetensors()?).map_err(io_err(&model_path))?;
    let summary = TrainSummary {
        run_dir: run_dir.clone(),
        optimizer: config.optimizer.kind().to_string(),
        parameters: model.num_params(),
        steps: config.max_steps,
        tokens,
        seconds,
        tokens_per_sec: tokens as f64 / seconds.max(1e-9),
        final_val_loss: final_val,
        best_val_loss: best_val,
        unigram_val_loss: data.meta.unigram_val_loss,
        refreshes: refreshes_before + optimizer.refreshes(),
        hessian_time_fraction: share(hessian_secs),
        eval_time_fraction: share(eval_secs),
        sample_time_fraction: share(sample_secs),
        checkpoint_time_fraction: share(checkpoint_secs),
        final_win_rate,
    };
    let summary_path = run_dir.join("summary.json");
    crate::fs::write_json(&summary_path, &summary).map_err(io_err(&summary_path))?;
    if config.plots {
        plot_run(&run_dir, log.path())?;
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
        rho: None,
        tokens_per_sec: None,
        skipped: false,
    }
}

/// A batch as `[batch, block]` input and target tensors.
pub fn tensors(batch: &Batch, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let shape = [batch.batch_size, batch.block_size];
    (Tensor::from_data(TensorData::new(batch.inputs.clone(), shape), device), Tensor::from_data(TensorData::new(batch.targets.clone(), shape), device))
}

/// How many of `passes` independent passes one thread takes: one each on the CPU backends, all
/// of them, one after the other, on a GPU backend. A GPU is one device queue that threads cannot
/// share out, and Burn's fusion keeps one stream of deferred operations per thread: passes from
/// several threads at once read the parameters while the optimizer step that wrote them was
/// still queued in the main thread's stream, and computed wrong values on lavapipe (a
/// validation loss of 10.54 where one thread gives 10.25; a device sync before the passes
/// removed it), and each stream fuses its own kernels, so gradients differed from one thread's
/// in the last bits and runs would not repeat. The results are summed in order either way.
fn min_len_per_thread(device: &Device, passes: usize) -> usize {
    match device.clone().inner().as_dispatch() {
        DispatchDevice::Flex(_) | DispatchDevice::NdArray(_) => 1,
        _ => passes.max(1),
    }
}

/// Mean loss of `model` over `batches` fixed batches of `stream`, `concurrent` batches at a
/// time (summed in order, so the mean does not depend on it).
fn mean_loss(model: &Gpt2, sampler: &BatchSampler, tokens: &TokenFile, stream: u64, batches: usize, concurrent: usize, device: &Device) -> Result<f64, TrainError> {
    let device = device.clone().inner();
    let loss = |index: usize| -> Result<f64, TrainError> {
        let (inputs, targets) = tensors(&sampler.batch(tokens, stream, index as u64), &device);
        Ok(model.loss(inputs, targets)?.into_scalar::<f64>())
    };
    let mut total = 0.0;
    let per_thread = min_len_per_thread(&device, concurrent);
    for first in (0..batches).step_by(concurrent) {
        let group = (first..(first + concurrent).min(batches)).into_par_iter().with_min_len(per_thread).map(loss).collect::<Result<Vec<f64>, _>>()?;
        for value in group {
            total += value;
        }
    }
    Ok(total / batches as f64)
}

/// Text from a finished run's model (`run_dir/model.safetensors`), decoded with the tokenizer
/// stored beside it: `tokens` tokens continuing `prompt`, sampled with `options`.
pub fn sample_run(run_dir: &Path, prompt: &str, options: &GenerateOptions) -> Result<String, TrainError> {
    let config = TrainConfig::from_file(&run_dir.join("config.json"))?;
    let spec_path = run_dir.join("tokenizer.json");
    let spec = crate::fs::read_json(&spec_path).map_err(io_err(&spec_path))?;
    let tokenizer = Tokenizer::from_spec(&spec)?;
    let device = config.backend.device()?;
    let model_path = run_dir.join("model.safetensors");
    if !model_path.is_file() {
        return Err(TrainError::Io {
            path: model_path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no exported model: the run has not finished (resume it with --resume)"),
        });
    }
    let model = Gpt2::new(&config.model_config_with_vocab(tokenizer.vocab_size())?, &device, 0)?.load_safetensors(&model_path)?;
    sample_text(&model, &tokenizer, prompt, options)
}

/// Text continuing `prompt` (a document separator when empty; its last `block_size` tokens are
/// the context), sampled from `model` with `options`, decoded with the tokenizer it was trained
/// with.
pub fn sample_text(model: &Gpt2, tokenizer: &Tokenizer, prompt: &str, options: &GenerateOptions) -> Result<String, TrainError> {
    let encoded = tokenizer.encode(prompt)?;
    let encoded = if encoded.is_empty() { tokenizer.document_separator() } else { encoded };
    let block = model.config().block_size;
    let new = model.generate(&encoded[encoded.len().saturating_sub(block)..], options)?;
    Ok(format!("{prompt}{}", tokenizer.decode(&new)?))
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
        bar.set_style(ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}").expect("valid template"));
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_position(start as u64);
    bar
}

/// `training.png` / `training.svg` in the run directory: losses, learning rate, win rate.
pub fn plot_run(run_dir: &Path, metrics_path: &Path) -> Result<(), TrainError> {
    let records = metrics::read(metrics_path).map_err(io_err(metrics_path))?;
    let series = |label: &str, kind: &str, value: fn(&MetricRecord) -> Option<f64>| {
        Series::line(label, records.iter().filter(|r| r.kind == kind).filter_map(|r| value(r).map(|v| (r.step as f64, v))).collect())
    };
    let mut panels = vec![
        Panel {
            title: "Loss".into(),
            x_label: "step".into(),
            y_label: "cross-entropy (nats)".into(),
            log_y: false,
            series: vec![series("train", "train", |r| r.train_loss), series("val", "eval", |r| r.val_loss)],
        },
        Panel { title: "Learning rate".into(), x_label: "step".into(), y_label: "lr".into(), log_y: false, series: vec![series("lr", "train", |r| Some(r.lr))] },
    ];
    let win = series("win rate", "train", |r| r.win_rate);
    if !win.points.is_empty() {
        panels.push(Panel { title: "Sophia win rate".into(), x_label: "step".into(), y_label: "fraction not clipped".into(), log_y: false, series: vec![win] });
    }
    // An automatic ρ moves: show where it went.
    let rho = series("rho", "train", |r| r.rho);
    if rho.points.windows(2).any(|w| w[0].1 != w[1].1) {
        panels.push(Panel { title: "Sophia's automatic rho".into(), x_label: "step".into(), y_label: "rho".into(), log_y: true, series: vec![rho] });
    }
    Ok(plot::draw(&run_dir.join("training"), &panels)?)
}

/// One training step as the loop runs it: forward and backward over the micro-batches (the
/// loss averaged; each micro-batch's shards concurrently), global-norm clipping, and the
/// optimizer's step, in which Sophia refreshes its Hessian from the run's estimator when its
/// schedule says so.
pub struct TrainingStep {
    device: Device,
    clip: Option<GlobalNormClip>,
    grad_accum: usize,
    shards: usize,
    optimizer: OptimizerConfig,
    seed: u64,
}

/// What one [`TrainingStep::run`] did.
pub struct StepOutcome {
    /// The model after the step (unchanged when the step was not taken).
    pub model: Gpt2,
    /// Mean training loss over the micro-batches.
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub norm: GradNorm,
    /// The loss or gradient norm that was NaN or infinite, if any: the update was not taken.
    pub non_finite: Option<(&'static str, f64)>,
    /// Seconds from the step's start to the end of its gradients (the rest was the optimizer's).
    gradient_secs: f64,
}

impl StepOutcome {
    /// Of a step that took `total` seconds, the seconds of its refresh: the optimizer's share
    /// (the update is a few element-wise passes, the refresh a forward and backward pass, so
    /// the optimizer's share of a refreshing step is essentially its refresh).
    pub fn refresh_secs(&self, total: f64) -> f64 {
        (total - self.gradient_secs).max(0.0)
    }
}

impl TrainingStep {
    /// The step `config` describes, on `device` (with autodiff).
    pub fn new(config: &TrainConfig, device: &Device) -> Result<Self, TrainError> {
        let clip = (config.grad_clip > 0.0).then(|| GlobalNormClip::new(config.grad_clip)).transpose()?;
        Ok(Self { device: device.clone(), clip, grad_accum: config.grad_accum, shards: config.shards(), optimizer: config.optimizer.clone(), seed: config.seed })
    }

    /// The Hessian estimator of the run's Sophia (`None` for other optimizers): sampled-label
    /// `ĝ` (SophiaG) or Hutchinson's `u ⊙ Hu` (SophiaH), on the batch `refresh_batch` gives for
    /// each refresh.
    pub fn estimator<'a>(&'a self, refresh_batch: &'a dyn Fn(Refresh) -> Batch) -> Result<Option<RunEstimator<'a>>, TrainError> {
        let device = &self.device;
        Ok(match &self.optimizer {
            OptimizerConfig::SophiaG(_) => Some(Box::new(SampledLabels::new(self.seed, move |refresh| Ok::<_, TrainError>(tensors(&refresh_batch(refresh), device).0)))),
            OptimizerConfig::SophiaH(s) => Some(Box::new(Hutchinson::new(s.hutchinson_epsilon, self.seed)?.with_gradient(move |model: &Gpt2, refresh| {
                let (inputs, targets) = tensors(&refresh_batch(refresh), device);
                Ok::<_, TrainError>(GradientsParams::from_grads(model.loss(inputs, targets)?.backward(), model))
            }))),
            _ => None,
        })
    }

    /// Take the step with learning rate `lr` on `micro_batches`; a NaN or infinite loss or
    /// gradient norm leaves the model untouched and says so in the outcome.
    pub fn run(
        &self,
        model: Gpt2,
        optimizer: &mut RunOptimizer,
        lr: f64,
        micro_batches: impl Iterator<Item = Batch>,
        estimator: Option<&mut RunEstimator<'_>>,
    ) -> Result<StepOutcome, TrainError> {
        let started = Instant::now();
        let mut accumulator = GradientsAccumulator::new();
        let mut loss_sum = 0.0;
        for batch in micro_batches {
            let (loss, grads) = self.gradients(&model, &batch)?;
            loss_sum += loss;
            accumulator.accumulate(&model, grads);
        }
        let (grads, norm) = match &self.clip {
            Some(clip) => clip.clip(&model, accumulator.grads()),
            None => {
                let grads = accumulator.grads();
                let norm = global_norm(&model, &grads);
                (grads, norm)
            }
        };
        let non_finite = if !loss_sum.is_finite() {
            Some(("the training loss", loss_sum))
        } else if !norm.is_finite() {
            Some(("the gradient norm", norm.total_norm))
        } else {
            None
        };
        let gradient_secs = started.elapsed().as_secs_f64();
        let model = match non_finite {
            Some(_) => model,
            None => optimizer.step(lr, model, grads, estimator)?,
        };
        Ok(StepOutcome { model, loss: loss_sum, norm, non_finite, gradient_secs })
    }

    /// `model`'s loss on the micro-batch `batch` divided by the micro-batches per step, and its
    /// gradients: the batch's shards (`shards`, at most one per sequence) concurrently, each
    /// shard's mean loss weighted by its share of the sequences and the gradients summed in
    /// shard order.
    pub fn gradients(&self, model: &Gpt2, batch: &Batch) -> Result<(f64, GradientsParams), TrainError> {
        let pass = |model: &Gpt2, shard: &Batch| -> Result<(f64, GradientsParams), TrainError> {
            let (inputs, targets) = tensors(shard, &self.device);
            let divisor = (batch.batch_size * self.grad_accum) as f64 / shard.batch_size as f64;
            let loss = model.loss(inputs, targets)?.div_scalar(divisor);
            let grads = GradientsParams::from_grads(loss.backward(), model);
            Ok((loss.into_scalar::<f64>(), grads))
        };
        // A batch of fewer sequences than `shards` (a caller's own batch) runs one per sequence.
        let shards = self.shards.min(batch.batch_size);
        if shards <= 1 {
            return pass(model, batch);
        }
        // Each pass on its own autodiff leaves of the same parameters (`fork`: the same storage,
        // new graph nodes): Burn keeps graphs that share a node under one lock.
        let per_thread = min_len_per_thread(&self.device, shards);
        let passes: Vec<_> = batch.split(shards).par_iter().with_min_len(per_thread).map(|shard| pass(&model.clone().fork(&self.device), shard)).collect();
        let (mut loss, mut accumulator) = (0.0, GradientsAccumulator::new());
        for result in passes {
            let (shard_loss, grads) = result?;
            loss += shard_loss;
            accumulator.accumulate(model, grads);
        }
        Ok((loss, accumulator.grads()))
    }
}
