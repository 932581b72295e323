//! Checkpoints: model, optimizer state, schedule position, sampler position and step, written
//! atomically so that a crash at any moment leaves the previous checkpoint intact.
//!
//! Layout of `run/checkpoints/`:
//!
//! ```text
//! step-000200/   model.safetensors  optimizer.bpk  state.json
//! step-000300/   ...
//! latest         "step-000300"
//! ```
//!
//! A checkpoint is written into `step-NNNNNN.partial/` and renamed into place when complete;
//! only then is `latest` replaced (write + rename) and the oldest checkpoints pruned. Parameter
//! ids derive from parameter names, so the optimizer state of a checkpoint matches the
//! parameters of a freshly built model of the same config.

use std::path::{Path, PathBuf};

use burn::optim::OptimizerRecord;
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use crate::config::Gpt2Config;
use crate::data::DatasetMeta;
use crate::model::Gpt2;

/// Everything about a checkpoint that is not a tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Training wall time so far, in seconds.
    pub elapsed_secs: f64,
    /// Hessian refreshes so far (Sophia).
    pub refreshes: u64,
    /// The run's config when the checkpoint was written.
    pub config: TrainConfig,
    /// The model config.
    pub model: Gpt2Config,
    /// SHA-256 of the corpus text the run trains on.
    pub data_sha256: String,
}

/// Why a run cannot resume from its checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing failed.
    #[error("checkpoint {path}: {reason}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// There is nothing to resume from.
    #[error("no checkpoint to resume from in {0}; start without --resume")]
    Missing(PathBuf),
    /// The checkpoint belongs to another run.
    #[error("checkpoint {path} was written by a different run: {what} differs (checkpoint: {theirs}, now: {ours}); resume with the same settings or start a new run with another --name")]
    Mismatch {
        /// The checkpoint.
        path: PathBuf,
        /// What differs.
        what: &'static str,
        /// The checkpoint's value.
        theirs: String,
        /// The current value.
        ours: String,
    },
}

fn io(path: &Path) -> impl FnOnce(String) -> CheckpointError + '_ {
    move |reason| CheckpointError::Io { path: path.to_path_buf(), reason }
}

/// Writes and reads the checkpoints of one run.
pub struct Checkpoints {
    dir: PathBuf,
    keep: usize,
}

impl Checkpoints {
    /// The checkpoints under `run_dir/checkpoints`, keeping the newest `keep`.
    pub fn new(run_dir: &Path, keep: usize) -> Self {
        Self { dir: run_dir.join("checkpoints"), keep: keep.max(1) }
    }

    /// Write a checkpoint and make it the latest.
    pub fn save(&self, model: &Gpt2, optimizer: OptimizerRecord, state: &CheckpointState) -> Result<PathBuf, CheckpointError> {
        let name = format!("step-{:06}", state.step);
        let partial = self.dir.join(format!("{name}.partial"));
        let done = self.dir.join(&name);
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| io(&partial)(e.to_string()))?;
        }
        std::fs::create_dir_all(&partial).map_err(|e| io(&partial)(e.to_string()))?;
        model.save_safetensors(partial.join("model.safetensors")).map_err(|e| io(&partial)(e.to_string()))?;
        optimizer.save(partial.join("optimizer.bpk")).map_err(|e| io(&partial)(format!("{e:?}")))?;
        let json = serde_json::to_string_pretty(state).expect("state serializes");
        std::fs::write(partial.join("state.json"), json).map_err(|e| io(&partial)(e.to_string()))?;
        sync_dir(&partial);
        if done.exists() {
            std::fs::remove_dir_all(&done).map_err(|e| io(&done)(e.to_string()))?;
        }
        std::fs::rename(&partial, &done).map_err(|e| io(&done)(e.to_string()))?;
        let latest = self.dir.join("latest");
        let tmp = self.dir.join("latest.tmp");
        std::fs::write(&tmp, &name).map_err(|e| io(&tmp)(e.to_string()))?;
        std::fs::rename(&tmp, &latest).map_err(|e| io(&latest)(e.to_string()))?;
        sync_dir(&self.dir);
        self.prune(&name);
        Ok(done)
    }

    /// The latest complete checkpoint, checked against the current run, with its model and
    /// optimizer state loaded into `model` and `optimizer`.
    pub fn load_latest(
        &self,
        config: &TrainConfig,
        model_config: &Gpt2Config,
        data: &DatasetMeta,
        model: Gpt2,
    ) -> Result<(Gpt2, OptimizerRecord, CheckpointState), CheckpointError> {
        let latest = self.dir.join("latest");
        let name = std::fs::read_to_string(&latest).map_err(|_| CheckpointError::Missing(self.dir.clone()))?;
        let dir = self.dir.join(name.trim());
        let state_path = dir.join("state.json");
        let text = std::fs::read_to_string(&state_path).map_err(|e| io(&state_path)(e.to_string()))?;
        let state: CheckpointState =
            serde_json::from_str(&text).map_err(|e| io(&state_path)(format!("corrupt state.json: {e}")))?;
        let mismatch = |what, theirs: String, ours: String| {
            Err(CheckpointError::Mismatch { path: dir.clone(), what, theirs, ours })
        };
        if state.model != *model_config {
            return mismatch("the model config", format!("{:?}", state.model), format!("{model_config:?}"));
        }
        if state.config.optimizer != config.optimizer {
            return mismatch("the optimizer", state.config.optimizer.to_string(), config.optimizer.to_string());
        }
        if state.data_sha256 != data.text_sha256 {
            return mismatch("the corpus", state.data_sha256.clone(), data.text_sha256.clone());
        }
        let model = model.load_safetensors(dir.join("model.safetensors")).map_err(|e| io(&dir)(e.to_string()))?;
        let optimizer_path = dir.join("optimizer.bpk");
        let optimizer = OptimizerRecord::load(&optimizer_path).map_err(|e| io(&optimizer_path)(format!("{e:?}")))?;
        Ok((model, optimizer, state))
    }

    /// Delete all but the newest `keep` complete checkpoints, and stale partial ones.
    fn prune(&self, newest: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let mut complete: Vec<String> = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".partial") {
                let _ = std::fs::remove_dir_all(entry.path());
            } else if name.starts_with("step-") {
                complete.push(name);
            }
        }
        complete.sort();
        let excess = complete.len().saturating_sub(self.keep);
        for name in complete.into_iter().take(excess).filter(|n| n != newest) {
            let _ = std::fs::remove_dir_all(self.dir.join(name));
        }
    }
}

/// Flush a directory's files and entries to disk (best effort; not all platforms allow it).
fn sync_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if let Ok(file) = std::fs::File::open(entry.path())
                && entry.path().is_file()
            {
                let _ = file.sync_all();
            }
        }
    }
    if let Ok(file) = std::fs::File::open(dir) {
        let _ = file.sync_all();
    }
}
