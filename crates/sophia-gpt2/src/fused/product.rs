//! The fused kernel of [`product`](crate::product): the matrix product `y = x·W` of the linear
//! layers and the LM head, `x` `[..., K]` (every leading dimension folded into the rows), `W`
//! `[K, N]` in any strided layout (a transposed view is read in place), and its two backward
//! products in the same kernel:
//!
//! ```text
//! forward:   y  = x · W       [rows, N]
//! backward:  ∂x = ∂y · Wᵀ     [rows, K]
//!            ∂W = xᵀ · ∂y     [K, N]     (the sum over the rows is the product's inner dimension)
//! ```
//!
//! Each product is one call of a [`gemm`](super::gemm) kernel per rayon thread (register tiles
//! on AVX-512 or AVX2 for the small shapes of a training step, `matrixmultiply`'s packed `sgemm`
//! otherwise; strided operands read straight from the tensor's storage), the larger of the
//! output's dimensions split into one block per thread. Flex
//! runs Burn's `linear` through the `gemm` crate as a batched matmul of one small `[seq, K]`
//! matrix per sequence where Burn's layout policy keeps the batch; a product with a dimension
//! below [`NARROW`] still goes to flex's matmul, unbatched. Every output element is summed in
//! the same order whatever the split, so the result does not depend on the number of threads.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Flex, TensorMetadata, flex::FlexTensor};
use burn::tensor::{Shape, Tensor, TensorData};
use rayon::prelude::*;

use super::gemm::{Kernel, Operand, Output};
use super::{AutodiffFlex, contiguous, dims};

/// `x · weight` for `x` `[..., K]` and `weight` `[K, N]`: `[..., N]`.
pub(crate) fn product<const D: usize>(x: Tensor<D>, weight: Tensor<2>) -> Tensor<D> {
    let tracked = (x.clone().try_into_primitive::<AutodiffFlex>(), weight.clone().try_into_primitive::<AutodiffFlex>());
    if let (Ok(x), Ok(weight)) = tracked {
        return Tensor::from_primitive::<AutodiffFlex>(differentiable_product(x, weight));
    }
    let plain = (x.clone().try_into_primitive::<Flex>(), weight.clone().try_into_primitive::<Flex>());
    match plain {
        (Ok(x), Ok(weight)) => Tensor::from_primitive::<Flex>(forward(&x, &weight)),
        // Autodiff with gradient checkpointing: the composed operations.
        _ => crate::product::product_with(crate::Kernels::Composed, x, weight),
    }
}

/// The product as an autodiff operation whose backward pass is [`input_grad`] and
/// [`weight_grad`].
fn differentiable_product(x: FloatTensor<AutodiffFlex>, weight: FloatTensor<AutodiffFlex>) -> FloatTensor<AutodiffFlex> {
    #[derive(Debug)]
    struct ProductBackward;

    impl Backward<Flex, 2> for ProductBackward {
        /// `x` (row-major) and the weight.
        type State = (FlexTensor, FlexTensor);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (x, weight) = ops.state;
            let grad = contiguous(&grads.consume::<Flex>(&ops.node));
            let [x_node, weight_node] = &ops.parents;
            if let Some(node) = x_node {
                grads.register::<Flex>(node.id, input_grad(&grad, &weight, x.shape()));
            }
            if let Some(node) = weight_node {
                grads.register::<Flex>(node.id, weight_grad(&x, &grad));
            }
        }
    }

    match ProductBackward.prepare::<NoCheckpointing>([x.node(), weight.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let x = contiguous(&x.into_primitive());
            let weight = weight.into_primitive();
            let output = forward(&x, &weight);
            prep.finish((x, weight), output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive(), weight.primitive())),
    }
}

/// Below this size of a product's smallest dimension, the product goes to flex's own matmul
/// (the `gemm` crate): the LM head of a narrow model on a large vocabulary (`[rows, 16]` against
/// `[16, 50257]`) is mostly the packing of the vocabulary-wide operand, which `matrixmultiply`
/// pays in full and `gemm` largely avoids (on `cpu-1m` the backward pass took 3.4 times as long
/// with `matrixmultiply`; with the AVX-512 register tiles of [`Kernel::Avx512Tiles`] both ways measured the
/// same).
const NARROW: usize = 32;

/// `a · b` for 2-D `a` `[m, k]` and `b` `[k, n]` in any layout: a new row-major `[m, n]`.
fn matmul(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
    if m.min(k).min(n) < NARROW {
        return Flex::float_matmul(a.clone(), b.clone());
    }
    let ((a, _a_copy), (b, _b_copy)) = (Operand::matrix(a), Operand::matrix(b));
    FlexTensor::from_data(TensorData::new(on_threads(m, k, n, a, b), [m, n]))
}

/// `a · b` into a new row-major `[m, n]` buffer, the larger of the output's two dimensions
/// split into one block per rayon thread (so no two threads pack the same operand block), each
/// block one call of the product's [`Kernel`].
fn on_threads(m: usize, k: usize, n: usize, a: Operand, b: Operand) -> Vec<f32> {
    let kernel = Kernel::for_product(m, k, n);
    let mut output = Vec::<f32>::with_capacity(m * n);
    let out = Output(output.as_mut_ptr());
    let by_rows = m >= n;
    let length = if by_rows { m } else { n };
    let block = length.div_ceil(rayon::current_num_threads()).max(1);
    (0..length.div_ceil(block)).into_par_iter().for_each(|i| {
        // The wrappers whole (not their pointer fields) go into the closure: they are `Sync`.
        let (a, b, out) = (&a, &b, &out);
        let start = i * block;
        let size = block.min(length - start);
        let (rows, cols, a, b, first) = if by_rows { (size, n, a.at(start, 0), *b, start * n) } else { (m, size, *a, b.at(0, start), start) };
        // SAFETY: `a` holds `m × k` and `b` `k × n` readable elements at their strides; this
        // task's block of `a`'s rows or `b`'s columns starts at `start`; its `rows × cols` block
        // of the output starts at `first` with row stride `n`, is inside the buffer's capacity,
        // is written by no other task, and β = 0.
        unsafe { kernel.run(rows, k, cols, a, b, 0.0, out.0.add(first), n) }
    });
    // SAFETY: the blocks cover every one of the `m × n` elements (none when m or n is 0).
    unsafe { output.set_len(m * n) };
    output
}

/// `y = x · weight`, `[..., N]` in row-major order.
fn forward(x: &FlexTensor, weight: &FlexTensor) -> FlexTensor {
    let x = contiguous(x);
    let (rows, k) = dims(&x);
    let n = weight.shape()[1];
    matmul(&x.reshape(Shape::new([rows, k])), weight).reshape(with_last(x.shape(), n))
}

/// `∂x = ∂y · weightᵀ`, in `x`'s shape.
fn input_grad(grad: &FlexTensor, weight: &FlexTensor, x_shape: Shape) -> FlexTensor {
    let (rows, n) = dims(grad);
    matmul(&grad.reshape(Shape::new([rows, n])), &weight.transpose(0, 1)).reshape(x_shape)
}

/// `∂W = xᵀ · ∂y`, `[K, N]`: the product sums over every row of `x` and `∂y`.
fn weight_grad(x: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let ((rows, k), (_, n)) = (dims(x), dims(grad));
    matmul(&x.reshape(Shape::new([rows, k])).transpose(0, 1), &grad.reshape(Shape::new([rows, n])))
}

/// `shape` with its last dimension replaced by `last`.
fn with_last(shape: Shape, last: usize) -> Shape {
    let mut dims = shape.as_slice().to_vec();
    *dims.last_mut().expect("at least one dimension") = last;
    Shape::from(dims)
}
