//! Text generation: temperature and top-k sampling, one token at a time.

use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::ModelError;
use crate::model::Gpt2;

/// How to sample a continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Maximum number of tokens to add.
    pub max_new_tokens: usize,
    /// Softmax temperature (> 0); lower is more conservative.
    pub temperature: f64,
    /// Sample only among the `top_k` most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Stop after emitting this token (e.g. `<|endoftext|>`, 50256).
    pub stop_token: Option<u32>,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_new_tokens: 100, temperature: 0.8, top_k: Some(200), stop_token: None, seed: 0 }
    }
}

impl Gpt2 {
    /// Continue `prompt` (token ids, at most `block_size`) by `max_new_tokens` tokens, or until
    /// the stop token. Each token is predicted from the last `block_size` tokens. Returns only the
    /// new tokens.
    pub fn generate(&self, prompt: &[u32], options: &GenerateOptions) -> Result<Vec<u32>, ModelError> {
        let config = self.config();
        if prompt.is_empty() {
            return Err(ModelError::invalid("prompt", "[]", "generation needs a prompt of at least one token"));
        }
        if !(options.temperature > 0.0 && options.temperature.is_finite()) {
            return Err(ModelError::invalid("temperature", options.temperature, "must be a finite number > 0"));
        }
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= config.vocab_size) {
            return Err(ModelError::TokenOutOfRange { id: id as i64, vocab_size: config.vocab_size });
        }
        if prompt.len() > config.block_size {
            return Err(ModelError::SequenceTooLong { len: prompt.len(), block_size: config.block_size });
        }
        let device = self.wte.weight.val().device();
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let mut tokens: Vec<u32> = prompt.to_vec();
        let mut new = Vec::new();
        while new.len() < options.max_new_tokens {
            // The model sees at most its context: the last `block_size` tokens (nanoGPT).
            let context = &tokens[tokens.len().saturating_sub(config.block_size)..];
            let ids: Vec<i64> = context.iter().map(|&t| t as i64).collect();
            let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, context.len()]), &device);
            let logits = self.forward(input)?;
            let last = logits.narrow(1, context.len() - 1, 1).reshape([config.vocab_size]);
            let logits: Vec<f32> = last.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 logits");
            let token = sample(&logits, options.temperature, options.top_k, &mut rng);
            tokens.push(token);
            new.push(token);
            if Some(token) == options.stop_token {
                break;
            }
        }
        Ok(new)
    }
}

/// Draw one index from `softmax(logits / temperature)` restricted to the `top_k` largest.
pub fn sample(logits: &[f32], temperature: f64, top_k: Option<usize>, rng: &mut impl Rng) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(top_k.unwrap_or(logits.len()).clamp(1, logits.len()));
    let max = logits[order[0]] as f64;
    let weights: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - max) / temperature).exp()).collect();
    let mut target = rng.random::<f64>() * weights.iter().sum::<f64>();
    for (&i, w) in order.iter().zip(&weights) {
        if target < *w {
            return i as u32;
        }
        target -= w;
    }
    order[order.len() - 1] as u32
}
