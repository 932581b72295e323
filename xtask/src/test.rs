//! `cargo xtask test`: the README's test command, and what CI runs; `--backend wgpu` runs the
//! device-generic tests on WGPU (on a software Vulkan device with `--lavapipe`).

use std::path::Path;
use std::process::Command;

use anyhow::bail;
use clap::{Args, ValueEnum};

use crate::{run_command, workspace_root};

/// Backends the test suite runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TestBackend {
    /// The whole suite on the CPU backends (the default, and CI).
    Flex,
    /// The device-generic tests on WGPU (optimizer and GPT-2 golden tests, training steps of a
    /// tiny model, checkpoint round trip), built into target/wgpu.
    Wgpu,
}

#[derive(Args)]
pub(crate) struct TestArgs {
    /// Backend to test on.
    #[arg(long, value_enum, default_value = "flex")]
    backend: TestBackend,
    /// With `--backend wgpu`: use lavapipe, Mesa's CPU implementation of Vulkan (installed with
    /// apt-get when missing), so the WGPU path runs on a machine without a GPU.
    #[arg(long)]
    lavapipe: bool,
    /// Extra arguments for the test runner (e.g. a test-name filter).
    #[arg(trailing_var_arg = true)]
    filter: Vec<String>,
}

/// The tests that run on any device: they take their device from `SOPHIA_TEST_BACKEND`.
const DEVICE_GENERIC: &str = "test(golden) | test(a_crashed_run_resumes_exactly) | test(training_reduces_the_loss_and_writes_its_outputs)";

/// Mesa's lavapipe driver manifest on Debian and Ubuntu.
const LAVAPIPE_ICD: &str = "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json";

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
    if args.backend == TestBackend::Wgpu {
        return run_wgpu(&args, nextest);
    }
    if args.lavapipe {
        bail!("--lavapipe applies to --backend wgpu");
    }
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

fn run_wgpu(args: &TestArgs, nextest: bool) -> anyhow::Result<()> {
    if !nextest {
        bail!("`--backend wgpu` selects its tests with a nextest filter: install it with `cargo install cargo-nextest`");
    }
    let mut command = Command::new("cargo");
    command
        .args(["nextest", "run", "-p", "sophia-optim", "-p", "sophia-gpt2", "--features", "sophia-golden/wgpu,sophia-gpt2/wgpu"])
        .args(["--no-fail-fast", "--failure-output", "final", "--test-threads", "1", "-E", DEVICE_GENERIC])
        .args(&args.filter)
        // A separate target directory: the WGPU build of Burn does not replace the CPU one.
        .env("CARGO_TARGET_DIR", workspace_root().join("target/wgpu"))
        .env("SOPHIA_TEST_BACKEND", "wgpu");
    if args.lavapipe {
        install_lavapipe()?;
        command.env("VK_ICD_FILENAMES", LAVAPIPE_ICD);
    }
    run_command(&mut command)
}

/// Install Mesa's Vulkan drivers (lavapipe) and the Vulkan loader with apt-get if missing.
fn install_lavapipe() -> anyhow::Result<()> {
    if Path::new(LAVAPIPE_ICD).is_file() {
        return Ok(());
    }
    eprintln!("lavapipe not found at {LAVAPIPE_ICD}; installing mesa-vulkan-drivers, libvulkan1 and vulkan-tools");
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    let mut apt = Command::new(if root { "apt-get" } else { "sudo" });
    if !root {
        apt.arg("apt-get");
    }
    run_command(apt.args(["install", "-y", "--no-install-recommends", "mesa-vulkan-drivers", "libvulkan1", "vulkan-tools"]))?;
    if !Path::new(LAVAPIPE_ICD).is_file() {
        bail!("lavapipe is still missing at {LAVAPIPE_ICD} after installing mesa-vulkan-drivers; set VK_ICD_FILENAMES to its manifest");
    }
    Ok(())
}
