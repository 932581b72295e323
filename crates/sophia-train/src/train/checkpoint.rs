//! Checkpoints: model, optimizer state, schedule position and step, written atomically and
//! carrying a manifest that proves their integrity, so that a crash, a full disk or a corrupted
//! file never costs the user a checkpoint they had, and a damaged one is never trusted.
//!
//! Layout of `run/checkpoints/`:
//!
//! ```text
//! step-000200/   model.safetensors  optimizer.bpk  state.json  manifest.json
//! step-000300/   ...
//! latest         "step-000300"
//! ```
//!
//! A checkpoint is written into `step-NNNNNN.partial/`; every file is flushed to disk, then the
//! manifest (size and CRC32C of every file) is written and flushed, and only then is the
//! directory renamed into place, `latest` replaced (write + rename) and the oldest checkpoints
//! pruned. A crash at any point leaves the previous checkpoints and `latest` intact.
//!
//! Resuming verifies the checkpoint `latest` names against its manifest (a missing, truncated,
//! resized or altered file fails); when it fails, the newest older checkpoint that verifies is
//! used, and the run says which one was skipped and why. Parameter ids derive from parameter
//! names, so the optimizer state of a checkpoint matches the parameters of a freshly built
//! model of the same config.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::optim::OptimizerRecord;
use serde::{Deserialize, Serialize};
use sophia_gpt2::{Gpt2, Gpt2Config};

use super::config::TrainConfig;
use crate::data::{DatasetMeta, TokenizerSpec};

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
    /// The tokenizer and, for characters, its vocabulary.
    pub tokenizer: TokenizerSpec,
}

/// The files of a checkpoint, with their sizes and checksums (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The checksum algorithm.
    pub checksum: String,
    /// Per file name: its size and checksum.
    pub files: BTreeMap<String, FileDigest>,
}

/// The size and checksum of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Bytes.
    pub bytes: u64,
    /// CRC32C of the bytes.
    pub crc32c: u32,
}

/// The checksum the manifests use: CRC32C (Castagnoli), hardware-accelerated on x86-64 and
/// AArch64; it detects the accidental damage a manifest guards against (truncation, bit flips,
/// overwritten bytes) at memory speed. `bench checkpoint` measures it against SHA-256.
pub const CHECKSUM: &str = "crc32c";

const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.bpk";
const STATE: &str = "state.json";
const MANIFEST: &str = "manifest.json";

/// Why a checkpoint cannot be written or resumed from.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Writing a checkpoint failed; the previous checkpoints and `latest` are untouched.
    #[error(
        "could not write checkpoint {path}: {reason}; the previous checkpoint and `latest` are intact (free disk space or fix the directory's permissions, then --resume)"
    )]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// There is nothing to resume from.
    #[error("no checkpoint to resume from in {0}; start without --resume")]
    Missing(PathBuf),
    /// No checkpoint of the run verifies against its manifest.
    #[error("no checkpoint in {dir} can be trusted: {reasons}; start a new run (another --name), or restore the files")]
    NoneVerifies {
        /// The checkpoints directory.
        dir: PathBuf,
        /// Each checkpoint and why it failed.
        reasons: String,
    },
    /// The checkpoint belongs to another run.
    #[error(
        "checkpoint {path} was written by a different run: {what} differs (checkpoint: {theirs}, now: {ours}); resume with the same settings or start a new run with another --name"
    )]
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
    /// The optimizer state of a verified checkpoint does not fit the run's optimizer.
    #[error("the optimizer state of the checkpoint does not fit this run: {0}")]
    Optimizer(String),
}

/// Why one checkpoint failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    /// The manifest is missing or unreadable.
    #[error("{0}: manifest missing or unreadable ({1})")]
    Manifest(PathBuf, String),
    /// A file the manifest lists is missing.
    #[error("{0} is missing")]
    Missing(PathBuf),
    /// A file has another size than the manifest says.
    #[error("{path} has {found} bytes, the manifest says {expected} (truncated or replaced)")]
    Size {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The size written.
        expected: u64,
    },
    /// A file's bytes changed since it was written.
    #[error("{0} does not match its checksum (the file was altered or damaged after it was written)")]
    Checksum(PathBuf),
}

/// CRC32C and size of a file, read in 1 MiB chunks.
pub fn digest(path: &Path) -> std::io::Result<FileDigest> {
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    let (mut crc, mut bytes) = (0u32, 0u64);
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(FileDigest { bytes, crc32c: crc });
        }
        crc = crc32c::crc32c_append(crc, &buffer[..n]);
        bytes += n as u64;
    }
}

/// Check every file of the checkpoint in `dir` against its manifest.
pub fn verify(dir: &Path) -> Result<(), Unverified> {
    let manifest_path = dir.join(MANIFEST);
    let manifest: Manifest = crate::fs::read_json(&manifest_path).map_err(|e| Unverified::Manifest(manifest_path.clone(), e.to_string()))?;
    if manifest.checksum != CHECKSUM {
        return Err(Unverified::Manifest(manifest_path, format!("unknown checksum `{}`", manifest.checksum)));
    }
    for name in [MODEL, OPTIMIZER, STATE] {
        if !manifest.files.contains_key(name) {
            return Err(Unverified::Manifest(manifest_path, format!("it does not list {name}")));
        }
    }
    for (name, expected) in &manifest.files {
        let path = dir.join(name);
        let found = digest(&path).map_err(|_| Unverified::Missing(path.clone()))?;
        if found.bytes != expected.bytes {
            return Err(Unverified::Size { path, found: found.bytes, expected: expected.bytes });
        }
        if found.crc32c != expected.crc32c {
            return Err(Unverified::Checksum(path));
        }
    }
    Ok(())
}

/// Writes and reads the checkpoints of one run.
pub struct Checkpoints {
    dir: PathBuf,
    keep: usize,
}

/// A checkpoint loaded for resuming.
pub struct Resumed {
    /// The model with the checkpoint's weights.
    pub model: Gpt2,
    /// The optimizer state.
    pub optimizer: OptimizerRecord,
    /// Everything else.
    pub state: CheckpointState,
    /// Newer checkpoints that failed verification and were skipped, with the reason.
    pub skipped: Vec<Unverified>,
}

impl Checkpoints {
    /// The checkpoints under `run_dir/checkpoints`, keeping the newest `keep`.
    pub fn new(run_dir: &Path, keep: usize) -> Self {
        Self { dir: run_dir.join("checkpoints"), keep: keep.max(1) }
    }

    /// Write a checkpoint and make it the latest. On failure nothing the run had before is
    /// changed (the partial directory is removed where possible).
    pub fn save(&self, model: &Gpt2, optimizer: OptimizerRecord, state: &CheckpointState) -> Result<PathBuf, CheckpointError> {
        let name = format!("step-{:06}", state.step);
        let partial = self.dir.join(format!("{name}.partial"));
        let result = self.write_partial(&partial, model, optimizer, state).and_then(|()| self.publish(&partial, &name));
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
        result
    }

    fn write_partial(&self, partial: &Path, model: &Gpt2, optimizer: OptimizerRecord, state: &CheckpointState) -> Result<(), CheckpointError> {
        let fail = |path: &Path| {
            let path = path.to_path_buf();
            move |reason: String| CheckpointError::Write { path, reason }
        };
        if partial.exists() {
            std::fs::remove_dir_all(partial).map_err(|e| fail(partial)(e.to_string()))?;
        }
        std::fs::create_dir_all(partial).map_err(|e| fail(partial)(e.to_string()))?;
        let model_path = partial.join(MODEL);
        let weights = model.to_safetensors().map_err(|e| fail(&model_path)(e.to_string()))?;
        std::fs::write(&model_path, weights).map_err(|e| fail(&model_path)(e.to_string()))?;
        let optimizer_path = partial.join(OPTIMIZER);
        optimizer.save(&optimizer_path).map_err(|e| fail(&optimizer_path)(format!("{e:?}")))?;
        let state_path = partial.join(STATE);
        crate::fs::write_json(&state_path, state).map_err(|e| fail(&state_path)(e.to_string()))?;
        let mut files = BTreeMap::new();
        for name in [MODEL, OPTIMIZER, STATE] {
            let path = partial.join(name);
            let file = std::fs::File::open(&path).map_err(|e| fail(&path)(e.to_string()))?;
            file.sync_all().map_err(|e| fail(&path)(e.to_string()))?;
            files.insert(name.to_string(), digest(&path).map_err(|e| fail(&path)(e.to_string()))?);
        }
        let manifest_path = partial.join(MANIFEST);
        crate::fs::write_json(&manifest_path, &Manifest { checksum: CHECKSUM.into(), files }).map_err(|e| fail(&manifest_path)(e.to_string()))
    }

    /// Rename the complete checkpoint into place, point `latest` at it, prune old ones.
    fn publish(&self, partial: &Path, name: &str) -> Result<PathBuf, CheckpointError> {
        let fail = |path: &Path, e: std::io::Error| CheckpointError::Write { path: path.to_path_buf(), reason: e.to_string() };
        let done = self.dir.join(name);
        if done.exists() {
            std::fs::remove_dir_all(&done).map_err(|e| fail(&done, e))?;
        }
        std::fs::rename(partial, &done).map_err(|e| fail(&done, e))?;
        let latest = self.dir.join("latest");
        crate::fs::write_atomic(&latest, name.as_bytes()).map_err(|e| fail(&latest, e))?;
        self.prune(name);
        Ok(done)
    }

    /// Complete checkpoint directories, newest first.
    fn complete(&self) -> Vec<PathBuf> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("step-") && !n.ends_with(".partial")).collect()
            })
            .unwrap_or_default();
        names.sort();
        names.into_iter().rev().map(|n| self.dir.join(n)).collect()
    }

    /// The newest checkpoint that verifies, with the newer ones that did not; `latest` names
    /// where to start (a checkpoint newer than `latest` is an unfinished publish and not used).
    fn newest_verified(&self) -> Result<(PathBuf, Vec<Unverified>), CheckpointError> {
        let latest = std::fs::read_to_string(self.dir.join("latest")).map_err(|_| CheckpointError::Missing(self.dir.clone()))?;
        let latest = self.dir.join(latest.trim());
        let mut skipped = Vec::new();
        for dir in self.complete().into_iter().filter(|d| *d <= latest) {
            match verify(&dir) {
                Ok(()) => return Ok((dir, skipped)),
                Err(reason) => skipped.push(reason),
            }
        }
        if skipped.is_empty() {
            return Err(CheckpointError::Missing(self.dir.clone()));
        }
        let reasons = skipped.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; ");
        Err(CheckpointError::NoneVerifies { dir: self.dir.clone(), reasons })
    }

    /// The newest checkpoint that verifies, if any (what an error message may call "good").
    pub fn latest_verified(&self) -> Option<PathBuf> {
        self.newest_verified().ok().map(|(dir, _)| dir)
    }

    /// The newest checkpoint that verifies, checked against the current run, with its model
    /// and optimizer state loaded into `model`.
    pub fn load_latest(&self, config: &TrainConfig, model_config: &Gpt2Config, data: &DatasetMeta, model: Gpt2) -> Result<Resumed, CheckpointError> {
        let (dir, skipped) = self.newest_verified()?;
        let corrupt = |path: PathBuf, reason: String| CheckpointError::NoneVerifies { dir: self.dir.clone(), reasons: format!("{}: {reason}", path.display()) };
        let state_path = dir.join(STATE);
        let state: CheckpointState = crate::fs::read_json(&state_path).map_err(|e| corrupt(state_path.clone(), e.to_string()))?;
        let mismatch = |what, theirs: String, ours: String| Err(CheckpointError::Mismatch { path: dir.clone(), what, theirs, ours });
        if state.model != *model_config {
            return mismatch("the model config", format!("{:?}", state.model), format!("{model_config:?}"));
        }
        if state.config.optimizer.kind() != config.optimizer.kind() {
            return mismatch("the optimizer", state.config.optimizer.kind().to_string(), config.optimizer.kind().to_string());
        }
        if state.data_sha256 != data.text_sha256 {
            return mismatch("the corpus", state.data_sha256.clone(), data.text_sha256.clone());
        }
        if state.tokenizer != data.tokenizer {
            return mismatch("the tokenizer", format!("{:?}", state.tokenizer), format!("{:?}", data.tokenizer));
        }
        let model_path = dir.join(MODEL);
        let model = model.load_safetensors(&model_path).map_err(|e| corrupt(model_path.clone(), e.to_string()))?;
        let optimizer_path = dir.join(OPTIMIZER);
        let optimizer = OptimizerRecord::load(&optimizer_path).map_err(|e| corrupt(optimizer_path.clone(), format!("{e:?}")))?;
        Ok(Resumed { model, optimizer, state, skipped })
    }

    /// Delete all but the newest `keep` complete checkpoints, and stale partial ones.
    fn prune(&self, newest: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".partial") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let newest = self.dir.join(newest);
        for dir in self.complete().into_iter().skip(self.keep).filter(|d| *d != newest) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
