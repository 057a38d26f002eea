//! Process metrics in Prometheus text format: plain atomics, no registry, no allocation on
//! the hot path. `GET /metrics` renders them.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds, in seconds, of the command latency histogram.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }
}

#[derive(Default)]
pub struct Metrics {
    pub sessions: Gauge,
    pub subscriptions: Gauge,
    /// Open TCP connections (HTTP requests and WebSocket sessions alike).
    pub connections: Gauge,
    /// Accepts that failed for lack of file descriptors or memory.
    pub accepts_exhausted: Counter,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub flushes: Counter,
    pub deliveries: Counter,
    pub queue_drops: Counter,
    pub command_latency: Histogram,
    pub bus_errors: Counter,
    pub db_errors: Counter,
    /// Events read from the store because a gap in a channel's seqs stayed open.
    pub gap_fills: Counter,
    /// Events read from the store by a resync: after the bus reconnected, or the periodic
    /// sweep that catches what a silently lost message left behind.
    pub resync_fetches: Counter,
    /// 1 while the Redis bus is connected (absent without Redis: always 1 then).
    pub bus_up: Gauge,
    pub bus_reconnects: Counter,
    pub bus_outbox_dropped: Counter,
    /// Posts and comments embedded and stored by this replica (indexer and write path).
    pub search_indexed: Counter,
    /// Visible posts and comments without a vector, as the indexer last counted them.
    pub search_pending: Gauge,
    /// Items whose embedding or storing failed (each is retried with backoff).
    pub search_index_errors: Counter,
    /// Pauses of the indexer (250 ms each) because the hub's own threads were busy.
    pub search_index_yields: Counter,
    /// Requests that went on without the model because it stayed busy past their wait.
    pub search_embed_busy: Counter,
}

impl Metrics {
    pub fn render(&self, replica: &str) -> String {
        let mut s = String::with_capacity(2048);
        let r = replica.replace(['"', '\\', '\n'], "_");
        let mut line = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{replica=\"{r}\"}} {v}"
            );
        };
        line(
            "carapace_sessions",
            "gauge",
            "Open WebSocket sessions.",
            self.sessions.get().to_string(),
        );
        line(
            "carapace_subscriptions",
            "gauge",
            "Channel subscriptions across sessions.",
            self.subscriptions.get().to_string(),
        );
        line(
            "carapace_connections",
            "gauge",
            "Open TCP connections (HTTP and WebSocket).",
            self.connections.get().to_string(),
        );
        line(
            "carapace_accepts_exhausted_total",
            "counter",
            "Accepts that failed for lack of file descriptors or memory (the hub paused accepting).",
            self.accepts_exhausted.get().to_string(),
        );
        line(
            "carapace_frames_in_total",
            "counter",
            "Frames received from clients.",
            self.frames_in.get().to_string(),
        );
        line(
            "carapace_frames_out_total",
            "counter",
            "Frames written to clients.",
            self.frames_out.get().to_string(),
        );
        line(
            "carapace_flushes_total",
            "counter",
            "Socket writes of one or more frames (frames_out / flushes = frames per write).",
            self.flushes.get().to_string(),
        );
        line(
            "carapace_deliveries_total",
            "counter",
            "Events handed to session queues.",
            self.deliveries.get().to_string(),
        );
        line(
            "carapace_queue_drops_total",
            "counter",
            "Sessions closed with 4008 because their queue overflowed.",
            self.queue_drops.get().to_string(),
        );
        line(
            "carapace_bus_errors_total",
            "counter",
            "Bus (Redis) publish or subscribe failures.",
            self.bus_errors.get().to_string(),
        );
        line(
            "carapace_db_errors_total",
            "counter",
            "Database errors seen by commands.",
            self.db_errors.get().to_string(),
        );
        line(
            "carapace_gap_fills_total",
            "counter",
            "Events fetched from the store to fill a sequence gap.",
            self.gap_fills.get().to_string(),
        );
        line(
            "carapace_resync_fetches_total",
            "counter",
            "Events fetched from the store by a resync (bus reconnect or periodic sweep).",
            self.resync_fetches.get().to_string(),
        );
        line(
            "carapace_bus_up",
            "gauge",
            "1 while the bus is connected (always 1 for the in-process bus).",
            self.bus_up.get().to_string(),
        );
        line(
            "carapace_bus_reconnects_total",
            "counter",
            "Times the Redis bus lost its connection and started reconnecting.",
            self.bus_reconnects.get().to_string(),
        );
        line(
            "carapace_bus_outbox_dropped_total",
            "counter",
            "Publishes dropped because Redis stayed away past the outbox bound (subscribers still catch up from the database).",
            self.bus_outbox_dropped.get().to_string(),
        );
        line(
            "carapace_search_indexed_total",
            "counter",
            "Posts and comments embedded and stored for semantic search by this replica.",
            self.search_indexed.get().to_string(),
        );
        line(
            "carapace_search_pending",
            "gauge",
            "Visible posts and comments not embedded yet (counted by the replica that indexes).",
            self.search_pending.get().to_string(),
        );
        line(
            "carapace_search_index_errors_total",
            "counter",
            "Embeddings or vector writes that failed (the item is retried with backoff).",
            self.search_index_errors.get().to_string(),
        );
        line(
            "carapace_search_index_yields_total",
            "counter",
            "Pauses of the indexer (250 ms each) because the hub's own threads used more than --index-yield-share of the cores.",
            self.search_index_yields.get().to_string(),
        );
        line(
            "carapace_search_embed_busy_total",
            "counter",
            "Queries answered in full text, and posts or comments written without the near-duplicate check, because the model stayed busy past the request's wait.",
            self.search_embed_busy.get().to_string(),
        );
        let h = &self.command_latency;
        let _ = writeln!(
            s,
            "# HELP carapace_command_seconds Latency of WebSocket commands.\n# TYPE carapace_command_seconds histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "carapace_command_seconds_bucket{{replica=\"{r}\",le=\"{b}\"}} {}",
                h.buckets[i].load(Relaxed)
            );
        }
        let count = h.count.load(Relaxed);
        let _ = writeln!(
            s,
            "carapace_command_seconds_bucket{{replica=\"{r}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "carapace_command_seconds_sum{{replica=\"{r}\"}} {}",
            h.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "carapace_command_seconds_count{{replica=\"{r}\"}} {count}"
        );
        s
    }
}
