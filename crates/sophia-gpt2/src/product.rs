//! The matrix product of the linear layers and the LM head, `y = x·W` for `x` `[..., K]` and
//! `W` `[K, N]` (Burn's `linear` layout, no transpose), with its backward products
//! `∂x = ∂y·Wᵀ` and `∂W = xᵀ·∂y`: most of the arithmetic of a GPT training step.
//!
//! Two implementations, chosen by [`Kernels`](crate::Kernels):
//!
//! - **composed** (every backend): Burn's `linear`, whose products run on the backend's matmul
//!   (on flex, the `gemm` crate, batched over the leading dimensions where Burn's layout policy
//!   keeps them);
//! - **fused** (the `flex` CPU backend, with this crate's `flex` feature): the leading dimensions
//!   folded into the rows and each of the three products one call of the `gemm` crate's kernel
//!   threaded over rayon's pool, with a hand-written backward pass through Burn's
//!   backend-extension API. A transposed weight (the tied LM head, `wteᵀ`) is read in place.
//!
//! The two sum in different orders, so they agree to rounding (about 1e-6 relative), not bit
//! for bit; each is deterministic and independent of the number of threads.

use burn::tensor::Tensor;
use burn::tensor::module::linear;

use crate::kernels::Kernels;

/// `x · weight` (`x` `[..., K]`, `weight` `[K, N]`) with the implementation `kernels` asks for.
pub fn product_with<const D: usize>(kernels: Kernels, x: Tensor<D>, weight: Tensor<2>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if kernels == Kernels::Fused && crate::fused::applies(&x) && crate::fused::applies(&weight) {
        return crate::fused::product::product(x, weight);
    }
    let _ = kernels;
    linear(x, weight, None)
}
