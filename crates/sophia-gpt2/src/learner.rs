//! SophiaG's Hessian refresh inside Burn's `Learner`, on one device or data-parallel over several.
//!
//! Burn's `Learner` calls the model's `TrainStep::step` for the gradients and then
//! `TrainStep::optimize` with its `ModuleOptimizer`. A [`LearnerRefresh`] shared by the model's
//! clones fits SophiaG's refresh into those two calls:
//!
//! - in `step`, [`LearnerRefresh::backward`] takes the training gradient and, when the coming
//!   optimizer step is a refresh step (every `interval`-th), [`LearnerRefresh::stage`] computes
//!   the sampled-label gradient `ĝ` on the same inputs and keeps it;
//! - in `optimize`, [`LearnerRefresh::optimize`] applies the update, then refreshes `h` from the
//!   staged `ĝ` through [`SophiaControl::refresh`] on the Learner's own optimizer.
//!
//! # Data parallel (`ExecutionStrategy::MultiDevice`)
//!
//! With Burn's multi-device strategy (`MultiDeviceOptim::OptimMainDevice`), every device runs
//! `step` on its own slice of the data in its own worker thread, Burn sums the workers'
//! gradients on the main device and runs `optimize` once there. With `n` devices and `shares = n`:
//!
//! - each worker back-propagates its mean loss divided by `n`, so Burn's sum is the gradient of
//!   the mean loss over the global batch, as one device with `n` times the batch would compute;
//! - each worker's `ĝ` is likewise `1/n` of its part's, and `optimize` sums the staged parts on
//!   the main device with Burn's `GradientsAccumulator`, so the refresh sees
//!   `ĝ = (ĝ₁ + … + ĝₙ) / n`, the sampled-label gradient of the global batch. There is one
//!   optimizer, so every device's next step uses that same `h`;
//! - Sophia's `bs` must count the tokens of all devices: `n × batch × block`.
//!
//! Every device must get a full batch at every step (make the dataset a multiple of
//! `n × batch`): Burn sums whatever the workers return, so a step with fewer parts would
//! be smaller. Burn's gradient accumulation (`grads_accumulation(a)`) sums `a` micro-batches
//! per device and step in the same way: pass `shares = n × a` (and count their tokens in `bs`).
//!
//! Not supported: `MultiDeviceOptim::OptimSharded`, whose optimizer runs per device on a share
//! of the parameters, outside `TrainStep::optimize`; and Burn's `DistributedDataParallel`
//! strategy, which keeps one optimizer per device while the clones of a `LearnerRefresh` share
//! one state.
//!
//! Each `ĝ` part draws its labels from `(seed, step, key)`, where `key` identifies the part
//! (for example the index of the batch's first sample), so a run is reproducible whichever
//! worker finishes first, and the parts are summed in the order of their keys.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Gradients, Int, Tensor};
use sophia_optim::SophiaControl;

use crate::error::ModelError;
use crate::hessian::{SampledLabelHessian, share_of};
use crate::model::Gpt2;

/// Drives SophiaG's sampled-label Hessian refresh from a Burn `Learner` model; see the
/// [module documentation](self). Clones share their state.
#[derive(Clone)]
pub struct LearnerRefresh {
    control: SophiaControl,
    interval: usize,
    shares: usize,
    labels: SampledLabelHessian,
    /// Optimizer steps taken so far.
    steps: Arc<AtomicUsize>,
    /// `ĝ` parts of the coming refresh, with their keys.
    staged: Arc<Mutex<Vec<(u64, GradientsParams)>>>,
}

impl std::fmt::Debug for LearnerRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LearnerRefresh(every {} steps, {} shares)", self.interval, self.shares)
    }
}

impl LearnerRefresh {
    /// Refresh every `interval` optimizer steps (SophiaG's `k`), with each step's batch made of
    /// `shares` equal parts whose gradients Burn sums (the devices, times the micro-batches of
    /// gradient accumulation); labels are drawn from `seed`.
    pub fn new(control: SophiaControl, interval: usize, shares: usize, seed: u64) -> Result<Self, ModelError> {
        for (name, value) in [("interval", interval), ("shares", shares)] {
            if value == 0 {
                return Err(ModelError::Config(format!("LearnerRefresh: `{name}` must be at least 1")));
            }
        }
        Ok(Self {
            control,
            interval,
            shares,
            labels: SampledLabelHessian::new(seed),
            steps: Arc::new(AtomicUsize::new(0)),
            staged: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> usize {
        self.steps.load(Ordering::Acquire)
    }

    /// Whether the coming optimizer step refreshes the Hessian.
    pub fn refresh_due(&self) -> bool {
        (self.steps() + 1).is_multiple_of(self.interval)
    }

    /// The label draw of part `key` before optimizer step `step` (counted from 0).
    pub fn draw(step: usize, key: u64) -> u64 {
        ((step as u64) << 32) ^ key
    }

    /// The training gradients of this part's share of the step's mean loss (`loss`, the part's
    /// own mean cross-entropy, divided by the number of shares).
    pub fn backward(&self, loss: Tensor<1>) -> Gradients {
        share_of(loss, self.shares).backward()
    }

    /// On a refresh step, compute this part's share of `ĝ` on `inputs` `[batch, block]` and keep
    /// it for [`optimize`](Self::optimize); `key` must differ between the parts of a step. Does
    /// nothing on other steps.
    pub fn stage(&self, model: &Gpt2, inputs: Tensor<2, Int>, key: u64) -> Result<(), ModelError> {
        if self.refresh_due() {
            let part = self.labels.gradients_of_share(model, inputs, Self::draw(self.steps(), key), self.shares)?;
            self.staged().push((key, part.grads));
        }
        Ok(())
    }

    /// One optimizer step of the `Learner`: the update from `grads`, then, if parts of `ĝ` were
    /// staged, their sum on the module's device refreshes Sophia's `h`.
    pub fn optimize<M: Module>(&self, optim: &mut ModuleOptimizer, module: M, lr: ModuleLearningRate, grads: GradientsParams) -> M {
        let module = optim.step(lr, module, grads);
        self.steps.fetch_add(1, Ordering::AcqRel);
        let mut parts = std::mem::take(&mut *self.staged());
        if parts.is_empty() {
            return module;
        }
        parts.sort_by_key(|(key, _)| *key);
        let device = module.devices()[0].clone();
        let mut sum = GradientsAccumulator::new();
        for (_, part) in parts {
            sum.accumulate(&module, part.to_device(&device, &module));
        }
        self.control.refresh(optim, module, sum.grads())
    }

    fn staged(&self) -> MutexGuard<'_, Vec<(u64, GradientsParams)>> {
        self.staged.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
