//! GPT-2's LayerNorm over the last dimension (Ba et al. 2016),
//!
//! ```text
//! y = γ·(x − μ)/√(σ² + ε) + β,   μ, σ² the mean and the (biased) variance of the row
//! ```
//!
//! in the two implementations [`Kernels`] chooses between: Burn's `LayerNorm` (a backend
//! operation whose autodiff is composed of about seven tensor operations forward and more
//! backward) on every backend, or one fused row-parallel pass each way on the flex CPU backend
//! for a LayerNorm with a shift `β` (one without keeps Burn's).

use burn::nn::LayerNorm;
use burn::tensor::Tensor;

use crate::Kernels;

/// `layer(x)` with the implementation `kernels` asks for; `epsilon` is the layer's.
pub fn layer_norm_with<const D: usize>(kernels: Kernels, layer: &LayerNorm, epsilon: f64, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if kernels == Kernels::Fused
        && crate::fused::applies(&x)
        && let Some(beta) = &layer.beta
        && let Some(y) = crate::fused::layer_norm::layer_norm(x.clone(), layer.gamma.val(), beta.val(), epsilon)
    {
        return y;
    }
    let _ = (kernels, epsilon);
    layer.forward(x)
}
