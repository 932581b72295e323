//! `cargo xtask sample`: text from the model of a finished run, with the run's own tokenizer
//! (the character vocabulary is stored beside the model), so what it writes is what the run
//! learned.

use std::path::PathBuf;

use clap::Args;
use sophia_gpt2::GenerateOptions;

use crate::finite;

#[derive(Args, Debug)]
pub(crate) struct SampleArgs {
    /// The run directory (e.g. runs/shakespeare-char).
    #[arg(long, default_value = "runs/shakespeare-char")]
    run: PathBuf,
    /// The text to continue.
    #[arg(long, default_value = "ROMEO:")]
    prompt: String,
    /// Tokens to write.
    #[arg(long, default_value_t = 500)]
    tokens: usize,
    /// Softmax temperature (lower is more conservative).
    #[arg(long, default_value_t = 0.8, value_parser = finite)]
    temperature: f64,
    /// Sample among the k most likely tokens only.
    #[arg(long, default_value_t = 200)]
    top_k: usize,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub(crate) fn run(args: SampleArgs) -> anyhow::Result<()> {
    let options = GenerateOptions { max_new_tokens: args.tokens, temperature: args.temperature, top_k: Some(args.top_k), stop_token: None, seed: args.seed };
    let text = sophia_train::train::sample_run(&args.run, &args.prompt, &options)?;
    println!("{text}");
    Ok(())
}
