//! The `fanout` and `cluster` scenarios: N subscribers on one topic (or spread over
//! `--topics`, subscriber and publisher `i` on topic `i % topics`), P publishers posting as
//! fast as the target absorbs. Each publisher keeps at most `window` events in flight (sent
//! but not yet delivered to every subscriber), so every target runs at its own sustainable
//! maximum with bounded queues rather than being flooded into dropping. Latency is measured
//! per (event, subscriber) from the send time carried in the payload to the read, on the
//! bench's one clock. In `cluster`, publishers use the first address and subscribers are
//! spread over the others.

use crate::target::{Conn, Plan};
use crate::wire::{self, Mark};
use crate::{BenchError, Params, Report, stats::Histogram};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, mpsc, watch};

/// An event not delivered to every subscriber within this long stops holding its
/// publisher's window (it counts as lost unless it arrives before the end).
const STALL: Duration = Duration::from_secs(5);
/// After publishing stops, the bench waits for events still in flight while they keep
/// arriving, at most `DRAIN_MAX`; what never arrives is lost.
const DRAIN_IDLE: Duration = Duration::from_secs(5);
const DRAIN_MAX: Duration = Duration::from_secs(30);
/// Events the bench can account for in one run, over all publishers (4 bytes each).
const MAX_EVENTS: usize = 8 << 20;
/// Distinct prose fillers with `--prose`: more than the hub's near-duplicate window (the
/// author's last 50 items) by far.
const FILLERS: usize = 1024;
/// A paced send this far behind its time counts as late (the window was full, or the
/// bench did not get the CPU in time).
const LATE: Duration = Duration::from_millis(5);

struct Shared {
    /// Per publisher: the subscribers of its topic, who must all receive each event.
    expected: Vec<u32>,
    /// Per publisher, per event number: how many subscribers received it.
    counts: Vec<Box<[AtomicU32]>>,
    /// Per publisher: woken when one of its events reached every subscriber.
    done: Vec<Notify>,
    /// Per publisher: the event numbers the target refused as near-duplicates.
    refused: Vec<Mutex<Vec<usize>>>,
    error: Mutex<Option<String>>,
    failed: AtomicBool,
}

impl Shared {
    fn fail(&self, e: String) {
        if let Ok(mut g) = self.error.lock()
            && g.is_none()
        {
            *g = Some(e);
        }
        self.failed.store(true, Ordering::Release);
    }
}

#[derive(Default)]
struct SubStats {
    hist: Histogram,
    delivered: u64,
    out_of_order: u64,
    last_ns: u64,
    closed: bool,
}

struct PubStats {
    sent: usize,
    first_measured: Option<usize>,
    gave_up: u64,
    /// Paced sends that went out more than `LATE` after their time.
    late: u64,
}

pub async fn run(
    params: &Params,
    plan: &Plan,
    pub_addrs: &[SocketAddr],
    sub_addrs: &[SocketAddr],
) -> Result<Report, BenchError> {
    let n_subs = params.subscribers;
    let n_pubs = params.publishers;
    let per_pub = MAX_EVENTS / n_pubs.max(1);
    let n_topics = plan.topics.len();
    let expected: Vec<u32> = (0..n_pubs)
        .map(|p| (0..n_subs).filter(|i| i % n_topics == p % n_topics).count() as u32)
        .collect();
    let shared = Arc::new(Shared {
        expected,
        counts: (0..n_pubs)
            .map(|_| (0..per_pub).map(|_| AtomicU32::new(0)).collect())
            .collect(),
        done: (0..n_pubs).map(|_| Notify::new()).collect(),
        refused: (0..n_pubs).map(|_| Mutex::new(Vec::new())).collect(),
        error: Mutex::new(None),
        failed: AtomicBool::new(false),
    });
    let rss_before = params.rss();
    let (stop_tx, stop_rx) = watch::channel(false);

    println!("connecting {n_subs} subscribers to {}", list(sub_addrs));
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(params.connect_concurrency));
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), BenchError>>(64);
    let mut subs = Vec::with_capacity(n_subs);
    for i in 0..n_subs {
        let addr = sub_addrs[i % sub_addrs.len()];
        let source = params.source_ip(i);
        subs.push(tokio::spawn(subscriber(
            plan.clone(),
            i,
            addr,
            source,
            gate.clone(),
            ready_tx.clone(),
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    drop(ready_tx);
    let mut ready = 0;
    while ready < n_subs {
        match ready_rx.recv().await {
            Some(Ok(())) => ready += 1,
            Some(Err(e)) => {
                let _ = stop_tx.send(true);
                return Err(e);
            }
            None => break,
        }
    }
    println!(
        "  {ready} subscribed in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let mut pubs = Vec::with_capacity(n_pubs);
    for p in 0..n_pubs {
        let addr = pub_addrs[p % pub_addrs.len()];
        let conn = Conn::open(plan.kind, addr, None, plan.token(p), false).await;
        match conn {
            Ok(c) => pubs.push(c),
            Err(e) => {
                let _ = stop_tx.send(true);
                return Err(e);
            }
        }
    }
    println!("{n_pubs} publishers connected to {}", list(pub_addrs));
    let rss_connected = params.rss();

    let t0 = wire::now_ns();
    let warm_end_ns = t0 + params.warmup.as_nanos() as u64;
    let end = Instant::now() + params.warmup + params.duration;
    println!(
        "publishing for {} s (+{} s warm-up), {} bytes, window {} per publisher, {}",
        params.duration.as_secs(),
        params.warmup.as_secs(),
        params.size,
        params.window,
        match params.rate {
            Some(r) => format!("paced at {r} events/s in all"),
            None => "as fast as the window allows".into(),
        }
    );
    let fillers: Option<Arc<[String]>> = params.prose.then(|| {
        crate::prose::Prose::new()
            .fillers(FILLERS, params.size)
            .into()
    });
    let cpu_start = params.cpu();
    let mut tasks = Vec::with_capacity(n_pubs);
    for (p, conn) in pubs.into_iter().enumerate() {
        tasks.push(tokio::spawn(publisher(
            p,
            conn,
            plan.topic_of(p).to_string(),
            Payload {
                size: params.size,
                fillers: fillers.clone(),
            },
            params.window,
            params
                .rate
                .map(|r| Duration::from_secs_f64(n_pubs as f64 / r)),
            warm_end_ns,
            end,
            shared.clone(),
        )));
    }
    let mut pstats = Vec::with_capacity(n_pubs);
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => pstats.push(s),
            Ok(Err(e)) => shared.fail(e.to_string()),
            Err(e) => shared.fail(format!("publisher task: {e}")),
        }
    }
    let rss_after = params.rss();
    let cpu_end = params.cpu();
    let _ = stop_tx.send(true);
    let mut total = SubStats::default();
    let mut closed = 0;
    for s in subs {
        if let Ok(Some(s)) = s.await {
            total.hist.merge(&s.hist);
            total.delivered += s.delivered;
            total.out_of_order += s.out_of_order;
            total.last_ns = total.last_ns.max(s.last_ns);
            closed += s.closed as usize;
        }
    }
    if let Ok(mut g) = shared.error.lock()
        && let Some(e) = g.take()
    {
        return Err(BenchError::Target(e));
    }

    let mut published = 0u64;
    let mut expected = 0u64;
    let mut lost = 0u64;
    let mut refused = 0u64;
    let mut gave_up = 0u64;
    let mut late = 0u64;
    for (p, s) in pstats.iter().enumerate() {
        gave_up += s.gave_up;
        late += s.late;
        let Some(first) = s.first_measured else {
            continue;
        };
        let no = shared.refused[p]
            .lock()
            .map(|r| r.iter().filter(|&&n| n >= first && n < s.sent).count())
            .unwrap_or(0);
        refused += no as u64;
        published += (s.sent - first - no) as u64;
        expected += (s.sent - first - no) as u64 * u64::from(shared.expected[p]);
        // A refused event is marked complete by the publisher's reader: not counted here.
        for c in &shared.counts[p][first..s.sent] {
            lost += u64::from(shared.expected[p].saturating_sub(c.load(Ordering::Acquire)));
        }
    }
    let secs = if total.last_ns > warm_end_ns {
        (total.last_ns - warm_end_ns) as f64 / 1e9
    } else {
        params.duration.as_secs_f64()
    };
    let rate = if secs > 0.0 {
        total.delivered as f64 / secs
    } else {
        0.0
    };
    if params.rate.is_some() {
        println!("paced sends more than {} ms late: {late}", LATE.as_millis());
    }
    println!(
        "published {published} events, delivered {} of {} (lost {lost}, refused as near-duplicates {refused}, out of order {}, stalled {gave_up}, subscribers closed {closed})",
        total.delivered, expected, total.out_of_order
    );
    println!(
        "deliveries/s {rate:.0} over {secs:.2} s; latency p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        total.hist.quantile_ms(0.5),
        total.hist.quantile_ms(0.99),
        total.hist.quantile_ms(0.999),
        total.hist.quantile_ms(1.0)
    );
    if let ((Some(s0), Some(b0)), (Some(s1), Some(b1))) = (cpu_start, cpu_end) {
        let wall = params.warmup.as_secs_f64() + secs;
        println!(
            "CPU while publishing: server {:.1} s ({:.0}% of one core), bench {:.1} s ({:.0}%); server {:.2} CPU-µs per delivery",
            s1 - s0,
            100.0 * (s1 - s0) / wall,
            b1 - b0,
            100.0 * (b1 - b0) / wall,
            1e6 * (s1 - s0) / (total.delivered.max(1) as f64)
        );
    }
    let per_conn = match (rss_before, rss_connected) {
        // In a cluster the measured process holds only the publishers' connections.
        _ if params.scenario == crate::Scenario::Cluster => 0.0,
        (Some(a), Some(b)) => {
            println!(
                "server RSS: {a} KiB before, {b} KiB connected, {} KiB after publishing",
                rss_after.unwrap_or(0)
            );
            b.saturating_sub(a) as f64 / (n_subs + n_pubs).max(1) as f64
        }
        _ => 0.0,
    };
    Ok(Report {
        scenario: params.scenario.name(),
        target: plan.kind.name(),
        subscribers: n_subs,
        publishers: n_pubs,
        seconds: params.duration.as_secs(),
        published,
        delivered: total.delivered,
        deliveries_per_s: (rate * 10.0).round() / 10.0,
        p50_ms: total.hist.quantile_ms(0.5),
        p99_ms: total.hist.quantile_ms(0.99),
        p999_ms: total.hist.quantile_ms(0.999),
        lost,
        refused,
        rss_kib_per_conn: (per_conn * 100.0).round() / 100.0,
    })
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One subscriber: connects and subscribes (at most `gate` at a time), says so on `ready`,
/// then reads until `stop`. Returns `None` when it never got connected.
#[allow(clippy::too_many_arguments)]
async fn subscriber(
    plan: Plan,
    i: usize,
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<Result<(), BenchError>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Option<SubStats> {
    let conn = async {
        let _permit = gate
            .acquire()
            .await
            .map_err(|_| BenchError::Setup("closed".into()))?;
        let mut c = Conn::open(plan.kind, addr, source, None, false).await?;
        c.subscribe(plan.topic_of(i)).await?;
        Ok::<_, BenchError>(c)
    }
    .await;
    let mut conn = match conn {
        Ok(c) => {
            let _ = ready.send(Ok(())).await;
            c
        }
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return None;
        }
    };
    drop(ready);
    let mut st = SubStats::default();
    let mut last_n: Vec<i64> = vec![-1; shared.counts.len()];
    // One wait on `stop` for the whole loop: making a new one per message cost a tenth of
    // the bench's CPU.
    let mut stopped = std::pin::pin!(stop.changed());
    loop {
        let m = tokio::select! {
            biased;
            _ = &mut stopped => break,
            m = conn.next() => m,
        };
        let Some(m) = m else {
            st.closed = true;
            break;
        };
        let h = conn.handle(m, &mut |mark: Mark| {
            let now = wire::now_ns();
            let p = mark.publisher as usize;
            if let Some(c) = shared.counts.get(p).and_then(|v| v.get(mark.n as usize)) {
                if c.fetch_add(1, Ordering::AcqRel) + 1 == shared.expected[p] {
                    shared.done[p].notify_one();
                }
                let n = i64::from(mark.n);
                if n <= last_n[p] {
                    st.out_of_order += 1;
                }
                last_n[p] = last_n[p].max(n);
            }
            if !mark.warmup {
                st.hist.record(now.saturating_sub(mark.sent_ns));
                st.delivered += 1;
                st.last_ns = now;
            }
        });
        if let Some(r) = h.reply
            && conn.send(r).await.is_err()
        {
            st.closed = true;
            break;
        }
        if h.closed {
            st.closed = true;
            if let Some(e) = h.error {
                shared.fail(format!("a subscriber was disconnected: {e}"));
            }
            break;
        }
    }
    if !st.closed {
        conn.close().await;
    }
    Some(st)
}

/// What a publisher puts in its events.
struct Payload {
    size: usize,
    /// With `--prose`: a different text for each event of a publisher (cycled).
    fillers: Option<Arc<[String]>>,
}

impl Payload {
    fn of(&self, mark: &Mark) -> String {
        match &self.fillers {
            None => mark.payload(self.size),
            Some(f) => {
                // Publishers start at different places in the cycle.
                let i = (mark.publisher as usize * 131 + mark.n as usize) % f.len();
                mark.payload_with(self.size, &f[i])
            }
        }
    }
}

/// One publisher: keeps up to `window` events in flight until `end`, then waits (bounded)
/// for the last ones to arrive.
#[allow(clippy::too_many_arguments)]
async fn publisher(
    p: usize,
    conn: Conn,
    topic: String,
    payload: Payload,
    window: usize,
    interval: Option<Duration>,
    warm_end_ns: u64,
    end: Instant,
    shared: Arc<Shared>,
) -> Result<PubStats, BenchError> {
    let (mut sink, mut stream) = conn.split();
    let (pong_tx, mut pong_rx) = mpsc::channel(16);
    let reader_shared = shared.clone();
    // Event n is the post sent with command id `first_id + n`.
    let first_id = sink.next_id();
    // Set before this side closes: the target's answering Close frame is then no failure.
    let closing = Arc::new(AtomicBool::new(false));
    let reader_closing = closing.clone();
    // Reads replies and pings; owned here, aborted at the end.
    let reader = tokio::spawn(async move {
        while let Some(m) = stream.next().await {
            let h = stream.handle(m, &mut |_| {});
            if let Some(e) = h.error
                && !reader_closing.load(Ordering::Acquire)
            {
                reader_shared.fail(format!("publisher {p}: {e}"));
            }
            if h.closed {
                break;
            }
            if let Some(n) = h.refused.and_then(|id| id.checked_sub(first_id)) {
                let n = n as usize;
                if let Some(c) = reader_shared.counts[p].get(n) {
                    // Nobody will receive it: it no longer holds the publisher's window.
                    c.store(reader_shared.expected[p], Ordering::Release);
                    if let Ok(mut r) = reader_shared.refused[p].lock() {
                        r.push(n);
                    }
                    reader_shared.done[p].notify_one();
                }
            }
            if let Some(r) = h.reply {
                let _ = pong_tx.try_send(r);
            }
        }
    });
    let counts = &shared.counts[p];
    let cap = counts.len();
    let mut sent = 0usize;
    let mut oldest = 0usize;
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(window);
    let mut first_measured = None;
    let mut gave_up = 0u64;
    let mut publishing = true;
    let mut late = 0u64;
    // Paced publishers start staggered over one interval, so the total rate is even.
    let mut next_at = Instant::now()
        + interval.map_or(Duration::ZERO, |iv| {
            iv.mul_f64(p as f64 / shared.done.len().max(1) as f64)
        });
    let drain_end = end + DRAIN_MAX;
    let mut progress_at = Instant::now();
    let result = 'run: loop {
        let now = Instant::now();
        if publishing && (now >= end || sent >= cap) {
            publishing = false;
        }
        while oldest < sent && counts[oldest].load(Ordering::Acquire) >= shared.expected[p] {
            oldest += 1;
            sent_at.pop_front();
            progress_at = now;
        }
        if let Some(t) = sent_at.front()
            && now.duration_since(*t) > STALL
        {
            gave_up += 1;
            oldest += 1;
            sent_at.pop_front();
            continue;
        }
        if shared.failed.load(Ordering::Acquire) {
            break Ok(());
        }
        if !publishing
            && (oldest == sent || now >= drain_end || now.duration_since(progress_at) > DRAIN_IDLE)
        {
            break Ok(());
        }
        if publishing && sent - oldest < window && Instant::now() >= next_at {
            while sent - oldest < window && sent < cap {
                if let Some(iv) = interval {
                    let now = Instant::now();
                    if now < next_at {
                        break;
                    }
                    if now.duration_since(next_at) > LATE {
                        late += 1;
                    }
                    next_at += iv;
                }
                let sent_ns = wire::now_ns();
                let warmup = sent_ns < warm_end_ns;
                if !warmup && first_measured.is_none() {
                    first_measured = Some(sent);
                }
                let mark = Mark {
                    publisher: p as u32,
                    n: sent as u32,
                    sent_ns,
                    warmup,
                };
                if let Err(e) = sink.publish(&topic, &payload.of(&mark)).await {
                    break 'run Err(e);
                }
                sent += 1;
                sent_at.push_back(Instant::now());
            }
            if let Err(e) = sink.flush().await {
                break Err(e);
            }
            if interval.is_none() {
                continue;
            }
        }
        let wake = if publishing && interval.is_some() {
            next_at.min(Instant::now() + Duration::from_millis(20))
        } else {
            Instant::now() + Duration::from_millis(20)
        };
        tokio::select! {
            _ = shared.done[p].notified() => {}
            Some(r) = pong_rx.recv() => {
                if let Err(e) = sink.feed(r).await {
                    break Err(e);
                }
                if let Err(e) = sink.flush().await {
                    break Err(e);
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    };
    closing.store(true, Ordering::Release);
    sink.close().await;
    reader.abort();
    result.map(|()| PubStats {
        sent,
        first_measured,
        gave_up,
        late,
    })
}
