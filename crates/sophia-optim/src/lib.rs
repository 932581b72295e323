#![warn(missing_docs)]
//! Optimizers for [Burn](https://burn.dev) that Burn does not ship, for language-model
//! pre-training:
//!
//! - [`Sophia`]: the Sophia second-order optimizer (Liu et al. 2023,
//!   <https://arxiv.org/abs/2305.14342>) with its two Hessian estimators, SophiaG
//!   ([`SophiaGConfig`], Gauss-Newton-Bartlett) and SophiaH ([`SophiaHConfig`], Hutchinson);
//!   its update and its Hessian refresh are two separate calls ([`SophiaOptimizer::step`],
//!   [`SophiaOptimizer::refresh`]) through Burn's module optimizer.
//! - [`Tiger`]: Lion with one momentum coefficient.
//! - [`GlobalNormClip`]: `clip_grad_norm_`-style clipping over a whole module.
//! - [`WarmupCosine`]: nanoGPT's warmup + cosine learning-rate schedule as a Burn
//!   [`LrScheduler`](burn::optim::lr_scheduler::LrScheduler).
//! - [`hutchinson`]: finite-difference Hessian-vector products for SophiaH.
//!
//! AdamW and Lion are Burn's own (`burn::optim::{AdamWConfig, LionConfig}`); they match
//! PyTorch's AdamW and the Lion paper (see the golden tests).
//!
//! Every config validates itself: `try_build()` / `try_init()` return a [`ConfigError`] that
//! names the field, its value and the allowed range; `build()` / `init()` follow Burn's
//! convention and panic with that message.
//!
//! ```no_run
//! use burn::optim::GradientsParams;
//! use sophia_optim::SophiaGConfig;
//! # fn demo() -> Result<(), sophia_optim::ConfigError> {
//! // bs = tokens per optimizer step: 8 sequences of 256 tokens.
//! let mut optim = SophiaGConfig::new(8 * 256).with_rho(0.05).try_init()?;
//! # Ok(()) }
//! ```

#[macro_use]
mod constructors;

pub mod clip;
pub mod control;
mod error;
pub mod hutchinson;
pub mod schedule;
pub mod sophia;
pub mod tiger;

pub use clip::{GlobalNormClip, GradNorm, global_norm};
pub use control::{SophiaControl, SophiaPhase, SophiaStats};
pub use error::ConfigError;
pub use hutchinson::Hutchinson;
pub use schedule::{WarmupCosine, WarmupCosineConfig};
pub use sophia::{HessianEstimator, Sophia, SophiaGConfig, SophiaHConfig, SophiaOptimizer, SophiaState};
pub use tiger::{Tiger, TigerConfig, TigerState};

// `#[derive(RecordState)]` refers to these through the crate root.
#[allow(unused_imports)]
use burn::optim::{RecordState, StateSink, StateSource, join_index, join_path};

/// Learning rate, as Burn's optimizers take it.
pub type LearningRate = burn::optim::LearningRate;
