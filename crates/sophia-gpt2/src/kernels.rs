//! Which implementation of the model's hot operations runs: the fused kernels of the flex CPU
//! backend (and, with the `cube` feature, the loss and the label sampling on the CubeCL
//! backends), or Burn's composed tensor operations (every backend, and the reference the fused
//! kernels are tested against). The choice covers the matrix products of the linear layers and
//! the LM head ([`product`](crate::product)), the LayerNorms ([`norm`](crate::norm)), the
//! causal attention ([`attention`](crate::attention)), the cross-entropy and the sampled labels
//! ([`loss`](crate::loss)) and the GELU ([`activation`](crate::activation)).

use serde::{Deserialize, Serialize};

/// Which implementation of the matrix products, the LayerNorms, the attention, the loss, the
/// label sampling and the activation a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// The fused kernels where the backend has them (all of them on flex; the loss and the label
    /// sampling on the CubeCL backends with the `cube` feature), the composed operations
    /// elsewhere.
    #[default]
    Fused,
    /// Burn's tensor operations everywhere (the reference the fused kernels are tested against).
    Composed,
}

/// Whether all the fused kernels run on `device` (the flex backend, with this crate's `flex`
/// feature; the CubeCL backends have fused bodies of the loss and the label sampling only).
pub fn fused_available(device: &burn::tensor::Device) -> bool {
    #[cfg(feature = "flex")]
    return device.clone().inner() == burn::tensor::Device::flex();
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

impl std::str::FromStr for Kernels {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "fused" => Ok(Self::Fused),
            "composed" => Ok(Self::Composed),
            other => Err(format!("unknown kernels `{other}`; choose fused or composed")),
        }
    }
}

/// The widest vector instructions the fused kernels use on this CPU: which multiversioned body
/// and which kernel runs the matrix products inside the attention and the fused LM head
/// (register tiles on AVX-512F or on AVX2 with FMA for products with a dimension below 256,
/// the `gemm` crate's packed kernel for the others and on every other CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorIsa {
    /// x86-64 with AVX-512F.
    Avx512F,
    /// x86-64 with AVX2 and FMA, without AVX-512F.
    Avx2Fma,
    /// Any other CPU: the portable bodies.
    Portable,
}

impl VectorIsa {
    /// This CPU's (the standard library caches the detection).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") {
                return Self::Avx512F;
            }
            if has!("avx2") && has!("fma") {
                return Self::Avx2Fma;
            }
        }
        Self::Portable
    }
}
