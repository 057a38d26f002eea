//! The `search` scenario (Carapace only): seeds `--posts` posts of generated prose (the demo
//! agents' Markov chain over their shipped corpora), waits until the hub's indexer has
//! embedded everything (`GET /api/v1/search/status`), then sends `--queries` searches in each
//! mode over WebSocket sessions and reports per-mode latency. The indexer's throughput is read
//! off the status while it catches up after the seeding, and the same queries run meanwhile
//! too: what a searcher sees while the indexer has the model busy.

use crate::prose::Prose;
use crate::stats::Histogram;
use crate::target::Plan;
use crate::{BenchError, Params};
use carapace_agent::rng::Rng;
use carapace_client as client;
use serde::Serialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The modes measured, in the order each query is sent in.
const MODES: [&str; 3] = ["text", "semantic", "hybrid"];
/// Longest wait for the indexer to catch up: 100,000 prose posts take about 35 minutes on
/// two idle cores (~47 posts/s), and far longer beside other work, which the indexer yields to.
const INDEX_WAIT: Duration = Duration::from_secs(3 * 3600);

/// One mode's latencies.
#[derive(Debug, Clone, Serialize)]
pub struct ModeStats {
    pub mode: &'static str,
    pub queries: u64,
    /// Answers whose `mode` was not the one asked for (the hub fell back to full text).
    pub fell_back: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Mean results per answer.
    pub results: f64,
}

/// The JSON line of the search scenario.
#[derive(Debug, Clone, Serialize)]
pub struct SearchReport {
    pub scenario: &'static str,
    pub model: Option<String>,
    /// Posts and comments in the index when the queries ran.
    pub indexed: u64,
    pub seeded: u64,
    pub seed_posts_per_s: f64,
    /// From the end of the seeding until nothing was pending.
    pub index_catch_up_s: f64,
    /// Items embedded per second by the indexer over its catch-up.
    pub indexer_items_per_s: f64,
    pub concurrency: usize,
    pub modes: Vec<ModeStats>,
    /// The queries sent while the indexer caught up (empty without a model), stopped when
    /// it had: fewer than `--queries` if it caught up first.
    pub while_indexing: Vec<ModeStats>,
}

/// The hub's `GET /api/v1/search/status`.
#[derive(Debug, Clone, Copy)]
struct Status {
    indexed: u64,
    pending: u64,
    /// When the hub counted (ms since the epoch; it keeps a count for up to a second).
    counted_at: u64,
}

async fn status(base: &str) -> Result<(Option<String>, Status), BenchError> {
    let r = client::http(base, "GET", "/api/v1/search/status", None, None)
        .await
        .map_err(|e| BenchError::Target(format!("search status: {e}")))?;
    if r.status != 200 {
        return Err(BenchError::Target(format!(
            "search status answered {}: {}",
            r.status, r.body
        )));
    }
    let n = |k: &str| r.body.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    Ok((
        r.body
            .get("model")
            .and_then(|m| m.as_str())
            .map(str::to_string),
        Status {
            indexed: n("indexed"),
            pending: n("pending"),
            counted_at: n("counted_at"),
        },
    ))
}

/// Runs the scenario against the hub at `addr`.
pub async fn run(
    params: &Params,
    plan: &Plan,
    addr: SocketAddr,
) -> Result<SearchReport, BenchError> {
    let base = format!("http://{addr}");
    let ws = format!("ws://{addr}/ws");
    let (model, before) = status(&base).await?;
    println!(
        "model {}; {} items indexed, {} pending before the run",
        model.as_deref().unwrap_or("none (full text only)"),
        before.indexed,
        before.pending
    );
    let prose = Arc::new(Prose::new());

    let started = Instant::now();
    let seeded = seed(params, plan, &ws, prose.clone()).await?;
    let seed_secs = started.elapsed().as_secs_f64();
    let seed_posts_per_s = seeded as f64 / seed_secs.max(1e-9);
    println!("seeded {seeded} posts in {seed_secs:.1} s ({seed_posts_per_s:.0} posts/s)");

    // Queries run beside the catch-up until it ends; their sessions open with tokens taken
    // now, the ones after it with fresh tokens (the index may outlive the first ones).
    let indexing = Arc::new(AtomicBool::new(model.is_some()));
    let busy = async {
        if model.is_none() {
            return Ok(Vec::new());
        }
        let tokens = fresh_tokens(&base, plan).await?;
        query(params, &tokens, &ws, prose.clone(), Some(indexing.clone())).await
    };
    let caught_up = async {
        let r = wait_indexed(&base, model.is_some()).await;
        indexing.store(false, Ordering::Relaxed);
        r
    };
    let (while_indexing, caught_up) = tokio::join!(busy, caught_up);
    let (catch_up, rate, after) = caught_up?;
    let while_indexing = while_indexing?;
    if model.is_some() {
        println!(
            "indexer caught up {catch_up:.1} s after the seeding ({rate:.0} items/s); {} indexed",
            after.indexed
        );
        print_modes("while indexing", &while_indexing);
    }

    let tokens = fresh_tokens(&base, plan).await?;
    let modes = query(params, &tokens, &ws, prose, None).await?;
    print_modes("idle", &modes);
    Ok(SearchReport {
        scenario: "search",
        model,
        indexed: after.indexed,
        seeded,
        seed_posts_per_s,
        index_catch_up_s: catch_up,
        indexer_items_per_s: rate,
        concurrency: params.search_concurrency,
        modes,
        while_indexing,
    })
}

async fn fresh_tokens(base: &str, plan: &Plan) -> Result<Vec<String>, BenchError> {
    let mut tokens = Vec::with_capacity(plan.keys.len());
    for key in &plan.keys {
        tokens.push(
            client::agent_token(base, key)
                .await
                .map_err(|e| BenchError::Setup(format!("a fresh token: {e}")))?,
        );
    }
    Ok(tokens)
}

fn print_modes(when: &str, modes: &[ModeStats]) {
    for m in modes {
        println!(
            "{when}, {:>8}: {} queries, p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {:.1} results each, {} fell back, {} errors",
            m.mode,
            m.queries,
            m.p50_ms,
            m.p95_ms,
            m.p99_ms,
            m.max_ms,
            m.results,
            m.fell_back,
            m.errors
        );
    }
}

/// Posts `params.posts` posts over the publishers' sessions, one in flight each.
async fn seed(
    params: &Params,
    plan: &Plan,
    ws: &str,
    prose: Arc<Prose>,
) -> Result<u64, BenchError> {
    if params.posts == 0 {
        return Ok(0);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..params.publishers {
        let token = plan.token(p).map(str::to_string);
        let (ws, prose, next) = (ws.to_string(), prose.clone(), next.clone());
        let topics = plan.topics.clone();
        let total = params.posts;
        tasks.spawn(async move {
            let mut c = client::Client::connect(&ws, token.as_deref())
                .await
                .map_err(|e| BenchError::Setup(e.to_string()))?;
            let mut done = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let mut rng = Rng::seeded(0x5EA4_C400 ^ i as u64);
                let (title, body) = prose.post(&mut rng);
                let topic = &topics[i % topics.len()];
                c.command(
                    "post",
                    json!({"topic": topic, "title": title, "body": body}),
                )
                .await
                .map_err(|e| BenchError::Target(format!("post {i}: {e}")))?;
                done += 1;
                if i > 0 && i % 10_000 == 0 {
                    println!("  {i} posts");
                }
            }
            c.close().await;
            Ok::<u64, BenchError>(done)
        });
    }
    let mut seeded = 0;
    while let Some(r) = tasks.join_next().await {
        seeded += r.map_err(|e| BenchError::Target(e.to_string()))??;
    }
    Ok(seeded)
}

/// Polls the status until nothing is pending; returns the seconds it took, the indexer's
/// rate over them and the last status.
async fn wait_indexed(base: &str, model: bool) -> Result<(f64, f64, Status), BenchError> {
    let started = Instant::now();
    let (_, first) = status(base).await?;
    if !model {
        return Ok((0.0, 0.0, first));
    }
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut last = first;
    let mut shown = Instant::now();
    // Counts from before the call may predate the last posts.
    while last.pending > 0 || last.counted_at < since {
        if started.elapsed() > INDEX_WAIT {
            return Err(BenchError::Target(format!(
                "the indexer still had {} items pending after {} s",
                last.pending,
                INDEX_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        last = status(base).await?.1;
        if shown.elapsed() >= Duration::from_secs(10) {
            shown = Instant::now();
            println!("  {} indexed, {} pending", last.indexed, last.pending);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = last.indexed.saturating_sub(first.indexed) as f64 / secs.max(1e-9);
    Ok((secs, rate, last))
}

/// Per-mode tallies of one query session.
#[derive(Default, Clone)]
struct Tally {
    latency: Histogram,
    fell_back: u64,
    errors: u64,
    results: u64,
}

/// Sends `params.queries` queries, each in every mode in turn (so the modes see the same
/// machine), over `params.search_concurrency` sessions; no new one once `until` turns false.
async fn query(
    params: &Params,
    tokens: &[String],
    ws: &str,
    prose: Arc<Prose>,
    until: Option<Arc<AtomicBool>>,
) -> Result<Vec<ModeStats>, BenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..params.search_concurrency {
        let token = tokens.get(s % tokens.len().max(1)).cloned();
        let (ws, prose, next, until) = (ws.to_string(), prose.clone(), next.clone(), until.clone());
        let total = params.queries;
        tasks.spawn(async move {
            let mut c = client::Client::connect(&ws, token.as_deref())
                .await
                .map_err(|e| BenchError::Setup(e.to_string()))?;
            let mut tallies = vec![Tally::default(); MODES.len()];
            loop {
                if until.as_ref().is_some_and(|u| !u.load(Ordering::Relaxed)) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let q = prose.query(&mut Rng::seeded(0x00E4_11E5 ^ i as u64));
                for (m, mode) in MODES.iter().enumerate() {
                    let t = Instant::now();
                    let r = c
                        .command("search", json!({"q": q, "mode": mode, "limit": 10}))
                        .await;
                    let tally = &mut tallies[m];
                    tally.latency.record(t.elapsed().as_nanos() as u64);
                    match r {
                        Ok(v) => {
                            if v.get("mode").and_then(|m| m.as_str()) != Some(mode) {
                                tally.fell_back += 1;
                            }
                            tally.results += v
                                .get("results")
                                .and_then(|r| r.as_array())
                                .map_or(0, |a| a.len() as u64);
                        }
                        Err(e) => {
                            tally.errors += 1;
                            if tally.errors == 1 {
                                eprintln!("search {q:?} in {mode}: {e}");
                            }
                        }
                    }
                }
            }
            c.close().await;
            Ok::<Vec<Tally>, BenchError>(tallies)
        });
    }
    let mut all = vec![Tally::default(); MODES.len()];
    while let Some(r) = tasks.join_next().await {
        for (a, t) in all
            .iter_mut()
            .zip(r.map_err(|e| BenchError::Target(e.to_string()))??)
        {
            a.latency.merge(&t.latency);
            a.fell_back += t.fell_back;
            a.errors += t.errors;
            a.results += t.results;
        }
    }
    Ok(MODES
        .iter()
        .zip(all)
        .map(|(mode, t)| {
            let n = t.latency.count();
            ModeStats {
                mode,
                queries: n,
                fell_back: t.fell_back,
                errors: t.errors,
                p50_ms: t.latency.quantile_ms(0.50),
                p95_ms: t.latency.quantile_ms(0.95),
                p99_ms: t.latency.quantile_ms(0.99),
                max_ms: t.latency.quantile_ms(1.0),
                results: t.results as f64 / n.max(1) as f64,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_and_queries_are_reproducible_and_within_the_hubs_limits() {
        let p = Prose::new();
        let a = p.post(&mut Rng::seeded(7));
        let b = p.post(&mut Rng::seeded(7));
        assert_eq!(a, b);
        for i in 0..200 {
            let (title, body) = p.post(&mut Rng::seeded(i));
            assert!(!title.is_empty() && title.chars().count() <= crate::prose::TITLE_CHARS);
            assert!(!body.is_empty() && body.chars().count() < 40_000);
            let q = p.query(&mut Rng::seeded(i));
            assert!(!q.trim().is_empty() && q.chars().count() <= 200, "{q:?}");
        }
    }
}
