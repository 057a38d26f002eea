//! `carapace bench`, the load generator of SPEC section 7: drives a running hub, or a peer a
//! user would pick instead (Socket.IO with its Redis adapter, NATS over WebSocket, or the raw
//! broadcast server kept here as the stack's ceiling), over real loopback sockets with the
//! same client and the same workload. Prints a human-readable report, then one JSON line.
//!
//! It owns the scenarios (`fanout`, `connections`, `cluster`), the target adapters, the raw
//! server and the statistics; it does not start Carapace or the peers (scripts/bench.sh does).
//! Everything is bounded: counts, durations, buffers, and addresses (loopback only).

mod connections;
mod fanout;
mod proc;
mod prose;
pub mod raw;
mod search;
mod stats;
mod target;
mod wire;

pub use search::{ModeStats, SearchReport};
pub use target::TargetKind;

use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use thiserror::Error;

pub const MAX_SUBSCRIBERS: usize = 100_000;
pub const MAX_PUBLISHERS: usize = 256;
pub const MAX_SECONDS: u64 = 600;
/// Carapace takes post bodies up to 40,000 characters; stay well inside one 64 KiB frame.
pub const MAX_SIZE: usize = 32 * 1024;
/// Room for the marker (`~b:<publisher>:<n>:<ns>:<w>~`).
pub const MIN_SIZE: usize = 48;
pub const MAX_WINDOW: usize = 4096;
pub const MAX_POSTS: usize = 1_000_000;
pub const MAX_QUERIES: usize = 100_000;

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("invalid arguments: {0}")]
    Args(String),
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("setting the target up failed: {0}")]
    Setup(String),
    #[error("the target failed during the run: {0}")]
    Target(String),
    #[error("i/o: {0}")]
    Io(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Fanout,
    Connections,
    Cluster,
    /// Search latency per mode over seeded posts, and the indexer's throughput (Carapace).
    Search,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Connections => "connections",
            Scenario::Cluster => "cluster",
            Scenario::Search => "search",
        }
    }
}

/// `carapace bench` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to measure: fan-out throughput and latency, idle sessions' memory, or the
    /// cluster's.
    #[arg(long, value_enum, default_value = "fanout")]
    pub scenario: Scenario,
    /// What is measured. `raw` without --addr starts the raw server inside the bench.
    #[arg(long, value_enum, default_value = "carapace")]
    pub target: TargetKind,
    /// Loopback address(es) of the target, comma-separated or repeated (cluster: the first
    /// takes the publishers, the others the subscribers). Carapace defaults to 127.0.0.1:8080.
    #[arg(long, value_delimiter = ',')]
    pub addr: Vec<SocketAddr>,
    /// Subscribers (fanout, cluster) or idle sessions (connections).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Connections that publish, each keeping up to `--window` posts in flight.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Topics (fanout, cluster): publisher and subscriber `i` use topic `i % N`, so the
    /// load spreads over a sharded bus. At most --publishers and --subscribers.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Payload size in bytes (the post body for Carapace).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Measured seconds (publishing, or holding the idle sessions).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of publishing before measuring starts.
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// Events in flight per publisher (sent, not yet delivered to every subscriber).
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Publish at this many events per second in all (spread over the publishers) instead
    /// of as fast as the window allows: latency at a given load rather than at saturation.
    #[arg(long)]
    pub rate: Option<f64>,
    /// The server process whose memory is read (default: the one listening on the first
    /// address, found through /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Spread connections over 127.0.0.1..=127.0.0.N so 50,000 of them do not exhaust the
    /// ephemeral ports of one source address (default: one address per 20,000 connections).
    #[arg(long)]
    pub source_ips: Option<u8>,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Fanout: fill each Carapace post with generated prose, a different text each, instead
    /// of `x` (a hub with the near-duplicate check refuses repeated posts).
    #[arg(long)]
    pub prose: bool,
    /// Search: posts to write before measuring (spread over the publishers), 0 to search
    /// what the hub already holds.
    #[arg(long, default_value_t = 0)]
    pub posts: usize,
    /// Search: queries, each sent once in every mode (text, semantic, hybrid).
    #[arg(long, default_value_t = 300)]
    pub queries: usize,
    /// Search: sessions sending queries at once, one query in flight each.
    #[arg(long, default_value_t = 1)]
    pub search_concurrency: usize,
    /// Instead of benchmarking, serve the raw broadcast target on this address until stopped.
    #[arg(long)]
    pub serve_raw: Option<SocketAddr>,
}

/// The JSON line, field for field as SPEC section 7 gives it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub target: &'static str,
    pub subscribers: usize,
    pub publishers: usize,
    pub seconds: u64,
    pub published: u64,
    pub delivered: u64,
    pub deliveries_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub lost: u64,
    /// Measured posts the target refused as near-duplicates (never delivered, not lost).
    pub refused: u64,
    pub rss_kib_per_conn: f64,
}

/// What a run reports: deliveries (fanout, connections, cluster) or searches.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Delivery(Report),
    Search(SearchReport),
}

/// Checked, bounded parameters of one run.
pub(crate) struct Params {
    scenario: Scenario,
    subscribers: usize,
    publishers: usize,
    topics: usize,
    size: usize,
    duration: Duration,
    warmup: Duration,
    window: usize,
    rate: Option<f64>,
    server_pid: Option<u32>,
    source_ips: u8,
    connect_concurrency: usize,
    prose: bool,
    posts: usize,
    queries: usize,
    search_concurrency: usize,
}

impl Params {
    fn rss(&self) -> Option<u64> {
        self.server_pid.and_then(proc::rss_kib)
    }

    /// CPU seconds used so far by the server and by the bench itself.
    fn cpu(&self) -> (Option<f64>, Option<f64>) {
        (
            self.server_pid.and_then(proc::cpu_seconds),
            proc::cpu_seconds(std::process::id()),
        )
    }

    /// The source address of connection `i`, when connections are spread.
    fn source_ip(&self, i: usize) -> Option<IpAddr> {
        (self.source_ips > 1).then(|| {
            IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (i % self.source_ips as usize) as u8,
            ))
        })
    }
}

fn check(args: &BenchArgs, addrs: &[SocketAddr]) -> Result<Params, BenchError> {
    let bad = |m: String| Err(BenchError::Args(m));
    if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return bad(format!(
            "{a} is not a loopback address: the bench only drives this machine"
        ));
    }
    if args.subscribers == 0 || args.subscribers > MAX_SUBSCRIBERS {
        return bad(format!("--subscribers must be 1..={MAX_SUBSCRIBERS}"));
    }
    if args.scenario != Scenario::Connections
        && (args.publishers == 0 || args.publishers > MAX_PUBLISHERS)
    {
        return bad(format!("--publishers must be 1..={MAX_PUBLISHERS}"));
    }
    if args.scenario != Scenario::Connections
        && (args.topics == 0 || args.topics > args.publishers || args.topics > args.subscribers)
    {
        return bad("--topics must be 1..=min(--publishers, --subscribers)".into());
    }
    if !(MIN_SIZE..=MAX_SIZE).contains(&args.size) {
        return bad(format!("--size must be {MIN_SIZE}..={MAX_SIZE} bytes"));
    }
    if args.duration == 0 || args.duration > MAX_SECONDS || args.warmup > MAX_SECONDS {
        return bad(format!(
            "--duration must be 1..={MAX_SECONDS} s, --warmup at most that"
        ));
    }
    if args.window == 0 || args.window > MAX_WINDOW {
        return bad(format!("--window must be 1..={MAX_WINDOW}"));
    }
    if args
        .rate
        .is_some_and(|r| !(r.is_finite() && (0.1..=1_000_000.0).contains(&r)))
    {
        return bad("--rate must be 0.1..=1000000 events/s".into());
    }
    if args.connect_concurrency == 0 || args.connect_concurrency > 4096 {
        return bad("--connect-concurrency must be 1..=4096".into());
    }
    if args.scenario == Scenario::Search {
        if args.target != TargetKind::Carapace {
            return bad("the search scenario measures Carapace only".into());
        }
        if args.posts > MAX_POSTS {
            return bad(format!("--posts must be at most {MAX_POSTS}"));
        }
        if args.queries == 0 || args.queries > MAX_QUERIES {
            return bad(format!("--queries must be 1..={MAX_QUERIES}"));
        }
        if args.search_concurrency == 0 || args.search_concurrency > MAX_PUBLISHERS {
            return bad(format!("--search-concurrency must be 1..={MAX_PUBLISHERS}"));
        }
    }
    if args.scenario == Scenario::Cluster && addrs.len() < 2 {
        return bad(
            "cluster needs at least two --addr: publishers' replica, then subscribers'".into(),
        );
    }
    let auto_ips = args.subscribers.div_ceil(20_000).clamp(1, 250) as u8;
    let source_ips = args.source_ips.unwrap_or(auto_ips).max(1);
    if source_ips > 1 && addrs.iter().any(|a| !a.is_ipv4()) {
        return bad("--source-ips needs an IPv4 loopback target".into());
    }
    let server_pid = args
        .server_pid
        .or_else(|| addrs.first().and_then(|a| proc::listener_pid(*a)));
    Ok(Params {
        scenario: args.scenario,
        subscribers: args.subscribers,
        publishers: if args.scenario == Scenario::Connections {
            0
        } else {
            args.publishers
        },
        topics: if args.scenario == Scenario::Connections {
            1
        } else {
            args.topics
        },
        size: args.size,
        duration: Duration::from_secs(args.duration),
        warmup: Duration::from_secs(args.warmup),
        window: args.window,
        rate: args.rate,
        server_pid,
        source_ips,
        connect_concurrency: args.connect_concurrency,
        prose: args.prose,
        posts: args.posts,
        queries: args.queries,
        search_concurrency: args.search_concurrency,
    })
}

/// Runs one benchmark and prints its report, the JSON line last.
pub async fn run(args: BenchArgs) -> Result<Outcome, BenchError> {
    let mut addrs = args.addr.clone();
    // Keeps the in-process raw server alive for the run.
    let (_raw_stop, raw_rx) = tokio::sync::watch::channel(false);
    if addrs.is_empty() {
        match args.target {
            TargetKind::Carapace => addrs.push(SocketAddr::from(([127, 0, 0, 1], 8080))),
            TargetKind::Raw if args.scenario != Scenario::Cluster => {
                let a = raw::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), raw_rx)
                    .await
                    .map_err(|e| BenchError::Io(format!("starting the raw server: {e}")))?;
                println!("raw server started in-process on {a}");
                addrs.push(a);
            }
            other => {
                return Err(BenchError::Args(format!(
                    "--addr is required for target {}",
                    other.name()
                )));
            }
        }
    }
    if args.scenario == Scenario::Cluster && args.target == TargetKind::Raw {
        return Err(BenchError::Args(
            "the raw server has no cluster mode; use carapace, socketio or nats".into(),
        ));
    }
    let params = check(&args, &addrs)?;
    println!(
        "carapace bench: scenario {}, target {} at {}",
        params.scenario.name(),
        args.target.name(),
        addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    match params.server_pid {
        Some(pid) => println!("server pid {pid} (memory read from /proc/{pid}/status)"),
        None => println!("server pid unknown: memory is not measured"),
    }
    let agents = match params.scenario {
        Scenario::Connections => params.subscribers.min(16),
        Scenario::Search => params.publishers.max(params.search_concurrency),
        _ => params.publishers,
    };
    let plan = target::prepare(args.target, addrs[0], agents, params.topics).await?;
    if plan.topics.len() == 1 {
        println!("topic {}", plan.topic);
    } else {
        println!("{} topics, {} ..", plan.topics.len(), plan.topic);
    }
    let report = match params.scenario {
        Scenario::Fanout => Outcome::Delivery(fanout::run(&params, &plan, &addrs, &addrs).await?),
        Scenario::Cluster => {
            Outcome::Delivery(fanout::run(&params, &plan, &addrs[..1], &addrs[1..]).await?)
        }
        Scenario::Connections => Outcome::Delivery(connections::run(&params, &plan, &addrs).await?),
        Scenario::Search => Outcome::Search(search::run(&params, &plan, addrs[0]).await?),
    };
    Ok(report)
}

/// The JSON line of a report.
pub fn json_line(r: &Outcome) -> String {
    serde_json::to_string(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// `carapace bench --serve-raw ADDR`: serves the raw target until `shutdown` resolves.
pub async fn serve_raw(
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), BenchError> {
    if !addr.ip().is_loopback() {
        return Err(BenchError::Args(format!(
            "{addr} is not a loopback address"
        )));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let local = raw::spawn(addr, stop_rx)
        .await
        .map_err(|e| BenchError::Io(format!("binding {addr}: {e}")))?;
    println!("raw broadcast server listening on {local}");
    shutdown.await;
    let _ = stop_tx.send(true);
    Ok(())
}
