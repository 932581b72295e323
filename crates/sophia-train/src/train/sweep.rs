//! Hyperparameter grid search: one short training run per point of a grid over the learning
//! rate, ρ, weight decay, batch size and warmup; a table and a plot of the validation loss per
//! point; the best point written out as a complete config.
//!
//! Every point is an ordinary run (`sweep_dir/<point>/` holds its metrics, checkpoints, plots
//! and summary), so a sweep can be inspected point by point and resumed: a point whose run
//! finished with the same config is read back instead of trained again. A point that diverges
//! (NaN/Inf loss) is recorded as diverged, not as an error of the sweep.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sophia_optim::ConfigError;

use super::config::{OptimizerConfig, Rho, TrainConfig};
use super::run::{RunOptions, TrainSummary, train};
use crate::error::{TrainError, io_err};
use crate::plot::{self, Panel, Series};

/// The values tried per hyperparameter; an empty list keeps the base config's value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SweepGrid {
    /// Peak learning rates (`min_lr` keeps its ratio to `lr`).
    pub lr: Vec<f64>,
    /// SophiaG's ρ.
    pub rho: Vec<f64>,
    /// Weight decay.
    pub weight_decay: Vec<f64>,
    /// Sequences per micro-batch.
    pub batch_size: Vec<usize>,
    /// Warmup steps.
    pub warmup_steps: Vec<usize>,
}

/// The hyperparameters of one grid point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SweepSettings {
    /// Peak learning rate.
    pub lr: f64,
    /// SophiaG's ρ (`None` for other optimizers).
    pub rho: Option<f64>,
    /// Weight decay.
    pub weight_decay: f64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Warmup steps.
    pub warmup_steps: usize,
}

/// SophiaG's fixed ρ in `config`, if it trains with SophiaG at a fixed ρ (a point without a ρ
/// keeps the base's, so an automatic ρ stays automatic).
fn rho_of(config: &TrainConfig) -> Option<f64> {
    match &config.optimizer {
        OptimizerConfig::SophiaG(s) => match s.rho {
            Rho::Fixed(rho) => Some(rho),
            Rho::Auto => None,
        },
        _ => None,
    }
}

/// Names of the swept axes, in grid order.
const AXES: [&str; 5] = ["lr", "rho", "weight_decay", "batch_size", "warmup_steps"];

impl SweepSettings {
    fn axis(&self, index: usize) -> f64 {
        [self.lr, self.rho.unwrap_or(f64::NAN), self.weight_decay, self.batch_size as f64, self.warmup_steps as f64][index]
    }

    /// `base` with these settings; the run is named `name` and lives in `out_dir`.
    pub fn apply(&self, base: &TrainConfig) -> TrainConfig {
        let mut optimizer = base.optimizer.clone();
        if let (OptimizerConfig::SophiaG(s), Some(rho)) = (&mut optimizer, self.rho) {
            s.rho = Rho::Fixed(rho);
        }
        TrainConfig {
            lr: self.lr,
            min_lr: base.min_lr * self.lr / base.lr,
            optimizer,
            weight_decay: self.weight_decay,
            batch_size: self.batch_size,
            warmup_steps: self.warmup_steps,
            ..base.clone()
        }
    }

    /// A file-name-safe label, e.g. `lr3e-3_rho0.05_wd0.1_bs8_wu20`.
    pub fn label(&self) -> String {
        let rho = self.rho.map(|rho| format!("_rho{rho}")).unwrap_or_default();
        format!("lr{:e}{rho}_wd{}_bs{}_wu{}", self.lr, self.weight_decay, self.batch_size, self.warmup_steps)
    }
}

impl SweepGrid {
    /// Every combination of the grid's values (the base value for an empty axis), the learning
    /// rate varying fastest.
    pub fn points(&self, base: &TrainConfig) -> Vec<SweepSettings> {
        let or = |values: &[f64], default: f64| if values.is_empty() { vec![default] } else { values.to_vec() };
        let or_count = |values: &[usize], default: usize| if values.is_empty() { vec![default] } else { values.to_vec() };
        let rhos: Vec<Option<f64>> = if self.rho.is_empty() { vec![rho_of(base)] } else { self.rho.iter().copied().map(Some).collect() };
        let mut points = Vec::new();
        for &warmup_steps in &or_count(&self.warmup_steps, base.warmup_steps) {
            for &batch_size in &or_count(&self.batch_size, base.batch_size) {
                for &weight_decay in &or(&self.weight_decay, base.weight_decay) {
                    for &rho in &rhos {
                        for &lr in &or(&self.lr, base.lr) {
                            points.push(SweepSettings { lr, rho, weight_decay, batch_size, warmup_steps });
                        }
                    }
                }
            }
        }
        points
    }

    /// Check every point's config before any run starts, so a typo does not surface after an
    /// hour of training.
    pub fn validate(&self, base: &TrainConfig) -> Result<(), ConfigError> {
        let points = self.points(base);
        let v = sophia_optim::Validator::new("sweep");
        v.require(points.len() <= 1000, "grid", format!("{} points", points.len()), "at most 1000 points (use fewer values per axis)")?;
        v.require(
            self.rho.is_empty() || matches!(base.optimizer, OptimizerConfig::SophiaG(_)),
            "rho",
            format!("{:?}", self.rho),
            "a grid over rho only with --optimizer sophiag",
        )?;
        for point in &points {
            point.apply(base).validate()?;
        }
        Ok(())
    }
}

/// The outcome of one grid point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Its hyperparameters.
    pub settings: SweepSettings,
    /// Its run directory.
    pub run_dir: PathBuf,
    /// The run's summary, or `None` when it diverged.
    pub summary: Option<TrainSummary>,
    /// Why the run diverged.
    pub diverged: Option<String>,
}

impl SweepPoint {
    /// Final validation loss (infinite for a diverged run, so it never wins).
    pub fn val_loss(&self) -> f64 {
        self.summary.as_ref().map_or(f64::INFINITY, |s| s.final_val_loss)
    }
}

/// What a sweep writes to `sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    /// The config every point starts from.
    pub base: TrainConfig,
    /// The grid.
    pub grid: SweepGrid,
    /// One entry per point, in grid order.
    pub points: Vec<SweepPoint>,
    /// Index of the point with the lowest final validation loss (`None` if all diverged).
    pub best: Option<usize>,
}

impl SweepReport {
    /// The best point's full config (named `<base name>-best`, in the base's `out_dir`).
    pub fn best_config(&self) -> Option<TrainConfig> {
        let best = &self.points[self.best?];
        Some(TrainConfig { name: format!("{}-best", self.base.name), ..best.settings.apply(&self.base) })
    }
}

/// Index of the lowest finite validation loss.
pub fn best_point(points: &[SweepPoint]) -> Option<usize> {
    points.iter().enumerate().filter(|(_, p)| p.val_loss().is_finite()).min_by(|a, b| a.1.val_loss().total_cmp(&b.1.val_loss())).map(|(i, _)| i)
}

/// Run every point of `grid` on top of `base`; the sweep directory is `base.out_dir/base.name`.
/// Writes `sweep.json` after every point, and at the end `sweep.md`, `sweep.png`/`.svg` and
/// `best.json`.
pub fn sweep(base: &TrainConfig, grid: &SweepGrid, options: &RunOptions, progress: &mut dyn FnMut(&str)) -> Result<SweepReport, TrainError> {
    base.validate()?;
    grid.validate(base)?;
    let dir = base.out_dir.join(&base.name);
    std::fs::create_dir_all(&dir).map_err(|source| TrainError::Io { path: dir.clone(), source })?;
    let settings = grid.points(base);
    let mut report = SweepReport { base: base.clone(), grid: grid.clone(), points: Vec::new(), best: None };
    for (index, point) in settings.iter().enumerate() {
        let config = TrainConfig { out_dir: dir.clone(), name: format!("{index:03}-{}", point.label()), plots: false, ..point.apply(base) };
        let run_dir = config.out_dir.join(&config.name);
        progress(&format!("sweep point {}/{}: {}", index + 1, settings.len(), point.label()));
        let (summary, diverged) = match train_once(&config, options, progress)? {
            Ok(summary) => (Some(summary), None),
            Err(diverged) => (None, Some(diverged)),
        };
        report.points.push(SweepPoint { settings: *point, run_dir, summary, diverged });
        report.best = best_point(&report.points);
        write_json(&dir.join("sweep.json"), &report)?;
    }
    write_results(&report, &dir)?;
    Ok(report)
}

/// Train `config` unless its run directory already holds the finished run of exactly this
/// config (then its summary is read back); a run interrupted with this config resumes from its
/// checkpoint. A run that diverges (NaN/Inf loss) gives `Ok(Err(why))`, not an error.
pub fn train_once(config: &TrainConfig, options: &RunOptions, progress: &mut dyn FnMut(&str)) -> Result<Result<TrainSummary, String>, TrainError> {
    let run_dir = config.out_dir.join(&config.name);
    let previous = Previous::of(config, &run_dir);
    match previous {
        Previous::Finished(summary) => {
            progress(&format!("  finished before: val loss {:.4}", summary.final_val_loss));
            Ok(Ok(*summary))
        }
        Previous::Interrupted | Previous::None => {
            let options = RunOptions { resume: matches!(previous, Previous::Interrupted), ..options.clone() };
            match train(config, &options) {
                Ok(summary) => Ok(Ok(summary)),
                Err(error @ TrainError::NonFinite { .. }) => Ok(Err(error.to_string())),
                Err(error) => Err(error),
            }
        }
    }
}

/// What an earlier run left in a run directory.
enum Previous {
    /// The run finished with exactly this config.
    Finished(Box<TrainSummary>),
    /// The run started with exactly this config and has a checkpoint to resume from.
    Interrupted,
    /// Nothing usable (a run with another config makes `train` refuse the directory).
    None,
}

impl Previous {
    fn of(config: &TrainConfig, run_dir: &Path) -> Self {
        let read = |name: &str| std::fs::read_to_string(run_dir.join(name)).ok();
        let same_config = read("config.json").and_then(|text| serde_json::from_str::<TrainConfig>(&text).ok()).is_some_and(|c| c == *config);
        if !same_config {
            return Self::None;
        }
        match read("summary.json").and_then(|text| serde_json::from_str(&text).ok()) {
            Some(summary) => Self::Finished(Box::new(summary)),
            None if run_dir.join("checkpoints").join("latest").exists() => Self::Interrupted,
            None => Self::None,
        }
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    crate::fs::write_json(path, value).map_err(io_err(path))
}

/// `sweep.md`, `sweep.png`/`.svg` and `best.json` in `dir`, from the report alone.
pub fn write_results(report: &SweepReport, dir: &Path) -> Result<(), TrainError> {
    let table = dir.join("sweep.md");
    crate::fs::write_atomic(&table, markdown_table(report).as_bytes()).map_err(io_err(&table))?;
    plot(report, &dir.join("sweep"))?;
    if let Some(best) = report.best_config() {
        write_json(&dir.join("best.json"), &best)?;
    }
    Ok(())
}

/// The axes with more than one value.
fn varied_axes(report: &SweepReport) -> Vec<usize> {
    (0..AXES.len())
        .filter(|&a| {
            let first = report.points.first().map(|p| p.settings.axis(a).to_bits());
            report.points.iter().any(|p| Some(p.settings.axis(a).to_bits()) != first)
        })
        .collect()
}

/// A markdown table: one row per point, the best marked.
pub fn markdown_table(report: &SweepReport) -> String {
    let header = format!(
        "Sweep over {} points: {} optimizer, preset {}, {} steps, seed {}.\n\n",
        report.points.len(),
        report.base.optimizer.kind(),
        report.base.preset,
        report.base.max_steps,
        report.base.seed
    );
    let rows: Vec<Vec<String>> = report
        .points
        .iter()
        .enumerate()
        .map(|(index, point)| {
            let s = &point.settings;
            let mark = if report.best == Some(index) { "**best**" } else { "" };
            let mut row = vec![
                mark.to_string(),
                format!("{:e}", s.lr),
                s.rho.map_or("-".into(), |rho| rho.to_string()),
                s.weight_decay.to_string(),
                s.batch_size.to_string(),
                s.warmup_steps.to_string(),
            ];
            row.extend(match &point.summary {
                Some(r) => [
                    format!("{:.4}", r.final_val_loss),
                    format!("{:.4}", r.best_val_loss),
                    format!("{:.0}", r.tokens_per_sec),
                    r.final_win_rate.map_or("-".into(), |w| format!("{w:.3}")),
                ],
                None => ["diverged".into(), String::new(), String::new(), String::new()],
            });
            row
        })
        .collect();
    let columns = ["", "lr", "rho", "weight decay", "batch", "warmup", "final val loss", "best val loss", "tokens/s", "win rate"];
    header + &crate::table::markdown(&columns, &rows)
}

/// Validation loss against the first varied axis (log scale for lr, ρ and weight decay), one
/// line per combination of the other axes; diverged points are left out.
pub fn plot(report: &SweepReport, stem: &Path) -> Result<(), crate::plot::PlotError> {
    let varied = varied_axes(report);
    let x_axis = varied.first().copied().unwrap_or(0);
    let logarithmic = x_axis <= 2;
    let mut series: Vec<Series> = Vec::new();
    for point in report.points.iter().filter(|p| p.val_loss().is_finite()) {
        let label = varied.iter().skip(1).map(|&a| format!("{}={}", AXES[a], point.settings.axis(a))).collect::<Vec<_>>().join(", ");
        let x = point.settings.axis(x_axis);
        let x = if logarithmic { x.log10() } else { x };
        match series.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push((x, point.val_loss())),
            None => series.push(Series::line(label, vec![(x, point.val_loss())])),
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if s.label.is_empty() {
            s.label = "final val loss".into();
        }
    }
    let name = AXES[x_axis];
    let panel = Panel {
        title: format!("Sweep: {} ({}, {} steps)", report.base.optimizer.kind(), report.base.preset, report.base.max_steps),
        x_label: if logarithmic { format!("log10 {name}") } else { name.into() },
        y_label: "final val loss (nats)".into(),
        log_y: false,
        series,
    };
    plot::draw(stem, &[panel])
}
