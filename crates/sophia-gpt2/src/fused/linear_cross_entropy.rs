//! The fused kernel of [`linear_cross_entropy_with`](crate::loss::linear_cross_entropy_with):
//! the LM head's product and the cross-entropy in one kernel that never holds the
//! `[rows × vocab]` logits (103 MB for 512 positions over GPT-2's 50257 words). The vocabulary
//! is cut into chunks of [`chunk_width`] words, small enough that a chunk's `[rows × w]` logits
//! stay in the core's cache between the product that writes them and the pass that reads them:
//!
//! ```text
//! forward:   per chunk c:  L_c = x·W_cᵀ                          (one product, [rows, w])
//!            per row:      (m, s) ⊕= (max L_c, Σ exp(L_c − max)) (the running log-sum-exp)
//!            lse = m + ln s,   loss = mean_i (lse_i − L_{i,t_i})
//! backward:  per chunk c:  L_c = x·W_cᵀ again,  G_c = g/N·(exp(L_c − lse) − onehot)
//!            ∂W_c = G_cᵀ·x  (rows c of ∂W),  ∂x += G_c·W_c
//! ```
//!
//! where `(m, s) ⊕ (m', s') = (M, s·e^(m−M) + s'·e^(m'−M))`, `M = max(m, m')`. The backward
//! pass recomputes the logits (a fourth product against the unfused path's three) instead of
//! writing them in full and reading them back three times.
//!
//! The chunks are dealt to [`LANES`] contiguous groups; each group is one parallel task with its
//! own running sums and its own partial `∂x`, and the groups are merged in order, so the result
//! does not depend on the number of threads.

use std::ops::Range;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Flex, TensorMetadata, flex::FlexTensor};
use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;

use super::cross_entropy::{flex_int, max_and_sum_exp, targets_of};
use super::gemm::{Operand, Output, gemm};
use super::{AutodiffFlex, contiguous, dims, exp, floats, multiversion};

/// Groups of chunks, each one parallel task with its own partial sums.
const LANES: usize = 16;

/// The bytes of one chunk's logits: within a core's L2 cache.
const CHUNK_BYTES: usize = 1 << 20;

/// Mean cross-entropy of `x·weightᵀ` (`x` `[rows, C]`, `weight` `[vocab, C]`) against
/// `targets` `[rows]`, `None` when the tensors are tracked by an autodiff that is not this
/// crate's (gradient checkpointing).
pub(crate) fn linear_cross_entropy(x: Tensor<2>, weight: Tensor<2>, targets: Tensor<1, Int>) -> Option<Tensor<1>> {
    let targets = targets_of(&flex_int(targets));
    let tracked = (x.clone().try_into_primitive::<AutodiffFlex>(), weight.clone().try_into_primitive::<AutodiffFlex>());
    if let (Ok(x), Ok(weight)) = tracked {
        return Some(Tensor::from_primitive::<AutodiffFlex>(differentiable(x, weight, targets)));
    }
    match (x.try_into_primitive::<Flex>(), weight.try_into_primitive::<Flex>()) {
        (Ok(x), Ok(weight)) => Some(Tensor::from_primitive::<Flex>(Head::new(&contiguous(&x), &weight).forward(&targets).0)),
        _ => None,
    }
}

/// The kernel as an autodiff operation whose backward pass is [`Head::backward`].
fn differentiable(x: FloatTensor<AutodiffFlex>, weight: FloatTensor<AutodiffFlex>, targets: Vec<usize>) -> FloatTensor<AutodiffFlex> {
    #[derive(Debug)]
    struct LinearCrossEntropyBackward;

    impl Backward<Flex, 2> for LinearCrossEntropyBackward {
        /// `x` (row-major), the weight, the targets and the per-row log-sum-exp.
        type State = (FlexTensor, FlexTensor, Vec<usize>, Vec<f32>);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (x, weight, targets, lse) = ops.state;
            let grad = floats(&contiguous(&grads.consume::<Flex>(&ops.node)))[0];
            let (dx, dweight) = Head::new(&x, &weight).backward(&targets, &lse, grad);
            let [x_node, weight_node] = &ops.parents;
            if let Some(node) = x_node {
                grads.register::<Flex>(node.id, dx);
            }
            if let Some(node) = weight_node {
                grads.register::<Flex>(node.id, dweight);
            }
        }
    }

    match LinearCrossEntropyBackward.prepare::<NoCheckpointing>([x.node(), weight.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (x, weight) = (contiguous(&x.into_primitive()), weight.into_primitive());
            let (loss, lse) = Head::new(&x, &weight).forward(&targets);
            prep.finish((x, weight, targets, lse), loss)
        }
        OpsKind::UnTracked(prep) => prep.finish(Head::new(&contiguous(x.primitive()), weight.primitive()).forward(&targets).0),
    }
}

/// Words per chunk for `rows` positions: `[rows × w]` f32 logits within [`CHUNK_BYTES`], a
/// multiple of 16 between 64 and 4096.
fn chunk_width(rows: usize) -> usize {
    (CHUNK_BYTES / 4 / rows.max(1)).clamp(64, 4096) / 16 * 16
}

/// `(max, Σ exp(x − max))` of two parts of a row, merged.
fn merge((m, s): (f32, f32), (m2, s2): (f32, f32)) -> (f32, f32) {
    if m2 == f32::NEG_INFINITY {
        return (m, s);
    }
    if m == f32::NEG_INFINITY {
        return (m2, s2);
    }
    let top = if m2 > m { m2 } else { m };
    (top, s * exp(m - top) + s2 * exp(m2 - top))
}

/// The operands of one call: `x` `[rows, C]` row-major and the weight `[vocab, C]` in its own
/// layout, and the chunks' plan.
struct Head<'a> {
    x: &'a [f32],
    weight: Operand,
    rows: usize,
    width: usize,
    vocab: usize,
    chunk: usize,
    /// A row-major copy of the weight when its layout has a negative stride.
    _copy: Option<FlexTensor>,
}

/// What one group of chunks found in the forward pass: per row the running `(max, Σ exp)` over
/// its words, and the target logits that fell in its words.
struct Partial {
    stats: Vec<(f32, f32)>,
    picked: Vec<(usize, f32)>,
}

impl<'a> Head<'a> {
    fn new(x: &'a FlexTensor, weight: &FlexTensor) -> Self {
        let (rows, width) = dims(x);
        let vocab = weight.shape()[0];
        let (weight, copy) = Operand::matrix(weight);
        Self { x: floats(x), weight, rows, width, vocab, chunk: chunk_width(rows), _copy: copy }
    }

    /// The words of each group of chunks, in order (empty groups left out).
    fn lanes(&self) -> Vec<Range<usize>> {
        let chunks = self.vocab.div_ceil(self.chunk);
        (0..LANES)
            .map(|l| (l * chunks / LANES * self.chunk).min(self.vocab)..((l + 1) * chunks / LANES * self.chunk).min(self.vocab))
            .filter(|words| !words.is_empty())
            .collect()
    }

    /// The chunks of `words`: their first word and their width.
    fn chunks(&self, words: Range<usize>) -> impl Iterator<Item = (usize, usize)> + use<'_> {
        words.clone().step_by(self.chunk).map(move |start| (start, self.chunk.min(words.end - start)))
    }

    /// `logits[.., ..w] = x · W[start .. start + w]ᵀ`, row-major `[rows, w]`.
    fn logits(&self, start: usize, w: usize, logits: &mut [f32]) {
        assert!(logits.len() >= self.rows * w);
        // SAFETY: `x` is `[rows, C]` row-major, the weight holds rows `start .. start + w` of
        // `C` elements at its strides, and `logits` holds the `rows × w` outputs (β = 0).
        unsafe { gemm(self.rows, self.width, w, Operand::row_major(self.x, self.width), self.weight.at(start, 0).transposed(), 0.0, logits.as_mut_ptr(), w) }
    }

    /// `(mean loss [1], lse per row)`.
    fn forward(&self, targets: &[usize]) -> (FlexTensor, Vec<f32>) {
        let partials: Vec<Partial> = self.lanes().into_par_iter().map(|words| self.forward_lane(words, targets)).collect();
        let mut stats = vec![(f32::NEG_INFINITY, 0.0f32); self.rows];
        let mut target_logits = vec![f32::NAN; self.rows];
        for partial in partials {
            for (total, &part) in stats.iter_mut().zip(&partial.stats) {
                *total = merge(*total, part);
            }
            for (row, logit) in partial.picked {
                target_logits[row] = logit;
            }
        }
        let lse: Vec<f32> = stats.iter().map(|&(max, sum)| max + sum.ln()).collect();
        let total: f64 = lse.iter().zip(&target_logits).map(|(&lse, &logit)| (lse - logit) as f64).sum();
        let mean = total / self.rows as f64;
        (FlexTensor::from_data(TensorData::new(vec![mean as f32], [1])), lse)
    }

    fn forward_lane(&self, words: Range<usize>, targets: &[usize]) -> Partial {
        let mut stats = vec![(f32::NEG_INFINITY, 0.0f32); self.rows];
        let mut picked = Vec::new();
        let mut logits = vec![0.0f32; self.rows * self.chunk];
        for (start, w) in self.chunks(words) {
            self.logits(start, w, &mut logits);
            for ((row, stat), (i, &t)) in logits.chunks_exact(w).zip(&mut stats).zip(targets.iter().enumerate()) {
                *stat = merge(*stat, max_and_sum_exp(row));
                if (start..start + w).contains(&t) {
                    picked.push((i, row[t - start]));
                }
            }
        }
        Partial { stats, picked }
    }

    /// `(∂x [rows, C], ∂W [vocab, C])` for the upstream gradient `grad` of the mean loss.
    fn backward(&self, targets: &[usize], lse: &[f32], grad: f32) -> (FlexTensor, FlexTensor) {
        let scale = grad / self.rows as f32;
        let mut dweight = Vec::<f32>::with_capacity(self.vocab * self.width);
        let out = Output(dweight.as_mut_ptr());
        let partials: Vec<Vec<f32>> = self.lanes().into_par_iter().map(|words| self.backward_lane(words, targets, lse, scale, &out)).collect();
        // SAFETY: the lanes' chunks cover every word, and each wrote its words' rows of ∂W.
        unsafe { dweight.set_len(self.vocab * self.width) };
        let mut partials = partials.into_iter();
        let mut dx = partials.next().unwrap_or_else(|| vec![0.0; self.rows * self.width]);
        for partial in partials {
            dx.iter_mut().zip(&partial).for_each(|(total, part)| *total += part);
        }
        (FlexTensor::from_data(TensorData::new(dx, [self.rows, self.width])), FlexTensor::from_data(TensorData::new(dweight, [self.vocab, self.width])))
    }

    /// This lane's partial `∂x`; its words' rows of `∂W` go to `dweight`.
    fn backward_lane(&self, words: Range<usize>, targets: &[usize], lse: &[f32], scale: f32, dweight: &Output) -> Vec<f32> {
        let mut dx = vec![0.0f32; self.rows * self.width];
        let mut logits = vec![0.0f32; self.rows * self.chunk];
        for (start, w) in self.chunks(words) {
            self.logits(start, w, &mut logits);
            for ((row, &lse), &t) in logits.chunks_exact_mut(w).zip(lse).zip(targets) {
                scaled_softmax(row, lse, scale);
                if (start..start + w).contains(&t) {
                    row[t - start] -= scale;
                }
            }
            let g = Operand::row_major(&logits, w);
            // SAFETY: `g` is `[rows, w]` row-major; ∂W's rows `start .. start + w` (`C` each) are
            // inside its capacity and written by this lane alone (β = 0); `dx` is this lane's
            // own `[rows, C]`, initialised.
            unsafe {
                gemm(w, self.rows, self.width, g.transposed(), Operand::row_major(self.x, self.width), 0.0, dweight.0.add(start * self.width), self.width);
                gemm(self.rows, w, self.width, g, self.weight.at(start, 0), 1.0, dx.as_mut_ptr(), self.width);
            }
        }
        dx
    }
}

multiversion! {
    /// `row = scale · exp(row − lse)`.
    fn scaled_softmax(row: &mut [f32], lse: f32, scale: f32) => scaled_softmax_impl
}

#[inline(always)]
fn scaled_softmax_impl(row: &mut [f32], lse: f32, scale: f32) {
    for v in row {
        *v = scale * exp(*v - lse);
    }
}
