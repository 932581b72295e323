//! The fused kernels of [`loss`](crate::loss): one row-parallel pass per operation over
//! `[rows × vocab]` f32 logits.
//!
//! - cross-entropy forward: per row `m = max x`, `s = Σ exp(x − m)` (8 partial sums, so the loop
//!   vectorises), `lse = m + ln s`, `loss_i = lse − x_t`; the mean over rows, summed in f64;
//! - cross-entropy backward: `g/N · (exp(x − lse) − [j = t])`, written once;
//! - sampled label: the same max and sum, then a scan for the first `j` whose cumulative
//!   `exp(x − m)` exceeds `u·s`.
//!
//! Autodiff goes through a hand-written backward node that keeps the logits, the targets and
//! the per-row log-sum-exp, so the backward pass is one pass and nothing is recomputed.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Flex, TensorMetadata, flex::FlexTensor};
use burn::tensor::{DType, Int, Tensor, TensorData};
use rayon::prelude::*;

use super::{AutodiffFlex, contiguous, dims, exp, floats, multiversion};

/// Mean cross-entropy of `logits` `[rows, vocab]` against `targets` `[rows]`.
pub(crate) fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let targets = flex_int(targets);
    match logits.clone().try_into_primitive::<AutodiffFlex>() {
        Ok(tracked) => Tensor::from_primitive::<AutodiffFlex>(differentiable_cross_entropy(tracked, targets)),
        Err(_) => match logits.clone().try_into_primitive::<Flex>() {
            Ok(plain) => Tensor::from_primitive::<Flex>(forward(&plain, &targets).0),
            // Autodiff with gradient checkpointing: the composed operations.
            Err(_) => {
                let targets = Tensor::<1, Int>::from_primitive::<Flex>(targets).to_device(&logits.device());
                crate::loss::cross_entropy_with(crate::Kernels::Composed, logits.unsqueeze::<3>(), targets.unsqueeze::<2>())
            }
        },
    }
}

/// Labels `[rows]` drawn from `softmax(logits)` (`[rows, vocab]`, no autodiff) with `uniforms`
/// `[rows]`.
pub(crate) fn sample_labels(logits: Tensor<2>, uniforms: Tensor<1>) -> Tensor<1, Int> {
    let logits = logits.try_into_primitive::<Flex>().expect("the caller checked the backend");
    let uniforms = uniforms.try_into_primitive::<Flex>().expect("uniforms live beside the logits");
    let (rows, vocab) = dims(&logits);
    let x = contiguous(&logits);
    let u = contiguous(&uniforms);
    let (x, u) = (floats(&x), floats(&u));
    let labels: Vec<i64> = x
        .par_chunks_exact(vocab)
        .zip(u.par_iter())
        .map(|(row, &u)| {
            let (max, sum) = max_and_sum_exp(row);
            inverse_cdf(row, max, u * sum, &mut 0.0).unwrap_or(vocab - 1) as i64
        })
        .collect();
    Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(labels, [rows])))
}

/// The cross-entropy as an autodiff operation whose backward pass is [`backward`].
fn differentiable_cross_entropy(logits: FloatTensor<AutodiffFlex>, targets: FlexTensor) -> FloatTensor<AutodiffFlex> {
    #[derive(Debug)]
    struct CrossEntropyBackward;

    impl Backward<Flex, 1> for CrossEntropyBackward {
        /// The logits, the targets and the per-row log-sum-exp.
        type State = (FlexTensor, FlexTensor, FlexTensor);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (logits, targets, lse) = ops.state;
            let grad = grads.consume::<Flex>(&ops.node);
            if let [Some(parent)] = &ops.parents {
                grads.register::<Flex>(parent.id, backward(&logits, &targets, &lse, &grad));
            }
        }
    }

    match CrossEntropyBackward.prepare::<NoCheckpointing>([logits.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let x = logits.into_primitive();
            let (loss, lse) = forward(&x, &targets);
            prep.finish((x, targets, lse), loss)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(logits.primitive(), &targets).0),
    }
}

/// `(mean loss [1], lse [rows])`.
fn forward(logits: &FlexTensor, targets: &FlexTensor) -> (FlexTensor, FlexTensor) {
    let (rows, vocab) = dims(logits);
    let x = contiguous(logits);
    let t = targets_of(targets);
    let per_row: Vec<(f32, f64)> = floats(&x)
        .par_chunks_exact(vocab)
        .zip(t.par_iter())
        .map(|(row, &t)| {
            let (max, sum) = max_and_sum_exp(row);
            let lse = max + sum.ln();
            (lse, (lse - row[t]) as f64)
        })
        .collect();
    let mean = per_row.iter().map(|(_, nll)| nll).sum::<f64>() / rows as f64;
    let lse: Vec<f32> = per_row.into_iter().map(|(lse, _)| lse).collect();
    (FlexTensor::from_data(TensorData::new(vec![mean as f32], [1])), FlexTensor::from_data(TensorData::new(lse, [rows])))
}

/// `∂loss/∂logits = grad/N · (softmax − onehot)`.
fn backward(logits: &FlexTensor, targets: &FlexTensor, lse: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let (rows, vocab) = dims(logits);
    let x = contiguous(logits);
    let t = targets_of(targets);
    let lse = contiguous(lse);
    let scale = floats(&contiguous(grad))[0] / rows as f32;
    let mut out = vec![0.0f32; rows * vocab];
    out.par_chunks_exact_mut(vocab).zip(floats(&x).par_chunks_exact(vocab)).zip(floats(&lse).par_iter().zip(t.par_iter())).for_each(|((out, row), (&lse, &t))| {
        softmax_row(row, lse, scale, out);
        out[t] -= scale;
    });
    FlexTensor::from_data(TensorData::new(out, logits.shape()))
}

pub(super) fn flex_int(tensor: Tensor<1, Int>) -> FlexTensor {
    tensor.inner().try_into_primitive::<Flex>().expect("targets live beside the logits")
}

/// The targets as row indices.
pub(super) fn targets_of(targets: &FlexTensor) -> Vec<usize> {
    let targets = contiguous(targets);
    match targets.dtype() {
        DType::I64 => targets.as_slice::<i64>().expect("contiguous").iter().map(|&t| t as usize).collect(),
        DType::I32 => targets.as_slice::<i32>().expect("contiguous").iter().map(|&t| t as usize).collect(),
        _ => targets.into_data().convert::<i64>().iter::<i64>().map(|t| t as usize).collect(),
    }
}

multiversion! {
    /// `(max x, Σ exp(x − max))` of one row.
    pub(super) fn max_and_sum_exp(row: &[f32]) -> (f32, f32) => max_and_sum_exp_impl
}

multiversion! {
    /// `out = scale · exp(row − lse)`.
    pub(super) fn softmax_row(row: &[f32], lse: f32, scale: f32, out: &mut [f32]) => softmax_row_impl
}

multiversion! {
    /// The first index whose cumulative `exp(x − max)`, counted on from `acc`, exceeds
    /// `target`; `None` (and the row's sum added to `acc`) if none does, so that a row held in
    /// several parts is scanned part after part.
    pub(super) fn inverse_cdf(row: &[f32], max: f32, target: f32, acc: &mut f32) -> Option<usize> => inverse_cdf_impl
}

#[inline(always)]
fn max_and_sum_exp_impl(row: &[f32]) -> (f32, f32) {
    // `if v > m` rather than `f32::max`: it vectorises; a NaN logit still makes the sum NaN.
    let mut maxima = [f32::NEG_INFINITY; 16];
    let chunks = row.chunks_exact(16);
    for &v in chunks.remainder() {
        maxima[0] = if v > maxima[0] { v } else { maxima[0] };
    }
    for chunk in chunks {
        for (m, &v) in maxima.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    let max = maxima.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut lanes = [0.0f32; 16];
    let chunks = row.chunks_exact(16);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += exp(v - max);
        }
    }
    let sum = lanes.iter().sum::<f32>() + tail.iter().map(|&v| exp(v - max)).sum::<f32>();
    (max, sum)
}

#[inline(always)]
fn softmax_row_impl(row: &[f32], lse: f32, scale: f32, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(row) {
        *o = scale * exp(v - lse);
    }
}

#[inline(always)]
fn inverse_cdf_impl(row: &[f32], max: f32, target: f32, acc: &mut f32) -> Option<usize> {
    let mut values = [0.0f32; 16];
    for (c, chunk) in row.chunks(16).enumerate() {
        for (value, &v) in values.iter_mut().zip(chunk) {
            *value = exp(v - max);
        }
        let values = &values[..chunk.len()];
        let chunk_sum: f32 = values.iter().sum();
        if *acc + chunk_sum > target {
            for (j, &value) in values.iter().enumerate() {
                *acc += value;
                if *acc > target {
                    return Some(c * 16 + j);
                }
            }
            // Rounding: the values one by one did not cross where their sum did.
            continue;
        }
        *acc += chunk_sum;
    }
    None
}
