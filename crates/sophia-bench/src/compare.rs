//! `bench compare`: the optimizers trained side by side on the same model, corpus, token budget
//! and schedule, each tuned by its own sweep and then run with several seeds.
//!
//! For every optimizer:
//!
//! 1. the learning rates `multiplier × lr` of its hyperparameter preset for the regime
//!    (`char-<optimizer>` on the char model, `cpu-<optimizer>` otherwise) are tried at the full
//!    budget with [`sophia_train::train::sweep`], SophiaG also over a grid of `ρ` (the lr × ρ
//!    heat map);
//! 2. the best point is run again with further seeds (the sweep's run is the first seed), so
//!    every figure comes with its spread over seeds;
//! 3. optionally SophiaG with `rho = "auto"`, tuned the same way: the same learning rates, the
//!    best with the same seeds (results before this procedure ran it at fixed-ρ SophiaG's best
//!    learning rate only; their `sophiag-auto` entry has an empty sweep).
//!
//! The headline figure is the paper's: the steps (and seconds) each optimizer needs to reach
//! AdamW's final validation loss (the mean over AdamW's seeds), per seed, as a ratio to the
//! steps of AdamW's mean curve. Runs are ordinary training runs under `runs/NAME/`, reused when
//! they finished before with the same config, so an interrupted comparison continues.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sophia_gpt2::Gpt2;
use sophia_train::plot::{Heatmap, Panel, Series};
use sophia_train::train::sweep::{SweepPoint, train_once};
use sophia_train::train::{HyperparameterPreset, OptimizerConfig, OptimizerKind, Rho, RunOptions, SweepGrid, TrainConfig, TrainSummary, metrics, sweep};

use crate::BenchError;
use crate::machine::Machine;
use crate::memory;

/// What to compare.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The optimizers, AdamW first by convention (it is the reference).
    pub optimizers: Vec<OptimizerKind>,
    /// The run every optimizer shares: model preset, corpus, steps, batch, schedule shape, first
    /// seed, backend. Its `out_dir/name` is the comparison's directory.
    pub base: TrainConfig,
    /// Learning rates tried, as multiples of each optimizer's preset learning rate.
    pub lr_multipliers: Vec<f64>,
    /// SophiaG's `ρ` values tried at every learning rate (empty: the preset's `ρ` only).
    pub rhos: Vec<f64>,
    /// Runs of each best configuration, with seeds `base.seed`, `base.seed + 1`, ...
    pub seeds: usize,
    /// Also tune SophiaG with automatic `ρ` (its own learning-rate sweep and seeds).
    pub auto_rho: bool,
}

/// One evaluation of a run.
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

/// One point of an optimizer's sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SweepEntry {
    /// Peak learning rate.
    pub lr: f64,
    /// SophiaG's `ρ` (`None` for the other optimizers).
    pub rho: Option<f64>,
    /// Final validation loss; `None` when the run diverged.
    pub final_val_loss: Option<f64>,
}

/// Mean, sample standard deviation and range of a figure over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one value).
    pub std: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// How many values.
    pub n: usize,
}

impl Spread {
    /// The spread of `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = if n > 1 { (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
        let (min, max) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        Some(Self { mean, std, min, max, n })
    }

    /// `mean ± std` with `digits` decimals.
    pub fn display(&self, digits: usize) -> String {
        if self.n > 1 { format!("{:.digits$} ± {:.digits$}", self.mean, self.std) } else { format!("{:.digits$}", self.mean) }
    }
}

/// One seed's run of an optimizer's best configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedRun {
    /// The seed (initialisation, batches, sampled labels).
    pub seed: u64,
    /// Final validation loss.
    pub final_val_loss: f64,
    /// Validation loss at every evaluation.
    pub curve: Vec<CurvePoint>,
    /// `(step, win rate)` at every log (Sophia; empty otherwise).
    pub win_rate: Vec<(usize, f64)>,
    /// Training throughput (tokens per second, evaluation excluded).
    pub tokens_per_sec: f64,
    /// Share of training wall time spent in Hessian refreshes (Sophia).
    pub hessian_time_fraction: f64,
    /// Steps to reach AdamW's final validation loss (interpolated between evaluations).
    pub steps_to_target: Option<f64>,
    /// Seconds to reach it.
    pub seconds_to_target: Option<f64>,
}

/// One optimizer's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerResult {
    /// Optimizer name (`sophiag-auto` for SophiaG with automatic `ρ`).
    pub optimizer: String,
    /// Its sweep (empty for a `sophiag-auto` entry of the earlier procedure, which took SophiaG's
    /// best learning rate).
    pub sweep: Vec<SweepEntry>,
    /// The best learning rate.
    pub lr: f64,
    /// The best `ρ` (SophiaG: a number, or `auto`).
    pub rho: Option<String>,
    /// The seeds' runs of the best configuration (the first is the sweep's).
    pub runs: Vec<SeedRun>,
    /// Final validation loss over the seeds.
    pub final_val_loss: Spread,
    /// Mean training throughput over the seeds.
    pub tokens_per_sec: f64,
    /// Optimizer state in bytes (exact, from the serialized record).
    pub state_bytes: u64,
    /// Optimizer state bytes per model parameter.
    pub state_bytes_per_param: f64,
    /// Mean share of training wall time spent in Hessian refreshes (Sophia).
    pub hessian_time_fraction: f64,
    /// Mean win rate at the end (Sophia): the share of coordinates not clipped.
    pub final_win_rate: Option<f64>,
    /// Steps to reach AdamW's final loss, over the seeds that reached it.
    pub steps_to_adamw_loss: Option<Spread>,
    /// Those steps over AdamW's own (its mean curve's), per seed.
    pub step_ratio_to_adamw: Option<Spread>,
    /// Seconds to reach AdamW's final loss, over the seeds that reached it.
    pub seconds_to_adamw_loss: Option<Spread>,
    /// Seeds that reached AdamW's final loss.
    pub reached: usize,
}

/// The JSON written by `bench compare`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    /// Where it ran.
    pub machine: Machine,
    /// The shared run settings (learning rate, optimizer and seed are per run).
    pub base: TrainConfig,
    /// Model parameters.
    pub parameters: usize,
    /// The learning-rate multipliers of the sweeps.
    pub lr_multipliers: Vec<f64>,
    /// SophiaG's `ρ` grid.
    pub rhos: Vec<f64>,
    /// Seeds per best configuration.
    pub seeds: usize,
    /// The corpus' unigram baseline.
    pub unigram_val_loss: f64,
    /// AdamW's final validation loss, mean over its seeds (the target), if AdamW was compared.
    pub adamw_final_val_loss: Option<f64>,
    /// Steps at which AdamW's mean curve reaches that target.
    pub adamw_steps: Option<f64>,
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

/// The mean over seeds at every evaluation `(step, mean seconds, mean loss, min loss, max loss)`;
/// the runs share their evaluation steps (the same schedule), so evaluation `i` is averaged.
pub fn mean_curve(runs: &[SeedRun]) -> Vec<(f64, f64, f64, f64, f64)> {
    let length = runs.iter().map(|r| r.curve.len()).min().unwrap_or(0);
    (0..length)
        .map(|i| {
            let points: Vec<&CurvePoint> = runs.iter().map(|r| &r.curve[i]).collect();
            let n = points.len() as f64;
            let losses = points.iter().map(|p| p.val_loss);
            (
                points[0].step as f64,
                points.iter().map(|p| p.seconds).sum::<f64>() / n,
                losses.clone().sum::<f64>() / n,
                losses.clone().fold(f64::INFINITY, f64::min),
                losses.fold(f64::NEG_INFINITY, f64::max),
            )
        })
        .collect()
}

/// Fill in the "to reach AdamW's final loss" figures of every result; returns the target and
/// the steps of AdamW's mean curve to it.
pub fn rank_against_adamw(results: &mut [OptimizerResult]) -> Option<(f64, Option<f64>)> {
    let adamw = results.iter().find(|r| r.optimizer == OptimizerKind::AdamW.to_string())?;
    let target = adamw.final_val_loss.mean;
    let adamw_steps = first_crossing(&mean_curve(&adamw.runs).iter().map(|&(step, _, loss, _, _)| (step, loss)).collect::<Vec<_>>(), target);
    for result in results.iter_mut() {
        for run in &mut result.runs {
            run.steps_to_target = first_crossing(&run.curve.iter().map(|p| (p.step as f64, p.val_loss)).collect::<Vec<_>>(), target);
            run.seconds_to_target = first_crossing(&run.curve.iter().map(|p| (p.seconds, p.val_loss)).collect::<Vec<_>>(), target);
        }
        let steps: Vec<f64> = result.runs.iter().filter_map(|r| r.steps_to_target).collect();
        let seconds: Vec<f64> = result.runs.iter().filter_map(|r| r.seconds_to_target).collect();
        result.reached = steps.len();
        result.steps_to_adamw_loss = Spread::of(&steps);
        result.seconds_to_adamw_loss = Spread::of(&seconds);
        result.step_ratio_to_adamw = adamw_steps.and_then(|a| Spread::of(&steps.iter().map(|s| s / a).collect::<Vec<_>>()));
    }
    Some((target, adamw_steps))
}

/// The regime of `base`: `char` for the char model, `cpu` for the BPE models.
fn regime(base: &TrainConfig) -> &'static str {
    if base.model.is_none() && base.preset == "char" { "char" } else { "cpu" }
}

/// One configuration tuned by [`tune`]: its sweep, its best config and that config's seeds.
struct Tuned {
    sweep: Vec<SweepEntry>,
    config: TrainConfig,
    runs: Vec<SeedRun>,
    unigram_val_loss: f64,
    parameters: usize,
}

/// Sweep `grid` around `config` (in `config.out_dir/config.name`), then run the best point with
/// `seeds` seeds (the sweep's run being the first) in `config.out_dir/label-seeds/`.
fn tune(label: &str, config: &TrainConfig, grid: &SweepGrid, seeds: usize, run_options: &RunOptions, progress: &mut dyn FnMut(&str)) -> Result<Tuned, BenchError> {
    progress(&format!("{label}: learning rates {:?}{}", grid.lr, if grid.rho.is_empty() { String::new() } else { format!(", rho {:?}", grid.rho) }));
    let report = sweep::sweep(config, grid, run_options, progress)?;
    let best = report.best.ok_or(BenchError::Unsupported("every learning rate of an optimizer diverged; try smaller --lr-multipliers"))?;
    let point: &SweepPoint = &report.points[best];
    let summary = point.summary.clone().expect("the best point finished");
    let (unigram_val_loss, parameters) = (summary.unigram_val_loss, summary.parameters);
    let best_config = TrainConfig { out_dir: config.out_dir.clone(), name: config.name.clone(), ..point.settings.apply(config) };
    let sweep =
        report.points.iter().map(|p| SweepEntry { lr: p.settings.lr, rho: p.settings.rho, final_val_loss: p.summary.as_ref().map(|s| s.final_val_loss) }).collect();
    let runs = seed_runs(&best_config, Some((summary, &point.run_dir)), seeds, &config.out_dir, label, run_options, progress)?;
    Ok(Tuned { sweep, config: best_config, runs, unigram_val_loss, parameters })
}

/// The seeds' run of `config` (whose seed is the first) in `dir/label-seeds/`, the first seed's
/// run being `first` (the sweep's); a seed that diverges is an error, since the configuration
/// was chosen for not diverging.
fn seed_runs(
    config: &TrainConfig,
    first: Option<(TrainSummary, &Path)>,
    seeds: usize,
    dir: &Path,
    label: &str,
    run_options: &RunOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<SeedRun>, BenchError> {
    let mut runs = Vec::new();
    for k in 0..seeds {
        let seed = config.seed + k as u64;
        let (summary, run_dir) = match (&first, k) {
            (Some((summary, run_dir)), 0) => (summary.clone(), run_dir.to_path_buf()),
            _ => {
                let config = TrainConfig { seed, out_dir: dir.join(format!("{label}-seeds")), name: format!("seed{seed}"), ..config.clone() };
                progress(&format!("{label}: seed {seed} ({}/{seeds})", k + 1));
                let summary = train_once(&config, run_options, progress)?.map_err(|why| BenchError::Diverged { run: format!("{label} seed {seed}"), why })?;
                (summary, config.out_dir.join(&config.name))
            }
        };
        runs.push(read_run(seed, &summary, &run_dir)?);
    }
    Ok(runs)
}

/// A finished run's curves from its `metrics.jsonl`.
fn read_run(seed: u64, summary: &TrainSummary, run_dir: &Path) -> Result<SeedRun, BenchError> {
    let path = run_dir.join("metrics.jsonl");
    let records = metrics::read(&path).map_err(|source| BenchError::Io { path: path.clone(), source })?;
    Ok(SeedRun {
        seed,
        final_val_loss: summary.final_val_loss,
        curve: records
            .iter()
            .filter(|r| r.kind == "eval")
            .filter_map(|r| r.val_loss.map(|val_loss| CurvePoint { step: r.step, tokens: r.tokens, seconds: r.time, val_loss }))
            .collect(),
        win_rate: records.iter().filter(|r| r.kind == "train").filter_map(|r| r.win_rate.map(|w| (r.step, w))).collect(),
        tokens_per_sec: summary.tokens_per_sec,
        hessian_time_fraction: summary.hessian_time_fraction,
        steps_to_target: None,
        seconds_to_target: None,
    })
}

/// The result of `runs` of one configuration.
fn result(
    optimizer: String,
    sweep: Vec<SweepEntry>,
    config: &TrainConfig,
    runs: Vec<SeedRun>,
    model: &Gpt2,
    device: &burn::tensor::Device,
) -> Result<OptimizerResult, BenchError> {
    let state_bytes = memory::state_bytes(config, model, device)?;
    let mean = |value: fn(&SeedRun) -> f64| runs.iter().map(value).sum::<f64>() / runs.len() as f64;
    let final_wins: Vec<f64> = runs.iter().filter_map(|r| r.win_rate.last().map(|&(_, w)| w)).collect();
    Ok(OptimizerResult {
        optimizer,
        sweep,
        lr: config.lr,
        rho: match &config.optimizer {
            OptimizerConfig::SophiaG(s) => Some(s.rho.to_string()),
            _ => None,
        },
        final_val_loss: Spread::of(&runs.iter().map(|r| r.final_val_loss).collect::<Vec<_>>()).expect("at least one seed"),
        tokens_per_sec: mean(|r| r.tokens_per_sec),
        state_bytes,
        state_bytes_per_param: state_bytes as f64 / model.num_params() as f64,
        hessian_time_fraction: mean(|r| r.hessian_time_fraction),
        final_win_rate: Spread::of(&final_wins).map(|s| s.mean),
        steps_to_adamw_loss: None,
        step_ratio_to_adamw: None,
        seconds_to_adamw_loss: None,
        reached: 0,
        runs,
    })
}

/// Run the comparison; `progress` receives one line per stage.
pub fn run(options: &CompareOptions, run_options: &RunOptions, progress: &mut dyn FnMut(&str)) -> Result<CompareReport, BenchError> {
    let v = sophia_optim::Validator::new("bench compare");
    v.at_least_one("optimizers", options.optimizers.len())?;
    v.at_least_one("lr_multipliers", options.lr_multipliers.len())?;
    v.at_least_one("seeds", options.seeds)?;
    for &multiplier in &options.lr_multipliers {
        v.positive("lr_multipliers", multiplier)?;
    }
    for &rho in &options.rhos {
        v.positive("rhos", rho)?;
    }
    let base = &options.base;
    let model_config = base.model_config()?;
    let device = base.backend.device().map_err(sophia_train::TrainError::from)?.autodiff();
    let model = Gpt2::new(&model_config, &device, base.seed)?;
    let dir = base.out_dir.join(&base.name);
    let mut results = Vec::new();
    // From the runs: the corpus' unigram loss and the model's size with the corpus' vocabulary
    // (a character model's vocabulary is known only once the data is prepared).
    let (mut unigram, mut parameters) = (f64::NAN, model.num_params());
    for &kind in &options.optimizers {
        // The base run with this optimizer (the base's settings when it is the base's optimizer,
        // else the regime preset's) at the preset's learning rate and weight decay.
        let preset = HyperparameterPreset::named(&format!("{}-{kind}", regime(base))).map_err(sophia_train::TrainError::from)?;
        let mut config = base.clone();
        if config.optimizer.kind() != kind {
            config.optimizer = preset.optimizer.clone();
        }
        (config.lr, config.min_lr, config.weight_decay) = (preset.lr, preset.lr * base.min_lr / base.lr, preset.weight_decay);
        (config.out_dir, config.name) = (dir.clone(), kind.to_string());
        let rho = if kind == OptimizerKind::SophiaG { options.rhos.clone() } else { Vec::new() };
        let lr: Vec<f64> = options.lr_multipliers.iter().map(|m| m * config.lr).collect();
        let tuned = tune(kind.name(), &config, &SweepGrid { lr: lr.clone(), rho, ..SweepGrid::default() }, options.seeds, run_options, progress)?;
        (unigram, parameters) = (tuned.unigram_val_loss, tuned.parameters);
        results.push(result(kind.to_string(), tuned.sweep, &tuned.config, tuned.runs, &model, &device)?);
        if kind == OptimizerKind::SophiaG && options.auto_rho {
            // Tuned like the others: a larger ρ shrinks every step that is not clipped, so the
            // best learning rate with automatic ρ need not be the best with a fixed one.
            let mut auto = TrainConfig { name: "sophiag-auto".into(), ..config.clone() };
            if let OptimizerConfig::SophiaG(s) = &mut auto.optimizer {
                s.rho = Rho::Auto;
            }
            let tuned = tune("sophiag-auto", &auto, &SweepGrid { lr, ..SweepGrid::default() }, options.seeds, run_options, progress)?;
            results.push(result("sophiag-auto".into(), tuned.sweep, &tuned.config, tuned.runs, &model, &device)?);
        }
    }
    let ranked = rank_against_adamw(&mut results);
    Ok(CompareReport {
        machine: Machine::detect(&base.backend.to_string()),
        base: base.clone(),
        parameters,
        lr_multipliers: options.lr_multipliers.clone(),
        rhos: options.rhos.clone(),
        seeds: options.seeds,
        unigram_val_loss: unigram,
        adamw_final_val_loss: ranked.map(|(target, _)| target),
        adamw_steps: ranked.and_then(|(_, steps)| steps),
        results,
    })
}

/// Write `report` as JSON, and draw `stem.png`/`.svg`, `stem-lr-rho.png`/`.svg` (when SophiaG
/// swept `ρ`) and `stem.md` from it.
pub fn write(report: &CompareReport, json: &Path) -> Result<(), BenchError> {
    crate::write_json(json, report)?;
    let stem = json.with_extension("");
    crate::write_text(&stem.with_extension("md"), &markdown(report))?;
    plot(report, &stem)?;
    if let Some(map) = lr_rho_heatmap(report) {
        let name = format!("{}-lr-rho", stem.file_name().map_or("compare".into(), |n| n.to_string_lossy().into_owned()));
        sophia_train::plot::draw_heatmap(&stem.with_file_name(name), &map)?;
    }
    Ok(())
}

/// The comparison table and the sweeps.
pub fn markdown(report: &CompareReport) -> String {
    let base = &report.base;
    let block = base.model_config().map_or(0, |m| m.block_size);
    let mut out = format!(
        "{} parameters (preset {}, context {block}), corpus `{}` ({} tokenizer), {} steps of {} tokens, {} seed{} from {}; {}.\n\n",
        report.parameters,
        base.preset,
        base.data,
        base.tokenizer(),
        base.max_steps,
        base.tokens_per_step(block),
        report.seeds,
        if report.seeds == 1 { "" } else { "s" },
        base.seed,
        report.machine.describe()
    );
    let target = report.adamw_final_val_loss.map_or("-".into(), |t| format!("{t:.4}"));
    let adamw_steps = report.adamw_steps.map_or("-".into(), |s| format!("{s:.0}"));
    out.push_str(&format!(
        "Target: AdamW's final validation loss {target} (mean over its seeds; its mean curve reaches it at step {adamw_steps}); unigram baseline {:.4}. \
         Figures are mean ± standard deviation over seeds; steps and seconds count the seeds that reach the target.\n\n",
        report.unigram_val_loss
    ));
    let spread = |s: Option<Spread>, digits: usize| s.map_or("not reached".into(), |s| s.display(digits));
    let rows: Vec<Vec<String>> = report
        .results
        .iter()
        .map(|r| {
            vec![
                r.optimizer.clone(),
                format!("{:.2e}", r.lr),
                r.rho.clone().unwrap_or_else(|| "-".into()),
                r.final_val_loss.display(4),
                format!("{:.4} … {:.4}", r.final_val_loss.min, r.final_val_loss.max),
                format!("{}/{}", r.reached, r.runs.len()),
                spread(r.steps_to_adamw_loss, 0),
                r.step_ratio_to_adamw.map_or("-".into(), |s| format!("{}x", s.display(2))),
                spread(r.seconds_to_adamw_loss, 0),
                format!("{:.0}", r.tokens_per_sec),
                format!("{:.1}", r.state_bytes_per_param),
                format!("{:.1}%", 100.0 * r.hessian_time_fraction),
                r.final_win_rate.map_or("-".into(), |w| format!("{w:.3}")),
            ]
        })
        .collect();
    let header = [
        "optimizer",
        "best lr",
        "ρ",
        "final val loss",
        "range",
        "seeds reaching AdamW",
        "steps to AdamW's loss",
        "vs AdamW",
        "seconds to it",
        "tokens/s",
        "state bytes/param",
        "Hessian time",
        "final win rate",
    ];
    out.push_str(&sophia_train::table::markdown(&header, &rows));
    out.push_str("\nSweeps (final validation loss of the first seed; the best is run with every seed):\n\n");
    for r in report.results.iter().filter(|r| !r.sweep.is_empty()) {
        let points: Vec<String> = r
            .sweep
            .iter()
            .map(|s| {
                let rho = s.rho.map(|rho| format!(" ρ {rho}")).unwrap_or_default();
                format!("{:.2e}{rho}: {}", s.lr, s.final_val_loss.map_or("diverged".into(), |v| format!("{v:.4}")))
            })
            .collect();
        out.push_str(&format!("- {}: {}\n", r.optimizer, points.join(", ")));
    }
    out
}

/// Validation loss against steps and against seconds (mean over seeds, shaded between the best
/// and the worst seed), the win rate of the Sophia runs, and the learning-rate sweeps.
pub fn plot(report: &CompareReport, stem: &Path) -> Result<(), BenchError> {
    let curves = |seconds: bool| -> Vec<Series> {
        report
            .results
            .iter()
            .map(|r| {
                let mean = mean_curve(&r.runs);
                let x = |p: &(f64, f64, f64, f64, f64)| if seconds { p.1 } else { p.0 };
                Series { label: r.optimizer.clone(), points: mean.iter().map(|p| (x(p), p.2)).collect(), band: mean.iter().map(|p| (x(p), p.3, p.4)).collect() }
            })
            .collect()
    };
    let panel = |title: &str, x_label: &str, y_label: &str, series| Panel { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), log_y: false, series };
    let win_rates = report
        .results
        .iter()
        .filter(|r| r.runs.iter().any(|run| !run.win_rate.is_empty()))
        .map(|r| Series::line(r.optimizer.clone(), r.runs[0].win_rate.iter().map(|&(step, w)| (step as f64, w)).collect()))
        .collect();
    // Per optimizer, the best final loss at each learning rate (over ρ for SophiaG).
    let sweeps = report
        .results
        .iter()
        .filter(|r| !r.sweep.is_empty())
        .map(|r| {
            let mut lrs: Vec<f64> = r.sweep.iter().map(|s| s.lr).collect();
            lrs.sort_by(f64::total_cmp);
            lrs.dedup();
            let best_at = |lr: f64| r.sweep.iter().filter(|s| s.lr == lr).filter_map(|s| s.final_val_loss).fold(f64::INFINITY, f64::min);
            Series::line(r.optimizer.clone(), lrs.into_iter().map(|lr| (lr.log10(), best_at(lr))).filter(|(_, v)| v.is_finite()).collect())
        })
        .collect();
    let seeds = if report.seeds == 1 { "1 seed".to_string() } else { format!("{} seeds", report.seeds) };
    let title = format!("{} parameters, {} steps, {seeds}", report.parameters, report.base.max_steps);
    Ok(sophia_train::plot::draw(
        stem,
        &[
            panel(&format!("Validation loss ({title})"), "step", "val loss (nats)", curves(false)),
            panel("Validation loss vs wall clock", "seconds", "val loss (nats)", curves(true)),
            panel("Sophia win rate (first seed)", "step", "fraction not clipped", win_rates),
            panel("Learning-rate sweeps", "log10 peak lr", "final val loss (nats)", sweeps),
        ],
    )?)
}

/// SophiaG's final validation loss over its lr × ρ grid, when it swept more than one `ρ`.
pub fn lr_rho_heatmap(report: &CompareReport) -> Option<Heatmap> {
    let sophia = report.results.iter().find(|r| r.optimizer == OptimizerKind::SophiaG.to_string())?;
    let sorted = |values: Vec<f64>| {
        let mut values = values;
        values.sort_by(f64::total_cmp);
        values.dedup();
        values
    };
    let lrs = sorted(sophia.sweep.iter().map(|s| s.lr).collect());
    let rhos = sorted(sophia.sweep.iter().filter_map(|s| s.rho).collect());
    if rhos.len() < 2 {
        return None;
    }
    let cell = |lr: f64, rho: f64| sophia.sweep.iter().find(|s| s.lr == lr && s.rho == Some(rho)).and_then(|s| s.final_val_loss);
    Some(Heatmap {
        title: format!("SophiaG final val loss, {} steps (seed {})", report.base.max_steps, report.base.seed),
        x_label: "peak learning rate".into(),
        y_label: "ρ".into(),
        columns: lrs.iter().map(|lr| format!("{lr:.1e}")).collect(),
        rows: rhos.iter().map(|rho| format!("{rho}")).collect(),
        values: rhos.iter().map(|&rho| lrs.iter().map(|&lr| cell(lr, rho)).collect()).collect(),
    })
}
