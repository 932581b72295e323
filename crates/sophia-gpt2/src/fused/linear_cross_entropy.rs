//! The fused kernel of [`linear_cross_entropy_with`](crate::loss::linear_cross_entropy_with):
//! the LM head's product and the cross-entropy in one kernel, without the separate passes over
//! the `[rows × vocab]` logits (103 MB for 512 positions over GPT-2's 50257 words) and their
//! gradient that the head, the loss and the backward products make on their own. The vocabulary
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
//! where `(m, s) ⊕ (m', s') = (M, s·e^(m−M) + s'·e^(m'−M))`, `M = max(m, m')`. Where the
//! logits fit in [`KEEP_BYTES`] and a logit costs at least [`KEEP_WIDTH`] multiply-adds, the
//! forward pass keeps each chunk's logits for the backward pass (written once, read once, where
//! the unfused path wrote them and read them back three times); otherwise the backward pass
//! recomputes them (a fourth product against the unfused path's three), so memory stays bounded
//! by the chunks. Both give the same bits: the kept logits are the recomputed ones.
//!
//! The refresh's sampled labels come from the same pass
//! ([`linear_cross_entropy_on_sampled_labels`]): the forward pass keeps the logits, each row's
//! label is drawn from them by inverse transform sampling once the row's `(m, s)` is known
//! (`y_i = min { j : Σ_{k ≤ j} exp(L_ik − m_i) > u_i·s_i }`, scanned chunk after chunk), and the
//! loss and its backward pass take those labels as targets: one product over the vocabulary
//! instead of one to draw and two or three for the loss.
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

use super::cross_entropy::{flex_int, inverse_cdf, max_and_sum_exp, targets_of};
use super::gemm::{Operand, Output, gemm};
use super::{AutodiffFlex, contiguous, dims, exp, floats, multiversion};

/// Groups of chunks, each one parallel task with its own partial sums.
const LANES: usize = 16;

/// The bytes of one chunk's logits: within a core's L2 cache.
const CHUNK_BYTES: usize = 1 << 20;

/// The most bytes of logits a forward pass keeps for its backward pass.
const KEEP_BYTES: usize = 256 << 20;

/// The narrowest hidden state whose logits are kept rather than recomputed: a logit costs that
/// many multiply-adds to recompute, against writing it to memory and reading it back. Measured
/// with `bench throughput` on two vCPUs: cpu-10m (160 wide) trained at 914 and 1024 tokens/s
/// keeping its logits against 804 recomputing them; cpu-3m (64 wide) at 1703 keeping against
/// 1689 and 1683 recomputing, no gain.
const KEEP_WIDTH: usize = 128;

/// Mean cross-entropy of `x·weightᵀ` (`x` `[rows, C]`, `weight` `[vocab, C]`) against
/// `targets` `[rows]`, `None` when the tensors are tracked by an autodiff that is not this
/// crate's (gradient checkpointing).
pub(crate) fn linear_cross_entropy(x: Tensor<2>, weight: Tensor<2>, targets: Tensor<1, Int>) -> Option<Tensor<1>> {
    let targets = targets_of(&flex_int(targets));
    run(x, weight, Labels::Given(targets)).map(|(loss, _)| loss)
}

/// Labels `[rows]` drawn from `softmax(x·weightᵀ)` with `uniforms` `[rows]` (in `[0, 1)`), and
/// the mean cross-entropy against them: `(loss, labels)`. `None` where
/// [`linear_cross_entropy`] gives none, and where the `[rows × vocab]` logits, which the draw
/// needs whole, exceed [`KEEP_BYTES`].
pub(crate) fn linear_cross_entropy_on_sampled_labels(x: Tensor<2>, weight: Tensor<2>, uniforms: Tensor<1>) -> Option<(Tensor<1>, Tensor<1, Int>)> {
    let [rows, _] = x.dims();
    if rows * weight.dims()[0] * 4 > KEEP_BYTES {
        return None;
    }
    let uniforms = floats(&contiguous(&uniforms.try_into_primitive::<Flex>().ok()?)).to_vec();
    let (loss, labels) = run(x, weight, Labels::Drawn(uniforms))?;
    let labels = labels.into_iter().map(|label| label as i64).collect::<Vec<_>>();
    Some((loss, Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(labels, [rows])))))
}

/// The targets of a call: given, or drawn with one uniform per row.
enum Labels {
    Given(Vec<usize>),
    Drawn(Vec<f32>),
}

/// The kernel on tracked or plain flex tensors: the mean loss and the targets it was taken
/// against.
fn run(x: Tensor<2>, weight: Tensor<2>, labels: Labels) -> Option<(Tensor<1>, Vec<usize>)> {
    let tracked = (x.clone().try_into_primitive::<AutodiffFlex>(), weight.clone().try_into_primitive::<AutodiffFlex>());
    if let (Ok(x), Ok(weight)) = tracked {
        let (loss, targets) = differentiable(x, weight, labels);
        return Some((Tensor::from_primitive::<AutodiffFlex>(loss), targets));
    }
    match (x.try_into_primitive::<Flex>(), weight.try_into_primitive::<Flex>()) {
        (Ok(x), Ok(weight)) => {
            let (loss, targets) = untracked(&x, &weight, labels);
            Some((Tensor::from_primitive::<Flex>(loss), targets))
        }
        _ => None,
    }
}

/// The mean loss and the targets without a backward pass (the logits kept only for a draw).
fn untracked(x: &FlexTensor, weight: &FlexTensor, labels: Labels) -> (FlexTensor, Vec<usize>) {
    let x = contiguous(x);
    let head = Head::new(&x, weight);
    let mut kept = head.room_for_logits(&labels, false);
    let (loss, _, targets) = head.forward(labels, kept.as_deref_mut());
    (loss, targets)
}

/// The kernel as an autodiff operation whose backward pass is [`Head::backward`], and the
/// targets.
fn differentiable(x: FloatTensor<AutodiffFlex>, weight: FloatTensor<AutodiffFlex>, labels: Labels) -> (FloatTensor<AutodiffFlex>, Vec<usize>) {
    #[derive(Debug)]
    struct LinearCrossEntropyBackward;

    impl Backward<Flex, 2> for LinearCrossEntropyBackward {
        /// `x` (row-major), the weight, the targets, the per-row log-sum-exp and the kept
        /// logits.
        type State = (FlexTensor, FlexTensor, Vec<usize>, Vec<f32>, Option<Vec<f32>>);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (x, weight, targets, lse, kept) = ops.state;
            let grad = floats(&contiguous(&grads.consume::<Flex>(&ops.node)))[0];
            let (dx, dweight) = Head::new(&x, &weight).backward(&targets, &lse, grad, kept);
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
            let head = Head::new(&x, &weight);
            let mut kept = head.room_for_logits(&labels, true);
            let (loss, lse, targets) = head.forward(labels, kept.as_deref_mut());
            (prep.finish((x, weight, targets.clone(), lse, kept), loss), targets)
        }
        OpsKind::UnTracked(prep) => {
            let (loss, targets) = untracked(x.primitive(), weight.primitive(), labels);
            (prep.finish(loss), targets)
        }
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

    /// Whether a forward pass keeps the logits for the backward pass (see [`KEEP_BYTES`],
    /// [`KEEP_WIDTH`]).
    fn keeps_logits(&self) -> bool {
        self.width >= KEEP_WIDTH && self.rows * self.vocab * 4 <= KEEP_BYTES
    }

    /// Room for the whole logits where the forward pass must keep them: to draw labels from, or
    /// for a `backward` pass that reads them rather than recomputing them.
    fn room_for_logits(&self, labels: &Labels, backward: bool) -> Option<Vec<f32>> {
        let keep = matches!(labels, Labels::Drawn(_)) || (backward && self.keeps_logits());
        keep.then(|| vec![0.0f32; self.rows * self.vocab])
    }

    /// `logits` `[rows × vocab]`, chunk after chunk (a chunk of `w` words from word `s` on is
    /// `[rows, w]` row-major at `rows·s`), cut into each group's words; without kept logits, a
    /// scratch chunk per group.
    fn regions<'b>(&self, lanes: &[Range<usize>], logits: Option<&'b mut [f32]>) -> Vec<Region<'b>> {
        match logits {
            Some(mut rest) => lanes
                .iter()
                .map(|words| {
                    let (mine, tail) = std::mem::take(&mut rest).split_at_mut(self.rows * words.len());
                    rest = tail;
                    Region::Kept(mine)
                })
                .collect(),
            None => lanes.iter().map(|_| Region::Scratch(vec![0.0f32; self.rows * self.chunk])).collect(),
        }
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

    /// `(mean loss [1], lse per row, targets)`; the logits are written to `keep` when it is
    /// given, which drawn labels need.
    fn forward(&self, labels: Labels, mut keep: Option<&mut [f32]>) -> (FlexTensor, Vec<f32>, Vec<usize>) {
        let lanes = self.lanes();
        let given = match &labels {
            Labels::Given(targets) => Some(targets.as_slice()),
            Labels::Drawn(_) => None,
        };
        let regions = self.regions(&lanes, keep.as_deref_mut());
        let partials: Vec<Partial> = lanes.into_par_iter().zip(regions).map(|(words, mut region)| self.forward_lane(words, given, &mut region)).collect();
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
        let targets = match labels {
            Labels::Given(targets) => targets,
            Labels::Drawn(uniforms) => {
                let logits = keep.expect("drawn labels need the kept logits");
                let drawn: Vec<(usize, f32)> = (0..self.rows).into_par_iter().map(|row| self.draw(logits, row, stats[row], uniforms[row])).collect();
                target_logits = drawn.iter().map(|&(_, logit)| logit).collect();
                drawn.into_iter().map(|(label, _)| label).collect()
            }
        };
        let lse: Vec<f32> = stats.iter().map(|&(max, sum)| max + sum.ln()).collect();
        let total: f64 = lse.iter().zip(&target_logits).map(|(&lse, &logit)| (lse - logit) as f64).sum();
        let mean = total / self.rows as f64;
        (FlexTensor::from_data(TensorData::new(vec![mean as f32], [1])), lse, targets)
    }

    /// This group's running sums over its words, and the `targets`' logits among them.
    fn forward_lane(&self, words: Range<usize>, targets: Option<&[usize]>, region: &mut Region<'_>) -> Partial {
        let mut stats = vec![(f32::NEG_INFINITY, 0.0f32); self.rows];
        let mut picked = Vec::new();
        for (start, w) in self.chunks(words.clone()) {
            let logits = region.chunk(self.rows, start - words.start, w);
            self.logits(start, w, logits);
            for (i, (row, stat)) in logits.chunks_exact(w).zip(&mut stats).enumerate() {
                *stat = merge(*stat, max_and_sum_exp(row));
                if let Some(&t) = targets.map(|targets| &targets[i])
                    && (start..start + w).contains(&t)
                {
                    picked.push((i, row[t - start]));
                }
            }
        }
        Partial { stats, picked }
    }

    /// Row `row`'s label drawn with the uniform `u` from the whole `logits` (chunk after chunk,
    /// as [`regions`](Self::regions) lays them out) and its running `(max, Σ exp)`, with its
    /// logit: the first word whose cumulative `exp(L − max)` exceeds `u·Σ` (the last word if
    /// rounding leaves the total short of it).
    fn draw(&self, logits: &[f32], row: usize, (max, sum): (f32, f32), u: f32) -> (usize, f32) {
        let mut acc = 0.0f32;
        let label = self
            .chunks(0..self.vocab)
            .find_map(|(start, w)| inverse_cdf(&logits[self.rows * start + row * w..][..w], max, u * sum, &mut acc).map(|j| start + j))
            .unwrap_or(self.vocab - 1);
        let (start, w) = (label / self.chunk * self.chunk, self.chunk.min(self.vocab - label / self.chunk * self.chunk));
        (label, logits[self.rows * start + row * w + label - start])
    }

    /// `(∂x [rows, C], ∂W [vocab, C])` for the upstream gradient `grad` of the mean loss, from
    /// the forward pass's `kept` logits or recomputed ones.
    fn backward(&self, targets: &[usize], lse: &[f32], grad: f32, mut kept: Option<Vec<f32>>) -> (FlexTensor, FlexTensor) {
        let scale = grad / self.rows as f32;
        let mut dweight = Vec::<f32>::with_capacity(self.vocab * self.width);
        let out = Output(dweight.as_mut_ptr());
        let lanes = self.lanes();
        let regions = self.regions(&lanes, kept.as_deref_mut());
        let partials: Vec<Vec<f32>> =
            lanes.into_par_iter().zip(regions).map(|(words, mut region)| self.backward_lane(words, targets, lse, scale, &out, &mut region)).collect();
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
    fn backward_lane(&self, words: Range<usize>, targets: &[usize], lse: &[f32], scale: f32, dweight: &Output, region: &mut Region<'_>) -> Vec<f32> {
        let mut dx = vec![0.0f32; self.rows * self.width];
        for (start, w) in self.chunks(words.clone()) {
            let kept = matches!(region, Region::Kept(_));
            let logits = region.chunk(self.rows, start - words.start, w);
            if !kept {
                self.logits(start, w, logits);
            }
            for ((row, &lse), &t) in logits.chunks_exact_mut(w).zip(lse).zip(targets) {
                scaled_softmax(row, lse, scale);
                if (start..start + w).contains(&t) {
                    row[t - start] -= scale;
                }
            }
            let g = Operand::row_major(logits, w);
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

/// Where one group of chunks keeps its logits.
enum Region<'b> {
    /// The group's words of the logits kept for the backward pass.
    Kept(&'b mut [f32]),
    /// One chunk's room, reused chunk after chunk.
    Scratch(Vec<f32>),
}

impl Region<'_> {
    /// The `[rows, w]` logits of the chunk `offset` words into the group.
    fn chunk(&mut self, rows: usize, offset: usize, w: usize) -> &mut [f32] {
        match self {
            Self::Kept(logits) => &mut logits[rows * offset..rows * (offset + w)],
            Self::Scratch(room) => &mut room[..rows * w],
        }
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
