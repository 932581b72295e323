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
//! Each product is flex's own matmul of the 2-D operands: one call of the `gemm` crate's kernel
//! on their strides (a transposed weight read in place), threaded over rayon's pool; Burn's
//! `linear` on flex runs the same crate as a batched matmul of one small `[seq, K]` matrix per
//! sequence where Burn's layout policy keeps the batch. Every output element is summed in the
//! same order on any number of threads.
//!
//! The register tiles of [`gemm`](super::gemm), which these products ran on before (one call
//! per thread's block of rows), remain the kernel of the attention's and the LM head's
//! products, each a task on one thread. For the linear layers the whole product in one call of
//! `gemm` was the faster: on an AMD EPYC (Zen 3, AVX2), six alternating 300-step runs each of
//! the default command trained at a median of 12958 tokens/s against 10990 on the tiles. On a
//! CPU with AVX-512 the two have not been compared.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Flex, TensorMetadata, flex::FlexTensor};
use burn::tensor::{Shape, Tensor};

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

/// `y = x · weight`, `[..., N]` in row-major order.
fn forward(x: &FlexTensor, weight: &FlexTensor) -> FlexTensor {
    let x = contiguous(x);
    let (rows, k) = dims(&x);
    let n = weight.shape()[1];
    Flex::float_matmul(x.reshape(Shape::new([rows, k])), weight.clone()).reshape(with_last(x.shape(), n))
}

/// `∂x = ∂y · weightᵀ`, in `x`'s shape.
fn input_grad(grad: &FlexTensor, weight: &FlexTensor, x_shape: Shape) -> FlexTensor {
    let (rows, n) = dims(grad);
    Flex::float_matmul(grad.reshape(Shape::new([rows, n])), weight.transpose(0, 1)).reshape(x_shape)
}

/// `∂W = xᵀ · ∂y`, `[K, N]`: the product sums over every row of `x` and `∂y`.
fn weight_grad(x: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let ((rows, k), (_, n)) = (dims(x), dims(grad));
    Flex::float_matmul(x.reshape(Shape::new([rows, k])).transpose(0, 1), grad.reshape(Shape::new([rows, n])))
}

/// `shape` with its last dimension replaced by `last`.
fn with_last(shape: Shape, last: usize) -> Shape {
    let mut dims = shape.as_slice().to_vec();
    *dims.last_mut().expect("at least one dimension") = last;
    Shape::from(dims)
}
