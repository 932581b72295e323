//! The fused kernel of [`causal_attention_with`](crate::attention::causal_attention_with):
//! causal softmax attention, each (sequence, head) one task on one thread,
//!
//! ```text
//! forward:   S = q·kᵀ/√d,   P = softmax(S) over the keys up to the query's position,   O = P·v
//! backward:  ∂P = ∂O·vᵀ,   ∂v = Pᵀ·∂O,   ∂S = P ⊙ (∂P − Σ_keys P ⊙ ∂P) / √d,
//!            ∂q = ∂S·k,    ∂k = ∂Sᵀ·q
//! ```
//!
//! `q`, `k` and `v` are read in place from the fused projection's output `[batch, seq, 3·C]`
//! (head `h`'s query at columns `h·d ..`, its key at `C + h·d ..`, its value at `2·C + h·d ..`),
//! the output is written straight into `[batch, seq, C]` with the heads side by side (the
//! layout the output projection reads) and the gradient into `[batch, seq, 3·C]` the same way:
//! none of the composed path's splits, transposes, masks and copies, which on a small model
//! were more of the step than attention's arithmetic. The products are [`gemm`](super::gemm)'s
//! on the calling thread (register tiles where the CPU has AVX-512F or AVX2); the backward node keeps
//! `P` (`[batch, heads, seq, seq]`, zero above the diagonal). A task's arithmetic does not
//! depend on the number of threads.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Flex, TensorMetadata, flex::FlexTensor};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::cross_entropy::{max_and_sum_exp, softmax_row};
use super::gemm::{Operand, Output, gemm};
use super::{AutodiffFlex, contiguous, floats, multiversion};

/// Causal attention of `qkv` `[batch, seq, 3·C]` with `heads` heads: `[batch, seq, C]`; `None`
/// when the tensor is not on flex (autodiff with gradient checkpointing).
pub(crate) fn causal_attention(qkv: Tensor<3>, heads: usize) -> Option<Tensor<3>> {
    if let Ok(qkv) = qkv.clone().try_into_primitive::<AutodiffFlex>() {
        return Some(Tensor::from_primitive::<AutodiffFlex>(differentiable_attention(qkv, heads)));
    }
    let qkv = qkv.try_into_primitive::<Flex>().ok()?;
    Some(Tensor::from_primitive::<Flex>(forward(&contiguous(&qkv), heads).0))
}

/// Attention as an autodiff operation whose backward pass is [`backward`].
fn differentiable_attention(qkv: FloatTensor<AutodiffFlex>, heads: usize) -> FloatTensor<AutodiffFlex> {
    #[derive(Debug)]
    struct AttentionBackward;

    impl Backward<Flex, 1> for AttentionBackward {
        /// `qkv` (row-major), `P` and the number of heads.
        type State = (FlexTensor, Vec<f32>, usize);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (qkv, probabilities, heads) = ops.state;
            let grad = contiguous(&grads.consume::<Flex>(&ops.node));
            if let [Some(parent)] = &ops.parents {
                grads.register::<Flex>(parent.id, backward(&qkv, &probabilities, heads, &grad));
            }
        }
    }

    match AttentionBackward.prepare::<NoCheckpointing>([qkv.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let qkv = contiguous(&qkv.into_primitive());
            let (output, probabilities) = forward(&qkv, heads);
            prep.finish((qkv, probabilities, heads), output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(&contiguous(qkv.primitive()), heads).0),
    }
}

/// The sizes of one attention call.
#[derive(Clone, Copy)]
struct Sizes {
    batch: usize,
    seq: usize,
    heads: usize,
    /// `C`, the width of the output (all heads).
    width: usize,
    /// `d`, the width of one head.
    head_dim: usize,
}

impl Sizes {
    /// `qkv`'s sizes; [`causal_attention_with`](crate::attention::causal_attention_with), the
    /// only way in, has checked that its width is `3·heads·d`.
    fn of(qkv: &FlexTensor, heads: usize) -> Self {
        let [batch, seq, three] = qkv.shape().dims();
        let width = three / 3;
        Self { batch, seq, heads, width, head_dim: width / heads }
    }

    /// `qkv` (row-major) as a `[batch·seq, 3·C]` matrix.
    fn matrix(qkv: &FlexTensor) -> Operand {
        let values = floats(qkv);
        let columns = qkv.shape()[2];
        Operand::row_major(values, columns)
    }

    /// The query, key and value of task `task` (sequence `task / heads`, head `task % heads`),
    /// each `[seq, d]` with rows `3·C` apart, in `qkv` (a [`matrix`](Self::matrix)).
    fn operands(self, qkv: Operand, task: usize) -> [Operand; 3] {
        let (b, h) = (task / self.heads, task % self.heads);
        let query = qkv.at(b * self.seq, h * self.head_dim);
        [query, query.at(0, self.width), query.at(0, 2 * self.width)]
    }

    /// `1/√d` is applied as a division by `√d`, as the composed path does.
    fn root(self) -> f32 {
        (self.head_dim as f32).sqrt()
    }
}

/// `(O, P)`: the output `[batch, seq, C]` and the probabilities `[batch·heads, seq, seq]`.
fn forward(qkv: &FlexTensor, heads: usize) -> (FlexTensor, Vec<f32>) {
    let sizes = Sizes::of(qkv, heads);
    let Sizes { batch, seq, width, head_dim, .. } = sizes;
    let source = Sizes::matrix(qkv);
    let mut output = Vec::<f32>::with_capacity(batch * seq * width);
    let out = Output(output.as_mut_ptr());
    let mut probabilities = vec![0.0f32; batch * heads * seq * seq];
    probabilities.par_chunks_mut((seq * seq).max(1)).enumerate().for_each(|(task, p)| {
        let (source, out) = (&source, &out);
        let [query, key, value] = sizes.operands(*source, task);
        let mut scores = vec![0.0f32; seq * seq];
        let (b, h) = (task / heads, task % heads);
        // SAFETY: the operands are `[seq, d]` inside `qkv`; `scores` and `p` hold `seq × seq`;
        // this task's block of the output (sequence `b`, columns `h·d ..`, `seq × d` at row
        // stride `C`) is written by no other task.
        unsafe {
            gemm(seq, head_dim, seq, query, key.transposed(), 0.0, scores.as_mut_ptr(), seq);
            causal_softmax(&mut scores, p, seq, sizes.root());
            gemm(seq, seq, head_dim, Operand::row_major(p, seq), value, 0.0, out.0.add(b * seq * width + h * head_dim), width);
        }
    });
    // SAFETY: the tasks wrote every (sequence, head) block, i.e. all `batch × seq × C` elements.
    unsafe { output.set_len(batch * seq * width) };
    (FlexTensor::from_data(TensorData::new(output, [batch, seq, width])), probabilities)
}

/// Row `i` of `P`: the softmax of `scores[i, ..= i] / root`, zero after.
fn causal_softmax(scores: &mut [f32], p: &mut [f32], seq: usize, root: f32) {
    for (i, (scores, p)) in scores.chunks_exact_mut(seq).zip(p.chunks_exact_mut(seq)).enumerate() {
        let (past, _) = scores.split_at_mut(i + 1);
        let (p_past, p_future) = p.split_at_mut(i + 1);
        divide(past, root);
        let (max, sum) = max_and_sum_exp(past);
        softmax_row(past, max + sum.ln(), 1.0, p_past);
        p_future.fill(0.0);
    }
}

/// `∂qkv` `[batch, seq, 3·C]` from `∂O` `[batch, seq, C]` (row-major).
fn backward(qkv: &FlexTensor, probabilities: &[f32], heads: usize, grad: &FlexTensor) -> FlexTensor {
    let sizes = Sizes::of(qkv, heads);
    let Sizes { batch, seq, width, head_dim, .. } = sizes;
    let source = Sizes::matrix(qkv);
    let grad_out = Operand::row_major(floats(grad), width);
    let mut dqkv = Vec::<f32>::with_capacity(batch * seq * 3 * width);
    let out = Output(dqkv.as_mut_ptr());
    probabilities.par_chunks((seq * seq).max(1)).enumerate().for_each(|(task, p)| {
        let (source, grad_out, out) = (&source, &grad_out, &out);
        let [query, key, value] = sizes.operands(*source, task);
        let (b, h) = (task / heads, task % heads);
        let d_out = grad_out.at(b * seq, h * head_dim);
        // This task's `∂q`; `∂k` and `∂v` are `C` and `2·C` columns on.
        let d_query = (b * seq * 3 * width + h * head_dim) as isize;
        let probabilities = Operand::row_major(p, seq);
        let mut d_scores = vec![0.0f32; seq * seq];
        // SAFETY: as in `forward`; the task's blocks of `∂qkv` (sequence `b`, head `h`'s columns
        // of `∂q`, `∂k`, `∂v`, each `seq × d` at row stride `3·C`) are written by no other task.
        unsafe {
            let at = |offset: usize| out.0.offset(d_query).add(offset);
            gemm(seq, head_dim, seq, d_out, value.transposed(), 0.0, d_scores.as_mut_ptr(), seq);
            gemm(seq, seq, head_dim, probabilities.transposed(), d_out, 0.0, at(2 * width), 3 * width);
            for (d_scores, p) in d_scores.chunks_exact_mut(seq).zip(p.chunks_exact(seq)) {
                softmax_grad(p, d_scores, sizes.root());
            }
            let d_scores = Operand::row_major(&d_scores, seq);
            gemm(seq, seq, head_dim, d_scores, key, 0.0, at(0), 3 * width);
            gemm(seq, seq, head_dim, d_scores.transposed(), query, 0.0, at(width), 3 * width);
        }
    });
    // SAFETY: the tasks wrote every (sequence, head) block of `∂q`, `∂k` and `∂v`.
    unsafe { dqkv.set_len(batch * seq * 3 * width) };
    FlexTensor::from_data(TensorData::new(dqkv, qkv.shape()))
}

multiversion! {
    /// `row /= root`.
    fn divide(row: &mut [f32], root: f32) => divide_impl
}

multiversion! {
    /// One row of `∂S = P ⊙ (∂P − Σ P ⊙ ∂P) / root`, in place of `∂P`.
    fn softmax_grad(p: &[f32], d: &mut [f32], root: f32) => softmax_grad_impl
}

#[inline(always)]
fn divide_impl(row: &mut [f32], root: f32) {
    for v in row {
        *v /= root;
    }
}

#[inline(always)]
fn softmax_grad_impl(p: &[f32], d: &mut [f32], root: f32) {
    // 16 partial sums, so that the loop vectorises.
    let mut lanes = [0.0f32; 16];
    let (chunks, tail) = (p.chunks_exact(16).zip(d.chunks_exact(16)), p.len() / 16 * 16);
    for (p, d) in chunks {
        for ((lane, &p), &d) in lanes.iter_mut().zip(p).zip(d) {
            *lane += p * d;
        }
    }
    let dot = lanes.iter().sum::<f32>() + p[tail..].iter().zip(&d[tail..]).map(|(&p, &d)| p * d).sum::<f32>();
    for (d, &p) in d.iter_mut().zip(p) {
        *d = p * (*d - dot) / root;
    }
}
