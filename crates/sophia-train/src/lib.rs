#![warn(missing_docs)]
//! The sophia-burn application: everything around the model and the optimizer that a real
//! training run needs.
//!
//! - [`data`]: corpora from package registries (verified, cached), the GPT-2 tokenizer, token
//!   files and seeded batches.
//! - [`train`]: the training loop in one file (`train/run.rs`, top to bottom), its config with
//!   presets, checkpoints, metrics, sweeps; [`train::TrainingStep`] is the step the loop runs,
//!   exposed so the benchmarks time the same code.
//! - [`learner`]: SophiaG inside Burn's `Learner`, on one device or data-parallel.
//! - [`plot`], [`fs`], [`table`]: figures, crash-safe files and markdown tables for the reports.
//! - Backends are chosen at run time by name ([`Backend`]).

pub mod data;
mod error;
pub mod fs;
pub mod learner;
pub mod plot;
pub mod table;
pub mod train;

pub use error::{SettingError, TrainError};
pub use sophia_backend::{Backend, BackendError, flush_denormals, on_pool};
