//! Search that understands meaning: sentence embeddings computed in-process (`embedding`),
//! int8 vectors (`quantize`) stored with the posts and comments and held in memory by every
//! replica (`vectors`), a background indexer (`indexer`) that yields to a busy hub (`busy`),
//! and the fusion of the full-text and vector rankings (`hybrid`). `Semantic` is what the
//! Service holds when a model is loaded; without one, search is full-text only.

pub mod busy;
pub mod embedding;
pub mod hybrid;
pub mod indexer;
pub mod quantize;
pub mod vectors;

use crate::metrics::Metrics;
use crate::store::{ItemKind, NewVector, Store};
use embedding::{EmbedError, Embedder};
use quantize::{Quantized, quantize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vectors::{Scored, VectorIndex};

/// How long a request (a query, a new post's near-duplicate check) waits for the model
/// before it goes on without it: the model runs one batch at a time, the indexer's included,
/// and a flood must not stall posting or searching behind it.
pub const REQUEST_EMBED_WAIT: Duration = Duration::from_millis(500);

/// Requests already queued for the model from which the next one does not queue at all: a
/// session's commands run one after another, so under a flood each post waiting out the
/// whole `REQUEST_EMBED_WAIT` would hold its session's next ones up in turn.
pub const REQUEST_EMBED_QUEUE: usize = 2;

/// The near-duplicate check's window: the author's items of the last 24 hours, at most 50.
pub const NEAR_DUPLICATE_WINDOW_MS: i64 = 24 * 3600 * 1000;
pub const NEAR_DUPLICATE_ITEMS: i64 = 50;

/// The loaded model and the vectors: what semantic search, related posts and the
/// near-duplicate check use.
pub struct Semantic {
    pub embedder: Arc<Embedder>,
    pub index: Arc<VectorIndex>,
    /// The cosine similarity from which a post or comment counts as a near-duplicate of one
    /// of its author's recent items; `None`: no check.
    pub near_duplicate: Option<f32>,
    metrics: Arc<Metrics>,
    /// The last (indexed, pending) counts and when they were taken.
    counts: tokio::sync::Mutex<Option<(Instant, Counts)>>,
}

/// How many items have a vector and how many wait for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub indexed: i64,
    pub pending: i64,
    /// When they were counted (ms since the Unix epoch).
    pub at_ms: i64,
}

/// The public status counts every row: one count a second at most per replica, whoever asks.
const COUNTS_FRESH: Duration = Duration::from_secs(1);

impl Semantic {
    pub fn new(
        embedder: Arc<Embedder>,
        near_duplicate: Option<f32>,
        metrics: Arc<Metrics>,
    ) -> Semantic {
        let index = Arc::new(VectorIndex::new(embedder.model_id(), embedder.dim()));
        Semantic {
            embedder,
            index,
            near_duplicate,
            metrics,
            counts: tokio::sync::Mutex::new(None),
        }
    }

    /// The index's counts, at most `COUNTS_FRESH` old: anyone may ask for them, and counting
    /// scans every post and comment.
    pub async fn counts(&self, store: &Store) -> crate::store::StoreResult<Counts> {
        // Callers queue here while one counts, then share its answer.
        let mut cached = self.counts.lock().await;
        if let Some((at, c)) = *cached
            && at.elapsed() < COUNTS_FRESH
        {
            return Ok(c);
        }
        let at_ms = crate::clock::now_ms();
        let c = Counts {
            indexed: store.indexed_count(self.model()).await?,
            pending: store.pending_count(self.model()).await?,
            at_ms,
        };
        *cached = Some((Instant::now(), c));
        Ok(c)
    }

    pub fn model(&self) -> &str {
        self.index.model()
    }

    /// Embeds one text for a request (a query, or a post on the write path), waiting at most
    /// `REQUEST_EMBED_WAIT`, and not at all behind `REQUEST_EMBED_QUEUE` others:
    /// `EmbedError::Busy` then, and the caller goes on without.
    pub async fn embed_one(&self, text: String) -> Result<Vec<f32>, EmbedError> {
        if self.embedder.queued() >= REQUEST_EMBED_QUEUE {
            self.metrics.search_embed_busy.inc();
            return Err(EmbedError::Busy);
        }
        let mut v =
            match tokio::time::timeout(REQUEST_EMBED_WAIT, self.embedder.embed(&[text])).await {
                Ok(v) => v?,
                Err(_) => {
                    self.metrics.search_embed_busy.inc();
                    return Err(EmbedError::Busy);
                }
            };
        v.pop()
            .ok_or_else(|| EmbedError::Model("the model returned no vector".into()))
    }

    /// The `k` items of `kind` nearest to `q`, on the blocking pool (an exact scan).
    pub async fn nearest(
        &self,
        kind: ItemKind,
        q: Quantized,
        k: usize,
        except: Option<String>,
    ) -> Vec<Scored> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.search(kind, &q, k, except.as_deref()))
            .await
            .unwrap_or_default()
    }

    /// Keeps a vector computed on the write path (the near-duplicate check), so the item is
    /// not embedded again: stored at once, so that the author's next write is compared with
    /// it, and searchable here at once. A failure only leaves the item to the indexer.
    pub async fn remember(
        &self,
        store: &Store,
        kind: ItemKind,
        id: &str,
        author_id: &str,
        created_at: i64,
        v: &[f32],
    ) {
        let q = quantize(v);
        let row = NewVector {
            item_id: id.to_string(),
            kind,
            author_id: author_id.to_string(),
            model: self.model().to_string(),
            scale: q.scale,
            data: q.data.clone(),
            created_at,
        };
        match store.put_vectors(&[row], crate::clock::now_ms()).await {
            Ok(n) => {
                self.metrics.search_indexed.add(n as u64);
                self.index.insert(kind, id, &q);
            }
            Err(e) => {
                self.metrics.search_index_errors.inc();
                tracing::warn!(error = %e, item = %id, "storing a vector failed; the indexer will embed the item again");
            }
        }
    }
}
