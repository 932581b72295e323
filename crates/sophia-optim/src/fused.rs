//! One-pass optimizer updates on Burn's flex CPU backend (feature `flex`), reached through
//! Burn's backend-extension API (`Tensor::try_into_primitive::<Flex>()` / `from_primitive`).
//!
//! The composed updates are chains of whole-tensor operations (SophiaG: about ten passes over
//! parameter-sized tensors, each writing a fresh tensor); these kernels read the parameter, the
//! gradient and the state once, in parallel chunks, and write the new parameter and momentum in
//! place when nothing else holds their storage. They compute every element with the same f32
//! operations in the same order as the composed path (the scalars rounded to f32 as Burn rounds
//! them), so both give the same bits, and the state they leave is the same tensors: checkpoints
//! and resumption are unchanged. Win counts are summed in the same pass.
//!
//! Every other backend, dtype or layout takes the composed operations.

use burn::backend::{Flex, flex::FlexTensor};
use burn::tensor::{DType, Device, Tensor};
use rayon::prelude::*;

/// Elements per parallel task: large enough to amortise scheduling, small enough to balance
/// a few dozen cores on the smallest parameters worth splitting.
const CHUNK: usize = 1 << 15;

/// Whether the one-pass kernels serve `tensors`: plain (not autodiff) f32 flex tensors of one
/// shape, which is what a Burn optimizer receives on the flex backend.
pub(crate) fn applies<const D: usize>(tensors: &[&Tensor<D>]) -> bool {
    let shape = tensors[0].shape();
    tensors.iter().all(|t| t.dtype() == DType::F32 && t.device() == Device::flex() && t.shape() == shape)
}

/// `tensor`'s primitive, row-major; the caller checked [`applies`].
fn primitive<const D: usize>(tensor: Tensor<D>) -> FlexTensor {
    let flex = tensor.try_into_primitive::<Flex>().expect("checked by `applies`");
    if flex.is_contiguous() { flex } else { flex.to_contiguous() }
}

/// The elements of a row-major tensor, written in place (copied first when shared).
fn elements_mut(tensor: &mut FlexTensor) -> &mut [f32] {
    let (start, end) = tensor.layout().contiguous_offsets().expect("made row-major by `primitive`");
    &mut tensor.storage_mut::<f32>()[start..end]
}

/// The elements of a row-major tensor.
fn elements(tensor: &FlexTensor) -> &[f32] {
    tensor.as_slice::<f32>().expect("made row-major by `primitive`")
}

/// The decay factor `1 − η λ` of a one-pass update: computed in f64 and rounded to f32 as Burn
/// rounds a scalar, `None` when it is exactly 1 (the composed paths then skip the product).
pub(crate) fn decay_factor(lr: f64, weight_decay: f64) -> Option<f32> {
    let decay = 1.0 - lr * weight_decay;
    (decay != 1.0).then_some(decay as f32)
}

/// The weight decay of an update, `θ ↦ θ · (1 − η λ)` or none, as a type, so that each loop
/// is compiled for one case without a branch per element (which keeps it from vectorising).
trait Decay: Copy + Send + Sync {
    fn apply(self, theta: f32) -> f32;
}

/// `θ ↦ θ`.
#[derive(Clone, Copy)]
struct NoDecay;

impl Decay for NoDecay {
    #[inline(always)]
    fn apply(self, theta: f32) -> f32 {
        theta
    }
}

/// `θ ↦ θ · factor`.
#[derive(Clone, Copy)]
struct DecayBy(f32);

impl Decay for DecayBy {
    #[inline(always)]
    fn apply(self, theta: f32) -> f32 {
        theta * self.0
    }
}

/// `$body` with `$decay` bound to the [`Decay`] of the factor `$factor` (`Option<f32>`).
macro_rules! with_decay {
    ($factor:expr, |$decay:ident| $body:expr) => {
        match $factor {
            Some(factor) => {
                let $decay = DecayBy(factor);
                $body
            }
            None => {
                let $decay = NoDecay;
                $body
            }
        }
    };
}

/// Burn's `sign`: ±1, and 0 for 0 and NaN.
#[inline(always)]
fn sign(x: f32) -> f32 {
    if x.is_nan() || x == 0.0 { 0.0 } else { 1.0f32.copysign(x) }
}

/// Sophia's preconditioner `D(h)`, with its constants in f32.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Preconditioner {
    /// SophiaG: `h · (ρ · bs) + ε`.
    Scaled {
        /// `ρ · bs`.
        scale: f32,
        /// `ε`.
        epsilon: f32,
    },
    /// SophiaH: `max(h · γ, ε)` (NaN propagates, as Burn's `clamp_min`).
    Floored {
        /// `γ`.
        scale: f32,
        /// `ε`.
        epsilon: f32,
    },
}

impl Preconditioner {
    #[inline(always)]
    fn of(self, h: f32) -> f32 {
        match self {
            Self::Scaled { scale, epsilon } => h * scale + epsilon,
            Self::Floored { scale, epsilon } => {
                let p = h * scale;
                if p.is_nan() || p > epsilon { p } else { epsilon }
            }
        }
    }
}

/// The constants of one Sophia update, in f32.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SophiaUpdate {
    /// `β₁`.
    pub beta_1: f32,
    /// `1 − β₁` (computed in f64, then rounded).
    pub one_minus_beta_1: f32,
    /// `D(h)`.
    pub preconditioner: Preconditioner,
    /// `1 − η λ` (computed in f64, then rounded); `None` when it is exactly 1.
    pub decay: Option<f32>,
    /// `η`.
    pub lr: f32,
}

/// Sophia's update of `tensor` with `grad` and the state `(momentum, hessian)`:
///
/// ```text
/// m ← β₁ m + (1 − β₁) g;   r = clamp(m / D(h), −1, 1);   θ ← θ (1 − η λ) − η r
/// ```
///
/// Returns the new parameter, the new momentum and the number of coordinates whose ratio was
/// not clipped (`|r| < 1`).
pub(crate) fn sophia_update<const D: usize>(
    update: &SophiaUpdate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    momentum: Tensor<D>,
    hessian: &Tensor<D>,
) -> (Tensor<D>, Tensor<D>, u64) {
    let (mut theta, grad, mut momentum, hessian) = (primitive(tensor), primitive(grad), primitive(momentum), primitive(hessian.clone()));
    let (g, h) = (elements(&grad), elements(&hessian));
    let theta_elements = elements_mut(&mut theta);
    let momentum_elements = elements_mut(&mut momentum);
    let not_clipped = theta_elements
        .par_chunks_mut(CHUNK)
        .zip(momentum_elements.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK).zip(h.par_chunks(CHUNK)))
        .map(|((theta, m), (g, h))| sophia_chunk(update, theta, m, g, h))
        .sum();
    (Tensor::from_primitive::<Flex>(theta), Tensor::from_primitive::<Flex>(momentum), not_clipped)
}

/// One chunk of [`sophia_update`], its loop compiled for the preconditioner and the decay (here,
/// as [`adamw_chunk`]).
fn sophia_chunk(u: &SophiaUpdate, theta: &mut [f32], m: &mut [f32], g: &[f32], h: &[f32]) -> u64 {
    match u.preconditioner {
        scaled @ Preconditioner::Scaled { .. } => with_decay!(u.decay, |decay| sophia_loop(u, decay, |h| scaled.of(h), theta, m, g, h)),
        floored @ Preconditioner::Floored { .. } => with_decay!(u.decay, |decay| sophia_loop(u, decay, |h| floored.of(h), theta, m, g, h)),
    }
}

#[inline(always)]
fn sophia_loop(u: &SophiaUpdate, decay: impl Decay, precondition: impl Fn(f32) -> f32, theta: &mut [f32], m: &mut [f32], g: &[f32], h: &[f32]) -> u64 {
    // Counted in 32 bits (a chunk is far below 2³² elements) with wrapping addition: no
    // overflow check in the way of vectorisation.
    let mut not_clipped = 0u32;
    for (((theta, m), &g), &h) in theta.iter_mut().zip(m.iter_mut()).zip(g).zip(h) {
        *m = *m * u.beta_1 + g * u.one_minus_beta_1;
        let ratio = (*m / precondition(h)).clamp(-1.0, 1.0);
        not_clipped = not_clipped.wrapping_add(u32::from(ratio.abs() < 1.0));
        *theta = decay.apply(*theta) - ratio * u.lr;
    }
    u64::from(not_clipped)
}

/// The constants of one AdamW update, in f32.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamWUpdate {
    /// `β₁`.
    pub beta_1: f32,
    /// `1 − β₁`.
    pub one_minus_beta_1: f32,
    /// `β₂`.
    pub beta_2: f32,
    /// `1 − β₂`.
    pub one_minus_beta_2: f32,
    /// `1 − β₁ᵗ`.
    pub bias_correction_1: f32,
    /// `1 − β₂ᵗ`.
    pub bias_correction_2: f32,
    /// `ε`.
    pub epsilon: f32,
    /// `1 − η λ`; `None` when it is exactly 1.
    pub decay: Option<f32>,
    /// `η`.
    pub lr: f32,
}

/// AdamW's update (PyTorch's, in Burn's order of operations):
///
/// ```text
/// m ← β₁ m + (1 − β₁) g;   v ← β₂ v + (1 − β₂) g²
/// θ ← θ (1 − η λ) − η · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
/// ```
///
/// Returns the new parameter and moments.
pub(crate) fn adamw_update<const D: usize>(
    update: &AdamWUpdate,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    moment_1: Tensor<D>,
    moment_2: Tensor<D>,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let (mut theta, grad, mut moment_1, mut moment_2) = (primitive(tensor), primitive(grad), primitive(moment_1), primitive(moment_2));
    let g = elements(&grad);
    let (theta_elements, m_elements, v_elements) = (elements_mut(&mut theta), elements_mut(&mut moment_1), elements_mut(&mut moment_2));
    let u = update;
    theta_elements
        .par_chunks_mut(CHUNK)
        .zip(m_elements.par_chunks_mut(CHUNK))
        .zip(v_elements.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)))
        .for_each(|((theta, m), (v, g))| adamw_chunk(u, theta, m, v, g));
    (Tensor::from_primitive::<Flex>(theta), Tensor::from_primitive::<Flex>(moment_1), Tensor::from_primitive::<Flex>(moment_2))
}

/// One chunk of [`adamw_update`], its loop compiled for the decay. (Not generic and not
/// `#[inline]`: compiled here, at this crate's optimisation level, where the loop vectorises,
/// rather than in the crate that instantiates the generic update.)
fn adamw_chunk(u: &AdamWUpdate, theta: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
    with_decay!(u.decay, |decay| adamw_loop(u, decay, theta, m, v, g))
}

#[inline(always)]
fn adamw_loop(u: &AdamWUpdate, decay: impl Decay, theta: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
    for (((theta, m), v), &g) in theta.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        *m = *m * u.beta_1 + g * u.one_minus_beta_1;
        *v = *v * u.beta_2 + (g * g) * u.one_minus_beta_2;
        let delta = (*m / u.bias_correction_1) / ((*v / u.bias_correction_2).sqrt() + u.epsilon);
        *theta = decay.apply(*theta) - delta * u.lr;
    }
}

/// The constants of one Lion update, in f32 (Tiger's with `β₁ = β₂ = β`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LionUpdate {
    /// `β₁`.
    pub beta_1: f32,
    /// `1 − β₁`.
    pub one_minus_beta_1: f32,
    /// `β₂`.
    pub beta_2: f32,
    /// `1 − β₂`.
    pub one_minus_beta_2: f32,
    /// `1 − η λ`; `None` when it is exactly 1.
    pub decay: Option<f32>,
    /// `η`.
    pub lr: f32,
}

/// Lion's update `c = β₁ m + (1 − β₁) g; θ ← θ (1 − η λ) − η sign(c); m ← β₂ m + (1 − β₂) g`
/// (`sign` of 0 and of NaN is 0, as Burn's); returns the new parameter and momentum. With
/// `β₁ = β₂ = β` it is Tiger's `m ← β m + (1 − β) g; θ ← θ (1 − η λ) − η sign(m)`: `c` is then
/// the new `m`, computed with the same operations.
pub(crate) fn lion_update<const D: usize>(update: &LionUpdate, tensor: Tensor<D>, grad: Tensor<D>, momentum: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
    let (mut theta, grad, mut momentum) = (primitive(tensor), primitive(grad), primitive(momentum));
    let g = elements(&grad);
    let theta_elements = elements_mut(&mut theta);
    let momentum_elements = elements_mut(&mut momentum);
    let u = update;
    theta_elements.par_chunks_mut(CHUNK).zip(momentum_elements.par_chunks_mut(CHUNK)).zip(g.par_chunks(CHUNK)).for_each(|((theta, m), g)| lion_chunk(u, theta, m, g));
    (Tensor::from_primitive::<Flex>(theta), Tensor::from_primitive::<Flex>(momentum))
}

/// One chunk of [`lion_update`], its loop compiled for the decay (here, as [`adamw_chunk`]).
fn lion_chunk(u: &LionUpdate, theta: &mut [f32], m: &mut [f32], g: &[f32]) {
    with_decay!(u.decay, |decay| lion_loop(u, decay, theta, m, g))
}

#[inline(always)]
fn lion_loop(u: &LionUpdate, decay: impl Decay, theta: &mut [f32], m: &mut [f32], g: &[f32]) {
    for ((theta, m), &g) in theta.iter_mut().zip(m.iter_mut()).zip(g) {
        let direction = sign(*m * u.beta_1 + g * u.one_minus_beta_1);
        *m = *m * u.beta_2 + g * u.one_minus_beta_2;
        *theta = decay.apply(*theta) - direction * u.lr;
    }
}

/// `Σ x²` over a tensor's elements for global-norm clipping, in one pass without a temporary:
/// each chunk of [`CHUNK`] elements summed in f64 (eight partial sums), the chunks added in
/// order, so the result does not depend on the number of threads. `None` where the one-pass
/// kernels do not serve the tensor (see [`applies`]).
pub(crate) fn sum_of_squares<const D: usize>(tensor: &Tensor<D>) -> Option<f64> {
    if !applies(&[tensor]) {
        return None;
    }
    let flex = primitive(tensor.clone());
    let chunks: Vec<f64> = elements(&flex).par_chunks(CHUNK).map(sum_of_squares_chunk).collect();
    Some(chunks.into_iter().sum())
}

/// One chunk of [`sum_of_squares`] (compiled here, where it vectorises, as [`adamw_chunk`]).
fn sum_of_squares_chunk(values: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut blocks = values.chunks_exact(8);
    for block in &mut blocks {
        for (lane, &x) in lanes.iter_mut().zip(block) {
            *lane += f64::from(x) * f64::from(x);
        }
    }
    let tail: f64 = blocks.remainder().iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    lanes.iter().sum::<f64>() + tail
}
