//! The handle that tells a [`Sophia`](crate::Sophia) optimizer which of its two operations a
//! module-level step performs, and that collects its statistics.
//!
//! Burn's [`ModuleOptimizer`] walks a module and calls the per-tensor
//! [`Optimizer::step`](burn::optim::Optimizer::step) with one gradient per parameter. Sophia
//! needs two different per-tensor operations that both read and write the same state:
//!
//! - an **update** (`theta`, `m` change; `h` is read), driven by the training gradient, and
//! - a **Hessian refresh** (only `h` changes; every weight stays bit-identical), driven by a
//!   diagonal Hessian estimate (the sampled-label gradient for SophiaG, `u ⊙ Hu` for SophiaH).
//!
//! The state lives inside the [`ModuleOptimizer`], so both must go through it. A
//! [`SophiaControl`] is shared by the optimizer and its caller: [`SophiaControl::refresh`] runs
//! one module-level step in refresh mode, every other step is an update. Because the switch is a
//! handle rather than a different optimizer, it works anywhere a `ModuleOptimizer` is driven,
//! including parameter groups and Burn's `Learner` (see `TrainStep::optimize`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Int, Tensor};

/// What one module-level step of a Sophia optimizer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SophiaPhase {
    /// Update the weights from the training gradient.
    Update,
    /// Refresh the Hessian EMA `h` from a diagonal Hessian estimate; weights are untouched.
    Refresh,
}

/// Lazily accumulated statistics; the tensors are only read when [`SophiaControl::stats`] asks.
#[derive(Default)]
struct Accumulator {
    /// Per parameter: number of coordinates whose step was not clipped (`|m| / denom < 1`).
    not_clipped: Vec<Tensor<1, Int>>,
    /// Number of coordinates the `not_clipped` counts were taken over.
    update_coordinates: u64,
    /// Per parameter, from the latest refresh: sum of `h`.
    hessian_sum: Vec<Tensor<1>>,
    /// Per parameter, from the latest refresh: max of `h`.
    hessian_max: Vec<Tensor<1>>,
    /// Number of coordinates of the latest refresh.
    hessian_coordinates: u64,
}

impl Accumulator {
    /// Drop the figures of the previous refresh before a new one is recorded.
    fn forget_hessian(&mut self) {
        self.hessian_sum.clear();
        self.hessian_max.clear();
        self.hessian_coordinates = 0;
    }
}

#[derive(Default)]
struct Shared {
    refreshing: AtomicBool,
    collect_win_rate: AtomicBool,
    refreshes: AtomicU64,
    accumulator: Mutex<Accumulator>,
}

/// Shared handle between a [`Sophia`](crate::Sophia) optimizer and the code that drives it.
///
/// Cloning the handle shares it. Obtain it from [`Sophia::control`](crate::Sophia::control) or
/// [`SophiaOptimizer::control`](crate::SophiaOptimizer::control).
#[derive(Clone, Default)]
pub struct SophiaControl {
    shared: Arc<Shared>,
}

/// Optimizer statistics for logging (see [`SophiaControl::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct SophiaStats {
    /// Fraction of coordinates whose update was *not* clipped (`|m| / denom < 1`), over the
    /// update steps since the last call with win-rate collection on. The official guidance is
    /// to tune `rho` so that it stays between 0.1 and 0.5. `None` when nothing was collected.
    pub win_rate: Option<f64>,
    /// Mean of the Hessian EMA `h` after the latest refresh (`None` before the first refresh).
    pub hessian_mean: Option<f64>,
    /// Max of the Hessian EMA `h` after the latest refresh (`None` before the first refresh).
    pub hessian_max: Option<f64>,
    /// Number of Hessian refreshes run through this handle.
    pub refreshes: u64,
}

impl SophiaControl {
    /// The operation a per-tensor step performs right now.
    pub fn phase(&self) -> SophiaPhase {
        if self.shared.refreshing.load(Ordering::Acquire) {
            SophiaPhase::Refresh
        } else {
            SophiaPhase::Update
        }
    }

    /// Run one module-level step of `optim` as a Hessian refresh.
    ///
    /// `estimate` holds, per parameter, the diagonal Hessian sample that the optimizer's
    /// [`HessianEstimator`](crate::HessianEstimator) expects: the gradient of the loss on
    /// labels sampled from the model for SophiaG (it is squared inside), `u ⊙ (H u)` for SophiaH
    /// (see [`hutchinson`](crate::hutchinson)). Every weight of `module` comes back
    /// bit-identical; only the optimizer's `h` changes.
    ///
    /// Only parameters that have an entry in `estimate` are touched. When a Sophia optimizer
    /// shares a `ModuleOptimizer` with other optimizers (parameter groups), pass estimates for
    /// Sophia's parameters only: the other optimizers would treat them as gradients.
    pub fn refresh<M: Module>(&self, optim: &mut ModuleOptimizer, module: M, estimate: GradientsParams) -> M {
        self.accumulator().forget_hessian();
        self.shared.refreshing.store(true, Ordering::Release);
        // Reset the phase even if a step panics, so the handle never stays in refresh mode.
        struct ResetOnDrop<'a>(&'a AtomicBool);
        impl Drop for ResetOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _reset = ResetOnDrop(&self.shared.refreshing);
        let module = optim.step(0.0, module, estimate);
        self.shared.refreshes.fetch_add(1, Ordering::AcqRel);
        module
    }

    /// Turn collection of the win rate on or off for the following update steps.
    ///
    /// Off by default: counting costs two extra element-wise kernels and one reduction per
    /// parameter, so a training loop turns it on for the steps it logs.
    pub fn collect_win_rate(&self, on: bool) {
        self.shared.collect_win_rate.store(on, Ordering::Release);
    }

    pub(crate) fn collecting_win_rate(&self) -> bool {
        self.shared.collect_win_rate.load(Ordering::Acquire)
    }

    pub(crate) fn record_update<const D: usize>(&self, not_clipped: Tensor<D, burn::tensor::Bool>) {
        let coordinates = not_clipped.shape().num_elements() as u64;
        let count = not_clipped.int().sum();
        let mut acc = self.accumulator();
        acc.not_clipped.push(count);
        acc.update_coordinates += coordinates;
    }

    pub(crate) fn record_refresh<const D: usize>(&self, hessian: &Tensor<D>) {
        let coordinates = hessian.shape().num_elements() as u64;
        let flat = hessian.clone().flatten::<1>(0, D - 1);
        let (sum, max) = (flat.clone().sum(), flat.max());
        let mut acc = self.accumulator();
        acc.hessian_sum.push(sum);
        acc.hessian_max.push(max);
        acc.hessian_coordinates += coordinates;
    }

    /// Describe `hessians` (one flattened `h` per parameter, e.g. loaded from a checkpoint) as
    /// the latest refresh, so statistics after a resume equal those of an uninterrupted run.
    pub(crate) fn restore_hessians(&self, hessians: Vec<Tensor<1>>) {
        self.accumulator().forget_hessian();
        for hessian in &hessians {
            self.record_refresh(hessian);
        }
    }

    /// Number of Hessian refreshes run through this handle (no device access, no counter reset).
    pub fn refreshes(&self) -> u64 {
        self.shared.refreshes.load(Ordering::Acquire)
    }

    /// Read the statistics; this synchronises with the device once.
    ///
    /// The win-rate counters are reset by the call; the Hessian figures describe the latest
    /// refresh and stay until the next one.
    pub fn stats(&self) -> SophiaStats {
        let mut acc = self.accumulator();
        let win_rate = (acc.update_coordinates > 0).then(|| {
            let counts = std::mem::take(&mut acc.not_clipped);
            let not_clipped: i64 = Tensor::cat(counts, 0).sum().into_scalar::<i64>();
            not_clipped as f64 / acc.update_coordinates as f64
        });
        acc.update_coordinates = 0;
        let (hessian_mean, hessian_max) = if acc.hessian_coordinates > 0 {
            // Summed in sorted order, so the figure does not depend on the parameters' order.
            let mut sums: Vec<f64> = Tensor::cat(acc.hessian_sum.clone(), 0).into_data().iter::<f64>().collect();
            sums.sort_by(f64::total_cmp);
            let sum: f64 = sums.iter().sum();
            let max = Tensor::cat(acc.hessian_max.clone(), 0).max().into_scalar::<f64>();
            (Some(sum / acc.hessian_coordinates as f64), Some(max))
        } else {
            (None, None)
        };
        SophiaStats {
            win_rate,
            hessian_mean,
            hessian_max,
            refreshes: self.refreshes(),
        }
    }

    fn accumulator(&self) -> MutexGuard<'_, Accumulator> {
        // The accumulator only holds statistics; a panic elsewhere leaves it usable.
        self.shared.accumulator.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
