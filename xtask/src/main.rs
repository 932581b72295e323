//! `cargo xtask`: the project's commands, one place for every workflow a user or CI runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

/// The allocator of the command line: mimalloc keeps freed blocks for reuse, where glibc's
/// malloc returns every large temporary tensor to the kernel and faults it in again on the next
/// step (`bench throughput` reports the page faults per step). Only this binary chooses it; the
/// libraries leave the choice to their users.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keep freed memory mapped instead of returning it to the kernel after mimalloc's default
/// delay of a second: a training step frees and reallocates the same tensors every few hundred
/// milliseconds, and each page returned is zeroed and faulted in again (about 800 faults per
/// step of the char model, 2400 on cpu-3m, and 7-14% of the tokens/s, measured by
/// `bench throughput`). The process's footprint stays at its peak, which a training run
/// reaches in its first step anyway.
fn keep_freed_memory() {
    /// `mi_option_purge_delay` in mimalloc's `mimalloc.h` (milliseconds; -1: never purge).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: setting an option is a plain store into mimalloc's option table.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

mod bench;
mod cuda;
mod sample;
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
    /// Train a GPT on a real corpus (default: nanoGPT's character-level Shakespeare model with
    /// SophiaG, on the CPU).
    Train(Box<train::TrainArgs>),
    /// Write text with the model of a finished run, decoded with the run's own tokenizer.
    Sample(sample::SampleArgs),
    /// Hyperparameter grid search of short runs: table, plot and the best config.
    Sweep(Box<sweep::SweepArgs>),
    /// Benchmarks, written as JSON and plotted (results/).
    Bench(bench::BenchArgs),
    /// Type-check the workspace with the `cuda` feature (offline: DOCS_RS=1, no LLVM download).
    CheckCuda(cuda::CheckCudaArgs),
}

fn main() -> anyhow::Result<()> {
    ignore_file_size_signal();
    keep_freed_memory();
    sophia_train::flush_denormals().context("could not configure rayon's thread pool to flush subnormal floats")?;
    let command = Cli::parse().command;
    // The whole command on the pool's threads (see `sophia_backend::on_pool`).
    sophia_train::on_pool(move || match command {
        Commands::Test(args) => test::run(args),
        Commands::Train(args) => train::run(*args),
        Commands::Sample(args) => sample::run(args),
        Commands::Sweep(args) => sweep::run(*args),
        Commands::Bench(args) => bench::run(args),
        Commands::CheckCuda(args) => cuda::run(args),
    })
}

/// The workspace root (the parent of this crate's directory).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Run a command from the workspace root, echoing it, and fail with its exit status.
pub(crate) fn run_command(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", shown(command));
    let status = command.current_dir(workspace_root()).status().with_context(|| format!("could not start `{}`", shown(command)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", shown(command));
    }
    Ok(())
}

fn shown(command: &Command) -> String {
    std::iter::once(command.get_program()).chain(command.get_args()).map(|s| s.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

/// Let a write past the file-size limit (`ulimit -f`) fail with an error the run reports, like a
/// full disk, instead of killing the process with SIGXFSZ.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to "ignore" before any other thread exists.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// A clap parser for one of the project's named enums (one `ALL` list each): `--help` lists the
/// names, and the value is parsed by the type's own `FromStr`, whose error says what to use
/// instead (e.g. why f16 is refused, which cargo feature a backend needs).
#[derive(Clone)]
pub(crate) struct Named<T> {
    names: Vec<&'static str>,
    parse: fn(&str) -> Result<T, String>,
}

pub(crate) fn named<T>(names: impl IntoIterator<Item = &'static str>) -> Named<T>
where
    T: std::str::FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    Named { names: names.into_iter().collect(), parse: |text| text.parse::<T>().map_err(|e| e.to_string()) }
}

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for Named<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &std::ffi::OsStr) -> Result<T, clap::Error> {
        let text = value.to_string_lossy();
        (self.parse)(&text).map_err(|reason| {
            let flag = arg.map_or_else(|| "value".to_string(), |a| a.to_string());
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("invalid value '{text}' for '{flag}': {reason}\n")).with_cmd(cmd)
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(self.names.iter().map(|name| clap::builder::PossibleValue::new(*name))))
    }
}

/// A clap parser for a finite number: `--lr NaN` is refused naming the flag.
pub(crate) fn finite(text: &str) -> Result<f64, String> {
    let value: f64 = text.trim().parse().map_err(|e| format!("{e}"))?;
    if value.is_finite() { Ok(value) } else { Err("must be a finite number".into()) }
}
