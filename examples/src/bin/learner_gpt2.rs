//! Train the GPT-2 with Burn's own `Learner` and SophiaG.
//!
//! Burn's `Learner` owns a `ModuleOptimizer` and calls it once per iteration with the gradients
//! the model's `TrainStep` returns. Sophia's Hessian refresh goes through the same optimizer:
//!
//! - `TrainStep::step` computes the training gradients and, on every `k`-th iteration, also the
//!   sampled-label gradient `ĝ` on the same inputs, which it stages in a shared slot;
//! - `TrainStep::optimize` (overridden) takes the update, then runs the staged refresh through
//!   `SophiaControl::refresh` on the Learner's optimizer;
//! - a `WinRate` metric reads Sophia's statistics into Burn's metric system;
//! - Burn's default checkpointers save model, optimizer and scheduler.
//!
//! ```text
//! cargo run -p sophia-examples --bin learner_gpt2 -- [DATA] [STEPS] [OUT_DIR]
//! ```
//! `DATA` is a corpus name (`shakespeare`) or a UTF-8 text file or folder.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
use burn::train::{ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep};
use sophia_gpt2::data::{TokenFile, prepare};
use sophia_gpt2::{Gpt2, Gpt2Config, SampledLabelHessian, cross_entropy};
use sophia_optim::{SophiaControl, SophiaGConfig, WarmupCosineConfig};

const BATCH: usize = 8;
const BLOCK: usize = 32;

/// What the Learner trains: the GPT-2 plus the hook that stages Sophia's refreshes.
#[derive(Module, Debug)]
struct SophiaGpt2 {
    gpt: Gpt2,
    #[module(skip)]
    hook: RefreshHook,
}

/// Shared between the training step (which computes `ĝ`) and `optimize` (which applies it).
#[derive(Clone)]
struct RefreshHook {
    control: SophiaControl,
    interval: usize,
    iterations: Arc<AtomicUsize>,
    staged: Arc<Mutex<Option<GradientsParams>>>,
    labels: SampledLabelHessian,
}

impl std::fmt::Debug for RefreshHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RefreshHook(every {} iterations)", self.interval)
    }
}

/// `[BATCH, BLOCK]` inputs and next-token targets.
#[derive(Clone, Debug)]
struct TokenBatch {
    inputs: Tensor<2, Int>,
    targets: Tensor<2, Int>,
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
        let grads = output.loss.backward();
        let iteration = self.hook.iterations.fetch_add(1, Ordering::AcqRel) + 1;
        if iteration % self.hook.interval == 0 {
            // ĝ on labels sampled from the model; applied after this iteration's update.
            let ghat = self.hook.labels.gradients(&self.gpt, batch.inputs, iteration as u64).expect("batch fits");
            *self.hook.staged.lock().expect("not poisoned") = Some(ghat.grads);
        }
        TrainOutput::new(self, grads, output)
    }

    fn optimize(self, optim: &mut ModuleOptimizer, lr: ModuleLearningRate, grads: GradientsParams) -> Self {
        let hook = self.hook.clone();
        let model = optim.step(lr, self, grads);
        match hook.staged.lock().expect("not poisoned").take() {
            Some(ghat) => hook.control.refresh(optim, model, ghat),
            None => model,
        }
    }
}

impl InferenceStep for SophiaGpt2 {
    type Input = TokenBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: TokenBatch) -> ClassificationOutput {
        self.output(&batch)
    }
}

/// Non-overlapping windows of `BLOCK + 1` tokens.
struct Windows(Arc<TokenFile>);

impl Dataset<Vec<i64>> for Windows {
    fn get(&self, index: usize) -> Result<Vec<i64>, burn::data::dataset::DatasetError> {
        Ok((index * BLOCK..index * BLOCK + BLOCK + 1).map(|i| self.0.get(i) as i64).collect())
    }

    fn len(&self) -> usize {
        (self.0.len().saturating_sub(1)) / BLOCK
    }
}

#[derive(Clone)]
struct WindowBatcher;

impl Batcher<Vec<i64>, TokenBatch> for WindowBatcher {
    fn batch(&self, windows: Vec<Vec<i64>>, device: &Device) -> TokenBatch {
        let n = windows.len();
        let inputs: Vec<i64> = windows.iter().flat_map(|w| w[..BLOCK].iter().copied()).collect();
        let targets: Vec<i64> = windows.iter().flat_map(|w| w[1..].iter().copied()).collect();
        TokenBatch {
            inputs: Tensor::from_data(TensorData::new(inputs, [n, BLOCK]), device),
            targets: Tensor::from_data(TensorData::new(targets, [n, BLOCK]), device),
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

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let data = args.next().unwrap_or_else(|| "shakespeare".into());
    let steps: usize = match args.next() {
        Some(arg) => arg.parse().with_context(|| format!("STEPS must be a whole number, got `{arg}`"))?,
        None => 200,
    };
    let out_dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "runs/learner".into()));

    let prepared = prepare(&data, std::path::Path::new("data"), 0.1, &mut |line| eprintln!("{line}"))?;
    let train = Windows(Arc::new(prepared.train()?));
    let valid = Windows(Arc::new(prepared.val()?));
    // One epoch of `steps` iterations over the start of the training split; 4 validation batches.
    let (train_windows, valid_windows) = (train.len().min(steps * BATCH), valid.len().min(4 * BATCH));
    let device = Device::flex().autodiff();
    device.seed(0);

    let config = Gpt2Config::new(2, 2, 32, BLOCK, sophia_gpt2::GPT2_VOCAB_SIZE);
    let gpt = Gpt2::new(&config, &device, 0)?;
    let sophia = SophiaGConfig::new(BATCH * BLOCK).with_hessian_interval(5).with_beta_2(0.95).try_init()?;
    let (optim, control) = sophia.into_parts();
    let schedule = WarmupCosineConfig::new(3e-3, steps / 10, steps).with_min_lr(3e-4).try_init()?;
    let hook = RefreshHook {
        control: control.clone(),
        interval: 5,
        iterations: Arc::new(AtomicUsize::new(0)),
        staged: Arc::new(Mutex::new(None)),
        labels: SampledLabelHessian::new(0),
    };
    let model = SophiaGpt2 { gpt, hook: hook.clone() };

    let train_loader = DataLoaderBuilder::new(WindowBatcher)
        .batch_size(BATCH)
        .shuffle(0)
        .set_device(device.clone())
        .build(PartialDataset::new(train, 0, train_windows));
    let valid_loader = DataLoaderBuilder::new(WindowBatcher)
        .batch_size(BATCH)
        .set_device(device.clone())
        .build(PartialDataset::new(valid, 0, valid_windows));

    let result = SupervisedTraining::new(&out_dir, train_loader, valid_loader)
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
    let refreshes = control.stats().refreshes;
    println!("trained {} iterations with {refreshes} Hessian refreshes; checkpoints in {}", hook.iterations.load(Ordering::Acquire), out_dir.display());
    Ok(())
}
