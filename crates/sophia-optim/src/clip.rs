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

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::error::{ConfigError, Validator};

/// Clips a module's gradients to a maximum global L2 norm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlobalNormClip {
    max_norm: f64,
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
        Ok(Self { max_norm })
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
        let norm = global_norm(module, &grads);
        let scale = if norm.total_norm.is_finite() {
            (self.max_norm / (norm.total_norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        if scale < 1.0 {
            module.visit(&mut ScaleGrads { grads: &mut grads, scale });
        }
        (grads, GradNorm { scale, clipped: scale < 1.0, ..norm })
    }
}

/// The global L2 norm of `grads` over `module`'s parameters, without changing them.
pub fn global_norm<M: Module>(module: &M, grads: &GradientsParams) -> GradNorm {
    let mut squares = SumSquares { grads, ids: Vec::new(), sums: Vec::new() };
    module.visit(&mut squares);
    let sums: Vec<f64> = if squares.sums.is_empty() {
        Vec::new()
    } else {
        Tensor::cat(squares.sums, 0).into_data().iter::<f64>().collect()
    };
    let total_norm = sums.iter().sum::<f64>().sqrt();
    let per_tensor = squares.ids.into_iter().zip(sums.iter().map(|s| s.sqrt())).collect();
    GradNorm { total_norm, per_tensor, scale: 1.0, clipped: false }
}

struct SumSquares<'a> {
    grads: &'a GradientsParams,
    ids: Vec<ParamId>,
    sums: Vec<Tensor<1>>,
}

impl ModuleVisitor for SumSquares<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            self.ids.push(param.id);
            self.sums.push(grad.square().sum());
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
