//! The GPT-2 byte-pair encoding (OpenAI's `r50k_base` ranks, shipped inside `tiktoken-rs`, so
//! nothing is downloaded at run time).

use tiktoken_rs::CoreBPE;

use super::DataError;

/// `<|endoftext|>`, GPT-2's document separator.
pub const END_OF_TEXT: u32 = 50_256;

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
