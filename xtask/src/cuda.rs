//! `cargo xtask check-cuda`: type-check the CUDA code path on a machine that cannot build it.
//!
//! Burn's `cuda` feature depends on `cubecl-llvm`, whose build script downloads an LLVM bundle;
//! with `DOCS_RS=1` that build script stands down, so `cargo check` covers every line of this
//! project compiled with `--features cuda` (linking, which needs the bundle, is not attempted).
//! With internet access a normal `cargo build -p xtask --features cuda` builds the real thing.

use std::process::Command;

use clap::Args;

use crate::{run_command, workspace_root};

#[derive(Args)]
pub(crate) struct CheckCudaArgs {}

pub(crate) fn run(_: CheckCudaArgs) -> anyhow::Result<()> {
    run_command(
        Command::new("cargo")
            .args(["check", "--workspace", "--all-targets", "--features", "xtask/cuda,sophia-golden/cuda"])
            .env("DOCS_RS", "1")
            // Its own target directory: the CUDA feature set does not replace the CPU build.
            .env("CARGO_TARGET_DIR", workspace_root().join("target/cuda")),
    )?;
    eprintln!("the workspace type-checks with the `cuda` feature");
    Ok(())
}
