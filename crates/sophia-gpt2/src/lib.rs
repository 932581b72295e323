#![warn(missing_docs)]
//! GPT-2 for [Burn](https://burn.dev) in the Hugging Face weight layout, with the sampled-label
//! Hessian estimator that the Sophia optimizer (SophiaG) refreshes from.
//!
//! - [`Gpt2`]: the model, device-generic (the backend is the device you build it on); presets
//!   from GPT-2 small to XL and small CPU sizes ([`Gpt2Config::preset`]); modern options
//!   (rotary embeddings, QK-norm, ReLU², untied head, zero-init projections, logit soft-cap,
//!   grouped-query attention) off by default so plain GPT-2 stays exact.
//! - [`weights`]: load and export Hugging Face `model.safetensors`.
//! - [`SampledLabels`]: SophiaG's [`HessianEstimator`](sophia_optim::HessianEstimator), `ĝ` on
//!   labels drawn from the model's softmax ([`SampledLabelHessian`] draws them).
//! - [`Precision`]: bfloat16 matrix products with f32 weights, gradients and optimizer state.
//! - [`loss`]: the cross-entropy and the sampled labels, and [`activation`]: the GELU, each
//!   fused into one parallel pass on the flex CPU backend (feature `flex`), the loss and the
//!   labels also as CubeCL kernels on the CubeCL backends (feature `cube`: WGPU, CUDA, ...),
//!   Burn's composed operations elsewhere ([`Kernels`]); [`norm`]: the LayerNorm, likewise; [`product`]: the
//!   matrix products of the linear layers and the LM head, through the `gemm` crate's kernel
//!   over rayon's pool on flex.
//! - [`GenerateOptions`] / [`Gpt2::generate`]: temperature and top-k sampling.
//!
//! ```no_run
//! use burn::optim::GradientsParams;
//! use burn::tensor::{Device, Int, Tensor};
//! use sophia_gpt2::{Gpt2, Gpt2Config, ModelError, SampledLabels};
//! use sophia_optim::SophiaGConfig;
//! # fn demo(batches: impl Fn(usize) -> (Tensor<2, Int>, Tensor<2, Int>)) -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::flex().autodiff();
//! let mut model = Gpt2::new(&Gpt2Config::preset("cpu-1m")?, &device, 0)?;
//! let mut sophia = SophiaGConfig::new(8 * 128).try_init()?;
//! // ĝ on a fresh batch for each refresh, from labels drawn with seed 0.
//! let mut estimator = SampledLabels::new(0, |refresh: sophia_optim::Refresh| Ok::<_, ModelError>(batches(1000 + refresh.update).0));
//! for step in 0..100 {
//!     let (inputs, targets) = batches(step);
//!     let grads = GradientsParams::from_grads(model.loss(inputs, targets)?.backward(), &model);
//!     model = sophia.step(6e-4, model, grads, &mut estimator)?;
//! }
//! # Ok(()) }
//! ```

pub mod activation;
pub mod attention;
pub mod config;
#[cfg(feature = "cube")]
mod cube;
mod error;
#[cfg(feature = "flex")]
mod fused;
pub mod generate;
pub mod hessian;
mod init;
pub mod kernels;
pub mod loss;
pub mod mlp;
pub mod model;
pub mod norm;
pub mod precision;
pub mod product;
pub mod weights;

pub use attention::CausalSelfAttention;
pub use config::{Activation, GPT2_VOCAB_SIZE, Gpt2Config, PRESETS};
pub use error::ModelError;
pub use generate::{GenerateOptions, sample};
pub use hessian::{SampledLabelGradients, SampledLabelHessian, SampledLabels};
pub use kernels::Kernels;
pub use loss::cross_entropy;
pub use mlp::Mlp;
pub use model::{Block, Gpt2, LmHead};
pub use precision::Precision;
