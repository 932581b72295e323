#![warn(missing_docs)]
//! GPT-2 for [Burn](https://burn.dev) in the Hugging Face weight layout, with the sampled-label
//! Hessian step that the Sophia optimizer (SophiaG) needs.
//!
//! - [`Gpt2`]: the model, device-generic (the backend is the device you build it on); presets
//!   from GPT-2 small to XL and small CPU sizes ([`Gpt2Config::preset`]); modern options
//!   (rotary embeddings, QK-norm, ReLU², untied head, zero-init projections, logit soft-cap,
//!   grouped-query attention) off by default so plain GPT-2 stays exact.
//! - [`weights`]: load and export Hugging Face `model.safetensors`.
//! - [`SampledLabelHessian`]: labels drawn from the model's softmax, their cross-entropy
//!   gradient `ĝ` for [`SophiaOptimizer::refresh`](sophia_optim::SophiaOptimizer::refresh).
//! - [`LearnerRefresh`]: SophiaG's refresh inside Burn's `Learner`, also data-parallel over
//!   several devices with Burn's multi-device strategy.
//! - [`Precision`]: bfloat16 matrix products with f32 weights, gradients and optimizer state.
//! - [`GenerateOptions`] / [`Gpt2::generate`]: temperature and top-k sampling.

pub mod attention;
pub mod config;
mod error;
pub mod generate;
pub mod hessian;
mod init;
pub mod learner;
pub mod mlp;
pub mod model;
pub mod data;
pub mod plot;
pub mod precision;
pub mod train;
pub mod weights;

pub use attention::CausalSelfAttention;
pub use config::{Activation, GPT2_VOCAB_SIZE, Gpt2Config, PRESETS};
pub use error::ModelError;
pub use generate::{GenerateOptions, sample};
pub use hessian::{SampledLabelGradients, SampledLabelHessian};
pub use learner::LearnerRefresh;
pub use mlp::Mlp;
pub use model::{Block, Gpt2, LmHead, cross_entropy};
pub use precision::Precision;
