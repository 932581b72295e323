//! `cargo xtask bench ...`: measurements written as JSON and plotted from it.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};
use sophia_gpt2::train::Backend;

use crate::workspace_root;

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
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
        #[arg(long, default_value = "flex")]
        backend: Backend,
        /// Output JSON (a PNG and an SVG are drawn beside it).
        #[arg(long, default_value = "results/bench-step.json")]
        out: PathBuf,
    },
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.bench {
        Bench::Step { presets, repetitions, backend, out } => {
            if repetitions == 0 {
                bail!("--repetitions must be at least 1");
            }
            let device = backend.device().map_err(anyhow::Error::msg)?.autodiff();
            let presets: Vec<&str> = presets.iter().map(String::as_str).collect();
            let report = sophia_bench::step::run(&presets, repetitions, &device, &backend.to_string(), &mut |l| eprintln!("{l}"))
                .map_err(anyhow::Error::msg)?;
            let out = if out.is_absolute() { out } else { workspace_root().join(out) };
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            sophia_bench::step::write(&report, &out).map_err(anyhow::Error::msg)?;
            println!("{:<10} {:>10} {:>12} {:>12} {:>10}", "optimizer", "preset", "median (s)", "ns/param", "vs AdamW");
            for t in &report.timings {
                println!("{:<10} {:>10} {:>12.4} {:>12.3} {:>10.2}", t.optimizer, t.preset, t.median_secs, t.ns_per_param, t.ratio_to_adamw);
            }
            println!("wrote {} and its plot", out.display());
            Ok(())
        }
    }
}
