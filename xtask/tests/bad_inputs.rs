//! The bad-input suite: `cargo xtask train` given bad flags, config files, corpora, token files,
//! checkpoints and output paths. Every case must exit non-zero without a panic, with a message
//! that names the problem, and leave every file the user had (an earlier run with its
//! checkpoints, prepared data, the inputs themselves) exactly as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch directory with a corpus, a finished run (`runs/keep`) and its prepared data.
struct World {
    dir: PathBuf,
    config: PathBuf,
}

impl World {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("sophia-bad-inputs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let words = ["the", "king", "queen", "speaks", "to", "his", "loyal", "friend", "and", "enemy", "of", "Rome"];
        let text: String = (0..5000u64).map(|i| format!("{}{}", words[((i * 7) ^ (i / 5)) as usize % words.len()], if i % 9 == 8 { "\n" } else { " " })).collect();
        std::fs::write(dir.join("corpus.txt"), &text).unwrap();
        std::fs::write(dir.join("other.txt"), text.replace("king", "duke")).unwrap();
        let config = dir.join("tiny.json");
        let json = serde_json::json!({
            "out_dir": dir.join("runs"), "data": dir.join("corpus.txt"), "data_dir": dir.join("data"),
            "model": { "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "vocab_size": 50257 },
            "block_size": null, "max_steps": 4, "warmup_steps": 1, "batch_size": 2,
            "optimizer": { "kind": "sophiag", "hessian_interval": 2 },
            "log_interval": 1, "eval_interval": 2, "eval_batches": 1, "checkpoint_interval": 2,
            "sample_tokens": 0, "plots": false
        });
        std::fs::write(&config, json.to_string()).unwrap();
        let world = Self { dir, config };
        let output = world.xtask(&["--name", "keep"]);
        assert!(output.status.success(), "the reference run trains: {}", String::from_utf8_lossy(&output.stderr));
        world
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `cargo xtask train --config tiny.json ARGS` (ARGS may name another config).
    fn xtask(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command.arg("train");
        if !args.contains(&"--config") {
            command.arg("--config").arg(&self.config);
        }
        command.args(args).current_dir(&self.dir).output().unwrap()
    }

    /// Every file below the directory with its bytes.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.insert(path.clone(), std::fs::read(&path).unwrap());
                }
            }
        }
        let mut files = BTreeMap::new();
        walk(&self.dir, &mut files);
        files
    }
}

/// One bad input: the arguments and the words its error message must contain.
struct Case {
    name: &'static str,
    args: Vec<String>,
    expect: &'static [&'static str],
}

fn case(name: &'static str, args: &[&str], expect: &'static [&'static str]) -> Case {
    Case { name, args: args.iter().map(|a| a.to_string()).collect(), expect }
}

#[test]
fn every_bad_input_is_a_clear_error_and_loses_nothing() {
    let world = World::new();
    let p = |name: &str| world.path(name).display().to_string();

    // Inputs the cases read (created before the snapshot: they must survive unchanged too).
    std::fs::write(world.path("empty.txt"), "").unwrap();
    std::fs::write(world.path("binary.txt"), [0x66, 0x6f, 0xff, 0xfe, 0x00]).unwrap();
    std::fs::write(world.path("short.txt"), "To be or not to be.").unwrap();
    std::fs::write(world.path("broken.toml"), "lr = = 3").unwrap();
    std::fs::write(world.path("unknown-field.toml"), "learning_rate = 3e-3\n").unwrap();
    std::fs::write(world.path("wrong-type.json"), r#"{"lr": "fast"}"#).unwrap();
    std::fs::write(world.path("bad-optimizer.toml"), "[optimizer]\nkind = \"sgd\"\n").unwrap();
    std::fs::write(world.path("a-file"), "not a directory").unwrap();
    let mut preset: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&world.config).unwrap()).unwrap();
    (preset["model"], preset["preset"]) = (serde_json::Value::Null, "gpt-9".into());
    std::fs::write(world.path("preset.json"), preset.to_string()).unwrap();
    // Prepared token files that are damaged: a copy of the run's data, truncated / out of range.
    for (name, damage) in [("truncated-data", &[1u8, 0, 2][..]), ("range-data", &[0xff, 0xff, 0xff, 0xff][..])] {
        copy_dir(&world.path("data"), &world.path(name));
        let bin = std::fs::read_dir(world.path(name)).unwrap().flatten().map(|e| e.path()).find(|d| d.is_dir()).unwrap().join("train.bin");
        std::fs::write(bin, damage).unwrap();
    }
    // A copy of the finished run whose every checkpoint is damaged.
    copy_dir(&world.path("runs/keep"), &world.path("runs/broken"));
    for checkpoint in std::fs::read_dir(world.path("runs/broken/checkpoints")).unwrap().flatten().filter(|e| e.path().is_dir()) {
        std::fs::write(checkpoint.path().join("model.safetensors"), b"").unwrap();
    }

    let cases = vec![
        // Flags.
        case("NaN learning rate", &["--lr", "NaN"], &["--lr", "finite"]),
        case("infinite learning rate", &["--lr=inf"], &["--lr", "finite"]),
        case("negative learning rate", &["--lr=-1"], &["lr", "-1", "> 0"]),
        case("learning rate not a number", &["--lr", "fast"], &["--lr", "fast"]),
        case("zero steps", &["--steps", "0"], &["max_steps", "0"]),
        case("negative steps", &["--steps=-3"], &["--steps", "-3"]),
        case("zero batch", &["--batch-size", "0"], &["batch_size", "0"]),
        case("unknown backend", &["--backend", "metal"], &["metal", "flex"]),
        case("backend not compiled", &["--backend", "cuda"], &["cuda", "--features cuda"]),
        case("unknown optimizer", &["--optimizer", "sgd"], &["sgd", "sophiag"]),
        case("float16", &["--precision", "f16"], &["f16", "loss scaling"]),
        case("unknown precision", &["--precision", "fp8"], &["fp8", "bf16"]),
        case("unknown model preset", &["--config", &p("preset.json")], &["gpt-9", "unknown model preset"]),
        case("unknown hyperparameter preset", &["--hyperparameters", "nope"], &["nope", "paper-125m-sophiag"]),
        case("negative rho", &["--set", "rho=-1"], &["rho", "-1", "SophiaG"]),
        case("NaN rho", &["--set", "rho=nan"], &["rho", "finite"]),
        case("unknown setting", &["--set", "nosuch=1"], &["nosuch", "not a setting"]),
        case("--set without value", &["--set", "lr"], &["KEY=VALUE", "lr"]),
        case("AdamW beta2 above 1", &["--optimizer", "adamw", "--set", "beta2=1.5"], &["AdamW", "beta2", "1.5", "[0, 1)"]),
        case("negative weight decay", &["--optimizer", "adamw", "--set", "weight_decay=-1"], &["weight_decay", "-1"]),
        case("Lion beta2 of 2", &["--optimizer", "lion", "--set", "beta2=2"], &["Lion", "beta2", "2"]),
        case("a setting Muon does not have", &["--optimizer", "muon", "--set", "beta1=7"], &["beta1", "not a setting of muon", "momentum"]),
        case("rho for AdamW", &["--optimizer", "adamw", "--set", "rho=0.03"], &["rho", "not a setting of adamw"]),
        case("bad setting with --print-config", &["--set", "rho=-1", "--print-config"], &["rho", "-1"]),
        case("context longer than the model's", &["--block-size", "4096"], &["block_size", "4096", "must not exceed"]),
        case("warmup as long as the run", &["--set", "warmup_steps=4"], &["warmup_steps", "max_steps"]),
        case("validation fraction above 1", &["--set", "val_fraction=1.5"], &["val_fraction", "1.5"]),
        case("unknown decay selection", &["--set", "decay=sometimes"], &["decay", "sometimes"]),
        case("run name with a slash", &["--name", "a/b"], &["name", "a/b"]),
        case("dropout of 1", &["--set", "dropout=1"], &["dropout", "[0, 1)"]),
        case("negative gradient clip", &["--set", "grad_clip=-1"], &["grad_clip", "-1"]),
        case("negative Hessian interval", &["--set", "hessian_interval=-2"], &["hessian_interval", "-2"]),
        // Config files.
        case("missing config file", &["--config", &p("nowhere.toml")], &["nowhere.toml", "No such file"]),
        case("malformed TOML", &["--config", &p("broken.toml")], &["broken.toml"]),
        case("unknown field in a config", &["--config", &p("unknown-field.toml")], &["learning_rate", "unknown field"]),
        case("wrong type in a config", &["--config", &p("wrong-type.json")], &["wrong-type.json", "invalid type"]),
        case("unknown optimizer in a config", &["--config", &p("bad-optimizer.toml")], &["sgd", "unknown variant"]),
        // Corpora.
        case("corpus path that does not exist", &["--data", &p("nope/corpus.txt")], &["no such file or directory", "nope/corpus.txt"]),
        case("unknown corpus name", &["--data", "wikipedia"], &["unknown corpus", "wikipedia", "shakespeare"]),
        case("empty corpus", &["--data", &p("empty.txt")], &["empty"]),
        case("corpus that is not UTF-8", &["--data", &p("binary.txt")], &["not UTF-8", "binary.txt"]),
        case("corpus too short", &["--data", &p("short.txt")], &["too few", "block_size"]),
        // Token files.
        case("truncated token file", &["--set", &format!("data_dir={}", p("truncated-data")), "--name", "t1"], &["train.bin", "truncated"]),
        case("token id out of range", &["--set", &format!("data_dir={}", p("range-data")), "--name", "t2"], &["train.bin", "outside the vocabulary"]),
        // Checkpoints.
        case("resume without a run", &["--resume", "--name", "never-ran"], &["no checkpoint to resume from"]),
        case("a run that exists", &["--name", "keep"], &["already holds a run", "--resume"]),
        case("resume with another optimizer", &["--resume", "--name", "keep", "--optimizer", "adamw"], &["different run", "optimizer"]),
        case("resume on another corpus", &["--resume", "--name", "keep", "--data", &p("other.txt")], &["different run", "corpus"]),
        case("every checkpoint damaged", &["--resume", "--name", "broken"], &["can be trusted", "model.safetensors"]),
        // Output paths.
        case("run directory under a file", &["--set", &format!("out_dir={}", p("a-file")), "--name", "x"], &["a-file"]),
        case("data directory under a file", &["--set", &format!("data_dir={}", p("a-file")), "--name", "y"], &["a-file"]),
    ];
    assert!(cases.len() >= 40, "the suite keeps at least 40 cases");

    let before = world.snapshot();
    let mut failures = Vec::new();
    for case in &cases {
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let output = world.xtask(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let problems: Vec<String> =
            [(output.status.success(), "exited successfully".to_string()), (output.status.code() == Some(101) || stderr.contains("panicked"), "panicked".to_string())]
                .into_iter()
                .filter(|(bad, _)| *bad)
                .map(|(_, what)| what)
                .chain(case.expect.iter().filter(|word| !stderr.contains(*word)).map(|word| format!("does not say `{word}`")))
                .collect();
        if !problems.is_empty() {
            failures.push(format!("{}: {} — stderr: {}", case.name, problems.join(", "), stderr.trim()));
        }
    }
    let after = world.snapshot();
    for (path, bytes) in &before {
        if after.get(path) != Some(bytes) {
            failures.push(format!("{} was lost or changed", path.display()));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    std::fs::remove_dir_all(&world.dir).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
