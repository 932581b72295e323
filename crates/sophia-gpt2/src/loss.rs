//! The loss over the vocabulary and the sampled labels of SophiaG's refresh: the two passes
//! over a `[tokens × vocabulary]` tensor that dominate a step of a GPT with a large vocabulary.
//!
//! ```text
//! cross-entropy:  lse_i = log Σ_j exp(x_ij)      loss = mean_i (lse_i − x_{i,t_i})
//!                 ∂loss/∂x_ij = (exp(x_ij − lse_i) − [j = t_i]) / N
//! sampled label:  y_i = min { j : Σ_{k ≤ j} softmax(x_i)_k > u_i },  u_i ~ Uniform(0, 1)
//! ```
//!
//! In a training step the loss is [`linear_cross_entropy_with`]: the LM head's product and the
//! cross-entropy together, so the fused path walks the logits chunk by chunk.
//!
//! Two implementations of each, chosen by [`Kernels`](crate::Kernels):
//!
//! - **composed** (every backend): Burn's tensor operations (`log_softmax`, `gather`,
//!   `cumsum`, ...), about six passes forward and as many backward for the cross-entropy;
//! - **fused** (the `flex` CPU backend, with this crate's `flex` feature): one row-parallel SIMD
//!   pass forward (log-sum-exp and the gather) and one backward (`softmax − onehot`), and one
//!   scan per row for the sampled label, through Burn's backend-extension API with a hand-written
//!   backward pass; on the CubeCL backends (WGPU, CUDA, ...; the `cube` feature) the same three
//!   passes as CubeCL kernels, one cube per row (see `cube`). On any other backend the fused
//!   choice runs the composed code.
//!
//! The uniforms of the sampled labels are drawn on the host, one per position, so the same seed
//! gives the same labels on every backend and both implementations. Both are checked against the
//! golden vectors and against each other.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor};

use crate::kernels::Kernels;
use crate::product::product_with;

/// Mean cross-entropy of `logits` `[batch, seq, vocab]` against integer `targets`
/// `[batch, seq]`, with the fused kernel where the device has one.
pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    cross_entropy_with(Kernels::Fused, logits, targets)
}

/// [`cross_entropy`] with the implementation `kernels` asks for.
pub fn cross_entropy_with(kernels: Kernels, logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
    #[cfg(feature = "flex")]
    if kernels == Kernels::Fused && crate::fused::applies(&logits) {
        let [batch, seq, vocab] = logits.dims();
        return crate::fused::cross_entropy::cross_entropy(logits.reshape([batch * seq, vocab]), targets.reshape([batch * seq]));
    }
    #[cfg(feature = "cube")]
    if kernels == Kernels::Fused && crate::cube::applies(&logits) {
        let [batch, seq, vocab] = logits.dims();
        return crate::cube::cross_entropy(logits.reshape([batch * seq, vocab]), targets.reshape([batch * seq]));
    }
    let _ = kernels;
    log_softmax(logits, 2).gather(2, targets.unsqueeze_dim::<3>(2)).mean().neg()
}

/// Mean cross-entropy of the logits `x · weightᵀ` (`x` `[rows, C]`, the LM head's `weight`
/// `[vocab, C]`) against `targets` `[rows]`: the LM head and the loss of a training step.
///
/// Fused (flex), the product and the loss are one kernel over chunks of the vocabulary, the
/// `[rows × vocab]` logits kept for the backward pass only where that is cheaper than
/// recomputing them and they fit in 256 MiB (see `fused::linear_cross_entropy`); composed (and
/// fused on other backends), the head's [`product_with`] and [`cross_entropy_with`].
pub fn linear_cross_entropy_with(kernels: Kernels, x: Tensor<2>, weight: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    #[cfg(feature = "flex")]
    if kernels == Kernels::Fused
        && crate::fused::applies(&x)
        && crate::fused::applies(&weight)
        && let Some(loss) = crate::fused::linear_cross_entropy::linear_cross_entropy(x.clone(), weight.clone(), targets.clone())
    {
        return loss;
    }
    let logits = product_with(kernels, x, weight.transpose());
    cross_entropy_with(kernels, logits.unsqueeze::<3>(), targets.unsqueeze::<2>())
}

/// Labels `[rows]` drawn from `softmax(x · weightᵀ)` with `uniforms` `[rows]` (as
/// [`sample_labels_with`]), and the mean cross-entropy of those logits against them (as
/// [`linear_cross_entropy_with`]): the loss of SophiaG's refresh, `(loss, labels)`. The labels are
/// drawn from detached logits; the loss is differentiated as usual.
///
/// Fused (flex), one kernel computes the logits once, draws each row's label from them and takes
/// the loss (see `fused::linear_cross_entropy`); composed (and fused where the whole logits
/// exceed 256 MiB), the head's product, the draw and [`linear_cross_entropy_with`].
pub fn linear_cross_entropy_on_sampled_labels(kernels: Kernels, x: Tensor<2>, weight: Tensor<2>, uniforms: Tensor<1>) -> (Tensor<1>, Tensor<1, Int>) {
    #[cfg(feature = "flex")]
    if kernels == Kernels::Fused
        && crate::fused::applies(&x)
        && crate::fused::applies(&weight)
        && let Some(drawn) = crate::fused::linear_cross_entropy::linear_cross_entropy_on_sampled_labels(x.clone(), weight.clone(), uniforms.clone())
    {
        return drawn;
    }
    let [rows, _] = x.dims();
    let logits = product_with(kernels, x.clone().detach(), weight.clone().detach().transpose());
    let labels = sample_labels_with(kernels, logits.unsqueeze::<3>(), uniforms.unsqueeze::<2>()).reshape([rows]);
    (linear_cross_entropy_with(kernels, x, weight, labels.clone()), labels)
}

/// Labels `[batch, seq]` drawn from `softmax(logits)` (`[batch, seq, vocab]`, not
/// differentiated) by inverse transform sampling with one uniform per position (`uniforms`
/// `[batch, seq]`, in `[0, 1)`).
pub fn sample_labels_with(kernels: Kernels, logits: Tensor<3>, uniforms: Tensor<2>) -> Tensor<2, Int> {
    let logits = logits.detach();
    let [batch, seq, vocab] = logits.dims();
    #[cfg(feature = "flex")]
    if kernels == Kernels::Fused && crate::fused::applies(&logits) {
        let inner = logits.inner().reshape([batch * seq, vocab]);
        return crate::fused::cross_entropy::sample_labels(inner, uniforms.reshape([batch * seq])).reshape([batch, seq]);
    }
    #[cfg(feature = "cube")]
    if kernels == Kernels::Fused && crate::cube::applies(&logits) {
        return crate::cube::sample_labels(logits.inner().reshape([batch * seq, vocab]), uniforms.reshape([batch * seq])).reshape([batch, seq]);
    }
    let _ = kernels;
    // The label is the number of cumulative probabilities at or below the uniform, capped at
    // the last token (rounding can leave the total a hair below 1).
    let cdf = softmax(logits.inner(), 2).cumsum(2);
    let below = cdf.lower_equal(uniforms.unsqueeze_dim::<3>(2).expand([batch, seq, vocab])).int().sum_dim(2);
    below.clamp_max(vocab as i64 - 1).reshape([batch, seq])
}
