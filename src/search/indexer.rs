//! The background indexer: embeds committed posts and comments after they commit, never on
//! the write path, and stores their vectors. One task on every replica runs two loops:
//!
//! - indexing, by one replica at a time: on PostgreSQL the holder of a session-level advisory
//!   lock (`Store::try_index_lock`), retried every few seconds by the others, so another
//!   replica takes over within seconds of the holder's death. It walks each kind's items in
//!   id order (UUIDv7: creation order) from a floor, so the backfill at start and the steady
//!   state are one loop; the floor trails the clock by `LOOKBACK_MS` for transactions that
//!   commit after younger ones, and drops to zero every `SWEEP_EVERY` as a safety net. An
//!   item whose embedding or write fails is logged and retried with backoff apart from the
//!   rest. The model runs its passes for the indexer at a lower CPU priority and only when
//!   no request waits for it (`embedding`), and no pass starts while the hub's own threads
//!   take more than `--index-yield-share` of the machine (`busy`; one pass every `MAX_YIELD`
//!   regardless), so the hub's own threads and queries come first on a busy machine (the
//!   indexer lags instead).
//! - refreshing this replica's in-memory vectors from the Store (vectors indexed by another
//!   replica, tombstones of removed items).

use super::Semantic;
use super::busy::HubLoad;
use super::embedding::{EmbedError, Embedder, Priority, Vector};
use super::quantize::quantize;
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::{IndexLock, ItemKind, NewVector, PendingItem, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Items embedded in one call of the model.
const BATCH: usize = 16;
/// Idle pause when nothing is pending.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// How often a replica without the lock tries to take it, and the holder checks it still
/// holds it.
const LOCK_RETRY: Duration = Duration::from_secs(2);
/// How far behind the clock the floor stays (see the module doc).
const LOOKBACK_MS: i64 = 60_000;
const SWEEP_EVERY: Duration = Duration::from_secs(600);
const COUNT_EVERY: Duration = Duration::from_secs(2);
const REFRESH_EVERY: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// The pause while the hub is busy, and how long the indexer yields at most before it runs
/// one pass regardless: under a load that never ends the index still moves, slowly.
const BUSY_PAUSE: Duration = Duration::from_millis(250);
const MAX_YIELD: Duration = Duration::from_secs(10);

/// The indexer of one replica, built with the `Semantic` it feeds.
pub struct Indexer {
    store: Store,
    semantic: Arc<Semantic>,
    metrics: Arc<Metrics>,
    /// The share of the cores from which the hub counts as busy (`busy`); `None`: never.
    yield_share: Option<f64>,
}

/// An item whose embedding failed, waiting for its retry.
struct Failure {
    kind: ItemKind,
    attempts: u32,
    next: Instant,
}

type Job = (
    Vec<String>,
    oneshot::Sender<Result<Vec<Vector>, EmbedError>>,
);

/// The model's thread for the indexer.
struct Worker {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

impl Worker {
    fn start(embedder: Arc<Embedder>) -> std::io::Result<Worker> {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(1);
        std::thread::Builder::new()
            .name("carapace-indexer".into())
            .spawn(move || {
                // Ends when the indexer (the sender) is gone.
                while let Ok((texts, reply)) = rx.recv() {
                    let _ = reply.send(embedder.embed_blocking(&texts, Priority::Background));
                }
            })?;
        Ok(Worker { jobs })
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vector>, EmbedError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send((texts, tx))
            .map_err(|_| EmbedError::Model("the indexer's model thread has stopped".into()))?;
        rx.await
            .map_err(|_| EmbedError::Model("the indexer's model thread has stopped".into()))?
    }
}

/// The smallest UUIDv7 (in its text form) of the millisecond `ms`: ids compare as text in
/// time order, so this is a floor for items created at or after `ms`.
pub fn id_floor(ms: i64) -> String {
    let ms = ms.max(0) as u64;
    format!(
        "{:08x}-{:04x}-0000-0000-000000000000",
        (ms >> 16) & 0xffff_ffff,
        ms & 0xffff
    )
}

impl Indexer {
    pub fn new(
        store: Store,
        semantic: Arc<Semantic>,
        metrics: Arc<Metrics>,
        yield_share: Option<f64>,
    ) -> Indexer {
        Indexer {
            store,
            semantic,
            metrics,
            yield_share,
        }
    }

    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let worker = match Worker::start(self.semantic.embedder.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the indexer's thread: nothing will be indexed");
                None
            }
        };
        let index = async {
            match &worker {
                Some(w) => self.index_loop(w).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = index => {}
            _ = self.refresh_loop() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    async fn refresh_loop(&self) {
        loop {
            tokio::time::sleep(REFRESH_EVERY).await;
            if let Err(e) = self.semantic.index.refresh(&self.store).await {
                tracing::warn!(error = %e, "refreshing the in-memory vectors failed");
            }
        }
    }

    async fn index_loop(&self, worker: &Worker) {
        let mut lock: Option<IndexLock> = None;
        let mut floors: HashMap<ItemKind, String> = HashMap::new();
        let mut failed: HashMap<String, Failure> = HashMap::new();
        let mut checked = Instant::now();
        let mut swept = Instant::now();
        let mut counted: Option<Instant> = None;
        let embedder = self.semantic.embedder.clone();
        let mut load = HubLoad::new(move || embedder.background_threads());
        let mut yielding: Option<Instant> = None;
        loop {
            let Some(held) = lock.as_mut() else {
                match self.store.try_index_lock().await {
                    Ok(Some(l)) => {
                        tracing::info!(model = %self.semantic.model(), "this replica indexes for semantic search");
                        lock = Some(l);
                        floors.clear();
                        checked = Instant::now();
                    }
                    Ok(None) => tokio::time::sleep(LOCK_RETRY).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot take the indexer lock");
                        tokio::time::sleep(LOCK_RETRY).await;
                    }
                }
                continue;
            };
            if checked.elapsed() >= LOCK_RETRY {
                checked = Instant::now();
                if !held.held().await {
                    tracing::warn!(
                        "the indexer lock's connection is gone: indexing stops here until the lock is taken again"
                    );
                    lock = None;
                    continue;
                }
            }
            if swept.elapsed() >= SWEEP_EVERY {
                swept = Instant::now();
                floors.clear();
            }
            if counted.is_none_or(|c| c.elapsed() >= COUNT_EVERY) {
                counted = Some(Instant::now());
                match self.store.pending_count(self.semantic.model()).await {
                    Ok(n) => self.metrics.search_pending.set(n),
                    Err(e) => tracing::warn!(error = %e, "counting pending items failed"),
                }
            }
            let busy = self
                .yield_share
                .is_some_and(|share| load.share_since_last() >= share);
            if busy && yielding.get_or_insert_with(Instant::now).elapsed() < MAX_YIELD {
                self.metrics.search_index_yields.inc();
                tokio::time::sleep(BUSY_PAUSE).await;
                continue;
            }
            yielding = None;
            let mut did = 0;
            for kind in [ItemKind::Post, ItemKind::Comment] {
                let floor = floors.entry(kind).or_default();
                did += self.round(kind, floor, &mut failed, worker).await;
            }
            did += self.retry_due(&mut failed, worker).await;
            if did == 0 {
                tokio::time::sleep(IDLE_POLL).await;
            }
        }
    }

    /// Embeds the next batch of `kind` above `floor`; returns how many items it stored.
    async fn round(
        &self,
        kind: ItemKind,
        floor: &mut String,
        failed: &mut HashMap<String, Failure>,
        worker: &Worker,
    ) -> usize {
        let items = match self
            .store
            .pending_items(kind, self.semantic.model(), floor, BATCH as i64)
            .await
        {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %e, "reading items to index failed");
                return 0;
            }
        };
        let trail = id_floor(now_ms() - LOOKBACK_MS);
        let Some(last) = items.last().map(|i| i.id.clone()) else {
            if *floor < trail {
                *floor = trail;
            }
            return 0;
        };
        let todo: Vec<PendingItem> = items
            .into_iter()
            .filter(|i| !failed.contains_key(&i.id))
            .collect();
        // Past a batch of items waiting for their retry the floor moves on regardless: they
        // are retried by id.
        *floor = if todo.is_empty() || last < trail {
            last
        } else {
            trail
        };
        self.embed_and_store(todo, failed, worker).await
    }

    /// Retries the failed items whose backoff has passed.
    async fn retry_due(&self, failed: &mut HashMap<String, Failure>, worker: &Worker) -> usize {
        let now = Instant::now();
        let due: Vec<(String, ItemKind)> = failed
            .iter()
            .filter(|(_, f)| f.next <= now)
            .take(BATCH)
            .map(|(id, f)| (id.clone(), f.kind))
            .collect();
        let mut items = Vec::new();
        for (id, kind) in due {
            match self.store.item_to_embed(kind, &id).await {
                Ok(Some(item)) => items.push(item),
                // Removed meanwhile: nothing to index.
                Ok(None) => {
                    failed.remove(&id);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading an item to retry failed");
                    return 0;
                }
            }
        }
        let mut n = 0;
        // One by one: these failed before, and one must not fail the others again.
        for item in items {
            n += self.embed_and_store(vec![item], failed, worker).await;
        }
        n
    }

    /// Embeds `items` in one call (one by one if that call fails, to find the culprit) and
    /// stores their vectors; returns how many were stored.
    async fn embed_and_store(
        &self,
        items: Vec<PendingItem>,
        failed: &mut HashMap<String, Failure>,
        worker: &Worker,
    ) -> usize {
        if items.is_empty() {
            return 0;
        }
        let texts: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
        let mut done: Vec<(PendingItem, Vector)> = Vec::with_capacity(items.len());
        match worker.embed(texts).await {
            Ok(vs) if vs.len() == items.len() => done.extend(items.into_iter().zip(vs)),
            first => {
                if items.len() == 1 {
                    let why = match first {
                        Err(e) => e.to_string(),
                        Ok(_) => "the model returned no vector".into(),
                    };
                    self.failed(&items[0], &why, failed);
                    return 0;
                }
                for item in items {
                    match worker.embed(vec![item.text.clone()]).await {
                        Ok(mut v) if v.len() == 1 => {
                            if let Some(v) = v.pop() {
                                done.push((item, v));
                            }
                        }
                        Ok(_) => self.failed(&item, "the model returned no vector", failed),
                        Err(e) => self.failed(&item, &e.to_string(), failed),
                    }
                }
            }
        }
        let model = self.semantic.model().to_string();
        let rows: Vec<NewVector> = done
            .iter()
            .map(|(item, v)| {
                let q = quantize(v);
                NewVector {
                    item_id: item.id.clone(),
                    kind: item.kind,
                    author_id: item.author_id.clone(),
                    model: model.clone(),
                    scale: q.scale,
                    data: q.data,
                    created_at: item.created_at,
                }
            })
            .collect();
        match self.store.put_vectors(&rows, now_ms()).await {
            Ok(n) => {
                for (row, (item, _)) in rows.iter().zip(&done) {
                    failed.remove(&item.id);
                    let q = super::quantize::Quantized {
                        data: row.data.clone(),
                        scale: row.scale,
                    };
                    self.semantic.index.insert(row.kind, &row.item_id, &q);
                }
                self.metrics.search_indexed.add(n as u64);
                n
            }
            Err(e) => {
                for (item, _) in &done {
                    self.failed(item, &format!("storing its vector: {e}"), failed);
                }
                0
            }
        }
    }

    fn failed(&self, item: &PendingItem, why: &str, failed: &mut HashMap<String, Failure>) {
        self.metrics.search_index_errors.inc();
        let f = failed.entry(item.id.clone()).or_insert(Failure {
            kind: item.kind,
            attempts: 0,
            next: Instant::now(),
        });
        f.attempts += 1;
        let wait = Duration::from_secs(1)
            .saturating_mul(1u32 << f.attempts.min(10))
            .min(MAX_BACKOFF);
        f.next = Instant::now() + wait;
        tracing::warn!(
            item = %item.id,
            kind = item.kind.as_str(),
            attempts = f.attempts,
            retry_in_s = wait.as_secs(),
            error = %why,
            "indexing an item failed; it will be retried"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::id_floor;

    #[test]
    fn id_floors_sort_with_uuid_v7_ids_of_their_millisecond() {
        let id = uuid::Uuid::now_v7().to_string();
        let now = crate::clock::now_ms();
        assert!(id_floor(now - 5) < id);
        assert!(id_floor(now + 5) > id);
        assert_eq!(id_floor(0), "00000000-0000-0000-0000-000000000000");
    }
}
