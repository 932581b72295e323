//! Memory-mapped token files and seeded random-window batches.

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::DataError;

/// A nanoGPT token file: little-endian `u16` token ids, memory-mapped.
pub struct TokenFile {
    path: PathBuf,
    map: Mmap,
}

impl TokenFile {
    /// Open and validate `path`: an even number of bytes and every id below `vocab_size`.
    pub fn open(path: impl AsRef<Path>, vocab_size: usize) -> Result<Self, DataError> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(DataError::io(&path))?;
        // SAFETY: the file is only read; token files are written once, atomically, and never
        // modified in place, so the mapping does not change under us.
        let map = unsafe { Mmap::map(&file) }.map_err(DataError::io(&path))?;
        let corrupt = |reason: String| DataError::CorruptTokens { path: path.clone(), reason };
        if map.len() % 2 != 0 {
            return Err(corrupt(format!("{} bytes is not a whole number of u16 tokens (truncated?)", map.len())));
        }
        let tokens = Self { path: path.clone(), map };
        if let Some((i, id)) = (0..tokens.len()).map(|i| (i, tokens.get(i))).find(|&(_, id)| id as usize >= vocab_size) {
            return Err(corrupt(format!("token {i} is {id}, outside the vocabulary of {vocab_size}")));
        }
        Ok(tokens)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.map.len() / 2
    }

    /// Whether the file holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Token `i`.
    pub fn get(&self, i: usize) -> u16 {
        u16::from_le_bytes([self.map[2 * i], self.map[2 * i + 1]])
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One batch: `inputs[b, t] = tokens[o_b + t]`, `targets[b, t] = tokens[o_b + t + 1]`, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Sequences in the batch.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub block_size: usize,
    /// Input ids, `batch_size × block_size`.
    pub inputs: Vec<i64>,
    /// Next-token targets, `batch_size × block_size`.
    pub targets: Vec<i64>,
}

impl Batch {
    /// The first `rows` sequences (all of them if there are fewer).
    pub fn first(&self, rows: usize) -> Batch {
        let rows = rows.min(self.batch_size);
        let tokens = rows * self.block_size;
        Batch { batch_size: rows, block_size: self.block_size, inputs: self.inputs[..tokens].to_vec(), targets: self.targets[..tokens].to_vec() }
    }

    /// The batch's sequences in `shards` consecutive groups whose sizes differ by at most one
    /// (shard `i` holds sequences `i·n/shards .. (i+1)·n/shards`), for `1 ≤ shards ≤ n`.
    pub fn split(&self, shards: usize) -> Vec<Batch> {
        assert!((1..=self.batch_size).contains(&shards), "{shards} shards of a batch of {} sequences", self.batch_size);
        let bounds = |i: usize| i * self.batch_size / shards * self.block_size;
        (0..shards)
            .map(|i| {
                let (start, end) = (bounds(i), bounds(i + 1));
                Batch {
                    batch_size: (end - start) / self.block_size,
                    block_size: self.block_size,
                    inputs: self.inputs[start..end].to_vec(),
                    targets: self.targets[start..end].to_vec(),
                }
            })
            .collect()
    }
}

/// Draws batches of random windows. A batch is a pure function of `(seed, stream, index)`, so a
/// resumed run draws exactly what the uninterrupted run would have drawn, with no generator
/// state to save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSampler {
    seed: u64,
    batch_size: usize,
    block_size: usize,
}

impl BatchSampler {
    /// `batch_size` windows of `block_size` tokens.
    pub fn new(seed: u64, batch_size: usize, block_size: usize) -> Self {
        Self { seed, batch_size, block_size }
    }

    /// Check that `tokens` is long enough for windows of this size.
    pub fn check(&self, tokens: &TokenFile, what: &str) -> Result<(), DataError> {
        if tokens.len() < self.block_size + 1 {
            return Err(DataError::TooShort { what: what.to_string(), tokens: tokens.len(), needed: self.block_size + 1 });
        }
        Ok(())
    }

    /// Batch number `index` of `stream` (streams keep training, Hessian and evaluation batches
    /// independent). Call [`check`](Self::check) once first.
    pub fn batch(&self, tokens: &TokenFile, stream: u64, index: u64) -> Batch {
        // A 256-bit ChaCha key made of (seed, stream, index): every batch its own generator.
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&self.seed.to_le_bytes());
        key[8..16].copy_from_slice(&stream.to_le_bytes());
        key[16..24].copy_from_slice(&index.to_le_bytes());
        let mut rng = ChaCha8Rng::from_seed(key);
        let windows = tokens.len() - self.block_size;
        let mut inputs = Vec::with_capacity(self.batch_size * self.block_size);
        let mut targets = Vec::with_capacity(self.batch_size * self.block_size);
        for _ in 0..self.batch_size {
            let offset = rng.random_range(0..windows);
            inputs.extend((offset..offset + self.block_size).map(|i| tokens.get(i) as i64));
            targets.extend((offset + 1..offset + 1 + self.block_size).map(|i| tokens.get(i) as i64));
        }
        Batch { batch_size: self.batch_size, block_size: self.block_size, inputs, targets }
    }
}
