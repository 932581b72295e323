//! `cargo xtask`: the project's commands, one place for every workflow a user or CI runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

mod bench;
mod cuda;
mod sweep;
mod test;
mod train;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "sophia-burn project commands")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the whole test suite (CPU backends, golden tests included).
    Test(test::TestArgs),
    /// Train a GPT-2 on a real corpus (default: 3.4M parameters, Shakespeare, SophiaG, CPU).
    Train(Box<train::TrainArgs>),
    /// Hyperparameter grid search of short runs: table, plot and the best config.
    Sweep(Box<sweep::SweepArgs>),
    /// Benchmarks, written as JSON and plotted (results/).
    Bench(bench::BenchArgs),
    /// Type-check the workspace with the `cuda` feature (offline: DOCS_RS=1, no LLVM download).
    CheckCuda(cuda::CheckCudaArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Commands::Test(args) => test::run(args),
        Commands::Train(args) => train::run(*args),
        Commands::Sweep(args) => sweep::run(*args),
        Commands::Bench(args) => bench::run(args),
        Commands::CheckCuda(args) => cuda::run(args),
    }
}

/// The workspace root (the parent of this crate's directory).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Run a command from the workspace root, echoing it, and fail with its exit status.
pub(crate) fn run_command(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", shown(command));
    let status = command
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("could not start `{}`", shown(command)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", shown(command));
    }
    Ok(())
}

fn shown(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
