//! `bench compare`: the optimizers trained side by side on the same model, corpus, token budget,
//! seed and schedule, each at its best learning rate from a small sweep.
//!
//! For every optimizer the learning rates `multiplier × lr` of its CPU hyperparameter preset
//! (`cpu-<optimizer>`) are tried at the full budget with [`sophia_train::train::sweep`]; the best
//! point's run is the one compared, so the tuning costs no extra run and is recorded beside the
//! result. The headline figure is the paper's: the steps each optimizer needs to reach AdamW's
//! final validation loss, as a ratio to AdamW's own.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sophia_gpt2::Gpt2;
use sophia_train::plot::{Panel, Series};
use sophia_train::train::metrics;
use sophia_train::train::{HyperparameterPreset, OptimizerKind, RunOptions, SweepGrid, TrainConfig, sweep};

use crate::BenchError;
use crate::machine::Machine;
use crate::memory;

/// What to compare.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The optimizers, AdamW first by convention (it is the reference).
    pub optimizers: Vec<OptimizerKind>,
    /// The run every optimizer shares: model preset, corpus, steps, batch, schedule shape, seed,
    /// backend. Its `out_dir/name` is the comparison's directory.
    pub base: TrainConfig,
    /// Learning rates tried, as multiples of each optimizer's preset learning rate.
    pub lr_multipliers: Vec<f64>,
}

/// One evaluation of the compared run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Optimizer steps taken.
    pub step: usize,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Wall-clock seconds since the start of training.
    pub seconds: f64,
    /// Validation loss.
    pub val_loss: f64,
}

/// One learning rate of an optimizer's sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SweepEntry {
    /// Peak learning rate.
    pub lr: f64,
    /// Final validation loss; `None` when the run diverged.
    pub final_val_loss: Option<f64>,
}

/// One optimizer's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerResult {
    /// Optimizer name.
    pub optimizer: String,
    /// Its learning-rate sweep.
    pub sweep: Vec<SweepEntry>,
    /// The best learning rate (the compared run).
    pub lr: f64,
    /// Validation loss at every evaluation of the compared run.
    pub curve: Vec<CurvePoint>,
    /// Final validation loss.
    pub final_val_loss: f64,
    /// Training throughput (tokens per second, evaluation excluded).
    pub tokens_per_sec: f64,
    /// Optimizer state in bytes (exact, from the serialized record).
    pub state_bytes: u64,
    /// Optimizer state bytes per model parameter.
    pub state_bytes_per_param: f64,
    /// Share of training wall time spent in Hessian refreshes (Sophia).
    pub hessian_time_fraction: f64,
    /// Win rate at the end (Sophia): the share of coordinates not clipped.
    pub final_win_rate: Option<f64>,
    /// Steps to reach AdamW's final validation loss (interpolated between evaluations).
    pub steps_to_adamw_loss: Option<f64>,
    /// `steps_to_adamw_loss` over AdamW's own.
    pub step_ratio_to_adamw: Option<f64>,
    /// Seconds to reach AdamW's final validation loss.
    pub seconds_to_adamw_loss: Option<f64>,
}

/// The JSON written by `bench compare`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    /// Where it ran.
    pub machine: Machine,
    /// The shared run settings (learning rate and optimizer are per result).
    pub base: TrainConfig,
    /// Model parameters.
    pub parameters: usize,
    /// The learning-rate multipliers of the sweeps.
    pub lr_multipliers: Vec<f64>,
    /// The corpus' unigram baseline.
    pub unigram_val_loss: f64,
    /// AdamW's final validation loss (the target), if AdamW was compared.
    pub adamw_final_val_loss: Option<f64>,
    /// One entry per optimizer, in the order asked.
    pub results: Vec<OptimizerResult>,
}

/// The first `x` at which the curve `(x, loss)` reaches `target` or below, interpolating
/// linearly between points; `None` if it never does.
pub fn first_crossing(curve: &[(f64, f64)], target: f64) -> Option<f64> {
    let first = curve.first()?;
    if first.1 <= target {
        return Some(first.0);
    }
    curve.windows(2).find_map(|w| {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        (y1 <= target && y0 > target).then(|| x0 + (y0 - target) / (y0 - y1) * (x1 - x0))
    })
}

/// Fill in the "to reach AdamW's final loss" figures of every result.
pub fn rank_against_adamw(results: &mut [OptimizerResult]) -> Option<f64> {
    let adamw = results.iter().find(|r| r.optimizer == OptimizerKind::AdamW.to_string())?;
    let target = adamw.final_val_loss;
    let steps = |r: &OptimizerResult| first_crossing(&r.curve.iter().map(|p| (p.step as f64, p.val_loss)).collect::<Vec<_>>(), target);
    let adamw_steps = steps(adamw);
    for result in results.iter_mut() {
        result.steps_to_adamw_loss = steps(result);
        result.seconds_to_adamw_loss = first_crossing(&result.curve.iter().map(|p| (p.seconds, p.val_loss)).collect::<Vec<_>>(), target);
        result.step_ratio_to_adamw = result.steps_to_adamw_loss.zip(adamw_steps).map(|(s, a)| s / a);
    }
    Some(target)
}

/// Run the comparison; `progress` receives one line per stage.
pub fn run(options: &CompareOptions, run_options: &RunOptions, progress: &mut dyn FnMut(&str)) -> Result<CompareReport, BenchError> {
    let v = sophia_optim::Validator::new("bench compare");
    v.at_least_one("optimizers", options.optimizers.len())?;
    v.at_least_one("lr_multipliers", options.lr_multipliers.len())?;
    for &multiplier in &options.lr_multipliers {
        v.positive("lr_multipliers", multiplier)?;
    }
    let base = &options.base;
    let model_config = base.model_config()?;
    let device = base.backend.device().map_err(sophia_train::TrainError::from)?.autodiff();
    let model = Gpt2::new(&model_config, &device, base.seed)?;
    let dir = base.out_dir.join(&base.name);
    let mut results = Vec::new();
    let mut unigram = f64::NAN;
    for &kind in &options.optimizers {
        // The base run with this optimizer (its defaults, or the base's settings for the same
        // optimizer) at its CPU preset's learning rate and weight decay.
        let preset = HyperparameterPreset::named(&format!("cpu-{kind}")).map_err(sophia_train::TrainError::from)?;
        let mut config = base.clone();
        config.set_optimizer(kind);
        (config.lr, config.min_lr, config.weight_decay) = (preset.lr, preset.lr / 10.0, preset.weight_decay);
        (config.out_dir, config.name) = (dir.clone(), kind.to_string());
        let grid = SweepGrid { lr: options.lr_multipliers.iter().map(|m| m * config.lr).collect(), ..SweepGrid::default() };
        progress(&format!("{kind}: learning rates {:?}", grid.lr));
        let report = sweep::sweep(&config, &grid, run_options, progress)?;
        let best = report.best.ok_or(BenchError::Unsupported("every learning rate of an optimizer diverged; try smaller --lr-multipliers"))?;
        let point = &report.points[best];
        let summary = point.summary.as_ref().expect("the best point finished");
        unigram = summary.unigram_val_loss;
        let metrics_path = point.run_dir.join("metrics.jsonl");
        let records = metrics::read(&metrics_path).map_err(|source| BenchError::Io { path: metrics_path.clone(), source })?;
        let curve = records
            .iter()
            .filter(|r| r.kind == "eval")
            .filter_map(|r| r.val_loss.map(|val_loss| CurvePoint { step: r.step, tokens: r.tokens, seconds: r.time, val_loss }))
            .collect();
        let state_bytes = memory::state_bytes(&point.settings.apply(&config), &model, &device)?;
        results.push(OptimizerResult {
            optimizer: kind.to_string(),
            sweep: report.points.iter().map(|p| SweepEntry { lr: p.settings.lr, final_val_loss: p.summary.as_ref().map(|s| s.final_val_loss) }).collect(),
            lr: point.settings.lr,
            curve,
            final_val_loss: summary.final_val_loss,
            tokens_per_sec: summary.tokens_per_sec,
            state_bytes,
            state_bytes_per_param: state_bytes as f64 / model.num_params() as f64,
            hessian_time_fraction: summary.hessian_time_fraction,
            final_win_rate: summary.final_win_rate,
            steps_to_adamw_loss: None,
            step_ratio_to_adamw: None,
            seconds_to_adamw_loss: None,
        });
    }
    let adamw_final_val_loss = rank_against_adamw(&mut results);
    Ok(CompareReport {
        machine: Machine::detect(&base.backend.to_string()),
        base: base.clone(),
        parameters: model.num_params(),
        lr_multipliers: options.lr_multipliers.clone(),
        unigram_val_loss: unigram,
        adamw_final_val_loss,
        results,
    })
}

/// Write `report` as JSON, and draw `stem.png`/`.svg` and `stem.md` from it.
pub fn write(report: &CompareReport, json: &Path) -> Result<(), BenchError> {
    crate::write_json(json, report)?;
    let stem = json.with_extension("");
    crate::write_text(&stem.with_extension("md"), &markdown(report))?;
    plot(report, &stem)
}

/// The comparison table.
pub fn markdown(report: &CompareReport) -> String {
    let base = &report.base;
    let mut out = format!(
        "{} parameters (preset {}, context {}), corpus `{}`, {} steps of {} tokens, seed {}; {}.\n\n",
        report.parameters,
        base.preset,
        base.model_config().map_or(0, |m| m.block_size),
        base.data,
        base.max_steps,
        base.model_config().map_or(0, |m| base.tokens_per_step(m.block_size)),
        base.seed,
        report.machine.describe()
    );
    let target = report.adamw_final_val_loss.map_or("-".into(), |t| format!("{t:.4}"));
    out.push_str(&format!("Target: AdamW's final validation loss {target}; unigram baseline {:.4}.\n\n", report.unigram_val_loss));
    let opt = |v: Option<f64>, digits: usize| v.map_or("not reached".into(), |v| format!("{v:.digits$}"));
    let rows: Vec<Vec<String>> = report
        .results
        .iter()
        .map(|r| {
            vec![
                r.optimizer.clone(),
                format!("{:.2e}", r.lr),
                format!("{:.4}", r.final_val_loss),
                opt(r.steps_to_adamw_loss, 0),
                r.step_ratio_to_adamw.map_or("-".into(), |v| format!("{v:.2}x")),
                opt(r.seconds_to_adamw_loss, 0),
                format!("{:.0}", r.tokens_per_sec),
                format!("{:.1}", r.state_bytes_per_param),
                format!("{:.1}%", 100.0 * r.hessian_time_fraction),
                r.final_win_rate.map_or("-".into(), |w| format!("{w:.3}")),
            ]
        })
        .collect();
    let header = ["optimizer", "best lr", "final val loss", "steps to AdamW's loss", "vs AdamW", "seconds to it", "tokens/s", "state bytes/param", "Hessian time", "win rate"];
    out.push_str(&sophia_train::table::markdown(&header, &rows));
    out.push_str("\nLearning-rate sweeps (final validation loss; the best is compared):\n\n");
    for r in &report.results {
        let points: Vec<String> =
            r.sweep.iter().map(|s| format!("{:.2e}: {}", s.lr, s.final_val_loss.map_or("diverged".into(), |v| format!("{v:.4}")))).collect();
        out.push_str(&format!("- {}: {}\n", r.optimizer, points.join(", ")));
    }
    out
}

/// Validation loss against steps and against seconds, and the learning-rate sweeps.
pub fn plot(report: &CompareReport, stem: &Path) -> Result<(), BenchError> {
    let curves = |x: fn(&CurvePoint) -> f64| -> Vec<Series> {
        report
            .results
            .iter()
            .map(|r| Series { label: r.optimizer.clone(), points: r.curve.iter().map(|p| (x(p), p.val_loss)).collect() })
            .collect()
    };
    let panel = |title: &str, x_label: &str, y_label: &str, series| Panel { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), log_y: false, series };
    let sweeps = report
        .results
        .iter()
        .map(|r| Series { label: r.optimizer.clone(), points: r.sweep.iter().filter_map(|s| Some((s.lr.log10(), s.final_val_loss?))).collect() })
        .collect();
    let title = format!("{} parameters, {} steps", report.parameters, report.base.max_steps);
    Ok(sophia_train::plot::draw(
        stem,
        &[
            panel(&format!("Validation loss ({title})"), "step", "val loss (nats)", curves(|p| p.step as f64)),
            panel("Validation loss vs wall clock", "seconds", "val loss (nats)", curves(|p| p.seconds)),
            panel("Learning-rate sweeps", "log10 peak lr", "final val loss (nats)", sweeps),
        ],
    )?)
}
