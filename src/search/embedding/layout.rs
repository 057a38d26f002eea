//! The model directory, in the sentence-transformers layout of the Hugging Face hub: which
//! files must be there, what each one says, and the typed error naming the file that is
//! missing or malformed. Reads and checks; runs nothing.
//!
//! ```text
//! config.json                 the BERT architecture (hidden size, layers, heads, vocabulary)
//! tokenizer.json              the WordPiece tokenizer (normalizer, vocabulary, [CLS]/[SEP])
//! model.safetensors           the weights
//! modules.json                the pipeline: Transformer, then Pooling (its config's dir), then
//!                             Normalize if the vectors are meant for cosine similarity
//! <pooling dir>/config.json   mean or CLS pooling
//! sentence_bert_config.json   optional: max_seq_length (else the model's position limit)
//! README.md                   optional: its first heading names the model
//! ```

use super::EmbedError;
use super::bert;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

pub const CONFIG: &str = "config.json";
pub const TOKENIZER: &str = "tokenizer.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const MODULES: &str = "modules.json";
pub const SBERT_CONFIG: &str = "sentence_bert_config.json";
const README: &str = "README.md";

/// How token vectors become one sentence vector (sentence-transformers' Pooling module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of the token vectors, padding excluded.
    Mean,
    /// The vector of the first token ([CLS]).
    Cls,
}

/// Everything read from a model directory, checked and ready to run.
pub struct Layout {
    pub dir: PathBuf,
    pub model_id: String,
    pub config: bert::Config,
    pub tokenizer: Tokenizer,
    pub weights: Vec<u8>,
    pub pooling: Pooling,
    /// Word pieces kept per text, [CLS] and [SEP] included; the rest is cut off.
    pub max_seq_length: usize,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct PoolingConfig {
    word_embedding_dimension: Option<usize>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct SbertConfig {
    max_seq_length: Option<usize>,
}

/// The architecture check done before the full parse, so that a RoBERTa or MPNet directory
/// is told apart from a broken file.
#[derive(Deserialize)]
struct ModelType {
    model_type: Option<String>,
}

impl Layout {
    pub fn read(dir: &Path) -> Result<Layout, EmbedError> {
        if !dir.is_dir() {
            return Err(EmbedError::NotADirectory {
                dir: dir.to_path_buf(),
            });
        }
        let config_text = read_text(dir, CONFIG)?;
        let model_type: ModelType = parse_json(dir, CONFIG, &config_text)?;
        if let Some(kind) = model_type.model_type.filter(|k| k != "bert") {
            return Err(malformed(
                dir,
                CONFIG,
                format!("model_type \"{kind}\" is not supported (BERT models only)"),
            ));
        }
        let config: bert::Config = parse_json(dir, CONFIG, &config_text)?;
        if let Some(kind) = config
            .position_embedding_type
            .as_deref()
            .filter(|k| *k != "absolute")
        {
            return Err(malformed(
                dir,
                CONFIG,
                format!("position_embedding_type \"{kind}\" is not supported (absolute only)"),
            ));
        }
        if config.hidden_size == 0
            || config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(malformed(
                dir,
                CONFIG,
                "hidden_size must be a positive multiple of num_attention_heads".into(),
            ));
        }

        let pooling = read_pooling(dir, config.hidden_size)?;
        let max_seq_length = read_max_seq_length(dir, config.max_position_embeddings)?;

        let tokenizer_path = existing(dir, TOKENIZER)?;
        let tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| malformed(dir, TOKENIZER, e.to_string()))?;

        let weights_path = existing(dir, WEIGHTS)?;
        let weights = std::fs::read(&weights_path).map_err(|source| EmbedError::Read {
            file: weights_path,
            source,
        })?;

        Ok(Layout {
            dir: dir.to_path_buf(),
            model_id: model_id(dir),
            config,
            tokenizer,
            weights,
            pooling,
            max_seq_length,
        })
    }
}

/// The pooling module's config, found through modules.json. The Normalize module is not
/// looked for: every vector the embedder returns is unit length anyway, so that cosine
/// similarity is a dot product for whoever stores them.
fn read_pooling(dir: &Path, hidden_size: usize) -> Result<Pooling, EmbedError> {
    let modules: Vec<ModuleEntry> = parse_json(dir, MODULES, &read_text(dir, MODULES)?)?;
    let has = |suffix: &str| modules.iter().any(|m| m.kind.ends_with(suffix));
    if !has("models.Transformer") {
        return Err(malformed(
            dir,
            MODULES,
            "no sentence_transformers.models.Transformer module".into(),
        ));
    }
    let Some(pooling) = modules.iter().find(|m| m.kind.ends_with("models.Pooling")) else {
        return Err(malformed(
            dir,
            MODULES,
            "no sentence_transformers.models.Pooling module".into(),
        ));
    };
    // The path comes from a file: keep it inside the model directory.
    let sub = Path::new(&pooling.path);
    if sub.is_absolute()
        || sub
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(malformed(
            dir,
            MODULES,
            format!(
                "the Pooling module's path \"{}\" leaves the model directory",
                pooling.path
            ),
        ));
    }
    let file = sub.join("config.json");
    let file = file.to_string_lossy();
    let cfg: PoolingConfig = parse_json(dir, &file, &read_text(dir, &file)?)?;
    if let Some(dim) = cfg.word_embedding_dimension
        && dim != hidden_size
    {
        return Err(malformed(
            dir,
            &file,
            format!(
                "word_embedding_dimension {dim} differs from the model's hidden_size {hidden_size}"
            ),
        ));
    }
    match (
        cfg.pooling_mode_mean_tokens,
        cfg.pooling_mode_cls_token,
        cfg.pooling_mode_max_tokens || cfg.pooling_mode_mean_sqrt_len_tokens,
    ) {
        (true, false, false) => Ok(Pooling::Mean),
        (false, true, false) => Ok(Pooling::Cls),
        _ => Err(malformed(
            dir,
            &file,
            "exactly one of pooling_mode_mean_tokens and pooling_mode_cls_token must be true \
             (max and sqrt-length pooling are not supported)"
                .into(),
        )),
    }
}

/// sentence-transformers cuts texts at `max_seq_length` word pieces (256 for MiniLM, less than
/// the 512 positions the model has); without that file, the position limit.
fn read_max_seq_length(dir: &Path, positions: usize) -> Result<usize, EmbedError> {
    let declared = match std::fs::read_to_string(dir.join(SBERT_CONFIG)) {
        Ok(text) => parse_json::<SbertConfig>(dir, SBERT_CONFIG, &text)?.max_seq_length,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(EmbedError::Read {
                file: dir.join(SBERT_CONFIG),
                source,
            });
        }
    };
    let max = declared.unwrap_or(positions).min(positions);
    // [CLS] and [SEP] take two places.
    if max < 3 {
        return Err(malformed(
            dir,
            SBERT_CONFIG,
            format!("max_seq_length {max} leaves no room for text"),
        ));
    }
    Ok(max)
}

/// The model's name: the first heading of its model card (the hub's cards open with it, e.g.
/// "all-MiniLM-L6-v2"), else the directory's name. Stored beside each vector, it tells which
/// vectors a different model must embed again.
fn model_id(dir: &Path) -> String {
    let from_card = std::fs::read_to_string(dir.join(README))
        .ok()
        .and_then(|card| {
            let mut in_code = false;
            card.lines().find_map(|line| {
                if line.trim_start().starts_with("```") {
                    in_code = !in_code;
                }
                let name = line.strip_prefix("# ")?.trim();
                (!in_code && !name.is_empty() && name.len() <= 100).then(|| name.to_string())
            })
        });
    from_card.unwrap_or_else(|| {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unnamed".into())
    })
}

fn existing(dir: &Path, file: &str) -> Result<PathBuf, EmbedError> {
    let path = dir.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(EmbedError::MissingFile {
            dir: dir.to_path_buf(),
            file: file.to_string(),
        })
    }
}

fn read_text(dir: &Path, file: &str) -> Result<String, EmbedError> {
    let path = existing(dir, file)?;
    std::fs::read_to_string(&path).map_err(|source| EmbedError::Read { file: path, source })
}

fn parse_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
    file: &str,
    text: &str,
) -> Result<T, EmbedError> {
    serde_json::from_str(text).map_err(|e| malformed(dir, file, e.to_string()))
}

fn malformed(dir: &Path, file: &str, reason: String) -> EmbedError {
    EmbedError::Malformed {
        file: dir.join(file),
        reason,
    }
}
