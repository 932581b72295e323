//! `cargo xtask test`: the README's test command, and what CI runs.

use std::process::Command;

use anyhow::bail;
use clap::Args;

use crate::{run_command, workspace_root};

#[derive(Args)]
pub(crate) struct TestArgs {
    /// Extra arguments for the test runner (e.g. a test-name filter).
    #[arg(trailing_var_arg = true)]
    filter: Vec<String>,
}

pub(crate) fn run(args: TestArgs) -> anyhow::Result<()> {
    let golden = match std::env::var_os("SOPHIA_GOLDEN_DIR") {
        Some(dir) => dir.into(),
        None => workspace_root().join("../shared/golden"),
    };
    if !golden.is_dir() {
        bail!(
            "golden reference vectors not found at {}: clone the project next to `shared/` or set SOPHIA_GOLDEN_DIR",
            golden.display()
        );
    }
    let nextest = Command::new("cargo").args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success());
    if nextest {
        run_command(
            Command::new("cargo")
                .args(["nextest", "run", "--workspace", "--no-fail-fast", "--failure-output", "final"])
                .args(&args.filter),
        )?;
    } else {
        eprintln!("cargo-nextest not found; running `cargo test` (install it with `cargo install cargo-nextest`)");
        run_command(Command::new("cargo").args(["test", "--workspace", "--no-fail-fast"]).args(&args.filter))?;
    }
    if args.filter.is_empty() {
        // nextest does not run documentation examples.
        run_command(Command::new("cargo").args(["test", "--workspace", "--doc"]))?;
    }
    Ok(())
}
