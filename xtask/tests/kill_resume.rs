//! `cargo xtask train` killed with SIGKILL in the middle of a run and resumed with `--resume`
//! logs exactly the losses of the uninterrupted run.

use std::path::Path;
use std::process::Command;
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

#[test]
fn sigkill_then_resume_matches_the_uninterrupted_run() {
    let dir = std::env::temp_dir().join(format!("sophia-kill-{}", std::process::id()));
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
        "max_steps": 40, "warmup_steps": 2, "batch_size": 2, "hessian_interval": 3,
        "log_interval": 1, "eval_interval": 20, "eval_batches": 1, "checkpoint_interval": 4,
        "sample_tokens": 0, "plots": false
    });
    let config_path = dir.join("run.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let train = |name: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command.args(["train", "--config", config_path.to_str().unwrap(), "--name", name]);
        command
    };

    let status = train("whole").output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));

    let mut child = train("killed").stderr(std::process::Stdio::null()).spawn().unwrap();
    let latest = dir.join("runs/killed/checkpoints/latest");
    let started = Instant::now();
    while !std::fs::read_to_string(&latest).is_ok_and(|n| n.trim() >= "step-000012") {
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!dir.join("runs/killed/summary.json").exists(), "the run finished before it was killed");

    let resumed = train("killed").arg("--resume").output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert_eq!(losses(&dir.join("runs/killed")), losses(&dir.join("runs/whole")));
    std::fs::remove_dir_all(&dir).unwrap();
}
