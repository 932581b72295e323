//! The fused kernel of [`norm`](crate::norm): LayerNorm over the last dimension in one
//! row-parallel pass forward and one backward, with the reductions for `γ` and `β` in the same
//! backward pass.
//!
//! ```text
//! forward:   μ = mean x,  σ² = mean (x − μ)²,  r = 1/√(σ² + ε),  x̂ = (x − μ)·r,  y = γ·x̂ + β
//! backward:  g = ∂y·γ,  ∂x = r·(g − mean g − x̂·mean(g·x̂)),  ∂γ = Σ_rows ∂y·x̂,  ∂β = Σ_rows ∂y
//! ```
//!
//! The backward node keeps `x̂` and `r` (so nothing is recomputed). The sums over rows for `∂γ`
//! and `∂β` are taken in blocks of a fixed number of rows and the blocks added in order, so the
//! result does not depend on the number of threads.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Flex, TensorMetadata, flex::FlexTensor};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::{AutodiffFlex, contiguous, dims, floats};

/// Rows per parallel task and per partial sum of `∂γ`, `∂β`.
const ROWS: usize = 32;

/// LayerNorm of `x` `[..., C]` with scale `gamma` and shift `beta` (`[C]`), `None` when a
/// tensor is not on flex (autodiff with gradient checkpointing, mixed backends).
pub(crate) fn layer_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, epsilon: f64) -> Option<Tensor<D>> {
    let epsilon = epsilon as f32;
    let tracked = (x.clone().try_into_primitive::<AutodiffFlex>(), gamma.clone().try_into_primitive::<AutodiffFlex>(), beta.clone().try_into_primitive::<AutodiffFlex>());
    if let (Ok(x), Ok(gamma), Ok(beta)) = tracked {
        return Some(Tensor::from_primitive::<AutodiffFlex>(differentiable_layer_norm(x, gamma, beta, epsilon)));
    }
    let plain = (x.try_into_primitive::<Flex>(), gamma.try_into_primitive::<Flex>(), beta.try_into_primitive::<Flex>());
    match plain {
        (Ok(x), Ok(gamma), Ok(beta)) => Some(Tensor::from_primitive::<Flex>(forward(&x, &gamma, &beta, epsilon).0)),
        _ => None,
    }
}

/// LayerNorm as an autodiff operation whose backward pass is [`backward`].
fn differentiable_layer_norm(x: FloatTensor<AutodiffFlex>, gamma: FloatTensor<AutodiffFlex>, beta: FloatTensor<AutodiffFlex>, epsilon: f32) -> FloatTensor<AutodiffFlex> {
    #[derive(Debug)]
    struct LayerNormBackward;

    impl Backward<Flex, 3> for LayerNormBackward {
        /// `x̂` (`[rows, C]`), `r` (`[rows]`) and `γ`.
        type State = (FlexTensor, FlexTensor, FlexTensor);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (normalized, rstd, gamma) = ops.state;
            let grad = contiguous(&grads.consume::<Flex>(&ops.node));
            let (dx, dgamma, dbeta) = backward(&normalized, &rstd, &gamma, &grad);
            let [x_node, gamma_node, beta_node] = &ops.parents;
            if let Some(node) = x_node {
                grads.register::<Flex>(node.id, dx);
            }
            if let Some(node) = gamma_node {
                grads.register::<Flex>(node.id, dgamma);
            }
            if let Some(node) = beta_node {
                grads.register::<Flex>(node.id, dbeta);
            }
        }
    }

    match LayerNormBackward.prepare::<NoCheckpointing>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let gamma = gamma.into_primitive();
            let (output, normalized, rstd) = forward(&x.into_primitive(), &gamma, &beta.into_primitive(), epsilon);
            prep.finish((normalized, rstd, gamma), output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive(), gamma.primitive(), beta.primitive(), epsilon).0),
    }
}

/// `(y, x̂, r)`: `y` and `x̂` in `x`'s shape (row-major), `r` `[rows]`.
fn forward(x: &FlexTensor, gamma: &FlexTensor, beta: &FlexTensor, epsilon: f32) -> (FlexTensor, FlexTensor, FlexTensor) {
    let x = contiguous(x);
    let (rows, width) = dims(&x);
    let (gamma, beta) = (contiguous(gamma), contiguous(beta));
    let (gamma, beta) = (floats(&gamma), floats(&beta));
    let mut y = vec![0.0f32; rows * width];
    let mut normalized = vec![0.0f32; rows * width];
    let mut rstd = vec![0.0f32; rows];
    y.par_chunks_mut(ROWS * width).zip(normalized.par_chunks_mut(ROWS * width)).zip(rstd.par_chunks_mut(ROWS)).zip(floats(&x).par_chunks(ROWS * width)).for_each(
        |(((y, normalized), rstd), x)| {
            for (((y, normalized), r), x) in y.chunks_exact_mut(width).zip(normalized.chunks_exact_mut(width)).zip(rstd).zip(x.chunks_exact(width)) {
                *r = normalize_row(x, normalized, epsilon);
                for (((y, &n), &g), &b) in y.iter_mut().zip(normalized.iter()).zip(gamma).zip(beta) {
                    *y = n * g + b;
                }
            }
        },
    );
    let shape = x.shape();
    (
        FlexTensor::from_data(TensorData::new(y, shape.clone())),
        FlexTensor::from_data(TensorData::new(normalized, shape)),
        FlexTensor::from_data(TensorData::new(rstd, [rows])),
    )
}

/// `x̂ = (x − μ)·r` of one row into `normalized`; returns `r`.
fn normalize_row(x: &[f32], normalized: &mut [f32], epsilon: f32) -> f32 {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let variance = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let r = 1.0 / (variance + epsilon).sqrt();
    for (out, &v) in normalized.iter_mut().zip(x) {
        *out = (v - mean) * r;
    }
    r
}

/// `(∂x, ∂γ, ∂β)` from `∂y` (row-major).
fn backward(normalized: &FlexTensor, rstd: &FlexTensor, gamma: &FlexTensor, grad: &FlexTensor) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (rows, width) = dims(normalized);
    let gamma = contiguous(gamma);
    let (normalized_values, rstd_values, gamma_values, dy) = (floats(normalized), floats(rstd), floats(&gamma), floats(grad));
    let mut dx = vec![0.0f32; rows * width];
    // Per block of rows: the partial sums Σ ∂y·x̂ and Σ ∂y, side by side.
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(ROWS * width)
        .zip(normalized_values.par_chunks(ROWS * width))
        .zip(rstd_values.par_chunks(ROWS))
        .zip(dy.par_chunks(ROWS * width))
        .map(|(((dx, normalized), rstd), dy)| {
            let mut sums = vec![0.0f32; 2 * width];
            let (dgamma, dbeta) = sums.split_at_mut(width);
            for (((dx, normalized), &r), dy) in dx.chunks_exact_mut(width).zip(normalized.chunks_exact(width)).zip(rstd).zip(dy.chunks_exact(width)) {
                let (mut mean_g, mut mean_gn) = (0.0f32, 0.0f32);
                for ((&dy, &n), &g) in dy.iter().zip(normalized).zip(gamma_values) {
                    mean_g += dy * g;
                    mean_gn += dy * g * n;
                }
                let (mean_g, mean_gn) = (mean_g / width as f32, mean_gn / width as f32);
                for ((((dx, &dy), &n), &g), (dgamma, dbeta)) in dx.iter_mut().zip(dy).zip(normalized).zip(gamma_values).zip(dgamma.iter_mut().zip(dbeta.iter_mut())) {
                    *dx = r * (dy * g - mean_g - n * mean_gn);
                    *dgamma += dy * n;
                    *dbeta += dy;
                }
            }
            sums
        })
        .collect();
    let mut sums = vec![0.0f32; 2 * width];
    for partial in &partials {
        for (total, &part) in sums.iter_mut().zip(partial) {
            *total += part;
        }
    }
    let dbeta = sums.split_off(width);
    (
        FlexTensor::from_data(TensorData::new(dx, normalized.shape())),
        FlexTensor::from_data(TensorData::new(sums, [width])),
        FlexTensor::from_data(TensorData::new(dbeta, [width])),
    )
}
