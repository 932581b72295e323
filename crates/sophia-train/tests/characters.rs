//! The character tokenizer: a lossless round trip over the whole default corpus, its vocabulary
//! stored with the prepared data, in every checkpoint and beside the model, checked on resume
//! and used by generation.

use std::path::{Path, PathBuf};

use sophia_gpt2::{GenerateOptions, Gpt2Config};
use sophia_train::data::{CharTokenizer, TokenizerKind, TokenizerSpec, prepare};
use sophia_train::train::{OptimizerKind, RunOptions, TrainConfig, sample_run, train};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sophia-chars-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_whole_shakespeare_corpus_round_trips_through_its_characters() {
    let dir = scratch("round-trip");
    let root = dir.join("data");
    let prepared = prepare("shakespeare", &root, 0.1, TokenizerKind::Char, &mut |_| {}).unwrap();
    let tokenizer = prepared.tokenizer().unwrap();
    // The documents, read again from the verified package, joined by newlines.
    let gpt2 = prepare("shakespeare", &root, 0.1, TokenizerKind::Gpt2, &mut |_| {}).unwrap();
    assert_eq!(gpt2.meta.text_sha256, prepared.meta.text_sha256, "the same text");
    let (train, val) = (prepared.train().unwrap(), prepared.val().unwrap());
    let ids: Vec<u32> = (0..train.len()).map(|i| u32::from(train.get(i))).chain((0..val.len()).map(|i| u32::from(val.get(i)))).collect();
    let text = tokenizer.decode(&ids).unwrap();
    assert_eq!(text.chars().count(), prepared.meta.characters + prepared.meta.documents - 1, "every character and one separator per document boundary");
    assert_eq!(tokenizer.encode(&text).unwrap(), ids, "encode(decode(ids)) == ids");
    let distinct: std::collections::BTreeSet<char> = text.chars().collect();
    assert_eq!(prepared.meta.vocab_size, distinct.len());
    assert_eq!(prepared.meta.tokenizer.vocab.as_deref(), Some(distinct.iter().collect::<String>().as_str()), "the vocabulary is stored in meta.json");
    assert!(prepared.meta.unigram_val_loss > 2.0 && prepared.meta.unigram_val_loss < (distinct.len() as f64).ln(), "{:?}", prepared.meta);
    assert!(text.contains("ROMEO") && text.contains("To be, or not to be"), "the plays are there");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_character_vocabulary_refuses_what_it_does_not_know() {
    let tokenizer = CharTokenizer::from_texts(["abc\n"]);
    assert_eq!(tokenizer.encode("cab").unwrap(), [3, 1, 2]);
    let error = tokenizer.encode("abz").unwrap_err().to_string();
    assert!(error.contains("'z'") && error.contains("position 2"), "{error}");
    assert!(tokenizer.decode(&[9]).is_err());
    assert!(CharTokenizer::from_vocab("ba").is_err(), "a vocabulary is sorted and distinct");
    assert_eq!(CharTokenizer::from_vocab(&tokenizer.vocab()).unwrap(), tokenizer);
}

fn corpus(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text.repeat(300)).unwrap();
    path.display().to_string()
}

fn tiny(dir: &Path, data: String) -> TrainConfig {
    TrainConfig {
        name: "chars".into(),
        out_dir: dir.join("runs"),
        data,
        data_dir: dir.join("data"),
        tokenizer: Some(TokenizerKind::Char),
        preset: "char".into(),
        model: None,
        block_size: Some(16),
        optimizer: OptimizerKind::SophiaG.default_config(),
        max_steps: 4,
        warmup_steps: 1,
        batch_size: 4,
        log_interval: 1,
        eval_interval: 2,
        eval_batches: 1,
        checkpoint_interval: 2,
        sample_tokens: 20,
        plots: false,
        ..TrainConfig::default()
    }
}

#[test]
fn the_vocabulary_travels_with_checkpoints_and_the_model() {
    let dir = scratch("vocab");
    let text = "ROMEO: what light through yonder window breaks?\nJULIET: ay me.\n";
    let config = tiny(&dir, corpus(&dir, "play.txt", text));
    let summary = train(&config, &RunOptions::default()).unwrap();
    let run = summary.run_dir.clone();
    let vocab: String = text.chars().collect::<std::collections::BTreeSet<char>>().into_iter().collect();
    let spec: TokenizerSpec = serde_json::from_str(&std::fs::read_to_string(run.join("tokenizer.json")).unwrap()).unwrap();
    assert_eq!(spec, TokenizerSpec { kind: TokenizerKind::Char, vocab: Some(vocab.clone()) });
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("checkpoints/step-000004/state.json")).unwrap()).unwrap();
    assert_eq!(state["tokenizer"]["vocab"], vocab.as_str(), "the checkpoint carries the vocabulary");
    assert_eq!(state["model"]["vocab_size"], vocab.chars().count(), "the model is sized by it");

    // Generation decodes with the run's vocabulary: only characters of the corpus come out.
    let options = GenerateOptions { max_new_tokens: 60, seed: 3, ..GenerateOptions::default() };
    let sample = sample_run(&run, "ROMEO:", &options).unwrap();
    assert!(sample.starts_with("ROMEO:") && sample.chars().count() == 66, "{sample}");
    assert!(sample.chars().all(|c| vocab.contains(c)), "{sample}");
    let error = sample_run(&run, "ROMEO! 42", &options).unwrap_err().to_string();
    assert!(error.contains("'4'") || error.contains("'!'"), "a prompt outside the vocabulary is refused: {error}");

    // A resume on a corpus with another vocabulary is refused (the corpus differs first of all).
    let other = TrainConfig { data: corpus(&dir, "other.txt", "HAMLET: words, words, words.\n"), ..config.clone() };
    let error = train(&other, &RunOptions { resume: true, ..RunOptions::default() }).err().unwrap().to_string();
    assert!(error.contains("different run"), "{error}");
    // ... and so is the same corpus tokenized as GPT-2 BPE.
    let bpe = TrainConfig { tokenizer: Some(TokenizerKind::Gpt2), model: Some(Gpt2Config::new(1, 2, 16, 16, 50_257)), block_size: None, ..config };
    let error = train(&bpe, &RunOptions { resume: true, ..RunOptions::default() }).err().unwrap().to_string();
    assert!(error.contains("different run"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}
