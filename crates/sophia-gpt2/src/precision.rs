//! Mixed precision: the matrix products of the model in bfloat16, everything else in f32.
//!
//! As PyTorch's autocast does for GPT training, a [`Precision::Bf16`] model keeps its weights in
//! f32 (the master copy) and casts the operands of each matrix product (the linear layers, the
//! attention scores and mixing, the LM head) to bfloat16, then casts the product back to f32.
//! Embeddings, LayerNorms, softmax, the residual stream and the loss stay f32. The gradients
//! reach the weights in f32 through the casts, so every optimizer keeps its state in f32
//! without knowing about the precision, and checkpoints hold f32 weights.
//!
//! bfloat16 has the exponent range of f32, so no loss scaling is needed. float16 is not
//! offered: its gradients underflow without dynamic loss scaling, which is not implemented.

use burn::nn::Linear;
use burn::tensor::module::linear;
use burn::tensor::{DType, Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::Kernels;
use crate::error::ModelError;
use crate::product::product_with;

/// The floating-point format of the model's matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Matrix products in bfloat16, the rest (and the weights) in f32.
    Bf16,
}

impl Precision {
    /// Every precision, in the order the command line lists them.
    pub const ALL: &[Self] = &[Self::F32, Self::Bf16];

    /// The name of the precision (`--precision NAME`, config files).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = ModelError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let reason = match name.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => return Ok(Self::F32),
            "bf16" | "bfloat16" => return Ok(Self::Bf16),
            "f16" | "fp16" | "float16" => {
                "float16 training needs dynamic loss scaling, which sophia-burn does not implement; use bf16 (the exponent range of f32, no scaling needed)".to_string()
            }
            _ => format!("unknown; choose one of {}", Self::ALL.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")),
        };
        Err(ModelError::Precision { name: name.to_string(), reason })
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Precision {
    /// The dtype of the matrix products, `None` for plain f32.
    fn compute_dtype(self) -> Option<FloatDType> {
        match self {
            Self::F32 => None,
            Self::Bf16 => Some(FloatDType::BF16),
        }
    }

    /// Check that `device` can compute in this precision; the error names the fix.
    pub fn check_device(self, device: &Device) -> Result<(), ModelError> {
        match self {
            Self::F32 => Ok(()),
            Self::Bf16 if device.supports_dtype(DType::BF16) => Ok(()),
            Self::Bf16 => Err(ModelError::Precision {
                name: self.to_string(),
                reason: format!("the device {device:?} has no bfloat16 arithmetic; use --precision f32 or another backend"),
            }),
        }
    }

    /// `a · b` with both operands in this precision, the product in f32.
    pub fn matmul<const D: usize>(self, a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
        match self.compute_dtype() {
            None => a.matmul(b),
            Some(dtype) => a.cast(dtype).matmul(b.cast(dtype)).cast(FloatDType::F32),
        }
    }

    /// `x · weight` (`x` `[..., K]`, `weight` `[K, N]`): in f32 with the implementation `kernels`
    /// asks for (see [`product`](crate::product)), in bfloat16 with Burn's `linear`.
    pub fn product<const D: usize>(self, kernels: Kernels, x: Tensor<D>, weight: Tensor<2>) -> Tensor<D> {
        match self.compute_dtype() {
            None => product_with(kernels, x, weight),
            Some(dtype) => linear(x.cast(dtype), weight.cast(dtype), None).cast(FloatDType::F32),
        }
    }

    /// `layer(x)`: the product `x · W` in this precision, plus the bias in f32. In f32 with the
    /// composed kernels this is Burn's `Linear::forward` itself.
    pub fn linear<const D: usize>(self, kernels: Kernels, layer: &Linear, x: Tensor<D>) -> Tensor<D> {
        if self == Self::F32 && kernels == Kernels::Composed {
            return layer.forward(x);
        }
        let product = self.product(kernels, x, layer.weight.val());
        match &layer.bias {
            Some(bias) => product.add(bias.val().unsqueeze()),
            None => product,
        }
    }
}
