//! GPT-2's activation: GELU with the tanh approximation (Hendrycks & Gimpel 2016; the
//! `gelu_new` of Hugging Face's GPT-2),
//!
//! ```text
//! gelu(x) = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
//! ```
//!
//! in the two implementations [`Kernels`] chooses between: Burn's composed operations (about
//! eight passes forward and as many backward, `powf` and `tanh` element by element) on every
//! backend, or one fused parallel pass each way on the flex CPU backend.

use burn::tensor::Tensor;
use burn::tensor::activation::gelu_approximate;

use crate::Kernels;

/// GELU (tanh approximation) of `x` with the implementation `kernels` asks for.
pub fn gelu_with<const D: usize>(kernels: Kernels, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if kernels == Kernels::Fused && crate::fused::applies(&x) {
        return crate::fused::gelu::gelu(x);
    }
    let _ = kernels;
    gelu_approximate(x)
}
