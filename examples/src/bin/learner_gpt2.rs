//! Train the GPT-2 with Burn's own `Learner` and SophiaG, on one device or data-parallel.
//!
//! Burn's `Learner` owns a `ModuleOptimizer` and calls it once per iteration with the gradients
//! the model's `TrainStep` returns. Sophia's update and Hessian refresh go through the same
//! function the training loop uses, driven by a [`LearnerRefresh`] that the model's clones share:
//!
//! - `TrainStep::step` computes the training gradients and stages its inputs (a tensor handle);
//! - `TrainStep::optimize` (overridden) clips the gradients to global norm 1, as the training loop
//!   does, and hands the step to Sophia, which refreshes its `h` every `k` updates from the
//!   sampled-label gradient on the staged inputs, at the updated weights;
//! - a `WinRate` metric reads Sophia's statistics into Burn's metric system;
//! - Burn's default checkpointers save model, optimizer and scheduler.
//!
//! With `DEVICES` > 1 the run uses Burn's multi-device strategy (`ExecutionStrategy::multi`,
//! optimizer on the main device): each device trains on its own slice of the data, Burn sums
//! the gradients, and the refresh sees the global batch (see `sophia_train::learner`). Sophia's
//! `bs` counts the tokens of all devices. On the CPU the devices are worker threads sharing the
//! `flex` device; on a machine with several GPUs, list `Device::cuda(0)`, `Device::cuda(1)`, ...
//! instead.
//!
//! ```text
//! cargo run -p sophia-examples --bin learner_gpt2 -- [DATA] [STEPS] [OUT_DIR] [DEVICES]
//! ```
//! `DATA` is a corpus name (`shakespeare`) or a UTF-8 text file or folder; `STEPS` counts
//! optimizer steps (default 200); `DEVICES` defaults to 1.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::data::dataset::transform::PartialDataset;
use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, ExecutionError, Int, Tensor, TensorData, TensorReadError};
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Adaptor, ItemLazy, LossInput, LossMetric, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry, SerializedEntry,
};
use burn::train::{ExecutionStrategy, InferenceStep, Learner, MultiDeviceOptim, SupervisedTraining, TrainOutput, TrainStep};
use sophia_gpt2::{Gpt2, Gpt2Config};
use sophia_optim::{GlobalNormClip, SophiaControl, SophiaGConfig, WarmupCosineConfig};
use sophia_train::data::{TokenFile, TokenizerKind, prepare};
use sophia_train::learner::{LearnerRefresh, Parallel};

/// Sequences per device and optimizer step.
const BATCH: usize = 8;
const BLOCK: usize = 32;
/// Sophia's Hessian EMA coefficient `β₂` (shorter than the official 0.99 for short runs).
const BETA_2: f64 = 0.95;
/// Sophia's `ρ`.
const RHO: f64 = 0.05;
/// Peak and final learning rate of the warmup + cosine schedule.
const LR: (f64, f64) = (3e-3, 3e-4);

/// What the Learner trains: the GPT-2 plus the handle that drives Sophia's refreshes.
#[derive(Module, Debug)]
struct SophiaGpt2 {
    gpt: Gpt2,
    #[module(skip)]
    refresh: LearnerRefresh,
}

/// The sampled-label estimator reads the GPT-2 inside the wrapper (same parameters).
impl AsRef<Gpt2> for SophiaGpt2 {
    fn as_ref(&self) -> &Gpt2 {
        &self.gpt
    }
}

/// `[BATCH, BLOCK]` inputs and next-token targets; `first` is the index of the first window,
/// which tells the devices' batches of one step apart for the label draws.
#[derive(Clone, Debug)]
struct TokenBatch {
    inputs: Tensor<2, Int>,
    targets: Tensor<2, Int>,
    first: u64,
}

/// A step's output for Burn's metrics: the loss alone. `Gpt2::loss` computes the LM head and the
/// cross-entropy together without materialising the logits (the fused kernels on flex), so there
/// are no logits to hand over; a project that wants accuracy or perplexity metrics can return
/// Burn's `ClassificationOutput` with `Gpt2::forward`'s logits instead.
struct LmOutput {
    loss: Tensor<1>,
}

impl ItemLazy for LmOutput {
    fn sync(self) -> Result<Self, ExecutionError> {
        // As Burn's own outputs: flush the device's queued work and leave the autodiff graph.
        self.loss.device().flush()?;
        Ok(Self { loss: self.loss.without_autodiff() })
    }
}

impl Adaptor<LossInput> for LmOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

impl SophiaGpt2 {
    fn output(&self, batch: &TokenBatch) -> LmOutput {
        LmOutput { loss: self.gpt.loss(batch.inputs.clone(), batch.targets.clone()).expect("batches are BLOCK tokens long") }
    }
}

impl TrainStep for SophiaGpt2 {
    type Input = TokenBatch;
    type Output = LmOutput;

    fn step(&self, batch: TokenBatch) -> TrainOutput<LmOutput> {
        let output = self.output(&batch);
        let grads = self.refresh.backward(output.loss.clone());
        // Kept for Sophia's refresh, should the coming optimizer step be one.
        self.refresh.stage(batch.inputs, batch.first);
        TrainOutput::new(self, grads, output)
    }

    fn optimize(self, optim: &mut ModuleOptimizer, lr: ModuleLearningRate, grads: GradientsParams) -> Self {
        // Global-norm clipping of the (summed) gradients, as the training loop clips them.
        let (grads, _) = GlobalNormClip::new(1.0).expect("1 is a valid norm").clip(&self, grads);
        let refresh = self.refresh.clone();
        refresh.optimize(optim, self, lr, grads)
    }
}

impl InferenceStep for SophiaGpt2 {
    type Input = TokenBatch;
    type Output = LmOutput;

    fn step(&self, batch: TokenBatch) -> LmOutput {
        self.output(&batch)
    }
}

/// Non-overlapping windows of `BLOCK + 1` tokens, with their index.
struct Windows(Arc<TokenFile>);

impl Dataset<(usize, Vec<i64>)> for Windows {
    fn get(&self, index: usize) -> Result<(usize, Vec<i64>), burn::data::dataset::DatasetError> {
        Ok((index, (index * BLOCK..index * BLOCK + BLOCK + 1).map(|i| self.0.get(i) as i64).collect()))
    }

    fn len(&self) -> usize {
        (self.0.len().saturating_sub(1)) / BLOCK
    }
}

#[derive(Clone)]
struct WindowBatcher;

impl Batcher<(usize, Vec<i64>), TokenBatch> for WindowBatcher {
    fn batch(&self, windows: Vec<(usize, Vec<i64>)>, device: &Device) -> TokenBatch {
        let n = windows.len();
        let inputs: Vec<i64> = windows.iter().flat_map(|(_, w)| w[..BLOCK].iter().copied()).collect();
        let targets: Vec<i64> = windows.iter().flat_map(|(_, w)| w[1..].iter().copied()).collect();
        TokenBatch {
            inputs: Tensor::from_data(TensorData::new(inputs, [n, BLOCK]), device),
            targets: Tensor::from_data(TensorData::new(targets, [n, BLOCK]), device),
            first: windows.first().map_or(0, |(index, _)| *index as u64),
        }
    }
}

/// Sophia's win rate (fraction of coordinates not clipped) as a Burn metric.
#[derive(Clone)]
struct WinRate {
    control: SophiaControl,
    name: MetricName,
    state: NumericMetricState,
}

impl WinRate {
    fn new(control: SophiaControl) -> Self {
        control.collect_win_rate(true);
        Self { control, name: Arc::new("Sophia win rate".into()), state: NumericMetricState::new() }
    }
}

impl Metric for WinRate {
    type Input = ();

    fn update(&mut self, _: &(), _: &MetricMetadata) -> Result<SerializedEntry, TensorReadError> {
        if let Some(win_rate) = self.control.stats().win_rate {
            self.state.update(win_rate, 1);
        }
        Ok(self.state.compute_update(FormatOptions::new(self.name()).precision(3)))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(self.state.compute_final(FormatOptions::new(self.name()).precision(3)))
    }

    fn clear(&mut self) {
        self.state.reset()
    }

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes { unit: None, higher_is_better: false }.into()
    }
}

impl Numeric for WinRate {
    fn value(&self) -> Option<NumericEntry> {
        Some(self.state.current_value())
    }

    fn running_value(&self) -> Option<NumericEntry> {
        Some(self.state.running_value())
    }

    fn final_value(&self) -> NumericEntry {
        self.state.final_value()
    }
}

/// What one run is asked to do.
struct Run {
    train: Windows,
    valid: Windows,
    /// Optimizer steps.
    steps: usize,
    /// Sequences per device and step.
    batch: usize,
    /// Optimizer steps between Hessian refreshes (SophiaG's `k`).
    interval: usize,
    devices: usize,
    shuffle: bool,
    out_dir: std::path::PathBuf,
}

/// What a finished run hands back.
struct Trained {
    gpt: Gpt2,
    control: SophiaControl,
}

/// The model a run starts from (the same for every run: seed 0).
fn initial_model(device: &Device) -> anyhow::Result<Gpt2> {
    Ok(Gpt2::new(&Gpt2Config::new(2, 2, 32, BLOCK, sophia_gpt2::GPT2_VOCAB_SIZE), device, 0)?)
}

fn train(run: Run) -> anyhow::Result<Trained> {
    let device = Device::flex().autodiff();
    device.seed(0);
    let gpt = initial_model(&device)?;

    // Every device gets `steps` full batches: Burn sums what the devices return.
    let per_step = run.batch * run.devices;
    let train_windows = run.train.len().min(run.steps * per_step) / per_step * per_step;
    anyhow::ensure!(
        train_windows > 0,
        "the training split holds {} windows of {BLOCK} tokens; {per_step} are needed for one step on {} device(s)",
        run.train.len(),
        run.devices
    );
    let valid_windows = run.valid.len().min(4 * BATCH);
    anyhow::ensure!(valid_windows > 0, "the validation split is shorter than one window of {BLOCK} tokens");

    // Sophia's `bs` counts the tokens of every device.
    let tokens_per_step = run.devices * run.batch * BLOCK;
    let sophia = SophiaGConfig::new(tokens_per_step).with_hessian_interval(run.interval).with_beta_2(BETA_2).with_rho(RHO).try_init()?;
    let (optim, control) = sophia.into_parts();
    // Each device back-propagates 1/devices of its loss, so Burn's sum is the global mean.
    let refresh = LearnerRefresh::new(control.clone(), run.devices, Parallel::OneOptimizer, 0)?;
    let schedule = WarmupCosineConfig::new(LR.0, run.steps / 10, run.steps).with_min_lr(LR.1).try_init()?;
    let model = SophiaGpt2 { gpt, refresh: refresh.clone() };

    let train_loader = DataLoaderBuilder::new(WindowBatcher).batch_size(run.batch).set_device(device.clone());
    let train_loader = if run.shuffle { train_loader.shuffle(0) } else { train_loader };
    let train_loader = train_loader.build(PartialDataset::new(run.train, 0, train_windows));
    let valid_loader = DataLoaderBuilder::new(WindowBatcher).batch_size(BATCH).set_device(device.clone()).build(PartialDataset::new(run.valid, 0, valid_windows));

    let strategy = match run.devices {
        1 => ExecutionStrategy::single(device),
        n => ExecutionStrategy::multi(vec![device; n], MultiDeviceOptim::OptimMainDevice),
    };
    let result = SupervisedTraining::new(&run.out_dir, train_loader, valid_loader)
        .with_training_strategy(strategy.into())
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .metric_train_numeric(WinRate::new(control.clone()))
        .with_default_checkpointers()
        .num_epochs(1)
        .summary()
        .launch(Learner::new(model, optim, schedule));
    if let Some(error) = result.error {
        anyhow::bail!("training failed: {error}");
    }
    Ok(Trained { gpt: result.model.gpt, control })
}

fn main() -> anyhow::Result<()> {
    // Subnormal floats can slow the CPU's matrix products many times over (see sophia_backend).
    sophia_train::flush_denormals()?;
    let mut args = std::env::args().skip(1);
    let data = args.next().unwrap_or_else(|| "shakespeare".into());
    let count = |arg: Option<String>, name: &str, default: usize| -> anyhow::Result<usize> {
        match arg {
            Some(arg) => match arg.parse() {
                Ok(n) if n > 0 => Ok(n),
                _ => anyhow::bail!("{name} must be a whole number of at least 1, got `{arg}`"),
            },
            None => Ok(default),
        }
    };
    let steps = count(args.next(), "STEPS", 200)?;
    let out_dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "runs/learner".into()));
    let devices = count(args.next(), "DEVICES", 1)?;

    let prepared = prepare(&data, Path::new("data"), 0.1, TokenizerKind::Gpt2, &mut |line| eprintln!("{line}"))?;
    let run = Run {
        train: Windows(Arc::new(prepared.train()?)),
        valid: Windows(Arc::new(prepared.val()?)),
        steps,
        batch: BATCH,
        interval: 5,
        devices,
        shuffle: true,
        out_dir: out_dir.clone(),
    };
    let trained = train(run).context("the Learner run failed")?;
    let device = trained.gpt.devices().into_iter().next().unwrap_or_default();
    println!(
        "trained {} optimizer steps on {devices} device(s) with {} Hessian refreshes; {} parameters; checkpoints in {}",
        trained.control.updates_taken(&device),
        trained.control.refreshes(),
        trained.gpt.num_params(),
        out_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use burn::optim::OptimizerRecord;
    use sophia_golden::RecordedState;
    use sophia_optim::Refresh;
    use sophia_train::data::Batch;
    use sophia_train::train::{DecaySelection, OptimizerConfig, Rho, RunOptimizer, SophiaGSettings, TrainConfig, TrainingStep};

    use super::*;

    /// A token file of `windows` windows of fixed pseudo-random ids, and those ids.
    fn token_file(dir: &Path, name: &str, windows: usize) -> (Windows, Vec<i64>) {
        let tokens: Vec<u16> = (0..windows * BLOCK + 1).map(|i| ((i * 7919 + 13) % 5000) as u16).collect();
        let path = dir.join(name);
        std::fs::write(&path, tokens.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        (Windows(Arc::new(TokenFile::open(&path, sophia_gpt2::GPT2_VOCAB_SIZE).unwrap())), tokens.into_iter().map(i64::from).collect())
    }

    /// The first step's batch, windows `0..sequences`, as the training loop takes batches.
    fn batch(tokens: &[i64], sequences: usize) -> Batch {
        let window = |w: usize, shift: usize| tokens[w * BLOCK + shift..(w + 1) * BLOCK + shift].to_vec();
        Batch {
            batch_size: sequences,
            block_size: BLOCK,
            inputs: (0..sequences).flat_map(|w| window(w, 0)).collect(),
            targets: (0..sequences).flat_map(|w| window(w, 1)).collect(),
        }
    }

    /// Sophia's `h` per parameter, read from an optimizer record.
    fn hessians(record: OptimizerRecord, model: &Gpt2) -> Vec<Vec<f32>> {
        let state = RecordedState::read(record);
        model.named_params().into_iter().map(|(_, id, shape)| state.tensor(id, "hessian", shape.iter().product())).collect()
    }

    /// One optimizer step with a refresh through Burn's Learner on `devices` devices of `batch`
    /// sequences each; Sophia's `h` from the optimizer checkpoint the Learner wrote.
    fn learner_h(dir: &Path, devices: usize, batch: usize) -> Vec<Vec<f32>> {
        let (train_set, _) = token_file(dir, "train.bin", 2 * BATCH);
        let (valid, _) = token_file(dir, "val.bin", BATCH);
        let out_dir = dir.join(format!("learner-{devices}"));
        let run = Run { train: train_set, valid, steps: 1, batch, interval: 1, devices, shuffle: false, out_dir: out_dir.clone() };
        let trained = train(run).unwrap();
        assert_eq!((trained.control.refreshes(), trained.control.updates_taken(&Device::flex())), (1, 1));
        let record = OptimizerRecord::load(out_dir.join("checkpoint/optim-1.bpk")).unwrap();
        hessians(record, &initial_model(&Device::flex().autodiff()).unwrap())
    }

    /// Every entry point to Sophia's refresh computes the same `h` from the same model, batch and
    /// seed: the training loop's step, the benchmarks' step (the same function), Burn's
    /// `Learner` on one device, and on two devices through Burn's multi-device strategy (up to
    /// the rounding of the two devices' summed gradients: the mean of h to 1%); one device's share
    /// of the batch gives a different `h`. (They share the optimizer's clipping of `ĝ` by
    /// construction; `sophia-optim`'s tests check that clipping.)
    #[test]
    fn every_entry_point_refreshes_the_same_h() {
        let dir = std::env::temp_dir().join(format!("sophia-learner-equal-h-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (_, tokens) = token_file(&dir, "tokens.bin", 2 * BATCH);
        let device = Device::flex().autodiff();

        // The training loop's step on the global batch (2·BATCH sequences), refreshing from the
        // same batch, with the settings of the Learner example.
        let config = TrainConfig {
            model: Some(initial_model(&device).unwrap().config().clone()),
            block_size: None,
            batch_size: 2 * BATCH,
            seed: 0,
            weight_decay: 0.1,
            decay: DecaySelection::All,
            optimizer: OptimizerConfig::SophiaG(SophiaGSettings { beta2: BETA_2, rho: Rho::Fixed(RHO), hessian_interval: 1, ..SophiaGSettings::default() }),
            ..TrainConfig::default()
        };
        let lr = WarmupCosineConfig::new(LR.0, 0, 1).with_min_lr(LR.1).try_init().unwrap().lr_at(0);
        let step = TrainingStep::new(&config, &device).unwrap();
        let global = batch(&tokens, 2 * BATCH);
        let refresh_batch = |_: Refresh| global.clone();
        let loop_h = {
            let model = initial_model(&device).unwrap();
            let mut optimizer = RunOptimizer::new(&config, &model, 2 * BATCH * BLOCK).unwrap();
            let mut estimator = step.estimator(&refresh_batch).unwrap();
            step.run(model, &mut optimizer, lr, std::iter::once(global.clone()), estimator.as_mut()).unwrap();
            hessians(optimizer.to_record(), &initial_model(&device).unwrap())
        };
        let bench_h = {
            let model = initial_model(&device).unwrap();
            let mut optimizer = RunOptimizer::new(&config, &model, 2 * BATCH * BLOCK).unwrap();
            let mut estimator = step.estimator(&refresh_batch).unwrap();
            sophia_bench::training_step(&step, model, &mut optimizer, lr, global.clone(), estimator.as_mut()).unwrap();
            hessians(optimizer.to_record(), &initial_model(&device).unwrap())
        };
        assert!(loop_h.iter().flatten().any(|&h| h > 0.0), "the refresh ran");
        assert_eq!(bench_h, loop_h, "the benchmark's step is the loop's");
        assert_eq!(learner_h(&dir, 1, 2 * BATCH), loop_h, "Burn's Learner on one device refreshes as the loop does");

        // Two devices sum two halves of the gradient where one device takes it whole: the update
        // differs in the last bits, and the first update is a sign step (h = 0), where a
        // coordinate whose gradient is within rounding of zero moves the other way; a few sampled
        // labels follow. So the comparison is the mean of h, which such coordinates do not move.
        let multi = learner_h(&dir, 2, BATCH);
        let mean = |h: &[Vec<f32>]| h.iter().flatten().map(|&x| x as f64).sum::<f64>() / h.iter().map(Vec::len).sum::<usize>() as f64;
        let relative = |a: f64, b: f64| (a - b).abs() / b.abs();
        let multi_difference = relative(mean(&multi), mean(&loop_h));
        assert!(multi_difference < 1e-2, "two devices refresh from the global batch: mean h differs by {multi_difference}");
        let half = {
            let model = initial_model(&device).unwrap();
            let mut optimizer = RunOptimizer::new(&config, &model, 2 * BATCH * BLOCK).unwrap();
            let first_half = batch(&tokens, BATCH);
            let refresh_half = |_: Refresh| first_half.clone();
            let mut estimator = step.estimator(&refresh_half).unwrap();
            step.run(model, &mut optimizer, lr, std::iter::once(global.clone()), estimator.as_mut()).unwrap();
            hessians(optimizer.to_record(), &initial_model(&device).unwrap())
        };
        let half_difference = relative(mean(&half), mean(&loop_h));
        assert!(
            half_difference > 0.2 && half_difference > 10.0 * multi_difference,
            "one device's share of the batch gives another h: {half_difference} vs {multi_difference}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
