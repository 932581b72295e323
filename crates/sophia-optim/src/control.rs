//! The handle that drives a [`Sophia`](crate::Sophia) optimizer: its refresh schedule, the one
//! side channel through Burn's module optimizer, and its statistics.
//!
//! Burn's [`ModuleOptimizer`] walks a module and calls the per-tensor
//! [`Optimizer::step`](burn::optim::Optimizer::step) with one gradient per parameter, and keeps
//! the per-parameter state to itself. Sophia has two operations on that state:
//!
//! - an **update** (`θ`, `m` change; `h` is read), driven by the training gradient, and
//! - a **Hessian refresh** (only `h` changes; every weight stays bit-identical), driven by a
//!   diagonal Hessian estimate (`ĝ` for SophiaG, `u ⊙ Hu` for SophiaH).
//!
//! Both must reach the state through `ModuleOptimizer::step`, so [`SophiaControl::step`] runs
//! module-level passes and tells the per-tensor step which one it is in: this is the only
//! side channel, and it is keyed by device, so data-parallel workers that share the handle (Burn
//! clones the optimizer for each device) never see each other's passes. A per-tensor step that
//! runs outside a pass (someone called `ModuleOptimizer::step` directly, which would never
//! refresh `h`) panics with the fix; a refresh whose estimate does not match the parameters
//! Sophia updates is an error, not a silent partial refresh.
//!
//! The schedule ([`Schedule`]) is counted in updates taken, read from the optimizer state
//! itself, so it survives checkpoints and stays right whoever drives the optimizer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Bool, Device, Int, Tensor};

use crate::auto_rho::AutoRho;
use crate::clip::GlobalNormClip;
use crate::estimator::{HessianEstimator, Refresh};

/// When Sophia refreshes: every `k` updates, before the update it belongs to (SophiaH, paper,
/// Algorithm 3: the first refresh precedes the first update) or after it (SophiaG, official
/// loop: the first refresh follows update `k`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    interval: usize,
    before_update: bool,
}

impl Schedule {
    /// Every `interval` (≥ 1) updates, before or after the update.
    pub fn new(interval: usize, before_update: bool) -> Self {
        Self { interval: interval.max(1), before_update }
    }

    /// Whether a refresh precedes the update that follows `updates_taken` updates.
    pub fn due_before_update(&self, updates_taken: usize) -> bool {
        self.before_update && updates_taken.is_multiple_of(self.interval)
    }

    /// Whether a refresh follows update number `updates_taken` (counted from 1).
    pub fn due_after_update(&self, updates_taken: usize) -> bool {
        !self.before_update && updates_taken > 0 && updates_taken.is_multiple_of(self.interval)
    }

    /// The refresh interval `k`.
    pub fn interval(&self) -> usize {
        self.interval
    }
}

/// What the per-tensor step of the current module-level pass does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Update the weights, counting the coordinates whose step is not clipped for whom asks.
    Update { wins: WinCount },
    /// Fold the estimate into `h`; weights untouched.
    Refresh,
}

/// Who an update's win count is for: the logged statistics, the automatic `ρ`, both or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WinCount {
    stats: bool,
    auto_rho: bool,
}

impl WinCount {
    /// Whether the update counts its wins at all.
    pub(crate) fn any(self) -> bool {
        self.stats || self.auto_rho
    }
}

/// Why a refresh failed: its estimate could not be made, or did not fit the parameters.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError<E> {
    /// The estimator failed.
    #[error("the Hessian estimate failed: {0}")]
    Estimator(#[source] E),
    /// The estimate does not fit the parameters Sophia optimizes.
    #[error(transparent)]
    Mismatch(#[from] RefreshMismatch),
}

/// An estimate that does not fit the parameters Sophia optimizes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshMismatch {
    /// The estimate holds parameters that Sophia does not optimize: another optimizer sharing the
    /// module optimizer would have taken them as gradients.
    #[error(
        "the Hessian estimate holds {given} parameters but Sophia refreshed {refreshed}: pass estimates only for the parameters Sophia optimizes (other optimizers in the same ModuleOptimizer take them as gradients)"
    )]
    ForeignParameters {
        /// Parameters in the estimate.
        given: usize,
        /// Parameters Sophia refreshed.
        refreshed: usize,
    },
    /// The estimate misses parameters that Sophia updates: their `h` would silently go stale.
    #[error("the Hessian estimate covers {refreshed} of the {updated} parameters Sophia updates: the estimator must return an entry for every trained parameter")]
    Incomplete {
        /// Parameters refreshed.
        refreshed: usize,
        /// Parameters the last update changed.
        updated: usize,
    },
}

/// Optimizer statistics for logging (see [`SophiaControl::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct SophiaStats {
    /// Fraction of coordinates whose update was *not* clipped (`|m| / D(h) < 1`), over the
    /// updates since the last call with win-rate collection on. The official guidance is to
    /// tune `rho` so that it stays between 0.1 and 0.5. `None` when nothing was collected.
    pub win_rate: Option<f64>,
    /// Mean of the Hessian EMA `h` after the latest refresh (`None` before the first refresh).
    pub hessian_mean: Option<f64>,
    /// Max of the Hessian EMA `h` after the latest refresh (`None` before the first refresh).
    pub hessian_max: Option<f64>,
    /// Hessian refreshes run through this handle (on its busiest device).
    pub refreshes: u64,
}

/// Summary figures of the `h` of the latest refresh, one lazy tensor per parameter.
#[derive(Clone, Default)]
struct HessianFigures {
    sums: Vec<Tensor<1>>,
    maxima: Vec<Tensor<1>>,
    coordinates: u64,
}

impl HessianFigures {
    fn record<const D: usize>(&mut self, hessian: &Tensor<D>) {
        let flat = hessian.clone().flatten::<1>(0, D - 1);
        self.coordinates += flat.dims()[0] as u64;
        self.sums.push(flat.clone().sum());
        self.maxima.push(flat.max());
    }

    /// `(mean, max)`; the sum runs in sorted order, so it does not depend on parameter order.
    fn read(&self) -> Option<(f64, f64)> {
        if self.coordinates == 0 {
            return None;
        }
        let mut sums: Vec<f64> = Tensor::cat(self.sums.clone(), 0).into_data().iter::<f64>().collect();
        sums.sort_by(f64::total_cmp);
        let max = Tensor::cat(self.maxima.clone(), 0).max().into_scalar::<f64>();
        Some((sums.iter().sum::<f64>() / self.coordinates as f64, max))
    }
}

/// What a checkpoint says about the optimizer state: updates taken, the clipping scale in force
/// and the `h` of each parameter.
#[derive(Clone)]
pub(crate) struct Restored {
    pub(crate) updates: usize,
    pub(crate) scale: Option<f64>,
    pub(crate) hessians: Vec<Tensor<1>>,
}

/// One device's view of the optimizer: the pass it runs and what the passes reported.
struct DeviceState {
    device: Device,
    pass: Option<Pass>,
    /// Updates taken (the optimizer state's `step`).
    updates: usize,
    refreshes: u64,
    /// Parameters visited by the current pass.
    visited: usize,
    /// Parameters the latest update changed.
    updated: usize,
    /// Per parameter: coordinates not clipped, since the last `stats()`.
    not_clipped: Vec<Tensor<1, Int>>,
    update_coordinates: u64,
    /// The same since the last refresh, for the automatic `ρ`.
    wins_since_refresh: Vec<Tensor<1, Int>>,
    coordinates_since_refresh: u64,
    hessian: HessianFigures,
}

impl DeviceState {
    fn new(device: Device, restored: Option<&Restored>) -> Self {
        let mut hessian = HessianFigures::default();
        for h in restored.map(|r| r.hessians.as_slice()).unwrap_or_default() {
            hessian.record(h);
        }
        Self {
            device,
            pass: None,
            updates: restored.map_or(0, |r| r.updates),
            refreshes: 0,
            visited: 0,
            updated: 0,
            not_clipped: Vec::new(),
            update_coordinates: 0,
            wins_since_refresh: Vec::new(),
            coordinates_since_refresh: 0,
            hessian,
        }
    }
}

#[derive(Default)]
struct Devices {
    states: Vec<DeviceState>,
    restored: Option<Restored>,
}

impl Devices {
    fn get(&mut self, device: &Device) -> &mut DeviceState {
        match self.states.iter().position(|s| s.device == *device) {
            Some(i) => &mut self.states[i],
            None => {
                let state = DeviceState::new(device.clone(), self.restored.as_ref());
                self.states.push(state);
                self.states.last_mut().expect("just pushed")
            }
        }
    }
}

struct Shared {
    schedule: Schedule,
    refresh_clip: Option<GlobalNormClip>,
    /// `ρ` (SophiaG) or `γ` (SophiaH) in force; changes at refreshes with `auto_rho`.
    scale: Mutex<f64>,
    auto_rho: Option<AutoRho>,
    collect_win_rate: AtomicBool,
    devices: Mutex<Devices>,
}

/// Shared handle between a [`Sophia`](crate::Sophia) optimizer and the code that drives it; see
/// the [module documentation](self). Cloning the handle shares it.
#[derive(Clone)]
pub struct SophiaControl {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SophiaControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SophiaControl({:?})", self.shared.schedule)
    }
}

impl SophiaControl {
    pub(crate) fn new(schedule: Schedule, refresh_clip: Option<GlobalNormClip>, scale: f64, auto_rho: Option<AutoRho>) -> Self {
        Self {
            shared: Arc::new(Shared {
                schedule,
                refresh_clip,
                scale: Mutex::new(scale),
                auto_rho,
                collect_win_rate: AtomicBool::new(false),
                devices: Mutex::new(Devices::default()),
            }),
        }
    }

    /// The clipping scale in force: `ρ` (SophiaG) or `γ` (SophiaH).
    pub fn scale(&self) -> f64 {
        *self.shared.scale.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_scale(&self, scale: f64) {
        *self.shared.scale.lock().unwrap_or_else(PoisonError::into_inner) = scale;
    }

    /// The refresh schedule.
    pub fn schedule(&self) -> Schedule {
        self.shared.schedule
    }

    /// One Sophia iteration on `module`'s device: the update from `grads`, with the Hessian
    /// refresh the schedule puts before (SophiaH) or after (SophiaG) it. When a refresh is due,
    /// `estimator` is asked for its estimate at the weights of that moment; SophiaG's estimate is
    /// clipped to the configured global norm and squared into `h`.
    ///
    /// `optim` must be the module optimizer this handle's Sophia belongs to.
    pub fn step<M: Module, E: HessianEstimator<M> + ?Sized>(
        &self,
        optim: &mut ModuleOptimizer,
        lr: impl Into<ModuleLearningRate>,
        module: M,
        grads: GradientsParams,
        estimator: &mut E,
    ) -> Result<M, RefreshError<E::Error>> {
        let device = module_device(&module);
        let schedule = self.shared.schedule;
        let before = self.updates_taken(&device);
        let module = if schedule.due_before_update(before) { self.refresh_from(optim, module, estimator, Refresh { update: before })? } else { module };
        let wins = WinCount { stats: self.shared.collect_win_rate.load(Ordering::Acquire), auto_rho: self.shared.auto_rho.is_some() };
        let pass = Pass::Update { wins };
        let module = self.run_pass(optim, &device, pass, |optim| optim.step(lr, module, grads));
        let after = self.updates_taken(&device);
        if after > before && schedule.due_after_update(after) {
            return self.refresh_from(optim, module, estimator, Refresh { update: after - 1 });
        }
        Ok(module)
    }

    /// Refresh `h` now, from `estimate` (the refresh [`step`](Self::step) runs when one is due:
    /// the same clipping, the same checks). Every weight comes back bit-identical.
    pub fn refresh<M: Module>(&self, optim: &mut ModuleOptimizer, module: M, estimate: GradientsParams) -> Result<M, RefreshMismatch> {
        self.fold(optim, module, estimate)
    }

    /// Refresh `h` now from `estimator`'s estimate at `module` (for the coming update), whatever
    /// the schedule says: the refresh [`step`](Self::step) runs when one is due.
    pub fn refresh_with<M: Module, E: HessianEstimator<M> + ?Sized>(
        &self,
        optim: &mut ModuleOptimizer,
        module: M,
        estimator: &mut E,
    ) -> Result<M, RefreshError<E::Error>> {
        let update = self.updates_taken(&module_device(&module));
        self.refresh_from(optim, module, estimator, Refresh { update })
    }

    fn refresh_from<M: Module, E: HessianEstimator<M> + ?Sized>(
        &self,
        optim: &mut ModuleOptimizer,
        module: M,
        estimator: &mut E,
        refresh: Refresh,
    ) -> Result<M, RefreshError<E::Error>> {
        let estimate = estimator.estimate(&module, refresh).map_err(RefreshError::Estimator)?;
        Ok(self.fold(optim, module, estimate)?)
    }

    /// Clip the estimate (SophiaG), run the refresh pass and check it touched exactly the
    /// parameters Sophia updates.
    fn fold<M: Module>(&self, optim: &mut ModuleOptimizer, module: M, estimate: GradientsParams) -> Result<M, RefreshMismatch> {
        let device = module_device(&module);
        let estimate = match &self.shared.refresh_clip {
            Some(clip) => clip.clip(&module, estimate).0,
            None => estimate,
        };
        let given = estimate.len();
        self.devices().get(&device).hessian = HessianFigures::default();
        let module = self.run_pass(optim, &device, Pass::Refresh, |optim| optim.step(0.0, module, estimate));
        let mut devices = self.devices();
        let state = devices.get(&device);
        state.refreshes += 1;
        let refreshed = state.visited;
        if refreshed != given {
            return Err(RefreshMismatch::ForeignParameters { given, refreshed });
        }
        if state.updated > 0 && refreshed < state.updated {
            return Err(RefreshMismatch::Incomplete { refreshed, updated: state.updated });
        }
        // The automatic ρ: the win rate of the updates since the previous refresh moves ρ for the
        // updates until the next one.
        if let Some(auto) = self.shared.auto_rho
            && state.coordinates_since_refresh > 0
        {
            let counts = std::mem::take(&mut state.wins_since_refresh);
            let wins: i64 = Tensor::cat(counts, 0).sum().into_scalar::<i64>();
            let win_rate = wins as f64 / std::mem::take(&mut state.coordinates_since_refresh) as f64;
            drop(devices);
            self.set_scale(auto.next(self.scale(), win_rate));
        }
        Ok(module)
    }

    /// Run one module-level pass of `optim` on `device` as `pass`; the device goes back to no
    /// pass afterwards, also when the pass panics.
    fn run_pass<M>(&self, optim: &mut ModuleOptimizer, device: &Device, pass: Pass, run: impl FnOnce(&mut ModuleOptimizer) -> M) -> M {
        {
            let mut devices = self.devices();
            let state = devices.get(device);
            assert!(state.pass.is_none(), "Sophia: a pass is already running on {device:?}; one optimizer per device and thread");
            state.pass = Some(pass);
            state.visited = 0;
        }
        struct EndPass<'a>(&'a SophiaControl, &'a Device, Pass);
        impl Drop for EndPass<'_> {
            fn drop(&mut self) {
                let mut devices = self.0.devices();
                let state = devices.get(self.1);
                state.pass = None;
                if matches!(self.2, Pass::Update { .. }) && state.visited > 0 {
                    state.updated = state.visited;
                }
            }
        }
        let _end = EndPass(self, device, pass);
        run(optim)
    }

    /// The pass a per-tensor step on `device` belongs to.
    ///
    /// # Panics
    /// Outside a pass, naming the fix: Sophia's updates must go through [`step`](Self::step).
    pub(crate) fn pass(&self, device: &Device) -> Pass {
        let mut devices = self.devices();
        let state = devices.get(device);
        let pass = state.pass.unwrap_or_else(|| {
            panic!(
                "Sophia was stepped outside SophiaControl::step on {device:?}: drive it with SophiaOptimizer::step or SophiaControl::step \
                 (they own the Hessian refresh); a plain ModuleOptimizer::step would never refresh h. With Burn's Learner, override \
                 TrainStep::optimize (see sophia_train::learner)"
            )
        });
        state.visited += 1;
        pass
    }

    pub(crate) fn record_update(&self, device: &Device, step: usize) {
        let mut devices = self.devices();
        let state = devices.get(device);
        state.updates = state.updates.max(step);
    }

    pub(crate) fn record_wins<const D: usize>(&self, device: &Device, not_clipped: Tensor<D, Bool>, wins: WinCount) {
        let coordinates = not_clipped.shape().num_elements() as u64;
        self.record_win_tensor(device, not_clipped.int().sum(), coordinates, wins);
    }

    /// [`record_wins`](Self::record_wins) with the count already taken (by a fused update).
    #[cfg(feature = "flex")]
    pub(crate) fn record_win_count(&self, device: &Device, not_clipped: u64, coordinates: u64, wins: WinCount) {
        // Built by tensor operations, so it has the device's integer type as the composed count.
        let count = Tensor::<1, Int>::zeros([1], device).add_scalar(not_clipped as i64);
        self.record_win_tensor(device, count, coordinates, wins);
    }

    fn record_win_tensor(&self, device: &Device, count: Tensor<1, Int>, coordinates: u64, wins: WinCount) {
        let mut devices = self.devices();
        let state = devices.get(device);
        if wins.auto_rho {
            state.wins_since_refresh.push(count.clone());
            state.coordinates_since_refresh += coordinates;
        }
        if wins.stats {
            state.not_clipped.push(count);
            state.update_coordinates += coordinates;
        }
    }

    pub(crate) fn record_refresh<const D: usize>(&self, device: &Device, hessian: &Tensor<D>) {
        self.devices().get(device).hessian.record(hessian);
    }

    /// Describe a loaded optimizer state: updates taken and each parameter's `h`, so that the
    /// schedule and the statistics after a resume equal those of the uninterrupted run.
    pub(crate) fn restore(&self, restored: Restored) {
        // A fixed ρ is the configuration's; an automatic one continues where it was.
        if let (Some(_), Some(scale)) = (self.shared.auto_rho, restored.scale) {
            self.set_scale(scale);
        }
        let mut devices = self.devices();
        devices.states.clear();
        devices.restored = Some(restored);
    }

    /// Updates taken on `device` (the optimizer state's step count).
    pub fn updates_taken(&self, device: &Device) -> usize {
        self.devices().get(device).updates
    }

    /// Turn collection of the win rate on or off for the following updates.
    ///
    /// Off by default: counting costs two extra element-wise kernels and one reduction per
    /// parameter, so a training loop turns it on for the steps it logs.
    pub fn collect_win_rate(&self, on: bool) {
        self.shared.collect_win_rate.store(on, Ordering::Release);
    }

    /// Hessian refreshes run on the busiest device (no device access).
    pub fn refreshes(&self) -> u64 {
        self.devices().states.iter().map(|s| s.refreshes).max().unwrap_or(0)
    }

    /// Read the statistics; this synchronises with the device once.
    ///
    /// The win-rate counters (summed over devices) are reset by the call; the Hessian figures
    /// describe the latest refresh on the first device that has one, or the loaded state.
    pub fn stats(&self) -> SophiaStats {
        let mut devices = self.devices();
        let mut counts = Vec::new();
        let mut coordinates = 0;
        for state in &mut devices.states {
            counts.append(&mut state.not_clipped);
            coordinates += std::mem::take(&mut state.update_coordinates);
        }
        let win_rate = (coordinates > 0).then(|| {
            let not_clipped: i64 = Tensor::cat(counts, 0).sum().into_scalar::<i64>();
            not_clipped as f64 / coordinates as f64
        });
        let restored = devices.restored.as_ref().map(|r| DeviceState::new(Device::default(), Some(r)).hessian);
        let hessian = devices.states.iter().map(|s| &s.hessian).find(|h| h.coordinates > 0).or(restored.as_ref()).and_then(HessianFigures::read);
        SophiaStats {
            win_rate,
            hessian_mean: hessian.map(|(mean, _)| mean),
            hessian_max: hessian.map(|(_, max)| max),
            refreshes: devices.states.iter().map(|s| s.refreshes).max().unwrap_or(0),
        }
    }

    fn devices(&self) -> MutexGuard<'_, Devices> {
        // The state only holds counters and statistics; a panic elsewhere leaves it usable.
        self.shared.devices.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The device of a module's parameters (the default device for a module without any).
fn module_device<M: Module>(module: &M) -> Device {
    module.devices().into_iter().next().unwrap_or_default()
}
