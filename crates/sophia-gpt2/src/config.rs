//! GPT-2 model configuration, presets and validation.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// The MLP non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// GPT-2's tanh-approximate GELU (`gelu_new`).
    #[default]
    GeluTanh,
    /// `relu(x)²` (Primer; modded-nanogpt).
    ReluSquared,
}

/// Everything that defines a GPT-2 model's shape.
///
/// The defaults of the modern options keep the model exactly GPT-2, so Hugging Face weights
/// load and give the same logits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpt2Config {
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Number of query heads.
    pub n_head: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Maximum sequence length (`n_positions`).
    pub block_size: usize,
    /// Vocabulary size (50257 for the GPT-2 BPE; nanoGPT pads to 50304 for speed).
    pub vocab_size: usize,
    /// Dropout probability of embeddings, attention weights and residual branches.
    #[serde(default)]
    pub dropout: f64,
    /// Biases in linear layers and layer norms (GPT-2: true).
    #[serde(default = "yes")]
    pub bias: bool,
    /// LayerNorm epsilon (GPT-2: 1e-5).
    #[serde(default = "layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    /// Number of key/value heads for grouped-query (`1` = multi-query) attention; `None`
    /// means one per query head, as GPT-2.
    #[serde(default)]
    pub n_kv_head: Option<usize>,
    /// Rotary position embeddings on queries and keys instead of learned positions (`wpe`).
    #[serde(default)]
    pub rope: bool,
    /// Base of the rotary frequencies.
    #[serde(default = "rope_theta")]
    pub rope_theta: f64,
    /// RMS-normalise queries and keys per head before the dot product (QK-norm).
    #[serde(default)]
    pub qk_norm: bool,
    /// MLP non-linearity.
    #[serde(default)]
    pub activation: Activation,
    /// A separate LM head instead of the transposed token embedding.
    #[serde(default)]
    pub untied_head: bool,
    /// Initialise the output projections of attention and MLP to zero.
    #[serde(default)]
    pub zero_init_projections: bool,
    /// Cap logits smoothly at `±cap` with `cap · tanh(logits / cap)`.
    #[serde(default)]
    pub logit_softcap: Option<f64>,
}

fn yes() -> bool {
    true
}
fn layer_norm_epsilon() -> f64 {
    1e-5
}
fn rope_theta() -> f64 {
    10_000.0
}

/// GPT-2 BPE vocabulary size.
pub const GPT2_VOCAB_SIZE: usize = 50_257;

/// The vocabulary size of the `char` preset before a corpus sets it (printable ASCII and a
/// newline, about the size of a character vocabulary of English text).
pub const CHAR_VOCAB_PLACEHOLDER: usize = 96;

/// Named model sizes: the four GPT-2 checkpoints, small CPU presets with the GPT-2 vocabulary,
/// and nanoGPT's character-level model.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "char",
        "nanoGPT's character-level Shakespeare model on a laptop, the default training run: 4 layers, 4 heads, 128 wide, context 64, about 0.8M parameters (the vocabulary comes from the corpus; 96 characters stand in for it until then)",
    ),
    ("gpt2", "GPT-2 small, 124M parameters (12 layers, 12 heads, 768 wide)"),
    ("gpt2-medium", "GPT-2 medium, 355M (24 layers, 16 heads, 1024 wide)"),
    ("gpt2-large", "GPT-2 large, 774M (36 layers, 20 heads, 1280 wide)"),
    ("gpt2-xl", "GPT-2 XL, 1.56B (48 layers, 25 heads, 1600 wide)"),
    ("cpu-30m", "about 30M parameters with the GPT-2 vocabulary (6 layers, 8 heads, 384 wide)"),
    ("cpu-3m", "about 3.4M parameters with the GPT-2 vocabulary (4 layers, 4 heads, 64 wide)"),
    ("cpu-10m", "about 10M parameters with the GPT-2 vocabulary (4 layers, 4 heads, 160 wide)"),
    ("cpu-1m", "about 1M parameters with the GPT-2 vocabulary (2 layers, 2 heads, 16 wide)"),
];

impl Gpt2Config {
    /// A plain GPT-2 of the given shape (GPT-2 defaults for everything else).
    pub fn new(n_layer: usize, n_head: usize, n_embd: usize, block_size: usize, vocab_size: usize) -> Self {
        Self {
            n_layer,
            n_head,
            n_embd,
            block_size,
            vocab_size,
            dropout: 0.0,
            bias: true,
            layer_norm_epsilon: 1e-5,
            n_kv_head: None,
            rope: false,
            rope_theta: 10_000.0,
            qk_norm: false,
            activation: Activation::GeluTanh,
            untied_head: false,
            zero_init_projections: false,
            logit_softcap: None,
        }
    }

    /// A named preset (see [`PRESETS`]), with the GPT-2 vocabulary.
    pub fn preset(name: &str) -> Result<Self, ModelError> {
        let (n_layer, n_head, n_embd, block_size) = match name {
            "gpt2" => (12, 12, 768, 1024),
            "gpt2-medium" => (24, 16, 1024, 1024),
            "gpt2-large" => (36, 20, 1280, 1024),
            "gpt2-xl" => (48, 25, 1600, 1024),
            "cpu-30m" => (6, 8, 384, 256),
            "cpu-10m" => (4, 4, 160, 256),
            "cpu-3m" => (4, 4, 64, 128),
            "cpu-1m" => (2, 2, 16, 128),
            "char" => return Ok(Self::new(4, 4, 128, 64, CHAR_VOCAB_PLACEHOLDER)),
            _ => {
                return Err(ModelError::UnknownPreset { name: name.to_string(), known: PRESETS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ") });
            }
        };
        Ok(Self::new(n_layer, n_head, n_embd, block_size, GPT2_VOCAB_SIZE))
    }

    /// Read a Hugging Face `config.json` of a GPT-2 model.
    pub fn from_hf_json(text: &str) -> Result<Self, ModelError> {
        #[derive(Deserialize)]
        struct Hf {
            n_layer: usize,
            n_head: usize,
            n_embd: usize,
            n_positions: usize,
            vocab_size: usize,
            #[serde(default = "layer_norm_epsilon")]
            layer_norm_epsilon: f64,
            #[serde(default)]
            resid_pdrop: f64,
            #[serde(default = "gelu_new")]
            activation_function: String,
            #[serde(default = "yes")]
            tie_word_embeddings: bool,
        }
        fn gelu_new() -> String {
            "gelu_new".into()
        }
        let hf: Hf = serde_json::from_str(text).map_err(|e| ModelError::NotGpt2Config(e.to_string()))?;
        if hf.activation_function != "gelu_new" {
            return Err(ModelError::NotGpt2Config(format!("activation_function `{}` is not supported (GPT-2 uses `gelu_new`)", hf.activation_function)));
        }
        let config = Self {
            layer_norm_epsilon: hf.layer_norm_epsilon,
            dropout: hf.resid_pdrop,
            untied_head: !hf.tie_word_embeddings,
            ..Self::new(hf.n_layer, hf.n_head, hf.n_embd, hf.n_positions, hf.vocab_size)
        };
        config.validate()?;
        Ok(config)
    }

    /// Number of key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Check that the shape is consistent; the error says what to change.
    pub fn validate(&self) -> Result<(), ModelError> {
        for (name, value) in
            [("n_layer", self.n_layer), ("n_head", self.n_head), ("n_embd", self.n_embd), ("block_size", self.block_size), ("vocab_size", self.vocab_size)]
        {
            if value == 0 {
                return Err(ModelError::invalid(name, value, "must be at least 1"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(ModelError::invalid("n_embd", self.n_embd, format!("must be divisible by n_head ({}); pick n_head among the divisors of n_embd", self.n_head)));
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.n_head.is_multiple_of(kv) {
            return Err(ModelError::invalid("n_kv_head", kv, format!("must divide n_head ({}): each key/value head serves a whole group of query heads", self.n_head)));
        }
        if self.rope && !self.head_dim().is_multiple_of(2) {
            return Err(ModelError::invalid("n_embd", self.n_embd, format!("rotary embeddings need an even head size (n_embd / n_head), got {}", self.head_dim())));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::invalid("dropout", self.dropout, "must be in [0, 1)"));
        }
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite()) {
            return Err(ModelError::invalid("layer_norm_epsilon", self.layer_norm_epsilon, "must be a finite number > 0"));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(ModelError::invalid("rope_theta", self.rope_theta, "must be a finite number > 0"));
        }
        if let Some(cap) = self.logit_softcap
            && !(cap > 0.0 && cap.is_finite())
        {
            return Err(ModelError::invalid("logit_softcap", cap, "must be a finite number > 0"));
        }
        Ok(())
    }

    /// Number of parameters the model has (the tied head counted once, as Hugging Face does).
    pub fn num_params(&self) -> usize {
        let (c, v, l) = (self.n_embd, self.vocab_size, self.n_layer);
        let b = usize::from(self.bias);
        let qkv_out = (self.n_head + 2 * self.kv_heads()) * self.head_dim();
        let layer_norm = c + b * c;
        let block = 2 * layer_norm + c * qkv_out + b * qkv_out + c * c + b * c + c * 4 * c + b * 4 * c + 4 * c * c + b * c;
        let positions = if self.rope { 0 } else { self.block_size * c };
        let head = if self.untied_head { v * c } else { 0 };
        v * c + positions + l * block + layer_norm + head
    }
}
