//! Sophia inside Burn's `Learner`, on one device or data-parallel over several.
//!
//! Burn's `Learner` calls the model's `TrainStep::step` for the gradients and then
//! `TrainStep::optimize` with its `ModuleOptimizer`. A [`LearnerRefresh`] shared by the model's
//! clones fits Sophia's refresh into those two calls without a second code path: `step` stages
//! its inputs ([`LearnerRefresh::stage`], a tensor handle, no computation), and `optimize` hands
//! the update to the same [`SophiaControl::step`] the training loop uses, with a
//! [`SampledLabels`] estimator over the staged inputs. When the optimizer's schedule asks for a
//! refresh, `ĝ` is computed at the updated weights, clipped and folded in exactly as in the
//! training loop (the same function, the same clipping); otherwise the staged inputs are
//! dropped.
//!
//! # Data parallel
//!
//! - `ExecutionStrategy::MultiDevice` with `MultiDeviceOptim::OptimMainDevice`
//!   ([`Parallel::OneOptimizer`]): every device runs `step` on its own slice of the data in its
//!   own worker thread, Burn sums the workers' gradients on the main device and runs `optimize`
//!   once there. With `n` devices each worker back-propagates its mean loss divided by `n`
//!   ([`LearnerRefresh::backward`]), so Burn's sum is the gradient of the global batch's mean
//!   loss. The refresh runs on the main device on all workers' staged inputs, concatenated in
//!   the order of their keys: the `ĝ` of the global batch, as one device would compute it, and
//!   one `h` for every device. Sophia's `bs` counts the tokens of all devices.
//! - `ExecutionStrategy::DistributedDataParallel` ([`Parallel::Ddp`]): Burn keeps one model and
//!   one optimizer per device and all-reduces the gradients of the parameters during backward.
//!   Each device's `optimize` refreshes from its own staged inputs; the backward of `ĝ`
//!   all-reduces it like any gradient, so with `ReduceOperation::Mean` every device folds the
//!   same mean `ĝ` into its `h`. The per-device passes of [`SophiaControl`] keep the devices'
//!   optimizers apart. In Burn 0.22.1 DDP runs only on the CubeCL backends (CUDA) and the
//!   remote backend: Flex and NdArray have no collective operations.
//!
//! Not supported: `MultiDeviceOptim::OptimSharded`, whose optimizer runs per device on a share
//! of the parameters outside `TrainStep::optimize` (Sophia refuses it loudly: its per-tensor
//! step panics outside [`SophiaControl::step`]).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Gradients, Int, Tensor};
use sophia_gpt2::{Gpt2, ModelError, SampledLabels};
use sophia_optim::{RefreshError, SophiaControl};

/// How the `Learner` spreads the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallel {
    /// One optimizer: one device, or Burn's multi-device strategy with the optimizer on the
    /// main device. The refresh uses every staged input.
    OneOptimizer,
    /// Burn's distributed data parallel: one optimizer per device, each refreshing from the
    /// inputs staged on its own device.
    Ddp,
}

/// Why the `Learner`'s Sophia step failed.
#[derive(Debug, thiserror::Error)]
pub enum LearnerError {
    /// A count that must be at least one.
    #[error("LearnerRefresh: `{0}` must be at least 1")]
    Zero(&'static str),
    /// A refresh came due with no inputs staged for it.
    #[error("a Hessian refresh is due but no inputs were staged on {0:?}: call LearnerRefresh::stage in TrainStep::step")]
    NothingStaged(Device),
    /// The model failed on the staged inputs.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// An input batch staged by `TrainStep::step` for the coming optimizer step.
struct Staged {
    device: Device,
    key: u64,
    inputs: Tensor<2, Int>,
}

/// Drives Sophia's update and Hessian refresh from a Burn `Learner` model; see the
/// [module documentation](self). Clones share their state.
#[derive(Clone)]
pub struct LearnerRefresh {
    control: SophiaControl,
    shares: usize,
    parallel: Parallel,
    seed: u64,
    staged: Arc<Mutex<Vec<Staged>>>,
}

impl std::fmt::Debug for LearnerRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LearnerRefresh({:?}, {} shares, {:?})", self.control, self.shares, self.parallel)
    }
}

impl LearnerRefresh {
    /// Sophia driven through `control` (from `SophiaOptimizer::into_parts`), with each
    /// optimizer step's batch made of `shares` equal parts whose gradients Burn sums (the
    /// devices of a multi-device strategy, times the micro-batches of gradient accumulation;
    /// 1 under DDP, whose all-reduce averages); sampled labels are drawn from `seed`.
    pub fn new(control: SophiaControl, shares: usize, parallel: Parallel, seed: u64) -> Result<Self, LearnerError> {
        if shares == 0 {
            return Err(LearnerError::Zero("shares"));
        }
        Ok(Self { control, shares, parallel, seed, staged: Arc::new(Mutex::new(Vec::new())) })
    }

    /// The training gradients of this part's share of the step's mean loss (`loss`, the part's
    /// own mean cross-entropy, divided by the number of shares).
    pub fn backward(&self, loss: Tensor<1>) -> Gradients {
        if self.shares == 1 { loss.backward() } else { loss.div_scalar(self.shares as f64).backward() }
    }

    /// Keep `inputs` `[batch, block]` for the refresh of the coming optimizer step; `key` orders
    /// the parts of one step (e.g. the index of the batch's first sample), so the refresh does
    /// not depend on which worker finishes first.
    pub fn stage(&self, inputs: Tensor<2, Int>, key: u64) {
        let device = inputs.device();
        self.staged().push(Staged { device, key, inputs });
    }

    /// One optimizer step of the `Learner`: Sophia's update from `grads`, with the refresh its
    /// schedule asks for computed on the staged inputs at the updated weights.
    ///
    /// # Panics
    /// When the refresh fails (nothing staged, or an estimate that does not fit the
    /// parameters): Burn's `TrainStep::optimize` cannot return an error, and a silently skipped
    /// refresh would leave Sophia without curvature.
    pub fn optimize<M: Module + AsRef<Gpt2>>(&self, optim: &mut ModuleOptimizer, module: M, lr: ModuleLearningRate, grads: GradientsParams) -> M {
        let device = module.devices().into_iter().next().unwrap_or_default();
        let mut parts: Vec<Staged> = {
            let mut staged = self.staged();
            match self.parallel {
                Parallel::OneOptimizer => std::mem::take(&mut *staged),
                Parallel::Ddp => {
                    let (mine, others) = std::mem::take(&mut *staged).into_iter().partition(|s| s.device == device);
                    *staged = others;
                    mine
                }
            }
        };
        parts.sort_by_key(|part| part.key);
        let inputs = parts.into_iter().map(|part| part.inputs.to_device(&device.clone().inner())).collect::<Vec<_>>();
        let missing = device.clone();
        let mut estimator = SampledLabels::new(self.seed, move |_| {
            if inputs.is_empty() {
                return Err(LearnerError::NothingStaged(missing.clone()));
            }
            Ok(Tensor::cat(inputs.clone(), 0))
        });
        match self.control.step(optim, lr, module, grads, &mut estimator) {
            Ok(module) => module,
            Err(RefreshError::Estimator(error)) => panic!("Sophia's Hessian refresh failed: {error}"),
            Err(RefreshError::Mismatch(error)) => panic!("Sophia's Hessian refresh failed: {error}"),
        }
    }

    fn staged(&self) -> MutexGuard<'_, Vec<Staged>> {
        self.staged.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
