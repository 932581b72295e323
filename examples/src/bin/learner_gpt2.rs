//! Train the GPT-2 with Burn's own `Learner` and SophiaG, on one device or data-parallel.
//!
//! Burn's `Learner` owns a `ModuleOptimizer` and calls it once per iteration with the gradients
//! the model's `TrainStep` returns. Sophia's Hessian refresh goes through the same optimizer,
//! driven by a [`LearnerRefresh`] that the model's clones share:
//!
//! - `TrainStep::step` computes the training gradients and, before every `k`-th optimizer step,
//!   also stages the sampled-label gradient `ĝ` on the same inputs;
//! - `TrainStep::optimize` (overridden) takes the update, then refreshes Sophia's `h` from the
//!   staged `ĝ` through `SophiaControl::refresh` on the Learner's optimizer;
//! - a `WinRate` metric reads Sophia's statistics into Burn's metric system;
//! - Burn's default checkpointers save model, optimizer and scheduler.
//!
//! With `DEVICES` > 1 the run uses Burn's multi-device strategy (`ExecutionStrategy::multi`,
//! optimizer on the main device): each device trains on its own slice of the data, Burn sums
//! the gradients, and the refresh sees the mean of the devices' `ĝ` (see
//! `sophia_gpt2::learner`). Sophia's `bs` counts the tokens of all devices. On the CPU the
//! devices are worker threads sharing the `flex` device; on a machine with several GPUs, list
//! `Device::cuda(0)`, `Device::cuda(1)`, ... instead.
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
use burn::tensor::{Device, Int, Tensor, TensorData, TensorReadError};
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{LossMetric, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry, SerializedEntry};
use burn::train::{ClassificationOutput, ExecutionStrategy, InferenceStep, Learner, MultiDeviceOptim, SupervisedTraining, TrainOutput, TrainStep};
use sophia_gpt2::data::{TokenFile, prepare};
use sophia_gpt2::{Gpt2, Gpt2Config, LearnerRefresh, cross_entropy};
use sophia_optim::{SophiaControl, SophiaGConfig, WarmupCosineConfig};

/// Sequences per device and optimizer step.
const BATCH: usize = 8;
const BLOCK: usize = 32;
/// Sophia's Hessian EMA coefficient `β₂` (shorter than the official 0.99 for short runs).
const BETA_2: f64 = 0.95;

/// What the Learner trains: the GPT-2 plus the handle that drives Sophia's refreshes.
#[derive(Module, Debug)]
struct SophiaGpt2 {
    gpt: Gpt2,
    #[module(skip)]
    refresh: LearnerRefresh,
}

/// `[BATCH, BLOCK]` inputs and next-token targets; `first` is the index of the first window,
/// which tells the devices' batches of one step apart for the label draws.
#[derive(Clone, Debug)]
struct TokenBatch {
    inputs: Tensor<2, Int>,
    targets: Tensor<2, Int>,
    first: u64,
}

impl SophiaGpt2 {
    fn output(&self, batch: &TokenBatch) -> ClassificationOutput {
        let logits = self.gpt.forward(batch.inputs.clone()).expect("batches are BLOCK tokens long");
        let [b, t, v] = logits.dims();
        let loss = cross_entropy(logits.clone(), batch.targets.clone());
        ClassificationOutput { loss, output: logits.reshape([b * t, v]), targets: batch.targets.clone().reshape([b * t]) }
    }
}

impl TrainStep for SophiaGpt2 {
    type Input = TokenBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: TokenBatch) -> TrainOutput<ClassificationOutput> {
        let output = self.output(&batch);
        let grads = self.refresh.backward(output.loss.clone());
        // ĝ on labels sampled from the model, applied after this step's update.
        self.refresh.stage(&self.gpt, batch.inputs, batch.first).expect("batches are BLOCK tokens long");
        TrainOutput::new(self, grads, output)
    }

    fn optimize(self, optim: &mut ModuleOptimizer, lr: ModuleLearningRate, grads: GradientsParams) -> Self {
        let refresh = self.refresh.clone();
        refresh.optimize(optim, self, lr, grads)
    }
}

impl InferenceStep for SophiaGpt2 {
    type Input = TokenBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: TokenBatch) -> ClassificationOutput {
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
    refresh: LearnerRefresh,
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
    let per_step = BATCH * run.devices;
    let train_windows = run.train.len().min(run.steps * per_step) / per_step * per_step;
    anyhow::ensure!(train_windows > 0, "the training split holds {} windows of {BLOCK} tokens; {per_step} are needed for one step on {} device(s)", run.train.len(), run.devices);
    let valid_windows = run.valid.len().min(4 * BATCH);
    anyhow::ensure!(valid_windows > 0, "the validation split is shorter than one window of {BLOCK} tokens");

    // Sophia's `bs` counts the tokens of every device.
    let tokens_per_step = run.devices * BATCH * BLOCK;
    let sophia = SophiaGConfig::new(tokens_per_step).with_hessian_interval(run.interval).with_beta_2(BETA_2).try_init()?;
    let (optim, control) = sophia.into_parts();
    let refresh = LearnerRefresh::new(control.clone(), run.interval, run.devices, 0)?;
    let schedule = WarmupCosineConfig::new(3e-3, run.steps / 10, run.steps).with_min_lr(3e-4).try_init()?;
    let model = SophiaGpt2 { gpt, refresh: refresh.clone() };

    let train_loader = DataLoaderBuilder::new(WindowBatcher).batch_size(BATCH).set_device(device.clone());
    let train_loader = if run.shuffle { train_loader.shuffle(0) } else { train_loader };
    let train_loader = train_loader.build(PartialDataset::new(run.train, 0, train_windows));
    let valid_loader = DataLoaderBuilder::new(WindowBatcher)
        .batch_size(BATCH)
        .set_device(device.clone())
        .build(PartialDataset::new(run.valid, 0, valid_windows));

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
    Ok(Trained { gpt: result.model.gpt, control, refresh })
}

fn main() -> anyhow::Result<()> {
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

    let prepared = prepare(&data, Path::new("data"), 0.1, &mut |line| eprintln!("{line}"))?;
    let run = Run {
        train: Windows(Arc::new(prepared.train()?)),
        valid: Windows(Arc::new(prepared.val()?)),
        steps,
        interval: 5,
        devices,
        shuffle: true,
        out_dir: out_dir.clone(),
    };
    let trained = train(run).context("the Learner run failed")?;
    println!(
        "trained {} optimizer steps on {devices} device(s) with {} Hessian refreshes; {} parameters; checkpoints in {}",
        trained.refresh.steps(),
        trained.control.refreshes(),
        trained.gpt.num_params(),
        out_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use burn::optim::GradientsAccumulator;
    use sophia_gpt2::{GPT2_VOCAB_SIZE, SampledLabelHessian};
    use sophia_optim::global_norm;

    use super::*;

    /// A token file of `windows` windows of fixed pseudo-random ids, and those ids.
    fn token_file(dir: &Path, name: &str, windows: usize) -> (Windows, Vec<i64>) {
        let tokens: Vec<u16> = (0..windows * BLOCK + 1).map(|i| ((i * 7919 + 13) % 5000) as u16).collect();
        let path = dir.join(name);
        std::fs::write(&path, tokens.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        (Windows(Arc::new(TokenFile::open(&path, GPT2_VOCAB_SIZE).unwrap())), tokens.into_iter().map(i64::from).collect())
    }

    /// Inputs `[BATCH, BLOCK]` of the windows `first..first + BATCH`.
    fn inputs(tokens: &[i64], first: usize, device: &Device) -> Tensor<2, Int> {
        let ids: Vec<i64> = (first..first + BATCH).flat_map(|w| tokens[w * BLOCK..(w + 1) * BLOCK].iter().copied()).collect();
        Tensor::from_data(TensorData::new(ids, [BATCH, BLOCK]), device)
    }

    /// One optimizer step on two devices through Burn's multi-device strategy, refreshing after
    /// it: Sophia's `h` must be `(1 − β₂) ĝ²` of the mean of the two devices' sampled-label
    /// gradients, recomputed here on one device from the initial model.
    #[test]
    fn two_devices_refresh_from_the_mean_of_their_sampled_label_gradients() {
        let dir = std::env::temp_dir().join(format!("sophia-learner-multi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (train_set, tokens) = token_file(&dir, "train.bin", 2 * BATCH);
        let (valid, _) = token_file(&dir, "val.bin", BATCH);
        let run = Run { train: train_set, valid, steps: 1, interval: 1, devices: 2, shuffle: false, out_dir: dir.join("run") };
        let trained = train(run).unwrap();
        assert_eq!((trained.refresh.steps(), trained.control.refreshes()), (1, 1));
        let measured = trained.control.stats().hessian_mean.expect("one refresh ran");

        // Burn's split gives the first half of the windows to device 0, the second to device 1.
        let device = Device::flex().autodiff();
        let gpt = initial_model(&device).unwrap();
        let part = |first: usize| {
            let draw = LearnerRefresh::draw(0, first as u64);
            SampledLabelHessian::new(0).gradients(&gpt, inputs(&tokens, first, &device), draw).unwrap().grads
        };
        let (first, second) = (part(0), part(BATCH));
        let squared_norm = |grads: &GradientsParams| global_norm(&gpt, grads).total_norm.powi(2);
        let one_device = squared_norm(&first);
        let mut sum = GradientsAccumulator::new();
        sum.accumulate(&gpt, first);
        sum.accumulate(&gpt, second);
        let sum_squared = squared_norm(&sum.grads());
        let h_mean = |squared: f64| (1.0 - BETA_2) * squared / gpt.num_params() as f64;

        let expected = h_mean(sum_squared / 4.0);
        assert!((measured - expected).abs() <= 1e-4 * expected, "mean h {measured}, expected {expected} from the mean of both devices' ĝ");
        // The alternatives a wrong reduction would give are far from it.
        for (what, wrong) in [("the sum of both ĝ", h_mean(sum_squared)), ("one device's ĝ", h_mean(one_device))] {
            assert!((measured - wrong).abs() > 0.05 * wrong, "mean h {measured} matches {what} ({wrong})");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
