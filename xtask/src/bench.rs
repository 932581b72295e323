//! `cargo xtask bench ...`: measurements written as JSON and plotted from it, and
//! `docs/results.md` regenerated from the JSON.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use sophia_bench::memory::{MemoryEntry, MemoryReport};
use sophia_bench::{compare, machine::Machine, memory, report, step, throughput};
use sophia_gpt2::Kernels;
use sophia_train::Backend;
use sophia_train::train::{OptimizerKind, RunOptions};

use crate::train::{TrainArgs, config};
use crate::workspace_root;

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Train every optimizer on the same model, corpus and budget, each tuned by a sweep (SophiaG
    /// over lr × ρ) and run with several seeds; loss curves with seed bands, steps and seconds to
    /// AdamW's final loss, win rates. The defaults (the char run, 5 learning rates, 4 ρ, 3 seeds,
    /// automatic ρ) make about 60 runs of 2000 steps: some seven hours on a 2-core CPU.
    Compare(Box<CompareArgs>),
    /// Optimizer step time of SophiaG, SophiaH, AdamW, Lion, Tiger and Muon on GPT-2-shaped
    /// parameters, as ratios to AdamW measured in one run.
    Step {
        /// Model presets whose parameters are stepped.
        #[arg(long, value_delimiter = ',', default_value = "cpu-10m,gpt2")]
        presets: Vec<String>,
        /// Timed repetitions per optimizer (after two warm-up steps).
        #[arg(long, default_value_t = 5)]
        repetitions: usize,
        /// Backend.
        #[arg(long, default_value = "flex", value_parser = crate::named::<Backend>(Backend::ALL.iter().map(|b| b.name())))]
        backend: Backend,
        /// Output JSON (a PNG and an SVG are drawn beside it).
        #[arg(long, default_value = "results/bench-step.json")]
        out: PathBuf,
    },
    /// Optimizer state bytes per parameter (exact) and peak memory of a training step, one fresh
    /// process per preset and optimizer.
    Memory {
        /// Model presets.
        #[arg(long, value_delimiter = ',', default_value = "cpu-3m,cpu-10m,cpu-30m")]
        presets: Vec<String>,
        /// Optimizers.
        #[arg(long, value_delimiter = ',', default_value = "adamw,sophiag,sophiah,lion,tiger,muon", value_parser = crate::named::<OptimizerKind>(OptimizerKind::ALL.iter().map(|k| k.name())))]
        optimizers: Vec<OptimizerKind>,
        /// Sequences per measured step.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Context length of the measured step.
        #[arg(long, default_value_t = 64)]
        block_size: usize,
        /// Backend.
        #[arg(long, default_value = "flex", value_parser = crate::named::<Backend>(Backend::ALL.iter().map(|b| b.name())))]
        backend: Backend,
        /// Output JSON.
        #[arg(long, default_value = "results/memory.json")]
        out: PathBuf,
    },
    /// One measurement of `bench memory`, printed as JSON (run in its own process).
    #[command(hide = true)]
    MemoryOne {
        preset: String,
        #[arg(value_parser = crate::named::<OptimizerKind>(OptimizerKind::ALL.iter().map(|k| k.name())))]
        optimizer: OptimizerKind,
        batch_size: usize,
        block_size: usize,
        #[arg(value_parser = crate::named::<Backend>(Backend::ALL.iter().map(|b| b.name())))]
        backend: Backend,
    },
    /// Training tokens/s, MFU against the measured peak matmul rate, and the cost of a SophiaG
    /// refresh relative to a training step, per preset.
    Throughput {
        /// Model presets.
        #[arg(long, value_delimiter = ',', default_value = "char,cpu-1m,cpu-3m,cpu-10m")]
        presets: Vec<String>,
        /// The model's kernels to measure (matrix products, loss, label sampling, GELU), each on
        /// every preset (fused: the backend's fused kernels where it has them; composed: Burn's
        /// tensor operations).
        #[arg(long, value_delimiter = ',', default_value = "fused,composed", value_parser = crate::named::<Kernels>(["fused", "composed"]))]
        kernels: Vec<Kernels>,
        /// Sequences per step.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Context length.
        #[arg(long, default_value_t = 64)]
        block_size: usize,
        /// Timed repetitions (after one warm-up).
        #[arg(long, default_value_t = 5)]
        repetitions: usize,
        /// Backend.
        #[arg(long, default_value = "flex", value_parser = crate::named::<Backend>(Backend::ALL.iter().map(|b| b.name())))]
        backend: Backend,
        /// Output JSON.
        #[arg(long, default_value = "results/throughput.json")]
        out: PathBuf,
    },
    /// Regenerate docs/results.md from the JSON results.
    Report {
        /// Directory of the JSON results.
        #[arg(long, default_value = "results")]
        results: PathBuf,
        /// The markdown file to write.
        #[arg(long, default_value = "docs/results.md")]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
pub(crate) struct CompareArgs {
    /// The shared run: `cargo xtask train` flags (model preset, corpus, steps, batch, seed,
    /// backend); runs go to runs/NAME/<optimizer>/.
    #[command(flatten)]
    base: TrainArgs,
    /// Optimizers to compare (AdamW is the reference for the step ratios).
    #[arg(long, value_delimiter = ',', default_value = "adamw,sophiag,sophiah,lion,tiger,muon", value_parser = crate::named::<OptimizerKind>(OptimizerKind::ALL.iter().map(|k| k.name())))]
    optimizers: Vec<OptimizerKind>,
    /// Learning rates tried per optimizer, as multiples of its preset's learning rate for the
    /// regime (`char-<optimizer>` on the char model, `cpu-<optimizer>` on the BPE models).
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,1,2,4", value_parser = crate::finite)]
    lr_multipliers: Vec<f64>,
    /// SophiaG's ρ values, tried at every learning rate (the lr × ρ heat map).
    #[arg(long, value_delimiter = ',', default_value = "0.02,0.05,0.1,0.2", value_parser = crate::finite)]
    rhos: Vec<f64>,
    /// Runs of each optimizer's best configuration, seeds --seed, --seed + 1, ...
    #[arg(long, default_value_t = 3)]
    seeds: usize,
    /// Also tune SophiaG with automatic ρ: the same learning rates, the best with the same seeds.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    auto_rho: bool,
    /// Output JSON (a table, a PNG and an SVG are written beside it).
    #[arg(long, default_value = "results/compare.json")]
    out: PathBuf,
}

/// `path` relative to the workspace root unless absolute.
fn resolve(path: PathBuf) -> PathBuf {
    if path.is_absolute() { path } else { workspace_root().join(path) }
}

/// An output file: [`resolve`]d, its directory created.
fn output(path: PathBuf) -> anyhow::Result<PathBuf> {
    let path = resolve(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(path)
}

fn device(backend: Backend) -> anyhow::Result<burn::tensor::Device> {
    Ok(backend.device()?.autodiff())
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    let say = &mut |line: &str| eprintln!("{line}");
    match args.bench {
        Bench::Compare(args) => run_compare(*args),
        Bench::Step { presets, repetitions, backend, out } => {
            if repetitions == 0 {
                bail!("--repetitions must be at least 1");
            }
            let presets: Vec<&str> = presets.iter().map(String::as_str).collect();
            let report = step::run(&presets, repetitions, &device(backend)?, &backend.to_string(), say)?;
            let out = output(out)?;
            step::write(&report, &out)?;
            println!("{:<10} {:>10} {:>12} {:>12} {:>10}", "optimizer", "preset", "median (s)", "ns/param", "vs AdamW");
            for t in &report.timings {
                println!("{:<10} {:>10} {:>12.4} {:>12.3} {:>10.2}", t.optimizer, t.preset, t.median_secs, t.ns_per_param, t.ratio_to_adamw);
            }
            println!("wrote {} and its plot", out.display());
            Ok(())
        }
        Bench::Memory { presets, optimizers, batch_size, block_size, backend, out } => {
            backend.device()?;
            let exe = std::env::current_exe().context("cannot find this program to measure in fresh processes")?;
            let mut entries = Vec::new();
            for preset in &presets {
                for optimizer in &optimizers {
                    let output = Command::new(&exe)
                        .args(["bench", "memory-one", preset, &optimizer.to_string(), &batch_size.to_string(), &block_size.to_string(), &backend.to_string()])
                        .output()
                        .context("cannot start the measuring process")?;
                    if !output.status.success() {
                        bail!("measuring {optimizer} on {preset} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
                    }
                    let entry: MemoryEntry = serde_json::from_slice(&output.stdout).context("the measuring process printed no result")?;
                    eprintln!(
                        "{preset} {optimizer}: state {:.2} bytes/param, peak {:.0} MiB",
                        entry.state_bytes_per_param,
                        entry.peak_rss_bytes as f64 / (1024.0 * 1024.0)
                    );
                    entries.push(entry);
                }
            }
            let report = MemoryReport { machine: Machine::detect(&backend.to_string()), entries };
            let out = output(out)?;
            memory::write(&report, &out)?;
            println!("wrote {} and its plot", out.display());
            Ok(())
        }
        Bench::MemoryOne { preset, optimizer, batch_size, block_size, backend } => {
            let entry = memory::measure(&preset, optimizer, batch_size, block_size, &device(backend)?)?;
            println!("{}", serde_json::to_string(&entry)?);
            Ok(())
        }
        Bench::Throughput { presets, kernels, batch_size, block_size, repetitions, backend, out } => {
            let presets: Vec<&str> = presets.iter().map(String::as_str).collect();
            let report = throughput::run(&presets, &kernels, batch_size, block_size, repetitions, &device(backend)?, &backend.to_string(), say)?;
            let out = output(out)?;
            throughput::write(&report, &out)?;
            println!("wrote {} and its plot", out.display());
            Ok(())
        }
        Bench::Report { results, out } => {
            let results = resolve(results);
            let notes_path = workspace_root().join("docs/results-notes.md");
            let notes = std::fs::read_to_string(&notes_path).ok();
            let text = report::render(&results, notes.as_deref())?;
            let out = output(out)?;
            std::fs::write(&out, text).with_context(|| format!("cannot write {}", out.display()))?;
            println!("wrote {}", out.display());
            Ok(())
        }
    }
}

fn run_compare(args: CompareArgs) -> anyhow::Result<()> {
    let given = [("--optimizer", args.base.optimizer.is_some()), ("--lr", args.base.lr.is_some()), ("--hyperparameters", args.base.hyperparameters.is_some())];
    if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
        bail!("{flag} does not apply to `bench compare`: it sweeps each optimizer's learning rate (use --optimizers and --lr-multipliers)");
    }
    if args.base.resume || args.base.print_config {
        bail!("--resume and --print-config do not apply to `bench compare` (finished runs are reused automatically)");
    }
    let mut base = config(&args.base)?;
    if args.base.name.is_none() {
        base.name = "compare".into();
    }
    // Twenty evaluations per run for the curves, one checkpoint at the end, no samples or plots.
    base.eval_interval = (base.max_steps / 20).max(1);
    (base.checkpoint_interval, base.sample_tokens, base.plots) = (base.max_steps, 0, false);
    base.validate()?;
    let options =
        compare::CompareOptions { optimizers: args.optimizers, base, lr_multipliers: args.lr_multipliers, rhos: args.rhos, seeds: args.seeds, auto_rho: args.auto_rho };
    let run_options = RunOptions { resume: false, progress_bar: std::io::IsTerminal::is_terminal(&std::io::stderr()), stop_after: None };
    let report = compare::run(&options, &run_options, &mut |line| eprintln!("{line}"))?;
    let out = output(args.out)?;
    compare::write(&report, &out)?;
    println!("{}", compare::markdown(&report));
    println!("wrote {}, {} and {}", out.display(), out.with_extension("md").display(), out.with_extension("png").display());
    Ok(())
}
