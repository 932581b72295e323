//! Global-norm gradient clipping over all parameters of a module.
//!
//! Burn clips each parameter on its own; language-model training clips the gradient of the
//! whole model by its global L2 norm, as PyTorch's `clip_grad_norm_`:
//!
//! ```text
//! total = sqrt(Σ_tensors Σ g²)
//! scale = min(1, max_norm / (total + 1e-6))
//! g ← g · scale
//! ```
//!
//! On flex (feature `flex`) each tensor's `Σ g²` is one pass over its elements summed in f64
//! ([`GlobalNormClip::with_fused`]); elsewhere it is Burn's `square().sum()` in the tensor's
//! precision, all of them read back in one transfer. The two agree to f32 rounding.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::error::{ConfigError, Validator};

/// Clips a module's gradients to a maximum global L2 norm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlobalNormClip {
    max_norm: f64,
    fused: bool,
}

/// What one clip saw and did, for logging.
#[derive(Debug, Clone, PartialEq)]
pub struct GradNorm {
    /// Global L2 norm of the gradients before clipping.
    pub total_norm: f64,
    /// L2 norm of each parameter's gradient before clipping, in module visiting order.
    pub per_tensor: Vec<(ParamId, f64)>,
    /// Factor the gradients were multiplied by (1 when not clipped).
    pub scale: f64,
    /// Whether the gradients were scaled down.
    pub clipped: bool,
}

impl GradNorm {
    /// Whether the norm is finite; a NaN or infinite norm means a NaN/Inf gradient somewhere.
    pub fn is_finite(&self) -> bool {
        self.total_norm.is_finite()
    }
}

impl GlobalNormClip {
    /// Clip to at most `max_norm` (a finite number > 0).
    pub fn new(max_norm: f64) -> Result<Self, ConfigError> {
        Validator::new("GlobalNormClip").positive("max_norm", max_norm)?;
        Ok(Self { max_norm, fused: true })
    }

    /// `false`: Burn's tensor operations for the sums of squares on every backend (the
    /// reference the one-pass sums are tested against); `true` (the default): one pass per
    /// tensor on flex.
    pub fn with_fused(self, fused: bool) -> Self {
        Self { fused, ..self }
    }

    /// The configured maximum norm.
    pub fn max_norm(&self) -> f64 {
        self.max_norm
    }

    /// Scale `grads` (the gradients of `module`'s parameters) so that their global norm is at
    /// most `max_norm`, and report the norm before clipping. Reading the norm synchronises with
    /// the device once.
    ///
    /// A non-finite norm (a NaN or Inf gradient) leaves the gradients as they are; check
    /// [`GradNorm::is_finite`] and skip the step.
    pub fn clip<M: Module>(&self, module: &M, mut grads: GradientsParams) -> (GradientsParams, GradNorm) {
        let norm = norm_of(module, &grads, self.fused);
        let scale = if norm.total_norm.is_finite() { (self.max_norm / (norm.total_norm + 1e-6)).min(1.0) } else { 1.0 };
        if scale < 1.0 {
            module.visit(&mut ScaleGrads { grads: &mut grads, scale });
        }
        (grads, GradNorm { scale, clipped: scale < 1.0, ..norm })
    }
}

/// The global L2 norm of `grads` over `module`'s parameters, without changing them.
pub fn global_norm<M: Module>(module: &M, grads: &GradientsParams) -> GradNorm {
    norm_of(module, grads, true)
}

fn norm_of<M: Module>(module: &M, grads: &GradientsParams, fused: bool) -> GradNorm {
    let mut squares = SumSquares { grads, fused, ids: Vec::new(), sums: Vec::new() };
    module.visit(&mut squares);
    // The sums still on the device, read back in one transfer.
    let pending: Vec<Tensor<1>> = squares.sums.iter().filter_map(|sum| if let SquareSum::OnDevice(t) = sum { Some(t.as_ref().clone()) } else { None }).collect();
    let mut read = if pending.is_empty() { Vec::new() } else { Tensor::cat(pending, 0).into_data().iter::<f64>().collect() }.into_iter();
    let sums: Vec<f64> =
        squares.sums.into_iter().map(|sum| if let SquareSum::Read(value) = sum { value } else { read.next().expect("one value per pending sum") }).collect();
    let total_norm = sums.iter().sum::<f64>().sqrt();
    let per_tensor = squares.ids.into_iter().zip(sums.iter().map(|s| s.sqrt())).collect();
    GradNorm { total_norm, per_tensor, scale: 1.0, clipped: false }
}

/// One tensor's `Σ g²`: read on the host already, or a scalar tensor on the device.
enum SquareSum {
    #[cfg_attr(not(feature = "flex"), allow(dead_code))]
    Read(f64),
    OnDevice(Box<Tensor<1>>),
}

struct SumSquares<'a> {
    grads: &'a GradientsParams,
    #[cfg_attr(not(feature = "flex"), allow(dead_code))]
    fused: bool,
    ids: Vec<ParamId>,
    sums: Vec<SquareSum>,
}

impl ModuleVisitor for SumSquares<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            self.ids.push(param.id);
            #[cfg(feature = "flex")]
            if let Some(sum) = self.fused.then(|| crate::fused::sum_of_squares(&grad)).flatten() {
                self.sums.push(SquareSum::Read(sum));
                return;
            }
            self.sums.push(SquareSum::OnDevice(Box::new(grad.square().sum())));
        }
    }
}

struct ScaleGrads<'a> {
    grads: &'a mut GradientsParams,
    scale: f64,
}

impl ModuleVisitor for ScaleGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, grad.mul_scalar(self.scale));
        }
    }
}
