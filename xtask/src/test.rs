//! `cargo xtask test`: the README's test command, and what CI runs; `--backend wgpu` runs the
//! device-generic tests on WGPU (on a software Vulkan device with `--lavapipe`), `--backend
//! cubecl-cpu` on CubeCL's LLVM CPU backend (offline with `--llvm-standin`).

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
    /// The same tests on CubeCL's CPU backend (the CubeCL code path that CUDA shares, kernels
    /// compiled by LLVM), built into target/cubecl-cpu.
    CubeclCpu,
}

impl TestBackend {
    /// The name of the backend, of its cargo feature and of its target directory.
    fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::CubeclCpu => "cubecl-cpu",
        }
    }
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
    /// With `--backend cubecl-cpu`: build without internet access, with Debian's LLVM standing
    /// in for the LLVM bundle that `cubecl-llvm` downloads (`../shared/tools/
    /// offline-llvm-standin.sh`, run when the stand-in is missing).
    #[arg(long)]
    llvm_standin: bool,
    /// Extra arguments for the test runner (e.g. a test-name filter).
    #[arg(trailing_var_arg = true)]
    filter: Vec<String>,
}

/// The tests that run on any device: they take their device from `SOPHIA_TEST_BACKEND`. Besides
/// the golden tests and training, the tests of the loss and the label sampling against Burn's
/// composed operations, which check the CubeCL bodies on a CubeCL backend, and the CubeCL bodies'
/// own tests (`cube::tests`: strided inputs without Burn's fusion; compiled only with a GPU
/// backend's feature). The f64-reference tests of the linear cross-entropy are left out: they
/// are the flex kernel's, and elsewhere they would test the device's own matrix product and
/// `exp`, which on lavapipe miss their flex-sized bounds by a few ulps on the composed path as
/// much as on the fused one.
const DEVICE_GENERIC: &str = "test(golden) | test(a_crashed_run_resumes_exactly) | test(training_reduces_the_loss_and_writes_its_outputs) \
                              | (package(sophia-gpt2) & binary(kernels) & (test(cross_entropy_equals_the_composed) | test(labels_equal_the_composed) | test(labels_at_the_ends))) \
                              | (package(sophia-gpt2) & test(cube::tests))";

/// Mesa's lavapipe driver manifest on Debian and Ubuntu.
const LAVAPIPE_ICD: &str = "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json";

pub(crate) fn run(args: TestArgs) -> anyhow::Result<()> {
    let golden = match std::env::var_os("SOPHIA_GOLDEN_DIR") {
        Some(dir) => dir.into(),
        None => workspace_root().join("crates/sophia-golden/data"),
    };
    if !golden.is_dir() {
        bail!("golden reference vectors not found at {}: restore crates/sophia-golden/data, or point SOPHIA_GOLDEN_DIR at a golden set", golden.display());
    }
    let nextest = cargo_has("nextest");
    if args.lavapipe && args.backend != TestBackend::Wgpu {
        bail!("--lavapipe applies to --backend wgpu");
    }
    if args.llvm_standin && args.backend != TestBackend::CubeclCpu {
        bail!("--llvm-standin applies to --backend cubecl-cpu");
    }
    if args.backend != TestBackend::Flex {
        return run_device_generic(&args, nextest);
    }
    if nextest {
        run_command(Command::new("cargo").args(["nextest", "run", "--workspace", "--no-fail-fast", "--failure-output", "final"]).args(&args.filter))?;
    } else {
        eprintln!("cargo-nextest not found; running `cargo test` (install it with `cargo install cargo-nextest`)");
        run_command(Command::new("cargo").args(["test", "--workspace", "--no-fail-fast"]).args(&args.filter))?;
    }
    if args.filter.is_empty() {
        // nextest does not run documentation examples.
        run_command(Command::new("cargo").args(["test", "--workspace", "--doc"]))?;
        check_style()?;
    }
    Ok(())
}

/// Whether the cargo subcommand `tool` is installed.
fn cargo_has(tool: &str) -> bool {
    Command::new("cargo").args([tool, "--version"]).output().is_ok_and(|o| o.status.success())
}

/// The house style: `cargo fmt` (with the workspace's rustfmt.toml) leaves every file as it is,
/// and clippy finds nothing to warn about in any target. A toolchain without the rustfmt or
/// clippy component skips that check with a note.
fn check_style() -> anyhow::Result<()> {
    if cargo_has("fmt") {
        run_command(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    } else {
        eprintln!("rustfmt not found; formatting not checked (install it with `rustup component add rustfmt`)");
    }
    if cargo_has("clippy") {
        run_command(Command::new("cargo").args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    } else {
        eprintln!("clippy not found; lints not checked (install it with `rustup component add clippy`)");
    }
    Ok(())
}

/// The device-generic tests on a GPU-path backend, built with its feature in its own target
/// directory.
fn run_device_generic(args: &TestArgs, nextest: bool) -> anyhow::Result<()> {
    let backend = args.backend.name();
    if !nextest {
        bail!("`--backend {backend}` selects its tests with a nextest filter: install it with `cargo install cargo-nextest`");
    }
    let mut command = Command::new("cargo");
    command
        .args(["nextest", "run", "-p", "sophia-optim", "-p", "sophia-gpt2", "-p", "sophia-train", "--features"])
        .arg(format!("sophia-golden/{backend},sophia-train/{backend}"))
        .args(["--no-fail-fast", "--failure-output", "final", "--test-threads", "1", "-E", DEVICE_GENERIC])
        .args(&args.filter)
        // A separate target directory: this build of Burn does not replace the CPU one.
        .env("CARGO_TARGET_DIR", workspace_root().join("target").join(backend))
        .env("SOPHIA_TEST_BACKEND", backend);
    if args.lavapipe {
        install_lavapipe()?;
        command.env("VK_ICD_FILENAMES", LAVAPIPE_ICD);
    }
    if args.llvm_standin {
        install_llvm_standin()?;
    }
    run_command(&mut command)
}

/// Present Debian's LLVM where `cubecl-llvm`'s build looks for its bundle, unless it is there.
fn install_llvm_standin() -> anyhow::Result<()> {
    let data = match std::env::var_os("XDG_DATA_HOME") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share"),
    };
    if data.join("tracel/tracel-llvm-23.1.0-4/.tracel-llvm-installed").is_file() {
        return Ok(());
    }
    let script = workspace_root().join("../shared/tools/offline-llvm-standin.sh");
    if !script.is_file() {
        bail!("the LLVM stand-in script is missing at {}: clone the project next to `shared/`, or build with internet access without --llvm-standin", script.display());
    }
    run_command(as_root("apt-get").arg("update"))?;
    run_command(as_root("sh").arg(&script))
}

/// Install Mesa's Vulkan drivers (lavapipe) and the Vulkan loader with apt-get if missing.
fn install_lavapipe() -> anyhow::Result<()> {
    if Path::new(LAVAPIPE_ICD).is_file() {
        return Ok(());
    }
    eprintln!("lavapipe not found at {LAVAPIPE_ICD}; installing mesa-vulkan-drivers, libvulkan1 and vulkan-tools");
    run_command(as_root("apt-get").args(["install", "-y", "--no-install-recommends", "mesa-vulkan-drivers", "libvulkan1", "vulkan-tools"]))?;
    if !Path::new(LAVAPIPE_ICD).is_file() {
        bail!("lavapipe is still missing at {LAVAPIPE_ICD} after installing mesa-vulkan-drivers; set VK_ICD_FILENAMES to its manifest");
    }
    Ok(())
}

/// `program`, through `sudo` unless this process runs as root.
fn as_root(program: &str) -> Command {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        return Command::new(program);
    }
    let mut sudo = Command::new("sudo");
    sudo.arg(program);
    sudo
}
