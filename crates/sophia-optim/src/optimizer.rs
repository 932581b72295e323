//! [`SophiaOptimizer`]: Sophia for a whole module, with the refresh inside its own step.

use burn::module::{Module, ParamGroup};
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer, OptimizerRecord};
use burn::store::RecordError;
use burn::tensor::{Bytes, Device, Tensor, TensorData};

use crate::control::{RefreshError, RefreshMismatch, Restored, SophiaControl, SophiaStats};
use crate::error::{ConfigError, Validator};
use crate::estimator::HessianEstimator;
use crate::sophia::{Sophia, SophiaVariant};

/// Sophia for a whole module: Burn's [`ModuleOptimizer`] and the [`SophiaControl`] that owns the
/// refresh schedule, as one value. Its [`step`](Self::step) is one Sophia iteration, the Hessian
/// refresh included (optax-style: the refresh lives inside the optimizer's update).
///
/// ```text
/// let mut optim = SophiaGConfig::new(tokens_per_step).try_init()?;
/// let mut estimator = SampledLabels::new(seed, |refresh| fresh_batch(refresh.update));
/// for step in 0..steps {
///     let grads = GradientsParams::from_grads(loss(&model, &batch).backward(), &model);
///     model = optim.step(lr, model, grads, &mut estimator)?; // refreshes h every k updates
/// }
/// ```
#[derive(Clone)]
pub struct SophiaOptimizer {
    optim: ModuleOptimizer,
    sophia: Sophia,
}

impl From<Sophia> for SophiaOptimizer {
    fn from(sophia: Sophia) -> Self {
        Self::new(sophia)
    }
}

/// A record that does not hold a Sophia state.
#[derive(Debug, thiserror::Error)]
pub enum SophiaRecordError {
    /// The bytes are not a Burn optimizer record.
    #[error("not an optimizer record: {0:?}")]
    Record(RecordError),
    /// A parameter's state lacks a part of Sophia's state.
    #[error("the optimizer record is not a Sophia state: parameter {param} has no `{field}` (was it written by another optimizer?)")]
    NotSophia {
        /// The parameter id.
        param: String,
        /// The missing field.
        field: &'static str,
    },
    /// Parameters disagree on the clipping scale in force.
    #[error("the optimizer record is inconsistent: its parameters hold different clipping scales (rho or gamma)")]
    InconsistentScale,
    /// Parameters disagree on the number of updates taken.
    #[error("the optimizer record is inconsistent: its parameters have taken between {min} and {max} updates")]
    Inconsistent {
        /// Fewest updates.
        min: usize,
        /// Most updates.
        max: usize,
    },
}

impl SophiaOptimizer {
    /// Optimize every parameter of a module with `sophia`.
    pub fn new(sophia: Sophia) -> Self {
        Self { optim: ModuleOptimizer::from(sophia.clone()), sophia }
    }

    /// Use another weight decay for the parameters of `group` (e.g. none for biases and
    /// LayerNorm gains); everything else, the control handle included, is shared. See
    /// [`ModuleOptimizer::with_group`] for how groups match.
    pub fn with_weight_decay_group(mut self, group: ParamGroup, weight_decay: f64) -> Result<Self, ConfigError> {
        Validator::new("Sophia").non_negative("weight_decay", weight_decay)?;
        self.optim = self.optim.with_group(group, self.sophia.with_weight_decay(weight_decay), None);
        Ok(self)
    }

    /// One Sophia iteration: the update from `grads`, with the Hessian refresh that the schedule
    /// puts before (SophiaH) or after (SophiaG) it, estimated by `estimator` at the weights of
    /// that moment. See [`SophiaControl::step`].
    pub fn step<M: Module, E: HessianEstimator<M> + ?Sized>(
        &mut self,
        lr: impl Into<ModuleLearningRate>,
        module: M,
        grads: GradientsParams,
        estimator: &mut E,
    ) -> Result<M, RefreshError<E::Error>> {
        self.sophia.control().step(&mut self.optim, lr, module, grads, estimator)
    }

    /// Refresh `h` now from `estimate`, whatever the schedule says (what [`step`](Self::step)
    /// does when a refresh is due). Every weight comes back bit-identical.
    pub fn refresh<M: Module>(&mut self, module: M, estimate: GradientsParams) -> Result<M, RefreshMismatch> {
        self.sophia.control().refresh(&mut self.optim, module, estimate)
    }

    /// Refresh `h` now from `estimator`'s estimate at `module`, whatever the schedule says (the
    /// refresh [`step`](Self::step) runs when one is due: the same clipping, the same checks).
    pub fn refresh_with<M: Module, E: HessianEstimator<M> + ?Sized>(&mut self, module: M, estimator: &mut E) -> Result<M, RefreshError<E::Error>> {
        self.sophia.control().refresh_with(&mut self.optim, module, estimator)
    }

    /// The handle that drives refreshes and collects statistics.
    pub fn control(&self) -> SophiaControl {
        self.sophia.control()
    }

    /// Statistics for logging; see [`SophiaControl::stats`].
    pub fn stats(&self) -> SophiaStats {
        self.sophia.control().stats()
    }

    /// The variant (SophiaG or SophiaH) and its constants.
    pub fn variant(&self) -> SophiaVariant {
        self.sophia.variant()
    }

    /// The module optimizer and the control handle, e.g. to hand the optimizer to Burn's
    /// `Learner` and drive it with [`SophiaControl::step`] from `TrainStep::optimize`.
    pub fn into_parts(self) -> (ModuleOptimizer, SophiaControl) {
        let control = self.sophia.control();
        (self.optim, control)
    }

    /// The optimizer state as a Burn record.
    pub fn to_record(&self) -> OptimizerRecord {
        self.optim.to_record()
    }

    /// Restore the optimizer state from a Burn record, refusing one that is not a Sophia state.
    pub fn load_record(self, record: OptimizerRecord) -> Result<Self, SophiaRecordError> {
        self.from_bytes(record.into_bytes().map_err(SophiaRecordError::Record)?)
    }

    /// Serialize the optimizer state (burnpack bytes).
    pub fn into_bytes(&self) -> Result<Bytes, RecordError> {
        self.optim.into_bytes()
    }

    /// Restore the optimizer state from burnpack bytes, refusing bytes that do not hold a Sophia
    /// state. The schedule continues from the record's update count and the statistics describe
    /// its `h`, as they did after the refresh that produced it.
    pub fn from_bytes(mut self, bytes: Bytes) -> Result<Self, SophiaRecordError> {
        let restored = read_state(bytes.clone())?;
        self.optim = self.optim.from_bytes(bytes).map_err(SophiaRecordError::Record)?;
        self.sophia.control().restore(restored);
        Ok(self)
    }
}

/// Updates taken and each parameter's `h`, read from a record written by [`Sophia`].
fn read_state(bytes: Bytes) -> Result<Restored, SophiaRecordError> {
    let reader = burn_pack::Reader::from_bytes(bytes).map_err(|e| SophiaRecordError::Record(e.into()))?;
    let scalars = reader.scalars();
    let params: Vec<&str> = scalars.keys().filter_map(|key| key.strip_suffix(".__rank")).collect();
    let names = reader.tensor_names();
    let device = Device::default();
    let (mut hessians, mut steps, mut scales, mut refreshed) = (Vec::new(), Vec::new(), Vec::new(), false);
    for param in params {
        let missing = |field| SophiaRecordError::NotSophia { param: param.to_string(), field };
        let step = scalars.get(&format!("{param}.step")).ok_or_else(|| missing("step"))?;
        steps.push(usize::try_from(*step).map_err(|_| missing("step"))?);
        let scale = scalars.get(&format!("{param}.scale")).ok_or_else(|| missing("scale"))?;
        scales.push(f64::try_from(*scale).map_err(|_| missing("scale"))?);
        let name = format!("{param}.hessian");
        if !names.iter().any(|n| *n == name) {
            return Err(missing("hessian"));
        }
        let data = reader.tensor_data(&name).map_err(|_| missing("hessian"))?;
        let values: Vec<f32> = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let len = values.len();
        refreshed |= values.iter().any(|&v| v != 0.0);
        hessians.push(Tensor::<1>::from_data(TensorData::new(values, [len]), &device));
    }
    let (min, max) = (steps.iter().copied().min().unwrap_or(0), steps.iter().copied().max().unwrap_or(0));
    if min != max {
        return Err(SophiaRecordError::Inconsistent { min, max });
    }
    // An all-zero `h` means no refresh ran yet: there are no Hessian figures to describe.
    let scale = scales.first().copied();
    if scales.iter().any(|s| Some(*s) != scale) {
        return Err(SophiaRecordError::InconsistentScale);
    }
    Ok(Restored { updates: max, scale, hessians: if refreshed { hessians } else { Vec::new() } })
}
