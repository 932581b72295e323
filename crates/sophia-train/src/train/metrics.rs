//! The metrics log of a run: one JSON object per line (`metrics.jsonl`), the source of every
//! plot and summary.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    /// `"train"` (a logged training step) or `"eval"`.
    pub kind: String,
    /// Optimizer steps completed.
    pub step: usize,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Training wall time, seconds.
    pub time: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Training loss of the step (train) or mean over the evaluation batches of the
    /// training split (eval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// Validation loss (eval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Global gradient norm before clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Sophia's win rate (fraction of coordinates not clipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub win_rate: Option<f64>,
    /// Mean of Sophia's Hessian EMA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hessian_mean: Option<f64>,
    /// Sophia's clipping scale in force (`ρ`, which moves with automatic `ρ`; or `γ`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rho: Option<f64>,
    /// Training throughput since the previous log line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_sec: Option<f64>,
    /// Whether the update was skipped (non-finite loss or gradient).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// Appends records to `metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// The log at `run_dir/metrics.jsonl`. When resuming after `resume_step`, records of later
    /// steps (written after the checkpoint, before a crash) are dropped so the log continues
    /// exactly where the checkpoint is; a fresh run starts an empty log.
    pub fn open(run_dir: &Path, resume_step: Option<usize>) -> std::io::Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        let kept = match resume_step {
            Some(step) => read(&path)?.into_iter().filter(|r| r.step <= step).collect(),
            None => Vec::new(),
        };
        let mut text = String::new();
        for record in &kept {
            text.push_str(&serde_json::to_string(record).expect("record serializes"));
            text.push('\n');
        }
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        Ok(Self { path })
    }

    /// Append one record.
    pub fn append(&self, record: &MetricRecord) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().append(true).create(true).open(&self.path)?;
        writeln!(file, "{}", serde_json::to_string(record).expect("record serializes"))
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// All records of a metrics log (an absent file has none).
pub fn read(path: &Path) -> std::io::Result<Vec<MetricRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))))
        .collect()
}
