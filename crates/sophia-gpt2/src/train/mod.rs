//! Training a GPT-2 as a library, so the command line, the benchmarks and the tests call the
//! same loop.

mod backend;
mod checkpoint;
mod config;
pub mod metrics;
mod optimizer;
mod run;
pub mod sweep;

pub use backend::{BACKENDS, Backend};
pub use checkpoint::{CheckpointError, CheckpointState, Checkpoints};
pub use config::{DecaySelection, HYPERPARAMETER_PRESETS, NonFinitePolicy, OPTIMIZERS, OptimizerKind, TrainConfig};
pub use optimizer::RunOptimizer;
pub use run::{RunOptions, TrainError, TrainSummary, plot_run, train};
pub use sweep::{SweepGrid, SweepReport, sweep};
