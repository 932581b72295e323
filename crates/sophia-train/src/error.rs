//! The errors of the application, one typed enum per concern; the messages say what to fix.

use std::path::PathBuf;

use sophia_backend::BackendError;
use sophia_gpt2::ModelError;
use sophia_optim::{ConfigError, RefreshMismatch};

use crate::data::DataError;
use crate::train::CheckpointError;

/// A setting given by name (`--set key=value`, a config file, a preset name) that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    /// A name that is none of the known ones.
    #[error("unknown {what} `{name}`; known: {known}")]
    UnknownName {
        /// What kind of name (optimizer, hyperparameter preset, ...).
        what: &'static str,
        /// The name asked for.
        name: String,
        /// The names that exist.
        known: String,
    },
    /// A key that is no setting.
    #[error("`{key}` is not a setting; settings: {known}")]
    UnknownKey {
        /// The key.
        key: String,
        /// The settings that exist.
        known: String,
    },
    /// A setting of another optimizer than the run's.
    #[error("`{key}` is not a setting of {optimizer} (choose the optimizer first, e.g. --optimizer); {optimizer} has: {known}")]
    NotForOptimizer {
        /// The key.
        key: String,
        /// The run's optimizer.
        optimizer: &'static str,
        /// That optimizer's settings.
        known: String,
    },
    /// A value that is not of the setting's type.
    #[error("`{key}` = `{value}`: {reason}")]
    Value {
        /// The key.
        key: String,
        /// The text given.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A config file that cannot be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Why a run stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting is out of its range.
    #[error("invalid setting: {0}")]
    Config(#[from] ConfigError),
    /// A setting given by name.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// The backend.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The corpus or token files.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Checkpoints.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The Hessian refresh.
    #[error("Hessian refresh: {0}")]
    Refresh(#[from] RefreshMismatch),
    /// The run directory already holds a run.
    #[error("{0} already holds a run; pass --resume to continue it, or choose another --name")]
    RunExists(PathBuf),
    /// Another process trains in the run directory.
    #[error("{0} is in use by another training process; wait for it to finish, or choose another --name")]
    RunInUse(PathBuf),
    /// Files of the run directory.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A plot could not be drawn.
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    /// The loss or gradient became NaN or infinite.
    #[error("{what} is {value} at step {step}: training diverged. {checkpoint} Lower the learning rate, raise warmup, or set on_nonfinite = \"skip\".")]
    NonFinite {
        /// Step at which it happened.
        step: usize,
        /// Loss or gradient norm.
        what: &'static str,
        /// The value.
        value: f64,
        /// Where the last verified checkpoint is.
        checkpoint: String,
    },
    /// The run stopped where it was asked to (`RunOptions::stop_after`).
    #[error("stopped after step {0} as asked")]
    Stopped(usize),
}

impl From<sophia_optim::RefreshError<TrainError>> for TrainError {
    fn from(error: sophia_optim::RefreshError<TrainError>) -> Self {
        match error {
            sophia_optim::RefreshError::Estimator(error) => error,
            sophia_optim::RefreshError::Mismatch(mismatch) => Self::Refresh(mismatch),
        }
    }
}

/// `path`'s I/O error as a [`TrainError`].
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}
