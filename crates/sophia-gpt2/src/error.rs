//! Errors of the model, its weights and its inputs.

/// Something about a model, its weights or its input is wrong; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A setting of the model or of generation is out of its range.
    #[error("invalid setting: `{field}` = {value}: {requirement}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// What it must satisfy, and how to fix it.
        requirement: String,
    },
    /// A Hugging Face `config.json` that does not describe a supported GPT-2.
    #[error("not a supported GPT-2 config.json: {0}")]
    NotGpt2Config(String),
    /// A precision name that is unknown or not supported.
    #[error("precision `{name}`: {reason}")]
    Precision {
        /// The name asked for.
        name: String,
        /// Why it cannot be used, and what to use instead.
        reason: String,
    },
    /// A preset name that does not exist.
    #[error("unknown model preset `{name}`; known presets: {known}")]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// The names that exist.
        known: String,
    },
    /// The input sequence is longer than the model's context.
    #[error("sequence of {len} tokens is longer than block_size {block_size}; crop the input or use a model with a larger block_size")]
    SequenceTooLong {
        /// Input length.
        len: usize,
        /// The model's maximum.
        block_size: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    TokenOutOfRange {
        /// The offending id.
        id: i64,
        /// Vocabulary size.
        vocab_size: usize,
    },
    /// A weight file could not be read or written.
    #[error("weight file {path}: {reason}")]
    WeightFile {
        /// File path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A tensor the model needs is missing from a weight file.
    #[error("tensor `{name}` is missing from the weights (looked for `{name}` and `transformer.{name}`); is this a GPT-2 checkpoint of the same config?")]
    MissingTensor {
        /// Hugging Face name of the tensor.
        name: String,
    },
    /// A tensor of a weight file has the wrong shape.
    #[error("tensor `{name}` has shape {found:?} in the weights but the model expects {expected:?}; check n_layer/n_head/n_embd/vocab_size/block_size")]
    ShapeMismatch {
        /// Hugging Face name of the tensor.
        name: String,
        /// Shape the model expects.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A tensor of a weight file has an unsupported dtype.
    #[error("tensor `{name}` has dtype {dtype}; only F32, F16 and BF16 weights are supported")]
    UnsupportedDtype {
        /// Hugging Face name of the tensor.
        name: String,
        /// The dtype in the file.
        dtype: String,
    },
}

impl ModelError {
    /// `field` = `value` does not satisfy `requirement`.
    pub(crate) fn invalid(field: &'static str, value: impl std::fmt::Display, requirement: impl Into<String>) -> Self {
        Self::Invalid { field, value: value.to_string(), requirement: requirement.into() }
    }
}
