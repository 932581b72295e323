//! Training a GPT-2 as a library, so the command line, the benchmarks and the tests call the
//! same loop.

mod checkpoint;
mod config;
pub mod metrics;
mod optimizer;
mod run;
pub mod sweep;

pub use checkpoint::{CHECKSUM, CheckpointError, CheckpointState, Checkpoints, FileDigest, Manifest, Resumed, Unverified, digest, verify};
pub use config::{
    AdamWSettings, DecaySelection, HYPERPARAMETER_PRESETS, HyperparameterPreset, LionSettings, MuonSettings, NonFinitePolicy, OptimizerConfig, OptimizerKind, Rho,
    SophiaGSettings, SophiaHSettings, TRAIN_SETTINGS, TigerSettings, TrainConfig,
};
pub use optimizer::{RunEstimator, RunOptimizer};
pub use run::{RunOptions, StepOutcome, TrainSummary, TrainingStep, plot_run, sample_run, sample_text, tensors, train};
pub use sweep::{SweepGrid, SweepReport, sweep};
