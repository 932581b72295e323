//! `cargo xtask train`: train a GPT-2 on a real corpus (Shakespeare by default) on the chosen
//! backend, with progress, evaluation, samples, checkpoints, plots and a summary.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use sophia_gpt2::Precision;
use sophia_train::Backend;
use sophia_train::data::TokenizerKind;
use sophia_train::train::{OptimizerKind, RunOptions, TrainConfig, train};

use crate::{finite, named};

#[derive(Args, Debug, Default)]
pub(crate) struct TrainArgs {
    /// A JSON or TOML file with any subset of the run's settings (the rest keep their defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A named hyperparameter preset, e.g. `paper-125m-sophiag` or `cpu-adamw`.
    #[arg(long)]
    pub(crate) hyperparameters: Option<String>,
    /// Backend.
    #[arg(long, value_parser = named::<Backend>(Backend::ALL.iter().map(|b| b.name())))]
    backend: Option<Backend>,
    /// Precision of the matrix products: f32, or bf16 (mixed precision: f32 weights, gradients
    /// and optimizer state).
    #[arg(long, value_parser = named::<Precision>(Precision::ALL.iter().map(|p| p.name())))]
    precision: Option<Precision>,
    /// Optimizer (with its default hyperparameters, unless the config already chose it).
    #[arg(long, value_parser = named::<OptimizerKind>(OptimizerKind::ALL.iter().map(|k| k.name())))]
    pub(crate) optimizer: Option<OptimizerKind>,
    /// Model preset: char (the default: nanoGPT's character-level model), or with the GPT-2 BPE
    /// vocabulary cpu-1m, cpu-3m, cpu-10m, cpu-30m, gpt2, gpt2-medium, gpt2-large, gpt2-xl. The
    /// tokenizer follows the preset unless --tokenizer says otherwise.
    #[arg(long)]
    preset: Option<String>,
    /// Corpus: shakespeare, sotu, moby-dick, several joined with `+`, or a path to a UTF-8 text
    /// file or folder.
    #[arg(long)]
    data: Option<String>,
    /// Tokenizer: char (one token per character of the corpus) or gpt2 (the GPT-2 BPE).
    #[arg(long, value_parser = named::<TokenizerKind>(TokenizerKind::ALL.iter().map(|k| k.name())))]
    tokenizer: Option<TokenizerKind>,
    /// Run name (the run directory is runs/NAME).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Optimizer steps.
    #[arg(long)]
    pub(crate) steps: Option<usize>,
    /// Peak learning rate (the schedule decays to a tenth of it unless `--set min_lr=...`).
    #[arg(long, value_parser = finite)]
    pub(crate) lr: Option<f64>,
    /// Sequences per micro-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Context length.
    #[arg(long)]
    block_size: Option<usize>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Any other setting, as `key=value`, e.g. `--set rho=0.03 --set decay=matrices`: a setting
    /// of the run, or of its optimizer (applied after the flags above, so after --optimizer).
    /// Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Continue the run from its latest checkpoint that verifies.
    #[arg(long)]
    pub(crate) resume: bool,
    /// Print the effective (validated) config and exit.
    #[arg(long)]
    pub(crate) print_config: bool,
}

/// The effective config: defaults, then the file, the preset, the flags and `--set`; validated.
pub(crate) fn config(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let mut config = match &args.config {
        Some(path) => TrainConfig::from_file(path)?,
        None => TrainConfig::default(),
    };
    if let Some(name) = &args.hyperparameters {
        config = config.with_hyperparameters(name)?;
    }
    if let Some(v) = args.backend {
        config.backend = v;
    }
    if let Some(v) = args.precision {
        config.precision = v;
    }
    if let Some(v) = args.optimizer {
        config.set_optimizer(v);
    }
    if let Some(v) = &args.preset {
        config.preset = v.clone();
    }
    if let Some(v) = &args.data {
        config.data = v.clone();
    }
    if let Some(v) = args.tokenizer {
        config.tokenizer = Some(v);
    }
    if let Some(v) = &args.name {
        config.name = v.clone();
    }
    if let Some(v) = args.steps {
        config.max_steps = v;
    }
    if let Some(v) = args.lr {
        // The schedule's floor follows the peak (a tenth of it, as in nanoGPT) unless
        // `--set min_lr=...` says otherwise.
        config.lr = v;
        config.min_lr = v / 10.0;
    }
    if let Some(v) = args.batch_size {
        config.batch_size = v;
    }
    if let Some(v) = args.grad_accum {
        config.grad_accum = v;
    }
    if let Some(v) = args.block_size {
        config.block_size = Some(v);
    }
    if let Some(v) = args.seed {
        config.seed = v;
    }
    for item in &args.set {
        let (key, value) = item.split_once('=').with_context(|| format!("--set expects KEY=VALUE, got `{item}`"))?;
        config.set(key, value).context("--set")?;
    }
    config.validate()?;
    config.model_config()?;
    Ok(config)
}

pub(crate) fn run(args: TrainArgs) -> anyhow::Result<()> {
    let config = config(&args)?;
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&config.resolved())?);
        return Ok(());
    }
    let options = RunOptions { resume: args.resume, progress_bar: std::io::IsTerminal::is_terminal(&std::io::stderr()), stop_after: None };
    let summary = match train(&config, &options) {
        Ok(summary) => summary,
        Err(error) => bail!("{error}"),
    };
    println!();
    println!("run            {}", summary.run_dir.display());
    println!("optimizer      {} ({} parameters)", summary.optimizer, summary.parameters);
    println!("steps          {} ({} tokens in {:.0} s, {:.0} tokens/s)", summary.steps, summary.tokens, summary.seconds, summary.tokens_per_sec);
    println!("val loss       {:.4} (best {:.4}; unigram baseline {:.4})", summary.final_val_loss, summary.best_val_loss, summary.unigram_val_loss);
    let outside = summary.seconds_outside_steps();
    println!(
        "time           steps {:.1} s, evaluations {:.1} s, samples {:.1} s, checkpoints {:.1} s",
        summary.seconds - outside.iter().sum::<f64>(),
        outside[0],
        outside[1],
        outside[2]
    );
    if summary.refreshes > 0 {
        println!(
            "hessian        {} refreshes, {:.1}% of wall time, final win rate {}",
            summary.refreshes,
            100.0 * summary.hessian_time_fraction,
            summary.final_win_rate.map_or("-".into(), |w| format!("{w:.3}"))
        );
    }
    if config.plots {
        println!("plots          {}", summary.run_dir.join("training.png").display());
    }
    println!("model          {}", summary.run_dir.join("model.safetensors").display());
    Ok(())
}
