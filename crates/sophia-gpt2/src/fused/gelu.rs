//! The fused kernels of [`activation`](crate::activation): GPT-2's GELU in one parallel pass
//! forward and one backward, over f32 tensors of any shape.
//!
//! With `z = √(2/π)·(x + 0.044715·x³)` and `0.5·(1 + tanh z) = σ(2z)`:
//!
//! ```text
//! forward:   y = x·σ(2z) = x / (1 + e^(−2z))
//! backward:  ∂y/∂x = σ + 2·x·σ·(1 − σ)·√(2/π)·(1 + 3·0.044715·x²),   σ = σ(2z)
//! ```
//!
//! The backward node keeps `x` (shared, not copied) and scales the incoming gradient in place
//! when nothing else holds it.

use std::mem::MaybeUninit;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Flex, TensorMetadata, flex::FlexTensor};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::{AutodiffFlex, contiguous, exp, floats, multiversion};

/// Elements per parallel task: large enough to amortise scheduling, small enough to balance
/// two to a few dozen cores on GPT-2's MLP activations.
const CHUNK: usize = 1 << 14;

/// `√(2/π)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of the approximation.
const CUBIC: f32 = 0.044_715;

/// GELU (tanh approximation) of `x`.
pub(crate) fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    match x.clone().try_into_primitive::<AutodiffFlex>() {
        Ok(tracked) => Tensor::from_primitive::<AutodiffFlex>(differentiable_gelu(tracked)),
        Err(_) => match x.clone().try_into_primitive::<Flex>() {
            Ok(plain) => Tensor::from_primitive::<Flex>(forward(&plain)),
            // Autodiff with gradient checkpointing: the composed operations.
            Err(_) => crate::activation::gelu_with(crate::Kernels::Composed, x),
        },
    }
}

/// GELU as an autodiff operation whose backward pass is [`backward`].
fn differentiable_gelu(x: FloatTensor<AutodiffFlex>) -> FloatTensor<AutodiffFlex> {
    #[derive(Debug)]
    struct GeluBackward;

    impl Backward<Flex, 1> for GeluBackward {
        /// The input.
        type State = FlexTensor;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<Flex>(&ops.node);
            if let [Some(parent)] = &ops.parents {
                grads.register::<Flex>(parent.id, backward(&ops.state, grad));
            }
        }
    }

    match GeluBackward.prepare::<NoCheckpointing>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let input = x.into_primitive();
            let output = forward(&input);
            prep.finish(input, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive())),
    }
}

/// `y = gelu(x)`, a new row-major tensor of `x`'s shape.
fn forward(x: &FlexTensor) -> FlexTensor {
    let x = contiguous(x);
    let input = floats(&x);
    let mut output = Vec::<f32>::with_capacity(input.len());
    output.spare_capacity_mut()[..input.len()].par_chunks_mut(CHUNK).zip(input.par_chunks(CHUNK)).for_each(|(y, x)| gelu_chunk(x, y));
    // SAFETY: every one of the first `input.len()` elements was written above.
    unsafe { output.set_len(input.len()) };
    FlexTensor::from_data(TensorData::new(output, x.shape()))
}

/// `∂loss/∂x = grad · gelu'(x)`, computed in `grad`'s storage when it is the only holder.
fn backward(x: &FlexTensor, grad: FlexTensor) -> FlexTensor {
    let x = contiguous(x);
    let mut grad = contiguous(&grad);
    let (start, end) = grad.layout().contiguous_offsets().expect("made contiguous above");
    // Copy-on-write: a gradient another node still holds is copied once, then scaled.
    let scaled = &mut grad.storage_mut::<f32>()[start..end];
    scaled.par_chunks_mut(CHUNK).zip(floats(&x).par_chunks(CHUNK)).for_each(|(g, x)| gelu_grad_chunk(x, g));
    grad
}

multiversion! {
    /// `y = gelu(x)` elementwise.
    fn gelu_chunk(x: &[f32], y: &mut [MaybeUninit<f32>]) => gelu_chunk_impl
}

multiversion! {
    /// `g *= gelu'(x)` elementwise.
    fn gelu_grad_chunk(x: &[f32], g: &mut [f32]) => gelu_grad_chunk_impl
}

/// Beyond `±SATURATION`, `σ(2z)` is 1 to f32 precision on the right and below 1e-37 on the left,
/// so `x` is clamped there before the cubic (which would overflow for huge `|x|`).
const SATURATION: f32 = 10.0;

/// `σ(2z)` and `∂(2z)/∂x` of `x`, `z = √(2/π)·(x + 0.044715·x³)`.
#[inline(always)]
fn sigmoid_2z(x: f32) -> (f32, f32) {
    let x = x.clamp(-SATURATION, SATURATION);
    let z = SQRT_2_OVER_PI * (x + CUBIC * x * x * x);
    (1.0 / (1.0 + exp(-2.0 * z)), 2.0 * SQRT_2_OVER_PI * (1.0 + 3.0 * CUBIC * x * x))
}

#[inline(always)]
fn gelu_chunk_impl(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    for (y, &x) in y.iter_mut().zip(x) {
        y.write(x * sigmoid_2z(x).0);
    }
}

#[inline(always)]
fn gelu_grad_chunk_impl(x: &[f32], g: &mut [f32]) {
    for (g, &x) in g.iter_mut().zip(x) {
        let (s, slope) = sigmoid_2z(x);
        *g *= s + x * s * (1.0 - s) * slope;
    }
}
