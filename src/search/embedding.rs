//! Sentence embeddings in-process: `Embedder` loads a sentence-transformers model directory
//! (all-MiniLM-L6-v2 is the reference) once at start and turns texts into unit vectors, with
//! nothing fetched over the network. It owns the model and when it runs; what is embedded,
//! stored and ranked belongs to the rest of `search`.
//!
//! The model is CPU-bound: `embed` runs it on tokio's blocking pool, one batch at a time behind
//! a semaphore, so that neither the runtime's workers nor the cores are taken over by it.

mod bert;
mod layout;
mod model;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use thiserror::Error;
use tokio::sync::Semaphore;

/// Unit-length sentence embedding (f32, dimension `Embedder::dim()`, 384 for MiniLM-L6).
pub type Vector = Vec<f32>;

#[derive(Debug, Error)]
pub enum EmbedError {
    #[error("embedding model: {dir} is not a directory")]
    NotADirectory { dir: PathBuf },
    #[error("embedding model: {file} is missing from {dir}")]
    MissingFile { dir: PathBuf, file: String },
    #[error("embedding model: cannot read {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("embedding model: {file} is malformed: {reason}")]
    Malformed { file: PathBuf, reason: String },
    #[error("embedding failed: {0}")]
    Model(String),
    #[error("the embedding task did not finish: {0}")]
    Task(String),
    #[error("the model is busy: the request went on without it")]
    Busy,
}

/// Loaded once at start (App::build), shared as `Arc<Embedder>`.
pub struct Embedder {
    gated: Arc<Gated>,
    model_id: String,
    /// Async callers queue here, not on blocking threads: at most one of them holds a
    /// blocking thread at a time. The permit goes with the blocking task, so a caller that
    /// stops waiting (a deadline) does not let a second batch onto a blocking thread beside it.
    running: Arc<Semaphore>,
    /// Callers of `embed` waiting or running now.
    queued: Arc<AtomicUsize>,
}

/// One batch at a time, whoever calls: the model already spreads a batch over the cores, and
/// a second one alongside would only make both slower.
struct Gated {
    model: model::Model,
    gate: std::sync::Mutex<()>,
}

impl Gated {
    fn embed(&self, texts: &[String]) -> Result<Vec<Vector>, EmbedError> {
        // A panic inside the model leaves nothing half-written behind the gate.
        let _turn = self
            .gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.model.embed(texts)
    }
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model_id", &self.model_id)
            .field("dim", &self.dim())
            .finish()
    }
}

impl Embedder {
    /// Reads and checks the directory; a missing or malformed file is an error naming it.
    pub fn load(dir: &Path) -> Result<Embedder, EmbedError> {
        let layout = layout::Layout::read(dir)?;
        let model_id = layout.model_id.clone();
        let model = model::Model::load(layout)?;
        Ok(Embedder {
            gated: Arc::new(Gated {
                model,
                gate: std::sync::Mutex::new(()),
            }),
            model_id,
            running: Arc::new(Semaphore::new(1)),
            queued: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The model's name, e.g. "all-MiniLM-L6-v2".
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    pub fn dim(&self) -> usize {
        self.gated.model.dim()
    }

    /// Callers of `embed` queued or running now (not the indexer's own thread).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// One unit vector per text, in order. A text longer than the model takes is cut, not
    /// refused (the model sees its first 256 word pieces for MiniLM).
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vector>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let queued = Queued::enter(&self.queued);
        let permit = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| EmbedError::Task(e.to_string()))?;
        let gated = self.gated.clone();
        let texts = texts.to_vec();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _queued = queued;
            gated.embed(&texts)
        })
        .await
        .map_err(|e| EmbedError::Task(e.to_string()))?
    }

    /// `embed` on the caller's thread, for callers that are already off the runtime.
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vector>, EmbedError> {
        self.gated.embed(texts)
    }
}

/// Counts a caller of `embed` from its call until its batch has run (or it gave up).
struct Queued(Arc<AtomicUsize>);

impl Queued {
    fn enter(n: &Arc<AtomicUsize>) -> Queued {
        n.fetch_add(1, Ordering::Relaxed);
        Queued(n.clone())
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
