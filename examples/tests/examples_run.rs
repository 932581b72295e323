//! The example programs run and do what they say.

use std::process::Command;

/// The `val loss` values an example printed, in order.
fn val_losses(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .filter_map(|line| line.split("val loss").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|value| value.parse().expect("a number after `val loss`"))
        .collect()
}

#[test]
fn sophia_regression_example_reduces_the_loss() {
    let output = Command::new(env!("CARGO_BIN_EXE_sophia_regression")).arg("200").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let losses = val_losses(&stdout);
    assert_eq!(losses.len(), 11, "{stdout}");
    assert!(losses[10] < 0.25 * losses[0], "loss did not fall enough: {losses:?}");
}

#[test]
fn sophia_regression_example_rejects_bad_arguments() {
    let output = Command::new(env!("CARGO_BIN_EXE_sophia_regression")).arg("ten").output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("steps must be a whole number"));
}

/// Runs the Learner example on a small corpus with `devices` devices and returns its stdout.
fn run_learner_example(devices: &str) -> String {
    let dir = std::env::temp_dir().join(format!("sophia-learner-{}-{devices}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text: String = (0..4000).map(|i| ["the king ", "and queen ", "of Rome ", "speak\n"][i % 4]).collect();
    std::fs::write(dir.join("corpus.txt"), text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_learner_gpt2"))
        .args([dir.join("corpus.txt").to_str().unwrap(), "10", dir.join("run").to_str().unwrap(), devices])
        .current_dir(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(dir.join("run/checkpoint").is_dir(), "Learner checkpoints are written");
    std::fs::remove_dir_all(&dir).unwrap();
    stdout
}

#[test]
fn learner_example_trains_with_sophia_refreshes() {
    let stdout = run_learner_example("1");
    assert!(stdout.contains("trained 10 optimizer steps on 1 device(s) with 2 Hessian refreshes"), "{stdout}");
}

#[test]
fn learner_example_trains_data_parallel_on_two_devices() {
    let stdout = run_learner_example("2");
    assert!(stdout.contains("trained 10 optimizer steps on 2 device(s) with 2 Hessian refreshes"), "{stdout}");
}
