//! Checkpoint integrity: every checkpoint carries a manifest, a damaged one is detected (an
//! altered weight, a truncated header, a zero-byte file, a missing manifest), a resume skips
//! it for the newest checkpoint that verifies and continues exactly as the uninterrupted run,
//! and an exported `model.safetensors` refuses to load once altered.

use std::path::{Path, PathBuf};

use sophia_gpt2::{Gpt2, Gpt2Config};
use sophia_train::train::{OptimizerConfig, RunOptions, SophiaGSettings, TrainConfig, Unverified, metrics, train, verify};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sophia-checkpoints-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(dir: &Path) -> TrainConfig {
    let text: String = (0..8000u64).map(|i| ["the ", "king ", "queen ", "speaks ", "to ", "Rome\n"][(i * 5 % 6) as usize]).collect();
    std::fs::write(dir.join("corpus.txt"), text).unwrap();
    TrainConfig {
        name: "run".into(),
        out_dir: dir.join("runs"),
        data: dir.join("corpus.txt").display().to_string(),
        data_dir: dir.join("data"),
        model: Some(Gpt2Config::new(1, 2, 16, 16, 50_257)),
        block_size: None,
        optimizer: OptimizerConfig::SophiaG(SophiaGSettings { hessian_interval: 2, ..SophiaGSettings::default() }),
        max_steps: 6,
        warmup_steps: 1,
        batch_size: 2,
        log_interval: 1,
        eval_interval: 3,
        eval_batches: 1,
        checkpoint_interval: 2,
        keep_checkpoints: 3,
        sample_tokens: 0,
        plots: false,
        ..TrainConfig::default()
    }
}

fn losses(run_dir: &Path) -> Vec<String> {
    metrics::read(&run_dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .map(|r| format!("{} {} {:?} {:?} {:?} {:?}", r.kind, r.step, r.train_loss, r.val_loss, r.grad_norm, r.win_rate))
        .collect()
}

/// The byte offset of the tensor data in a safetensors file (after the 8-byte length and the
/// JSON header).
fn data_offset(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

#[test]
fn damage_of_every_kind_is_detected() {
    let dir = scratch("verify");
    let config = config(&dir);
    train(&config, &RunOptions::default()).unwrap();
    let checkpoints = config.out_dir.join("run/checkpoints");
    let fresh = |name: &str| {
        let copy = dir.join(name);
        std::fs::create_dir_all(&copy).unwrap();
        for entry in std::fs::read_dir(checkpoints.join("step-000006")).unwrap().flatten() {
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
        copy
    };
    assert_eq!(verify(&fresh("intact")), Ok(()));

    // One weight overwritten with the finite value 1.0: same size, different bytes.
    let altered = fresh("altered");
    let mut bytes = std::fs::read(altered.join("model.safetensors")).unwrap();
    let at = data_offset(&bytes) + 40;
    bytes[at..at + 4].copy_from_slice(&1.0f32.to_le_bytes());
    std::fs::write(altered.join("model.safetensors"), &bytes).unwrap();
    assert!(matches!(verify(&altered), Err(Unverified::Checksum(path)) if path.ends_with("model.safetensors")));

    let truncated = fresh("truncated");
    std::fs::write(truncated.join("model.safetensors"), &bytes[..6]).unwrap();
    assert!(matches!(verify(&truncated), Err(Unverified::Size { found: 6, .. })));

    let empty = fresh("empty");
    std::fs::write(empty.join("optimizer.bpk"), b"").unwrap();
    assert!(matches!(verify(&empty), Err(Unverified::Size { found: 0, .. })));

    let missing = fresh("missing");
    std::fs::remove_file(missing.join("state.json")).unwrap();
    assert!(matches!(verify(&missing), Err(Unverified::Missing(path)) if path.ends_with("state.json")));

    let unlisted = fresh("no-manifest");
    std::fs::remove_file(unlisted.join("manifest.json")).unwrap();
    let error = verify(&unlisted).unwrap_err();
    assert!(matches!(error, Unverified::Manifest(..)) && error.to_string().contains("manifest"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resume_skips_a_damaged_checkpoint_and_continues_exactly() {
    let dir = scratch("skip");
    let config = config(&dir);
    let run_dir = config.out_dir.join("run");
    train(&config, &RunOptions::default()).unwrap();
    let expected = losses(&run_dir);
    std::fs::remove_dir_all(&run_dir).unwrap();

    // Stopped after step 5: the checkpoints of steps 2 and 4 exist; the newest one's model is
    // then damaged on disk.
    let stopped = train(&config, &RunOptions { stop_after: Some(5), ..RunOptions::default() });
    assert!(stopped.is_err());
    let newest = run_dir.join("checkpoints/step-000004");
    let model = newest.join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let at = data_offset(&bytes) + 40;
    bytes[at..at + 4].copy_from_slice(&1.0f32.to_le_bytes());
    std::fs::write(&model, &bytes).unwrap();

    // The resume skips step 4 (naming why) for step 2 and ends exactly as the uninterrupted run.
    let resumed = train(&config, &RunOptions { resume: true, ..RunOptions::default() }).unwrap();
    assert_eq!(resumed.steps, 6);
    assert_eq!(losses(&run_dir), expected);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_altered_exported_model_refuses_to_load() {
    let dir = scratch("export");
    let device = burn::tensor::Device::flex();
    let config = Gpt2Config::new(1, 2, 16, 16, 256);
    let model = Gpt2::new(&config, &device, 0).unwrap();
    let path = dir.join("model.safetensors");
    model.save_safetensors(&path).unwrap();
    assert!(Gpt2::new(&config, &device, 1).unwrap().load_safetensors(&path).is_ok());
    let mut bytes = std::fs::read(&path).unwrap();
    let at = data_offset(&bytes) + 12;
    bytes[at..at + 4].copy_from_slice(&1.0f32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let Err(error) = Gpt2::new(&config, &device, 1).unwrap().load_safetensors(&path) else { panic!("an altered file is refused") };
    let error = error.to_string();
    assert!(error.contains("checksum") && error.contains("model.safetensors"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}
