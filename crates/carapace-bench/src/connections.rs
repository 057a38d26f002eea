//! The `connections` scenario: N idle sessions (authenticated agents for Carapace), each
//! subscribed to one topic as a real idle client would be. Measures how fast they connect
//! (handshake, auth and subscription, at most `connect_concurrency` at a time) and the
//! server's resident memory per session, then holds them for the duration and counts any
//! that the server dropped.

use crate::target::{Conn, Plan};
use crate::{BenchError, Params, Report, stats::Histogram};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};

pub async fn run(params: &Params, plan: &Plan, addrs: &[SocketAddr]) -> Result<Report, BenchError> {
    let n = params.subscribers;
    let rss_before = params.rss();
    let (stop_tx, stop_rx) = watch::channel(false);
    let dropped = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(params.connect_concurrency));
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<u64, BenchError>>(256);
    println!(
        "opening {n} idle sessions to {} from {} source address(es), {} at a time",
        addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        params.source_ips,
        params.connect_concurrency
    );
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tasks.push(tokio::spawn(session(
            plan.clone(),
            i,
            addrs[i % addrs.len()],
            params.source_ip(i),
            gate.clone(),
            ready_tx.clone(),
            dropped.clone(),
            stop_rx.clone(),
        )));
    }
    drop(ready_tx);
    let mut hist = Histogram::default();
    let mut failed = 0u64;
    let mut first_error = None;
    let mut last_print = Instant::now();
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(ns) => hist.record(ns),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            last_print = Instant::now();
            println!(
                "  {} connected, {failed} failed, {:.1} s",
                hist.count(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    let took = started.elapsed().as_secs_f64();
    let connected = hist.count();
    let rate = connected as f64 / took.max(1e-9);
    println!(
        "{connected} sessions up in {took:.2} s ({rate:.0}/s), {failed} failed; handshake p50 {:.3} ms, p99 {:.3} ms",
        hist.quantile_ms(0.5),
        hist.quantile_ms(0.99)
    );
    if let Some(e) = &first_error {
        println!("  first failure: {e}");
    }
    // Let the server settle (allocator, lazily created state) before reading its memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_up = params.rss();
    let per_conn = match (rss_before, rss_up) {
        (Some(a), Some(b)) if connected > 0 => {
            let per = b.saturating_sub(a) as f64 / connected as f64;
            println!(
                "server RSS: {a} KiB before, {b} KiB with {connected} sessions: {per:.2} KiB per session"
            );
            per
        }
        _ => {
            println!("server RSS: unknown (no --server-pid and no listener found)");
            0.0
        }
    };
    println!("holding them idle for {} s", params.duration.as_secs());
    tokio::time::sleep(params.duration).await;
    let lost_sessions = dropped.load(Ordering::Acquire);
    println!("{lost_sessions} sessions were closed by the server while idle");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    if connected == 0
        && let Some(e) = first_error
    {
        return Err(e);
    }
    Ok(Report {
        scenario: params.scenario.name(),
        target: plan.kind.name(),
        subscribers: connected as usize,
        publishers: 0,
        seconds: params.duration.as_secs(),
        published: 0,
        delivered: 0,
        deliveries_per_s: 0.0,
        p50_ms: hist.quantile_ms(0.5),
        p99_ms: hist.quantile_ms(0.99),
        p999_ms: hist.quantile_ms(0.999),
        lost: 0,
        refused: 0,
        rss_kib_per_conn: (per_conn * 100.0).round() / 100.0,
    })
}

/// One idle session: connect, authenticate, subscribe, then answer pings until `stop`.
#[allow(clippy::too_many_arguments)]
async fn session(
    plan: Plan,
    i: usize,
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<Result<u64, BenchError>>,
    dropped: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let conn = async {
        let _permit = gate
            .acquire()
            .await
            .map_err(|_| BenchError::Setup("closed".into()))?;
        let t = Instant::now();
        let mut c = Conn::open(plan.kind, addr, source, plan.token(i), true).await?;
        c.subscribe(&plan.topic).await?;
        Ok::<_, BenchError>((c, t.elapsed().as_nanos() as u64))
    }
    .await;
    let mut conn = match conn {
        Ok((c, ns)) => {
            let _ = ready.send(Ok(ns)).await;
            c
        }
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return;
        }
    };
    drop(ready);
    loop {
        let m = tokio::select! {
            _ = stop.changed() => break,
            m = conn.next() => m,
        };
        let Some(m) = m else {
            dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let h = conn.handle(m, &mut |_| {});
        if h.closed {
            dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(r) = h.reply
            && conn.send(r).await.is_err()
        {
            dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    drop(conn);
}
