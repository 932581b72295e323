#![warn(missing_docs)]
//! Optimizers for [Burn](https://burn.dev) that Burn does not ship, for language-model
//! pre-training, in small composable pieces:
//!
//! - [`SophiaOptimizer`]: the Sophia second-order optimizer (Liu et al. 2023,
//!   <https://arxiv.org/abs/2305.14342>), SophiaG ([`SophiaGConfig`], Gauss-Newton-Bartlett) and
//!   SophiaH ([`SophiaHConfig`], Hutchinson). It owns the Hessian refresh: its
//!   [`step`](SophiaOptimizer::step) updates the weights and, every `k` updates, asks a
//!   [`HessianEstimator`] for an estimate, clips it and folds it into `h`.
//! - [`HessianEstimator`]: what a refresh folds in; [`Hutchinson`] (`u ⊙ Hu` by finite
//!   differences) lives here, the sampled-label estimator beside the model (`sophia-gpt2`).
//! - [`AdamW`] and [`Lion`]: PyTorch's AdamW and the Lion paper's update, with Burn's state
//!   records (checkpoints move between these and Burn's own).
//! - [`Tiger`]: Lion with one momentum coefficient.
//! - [`GlobalNormClip`]: `clip_grad_norm_`-style clipping over a whole module.
//! - [`WarmupCosine`]: nanoGPT's warmup + cosine learning-rate schedule as a Burn
//!   [`LrScheduler`](burn::optim::lr_scheduler::LrScheduler).
//!
//! Feature `flex` (off by default): Sophia's, AdamW's, Lion's and Tiger's updates run as one
//! parallel pass over the parameter, gradient and state on Burn's flex CPU backend, giving the
//! same bits as the composed tensor operations every other backend runs (`fused = false` in a
//! config forces those).
//!
//! Every config validates itself: `try_build()` / `try_init()` return a [`ConfigError`] that
//! names the field, its value and the allowed range; `build()` / `init()` follow Burn's
//! convention and panic with that message.
//!
//! ```no_run
//! use sophia_optim::SophiaGConfig;
//! # fn demo() -> Result<(), sophia_optim::ConfigError> {
//! // bs = tokens per optimizer step: 8 sequences of 256 tokens.
//! let mut optim = SophiaGConfig::new(8 * 256).with_rho(0.05).try_init()?;
//! # Ok(()) }
//! ```

#[macro_use]
mod constructors;

pub mod adamw;
pub mod auto_rho;
pub mod clip;
pub mod control;
mod error;
pub mod estimator;
#[cfg(feature = "flex")]
mod fused;
pub mod hutchinson;
pub mod lion;
mod optimizer;
pub mod schedule;
pub mod sophia;
pub mod tiger;

pub use adamw::{AdamW, AdamWConfig};
pub use auto_rho::AutoRho;
pub use clip::{GlobalNormClip, GradNorm, global_norm};
pub use control::{RefreshError, RefreshMismatch, Schedule, SophiaControl, SophiaStats};
pub use error::{ConfigError, Validator};
pub use estimator::{EstimateFn, HessianEstimator, Refresh, draw_seed};
pub use hutchinson::{Hutchinson, HutchinsonEstimator};
pub use lion::{Lion, LionConfig};
pub use optimizer::{SophiaOptimizer, SophiaRecordError};
pub use schedule::{WarmupCosine, WarmupCosineConfig};
pub use sophia::{Sophia, SophiaGConfig, SophiaHConfig, SophiaState, SophiaVariant};
pub use tiger::{Tiger, TigerConfig, TigerState};

// `#[derive(RecordState)]` refers to these through the crate root.
#[allow(unused_imports)]
use burn::optim::{RecordState, StateSink, StateSource, join_index, join_path};

/// Learning rate, as Burn's optimizers take it.
pub type LearningRate = burn::optim::LearningRate;
