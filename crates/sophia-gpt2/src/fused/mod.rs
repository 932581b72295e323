//! The fused kernels on Burn's `flex` CPU backend, reached through Burn's backend-extension API
//! (`Tensor::try_into_primitive::<Flex>()` / `from_primitive`): each is one parallel pass over
//! f32 storage, vectorised for the CPU it runs on, with a hand-written autodiff backward node
//! that keeps what the backward pass needs so nothing is recomputed as a graph.
//!
//! - [`attention`]: causal softmax attention, forward and backward, read from and written to
//!   the fused projection's layout (see [`attention`](crate::attention));
//! - [`cross_entropy`]: the loss over the vocabulary and the sampled labels of SophiaG's
//!   refresh (see [`loss`](crate::loss));
//! - [`gelu`]: GPT-2's tanh-approximated GELU (see [`activation`](crate::activation));
//! - [`linear_cross_entropy`]: the LM head's product and the cross-entropy in one kernel over
//!   chunks of the vocabulary (see [`loss`](crate::loss));
//! - [`layer_norm`]: LayerNorm with its scale and shift, forward and backward (see
//!   [`norm`](crate::norm));
//! - [`product`]: the products of the linear layers and the LM head, forward and backward (see
//!   [`product`](crate::product)).
//!
//! Every kernel falls back to Burn's composed operations for tensors it does not serve (another
//! backend, another dtype, autodiff with gradient checkpointing).
//!
//! `exp` is a Cephes-style polynomial (range reduction by `ln 2`, degree-6 minimax polynomial,
//! relative error below 2e-7) that the compiler vectorises; work runs in parallel with rayon.

pub(crate) mod attention;
pub(crate) mod cross_entropy;
pub(crate) mod gelu;
mod gemm;
pub(crate) mod layer_norm;
pub(crate) mod linear_cross_entropy;
pub(crate) mod product;

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::{Autodiff, Flex, TensorMetadata, flex::FlexTensor};
use burn::tensor::{DType, Device, Tensor};

/// Autodiff over flex with the default (no) gradient checkpointing: the devices this crate's
/// models train on. Tensors of another strategy take the composed path.
type AutodiffFlex = Autodiff<Flex, NoCheckpointing>;

/// Whether the fused kernels serve `tensor`: f32 on the flex backend.
pub(crate) fn applies<const D: usize>(tensor: &Tensor<D>) -> bool {
    tensor.dtype() == DType::F32 && tensor.device().inner() == Device::flex()
}

/// `(rows, last dimension)` of a tensor.
fn dims(tensor: &FlexTensor) -> (usize, usize) {
    let shape = tensor.shape();
    let vocab = *shape.as_slice().last().expect("at least one dimension");
    (shape.num_elements() / vocab.max(1), vocab)
}

/// `tensor` in row-major order (a copy only when its layout is not).
fn contiguous(tensor: &FlexTensor) -> FlexTensor {
    if tensor.is_contiguous() { tensor.clone() } else { tensor.to_contiguous() }
}

/// The elements of a [`contiguous`] f32 tensor, in order (its view of the storage, which may
/// start past the storage's beginning).
fn floats(tensor: &FlexTensor) -> &[f32] {
    tensor.as_slice::<f32>().expect("a contiguous f32 tensor")
}

/// The instruction sets the kernels are compiled for, best first; the CPU's best is used.
macro_rules! multiversion {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match $crate::kernels::VectorIsa::detect() {
                    // SAFETY: the CPU has the instructions the function is compiled for.
                    $crate::kernels::VectorIsa::Avx512F => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::kernels::VectorIsa::Avx2Fma => return unsafe { avx2($($arg),*) },
                    $crate::kernels::VectorIsa::Portable => {}
                }
            }
            $body($($arg),*)
        }
    };
}
use multiversion;

/// `e^x` for `x` in `[-87, 88]` (clamped outside): `2^k · p(r)`, `x = k ln 2 + r`, `|r| ≤ ln 2 / 2`,
/// with Cephes' `expf` polynomial; branch-free so that loops over it vectorise.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest through the float adder (1.5·2^23), which vectorises everywhere.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let k = shifted - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    // `k` as an integer is the difference of the low mantissa bits of `shifted` and `ROUND`
    // (|k| ≤ 127): no float-to-int conversion, whose saturating semantics compiled to one
    // lane at a time. Wrapping arithmetic: no overflow check in the way of vectorisation.
    let k_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    p * f32::from_bits(k_bits.wrapping_add(127).wrapping_shl(23))
}
