//! `bench step`: per-step optimizer time on the parameters of a GPT-2 preset.
//!
//! For every optimizer the same model and the same gradients are used; each step is timed
//! including a device synchronisation (reading one value of the updated weights), after
//! warm-up steps that create the optimizer state. Repetitions are interleaved across optimizers
//! so that machine noise affects all of them alike; the ratios to AdamW are computed from the
//! medians of one run.
//!
//! Beside the optimizers, each round times a [`MemoryFloor`] pass: the bytes SophiaG's update
//! reads and writes, moved with trivial arithmetic, which is as fast as any one-pass update can
//! be on the machine's memory.

use std::path::Path;
use std::time::Instant;

use burn::tensor::Device;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sophia_gpt2::{Gpt2, Gpt2Config, Kernels};
use sophia_train::plot::{Panel, Series};
use sophia_train::train::{OptimizerConfig, OptimizerKind, RunOptimizer, TrainConfig};

use crate::BenchError;
use crate::machine::Machine;

/// Timings of one optimizer on one preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    /// Optimizer name.
    pub optimizer: String,
    /// Model preset whose parameters were stepped.
    pub preset: String,
    /// Number of parameters.
    pub parameters: usize,
    /// Seconds per step: fastest, median, slowest repetition.
    pub min_secs: f64,
    /// Median seconds per step.
    pub median_secs: f64,
    /// Slowest repetition.
    pub max_secs: f64,
    /// Median nanoseconds per parameter.
    pub ns_per_param: f64,
    /// Median time relative to AdamW's median in the same run.
    pub ratio_to_adamw: f64,
}

/// The JSON written by `bench step`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Where it ran.
    pub machine: Machine,
    /// Backend the steps ran on.
    pub backend: String,
    /// Repetitions per optimizer.
    pub repetitions: usize,
    /// One entry per optimizer and preset.
    pub timings: Vec<StepTiming>,
}

/// The name of the [`MemoryFloor`] rows.
pub const MEMORY_FLOOR: &str = "memory floor";

/// A pass over four parameter-sized f32 arrays that reads all four and writes two (SophiaG's
/// one-pass update reads the parameter, gradient, momentum and `h`, and writes the parameter
/// and the momentum), in the same parallel chunks, with one addition per written element: the
/// memory traffic of the update without its arithmetic.
struct MemoryFloor {
    theta: Vec<f32>,
    momentum: Vec<f32>,
    grad: Vec<f32>,
    hessian: Vec<f32>,
}

impl MemoryFloor {
    fn new(parameters: usize) -> Self {
        Self { theta: vec![1.0; parameters], momentum: vec![0.0; parameters], grad: vec![1e-3; parameters], hessian: vec![1e-3; parameters] }
    }

    fn pass(&mut self) {
        const CHUNK: usize = 1 << 15;
        self.theta.par_chunks_mut(CHUNK).zip(self.momentum.par_chunks_mut(CHUNK)).zip(self.grad.par_chunks(CHUNK).zip(self.hessian.par_chunks(CHUNK))).for_each(
            |((theta, momentum), (grad, hessian))| {
                for (((theta, momentum), grad), hessian) in theta.iter_mut().zip(momentum.iter_mut()).zip(grad).zip(hessian) {
                    *momentum += grad;
                    *theta -= hessian;
                }
            },
        );
        std::hint::black_box(&self.theta);
    }
}

/// The optimizers compared, built exactly as a training run builds them (Muon on the blocks'
/// matrices with AdamW on the rest; weight decay on the linear weights).
const OPTIMIZERS: [OptimizerKind; 6] =
    [OptimizerKind::AdamW, OptimizerKind::SophiaG, OptimizerKind::SophiaH, OptimizerKind::Lion, OptimizerKind::Tiger, OptimizerKind::Muon];

/// The optimizers whose update has a one-pass form on flex (timed both ways; AdamW's and Lion's
/// composed form is Burn's own optimizer).
const FUSED: [OptimizerKind; 5] = [OptimizerKind::AdamW, OptimizerKind::SophiaG, OptimizerKind::SophiaH, OptimizerKind::Lion, OptimizerKind::Tiger];

/// Time every optimizer's step on the parameters of each preset.
pub fn run(presets: &[&str], repetitions: usize, device: &Device, backend: &str, progress: &mut dyn FnMut(&str)) -> Result<StepReport, BenchError> {
    let mut timings = Vec::new();
    for &preset in presets {
        let config = Gpt2Config::preset(preset)?;
        let model = Gpt2::new(&config, device, 0)?;
        let parameters = model.num_params();
        let grads = crate::gradients(&model, device)?;
        let tokens_per_step = 480 * config.block_size;
        let mut runs = Vec::new();
        // Every optimizer as training builds it, and the ones with a one-pass update on flex
        // also with the composed operations, for the speed-up within this run.
        let composed = OPTIMIZERS.iter().filter(|k| FUSED.contains(k)).map(|&k| (k, Kernels::Composed));
        for (kind, kernels) in OPTIMIZERS.iter().map(|&k| (k, Kernels::Fused)).chain(composed) {
            // The update alone: no refresh comes due during the measurement.
            let mut optimizer = kind.default_config();
            if let OptimizerConfig::SophiaG(s) = &mut optimizer {
                s.hessian_interval = usize::MAX;
            }
            if let OptimizerConfig::SophiaH(s) = &mut optimizer {
                s.hessian_interval = usize::MAX;
            }
            let settings = TrainConfig { optimizer, kernels, ..TrainConfig::default() };
            let optimizer = RunOptimizer::new(&settings, &model, tokens_per_step)?;
            let name = if kernels == Kernels::Composed { format!("{kind} (composed)") } else { kind.to_string() };
            runs.push((name, optimizer, Some(model.clone()), Vec::new()));
        }
        // A SophiaH schedule refreshes before its first update (a warm-up round, not timed).
        let mut estimator = crate::loss_gradient_estimator(device);
        let mut floor = (MemoryFloor::new(parameters), Vec::new());
        for round in 0..repetitions + 2 {
            let started = Instant::now();
            floor.0.pass();
            if round >= 2 {
                floor.1.push(started.elapsed().as_secs_f64());
            }
            for (name, stepper, slot, times) in runs.iter_mut() {
                // The model moves into the step, as in training: nothing else holds its
                // parameters, so the one-pass updates write them in place.
                let model = slot.take().expect("put back after every step");
                let grads = crate::grads_clone(&grads, &model);
                let started = Instant::now();
                let model = slot.insert(stepper.step(1e-4, model, grads, Some(&mut estimator))?);
                crate::sync(model);
                if round >= 2 {
                    times.push(started.elapsed().as_secs_f64());
                } else if round == 1 {
                    progress(&format!("{preset}: {name} warmed up"));
                }
            }
        }
        let median = |times: &mut Vec<f64>| {
            times.sort_by(f64::total_cmp);
            times[times.len() / 2]
        };
        let adamw = median(&mut runs[0].3);
        let timed = runs.into_iter().map(|(name, _, _, times)| (name, times)).chain(std::iter::once((MEMORY_FLOOR.to_string(), floor.1)));
        for (name, mut times) in timed {
            let m = median(&mut times);
            timings.push(StepTiming {
                optimizer: name,
                preset: preset.into(),
                parameters,
                min_secs: times[0],
                median_secs: m,
                max_secs: times[times.len() - 1],
                ns_per_param: m * 1e9 / parameters as f64,
                ratio_to_adamw: m / adamw,
            });
        }
    }
    Ok(StepReport { machine: Machine::detect(backend), backend: backend.into(), repetitions, timings })
}

/// Write `report` as JSON and draw `stem.png` / `stem.svg` from it.
pub fn write(report: &StepReport, json: &Path) -> Result<(), BenchError> {
    crate::write_json(json, report)?;
    plot(report, &json.with_extension(""))
}

/// Plot a step report (also usable on JSON measured elsewhere): nanoseconds per parameter and
/// the ratio to AdamW against model size, one line per optimizer.
pub fn plot(report: &StepReport, stem: &Path) -> Result<(), BenchError> {
    let mut names: Vec<&str> = report.timings.iter().map(|t| t.optimizer.as_str()).collect();
    names.sort();
    names.dedup();
    let series = |value: fn(&StepTiming) -> f64| -> Vec<Series> {
        names
            .iter()
            .map(|name| Series::line(*name, report.timings.iter().filter(|t| t.optimizer == *name).map(|t| (t.parameters as f64 / 1e6, value(t))).collect()))
            .collect()
    };
    let panels = [
        Panel {
            title: format!("Optimizer step cost ({})", report.backend),
            x_label: "parameters (millions)".into(),
            y_label: "ns per parameter (median)".into(),
            log_y: true,
            series: series(|t| t.ns_per_param),
        },
        Panel {
            title: "Step time relative to AdamW".into(),
            x_label: "parameters (millions)".into(),
            y_label: "median / AdamW median".into(),
            log_y: false,
            series: series(|t| t.ratio_to_adamw),
        },
    ];
    Ok(sophia_train::plot::draw(stem, &panels)?)
}
