//! Tokenizers: the GPT-2 byte-pair encoding (OpenAI's `r50k_base` ranks, shipped inside
//! `tiktoken-rs`, so nothing is downloaded at run time) and characters (nanoGPT's
//! `shakespeare_char`: one token per distinct character of the corpus).
//!
//! A character vocabulary is derived from the corpus and stored with the prepared data
//! (`meta.json`), in every checkpoint and beside the exported model (`tokenizer.json`), so
//! generation and resumption decode with the vocabulary the model was trained on.

use serde::{Deserialize, Serialize};
use sophia_gpt2::GPT2_VOCAB_SIZE;
use tiktoken_rs::CoreBPE;

use super::DataError;

/// `<|endoftext|>`, GPT-2's document separator.
pub const END_OF_TEXT: u32 = 50_256;

/// Which tokenizer a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// GPT-2's byte-pair encoding, 50257 tokens.
    #[default]
    Gpt2,
    /// One token per distinct character of the corpus.
    Char,
}

impl TokenizerKind {
    /// Every tokenizer, in the order the command line lists them.
    pub const ALL: &[Self] = &[Self::Char, Self::Gpt2];

    /// The name (`--tokenizer NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Gpt2 => "gpt2",
            Self::Char => "char",
        }
    }
}

impl std::str::FromStr for TokenizerKind {
    type Err = DataError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let lower = name.to_ascii_lowercase();
        Self::ALL.iter().copied().find(|k| k.name() == lower).ok_or_else(|| DataError::UnknownTokenizer(name.to_string()))
    }
}

impl std::fmt::Display for TokenizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A tokenizer and, for characters, its vocabulary: what a run must keep to decode its model's
/// output (`tokenizer.json`, checkpoints, `meta.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerSpec {
    /// The tokenizer.
    pub kind: TokenizerKind,
    /// The characters of a character vocabulary, in token order (`None` for GPT-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<String>,
}

/// A ready tokenizer.
pub enum Tokenizer {
    /// GPT-2 BPE.
    Gpt2(Gpt2Tokenizer),
    /// Characters.
    Char(CharTokenizer),
}

impl Tokenizer {
    /// The tokenizer `spec` describes.
    pub fn from_spec(spec: &TokenizerSpec) -> Result<Self, DataError> {
        match (spec.kind, &spec.vocab) {
            (TokenizerKind::Gpt2, _) => Ok(Self::Gpt2(Gpt2Tokenizer::new())),
            (TokenizerKind::Char, Some(vocab)) => Ok(Self::Char(CharTokenizer::from_vocab(vocab)?)),
            (TokenizerKind::Char, None) => Err(DataError::Tokenizer("a character tokenizer needs its vocabulary".into())),
        }
    }

    /// What to store to rebuild this tokenizer.
    pub fn spec(&self) -> TokenizerSpec {
        match self {
            Self::Gpt2(_) => TokenizerSpec { kind: TokenizerKind::Gpt2, vocab: None },
            Self::Char(chars) => TokenizerSpec { kind: TokenizerKind::Char, vocab: Some(chars.vocab()) },
        }
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Gpt2(_) => GPT2_VOCAB_SIZE,
            Self::Char(chars) => chars.len(),
        }
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match self {
            Self::Gpt2(bpe) => Ok(bpe.encode(text)),
            Self::Char(chars) => chars.encode(text),
        }
    }

    /// The text of `tokens`.
    pub fn decode(&self, tokens: &[u32]) -> Result<String, DataError> {
        match self {
            Self::Gpt2(bpe) => bpe.decode(tokens),
            Self::Char(chars) => chars.decode(tokens),
        }
    }

    /// The tokens between two documents: `<|endoftext|>` for GPT-2, a newline for characters.
    pub fn document_separator(&self) -> Vec<u32> {
        match self {
            Self::Gpt2(_) => vec![END_OF_TEXT],
            Self::Char(chars) => chars.encode("\n").unwrap_or_default(),
        }
    }
}

/// GPT-2's tokenizer: "Hello world" encodes to `[15496, 995]`.
pub struct Gpt2Tokenizer {
    bpe: &'static CoreBPE,
}

impl Gpt2Tokenizer {
    /// The r50k (GPT-2) encoding.
    pub fn new() -> Self {
        Self { bpe: tiktoken_rs::r50k_base_singleton() }
    }

    /// Token ids of `text`; special tokens in the text are treated as ordinary text.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }

    /// The text of `tokens`; byte sequences that are not UTF-8 (a character split across a
    /// sample's end) are replaced with U+FFFD.
    pub fn decode(&self, tokens: &[u32]) -> Result<String, DataError> {
        let bytes = self.bpe.decode_bytes(tokens).map_err(|e| DataError::Tokenizer(format!("cannot decode: {e:?}")))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

impl Default for Gpt2Tokenizer {
    fn default() -> Self {
        Self::new()
    }
}

/// One token per character, the characters in sorted order (nanoGPT's `shakespeare_char`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharTokenizer {
    chars: Vec<char>,
}

impl CharTokenizer {
    /// The sorted distinct characters of `texts`.
    pub fn from_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut chars: Vec<char> = texts.into_iter().flat_map(str::chars).collect::<std::collections::BTreeSet<char>>().into_iter().collect();
        if !chars.contains(&'\n') {
            // The document separator is always in the vocabulary.
            chars.push('\n');
            chars.sort_unstable();
        }
        Self { chars }
    }

    /// The vocabulary `vocab` (its characters in token order), as stored by [`vocab`](Self::vocab).
    pub fn from_vocab(vocab: &str) -> Result<Self, DataError> {
        let chars: Vec<char> = vocab.chars().collect();
        let sorted = chars.windows(2).all(|w| w[0] < w[1]);
        if chars.is_empty() || !sorted || chars.len() > u16::MAX as usize {
            return Err(DataError::Tokenizer(format!("`{vocab}` is not a character vocabulary (distinct characters in sorted order)")));
        }
        Ok(Self { chars })
    }

    /// The characters in token order, as one string.
    pub fn vocab(&self) -> String {
        self.chars.iter().collect()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Whether the vocabulary is empty (never, for a tokenizer built from text).
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// Token ids of `text`; a character outside the vocabulary is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        text.chars()
            .enumerate()
            .map(|(position, c)| self.chars.binary_search(&c).map(|i| i as u32).map_err(|_| DataError::UnknownCharacter { character: c, position }))
            .collect()
    }

    /// The text of `tokens`; an id outside the vocabulary is an error.
    pub fn decode(&self, tokens: &[u32]) -> Result<String, DataError> {
        tokens
            .iter()
            .map(|&t| {
                self.chars.get(t as usize).copied().ok_or_else(|| DataError::Tokenizer(format!("token {t} is outside the vocabulary of {} characters", self.chars.len())))
            })
            .collect()
    }
}
