//! Faults, not only inputs: `cargo xtask train` killed with SIGKILL at random moments (most of
//! them during checkpoint writes: a checkpoint is written after every step) and resumed each
//! time, and a run whose checkpoint write hits the file-size limit (a full disk), must leave
//! the previous checkpoint intact and then finish exactly as the uninterrupted run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn losses(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let mut record: serde_json::Value = serde_json::from_str(line).unwrap();
            // Wall-clock fields differ between runs; everything else must not.
            let object = record.as_object_mut().unwrap();
            object.remove("time");
            object.remove("tokens_per_sec");
            record
        })
        .collect()
}

/// A scratch directory with a corpus and a tiny run config checkpointing every step.
fn setup(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("sophia-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text: String = (0..6000).map(|i| ["the king ", "and queen ", "of Rome ", "speak ", "war\n"][i * 7 % 5]).collect();
    std::fs::write(dir.join("corpus.txt"), text).unwrap();
    let config = serde_json::json!({
        "out_dir": dir.join("runs"),
        "data": dir.join("corpus.txt"),
        "data_dir": dir.join("data"),
        "model": { "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "vocab_size": 50257 },
        "block_size": null,
        "max_steps": 40, "warmup_steps": 2, "batch_size": 2,
        "optimizer": { "kind": "sophiag", "hessian_interval": 3 },
        "log_interval": 1, "eval_interval": 20, "eval_batches": 1, "checkpoint_interval": 1,
        "sample_tokens": 0, "plots": false
    });
    let config_path = dir.join("run.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    (dir, config_path)
}

fn train(config: &Path, name: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.args(["train", "--config", config.to_str().unwrap(), "--name", name]);
    command
}

/// The checkpoint `latest` names, if any.
fn latest(run: &Path) -> Option<String> {
    std::fs::read_to_string(run.join("checkpoints/latest")).ok().map(|n| n.trim().to_string())
}

#[test]
fn sigkill_at_random_moments_then_resume_matches_the_uninterrupted_run() {
    let (dir, config) = setup("kill");
    let started = Instant::now();
    let whole = train(&config, "whole").output().unwrap();
    assert!(whole.status.success(), "{}", String::from_utf8_lossy(&whole.stderr));
    let duration = started.elapsed();

    let run = dir.join("runs/killed");
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for attempt in 0..5 {
        let mut command = train(&config, "killed");
        if latest(&run).is_some() {
            command.arg("--resume");
        }
        let mut child = command.stderr(Stdio::null()).spawn().unwrap();
        // A moment between 20% and 80% of an uninterrupted run's duration.
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let fraction = 0.2 + 0.6 * ((state >> 11) as f64 / (1u64 << 53) as f64);
        std::thread::sleep(duration.mul_f64(fraction));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if let Some(name) = latest(&run) {
            let dir = run.join("checkpoints").join(&name);
            assert!(sophia_train::train::verify(&dir).is_ok(), "attempt {attempt}: `latest` names {name}, which does not verify");
        }
    }
    let mut finish = train(&config, "killed");
    if latest(&run).is_some() {
        finish.arg("--resume");
    }
    let finished = finish.output().unwrap();
    assert!(finished.status.success(), "{}", String::from_utf8_lossy(&finished.stderr));
    assert_eq!(losses(&run), losses(&dir.join("runs/whole")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_checkpoint_write_past_the_disk_limit_stops_the_run_and_keeps_the_previous_checkpoint() {
    let (dir, config) = setup("disk-full");
    let whole = train(&config, "whole").output().unwrap();
    assert!(whole.status.success(), "{}", String::from_utf8_lossy(&whole.stderr));

    let run = dir.join("runs/full");
    let child = train(&config, "full").stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while latest(&run).is_none_or(|n| n.as_str() < "step-000003") {
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    // The disk fills up: from now on no file may grow past 64 KiB (a checkpoint's model file
    // is 3 MiB), as `ulimit -f` would have it.
    let limit = libc::rlimit { rlim_cur: 64 * 1024, rlim_max: 64 * 1024 };
    // SAFETY: plain system call on a child process this test owns.
    let set = unsafe { libc::prlimit(child.id() as libc::pid_t, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit failed");
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the run must stop: {stderr}");
    assert!(stderr.contains("could not write") && stderr.contains("File too large") && !stderr.contains("panicked"), "{stderr}");
    let kept = latest(&run).expect("`latest` survives");
    assert!(sophia_train::train::verify(&run.join("checkpoints").join(&kept)).is_ok(), "{kept} verifies");
    let partial = std::fs::read_dir(run.join("checkpoints")).unwrap().flatten().any(|e| e.file_name().to_string_lossy().ends_with(".partial"));
    assert!(!partial, "no partial checkpoint is left behind");

    // With space again, the run resumes from the kept checkpoint and ends as if nothing happened.
    let resumed = train(&config, "full").arg("--resume").output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert_eq!(losses(&run), losses(&dir.join("runs/whole")));
    std::fs::remove_dir_all(&dir).unwrap();
}
