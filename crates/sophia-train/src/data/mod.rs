//! The data pipeline: a real corpus from a package registry, GPT-2 BPE or character tokens in
//! nanoGPT's `train.bin` / `val.bin` format (little-endian `u16`), memory-mapped, and seeded
//! batches.
//!
//! ```text
//! corpus (package or --data path) → text → r50k BPE | chars → train.bin / val.bin + meta.json
//!   → TokenFile (memmap) → BatchSampler::batch(step) → ([B, T] inputs, [B, T] targets)
//! ```

mod batches;
mod corpus;
mod error;
mod tokenizer;

pub use batches::{Batch, BatchSampler, TokenFile};
pub use corpus::{CORPORA, Corpus, DatasetMeta, PreparedData, prepare};
pub use error::DataError;
pub use tokenizer::{CharTokenizer, END_OF_TEXT, Gpt2Tokenizer, Tokenizer, TokenizerKind, TokenizerSpec};
