//! Network partitions: replicas from the real binary, each on a test host of its own (a
//! network namespace with one veth link to the machine for its clients and HAProxy, one for
//! Redis, one for PostgreSQL), a Redis, a PostgreSQL and a HAProxy of the test's own on the
//! machine. One link of one replica is cut (silently: packets vanish) and healed.
//!
//! - Cut from Redis, not from its clients: the replica notices within seconds, answers
//!   `/readyz` 503 (HAProxy takes it out), closes its sessions with 1012 once the bus has
//!   been down for its grace, its clients resume through HAProxy on the other replica, and it
//!   comes back when the link heals. Agents write and spectators (topics, firehose) watch
//!   through HAProxy all along: every acknowledged write is stored once and every spectator
//!   sees each channel's stored sequence exactly.
//! - Cut from PostgreSQL: writes there fail with `unavailable` (WebSocket) and 503 (HTTP)
//!   within a bound, live events from the other replica still arrive, nothing refused is
//!   stored and nothing is half-written, and writes work again after the heal.
//!
//! Needs root (`ip netns`); timings are printed.

mod common;

use carapace::clock::now_ms;
use carapace_client::{self as client, Client, ClientError};
use common::haproxy::Haproxy;
use common::infra::{self, OwnPostgres, OwnRedis, PgDb, Replica};
use common::netns::TestHost;
use common::traffic::{Load, pauses, population, stored};
use common::{metric, raw_get};
use serde_json::json;
use sqlx::Executor;
use std::collections::HashSet;
use std::time::Duration;
use tokio::task::block_in_place;
use tokio::time::Instant;

/// Load for the Redis cut: small enough to keep the test short on two cores, large enough
/// that both replicas carry sessions of every kind.
const OWNERS: usize = 8;
const AGENTS: usize = 24;
const TOPICS: usize = 4;
const TOPIC_SPECTATORS: usize = 40;
const FIREHOSE_SPECTATORS: usize = 8;
/// Sessions writing on the replica cut from PostgreSQL as fast as it answers.
const BUSY: usize = 4;

/// One test at a time: each starts a PostgreSQL, a Redis, a HAProxy and two replicas.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The service on test hosts. Fields drop in order: the replicas before their hosts, the
/// database before its server.
struct Site {
    replicas: Vec<Replica>,
    lb: Haproxy,
    db: PgDb,
    _redis: OwnRedis,
    _pg: OwnPostgres,
    hosts: Vec<TestHost>,
    dir: std::path::PathBuf,
}

impl Site {
    /// `n` replicas with `extra` arguments, each on a test host of its own.
    async fn start(n: usize, extra: &[&str]) -> Site {
        let hosts: Vec<TestHost> = (0..n)
            .map(|_| TestHost::new(&["clients", "redis", "pg"]))
            .collect();
        let on = |label: &str| -> Vec<std::net::IpAddr> {
            hosts.iter().map(|h| h.link(label).host_ip).collect()
        };
        let redis = block_in_place(|| OwnRedis::start_on(&on("redis")));
        let pg = block_in_place(|| OwnPostgres::start_on(&on("pg")));
        let db = PgDb::create_on(&pg.server(), "partition").await;
        let dir = common::temp_dir("partition");
        let secrets = dir.join("secrets");
        let mut replicas = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            let db_url = db
                .url
                .replace("127.0.0.1", &h.link("pg").host_ip.to_string());
            let redis_url = format!("redis://{}:{}", h.link("redis").host_ip, redis.port);
            let mut args = vec![
                "--database-url",
                &db_url,
                "--redis-url",
                &redis_url,
                "--secrets-dir",
                secrets.to_str().expect("UTF-8 temp dir"),
                "--drain-grace",
                "2",
                // Every client of this test comes through one address.
                "--signups-per-addr-hour",
                "1000",
                "--agents-per-addr-hour",
                "1000",
                "--anon-ws-per-addr",
                "1000",
            ];
            args.extend_from_slice(extra);
            let id = format!("r{}", i + 1);
            let r = block_in_place(|| {
                Replica::start_in(&h.prefix(), h.link("clients").ns_ip, &id, &dir, &args)
            });
            // The first makes the schema and the keys; the others share them.
            let deadline = Instant::now() + Duration::from_secs(20);
            while infra::readyz(&r.base()).await != 200 {
                assert!(Instant::now() < deadline, "{id} not ready: {}", r.logs());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            replicas.push(r);
        }
        let addrs: Vec<String> = replicas.iter().map(|r| r.addr().to_string()).collect();
        let lb = block_in_place(|| Haproxy::start_at(&addrs));
        Site {
            replicas,
            lb,
            db,
            _redis: redis,
            _pg: pg,
            hosts,
            dir,
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.replicas.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The sessions a replica holds now (its `carapace_sessions` gauge).
async fn sessions(base: &str) -> f64 {
    metric(&raw_get(base, "/metrics").await, "carapace_sessions")
}

/// Polls `ok` every 50 ms; how long it took to hold, or a panic after `within`.
async fn until<F, Fut>(what: &str, within: Duration, mut ok: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !ok().await {
        assert!(
            t0.elapsed() < within,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t0.elapsed()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_cut_off_from_redis_sends_its_clients_elsewhere_and_loses_nothing() {
    let _one = SERIAL.lock().await;
    let t0 = Instant::now();
    let site = Site::start(2, &[]).await;
    let agents = population(&site.lb.base(), OWNERS, AGENTS, TOPICS).await;
    let load = Load::start(
        &site.lb.ws(),
        agents,
        TOPICS,
        TOPIC_SPECTATORS,
        FIREHOSE_SPECTATORS,
    )
    .await;
    let clients = (AGENTS + TOPIC_SPECTATORS + FIREHOSE_SPECTATORS) as f64;
    let (r1, r2) = (site.replicas[0].base(), site.replicas[1].base());
    until(
        "every client connected",
        Duration::from_secs(20),
        || async { sessions(&r1).await + sessions(&r2).await >= clients },
    )
    .await;
    let setup = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let on_r1 = sessions(&r1).await;
    assert!(on_r1 > 0.0, "HAProxy gave r1 no session");

    let from = now_ms();
    let cut = Instant::now();
    site.hosts[0].cut("redis");
    // A silent cut: only the link's ping (every second, 2 s to answer) can tell.
    until(
        "r1 unready without Redis",
        Duration::from_secs(6),
        || async { infra::readyz(&r1).await == 503 },
    )
    .await;
    let noticed = cut.elapsed();
    block_in_place(|| site.lb.wait_state(1, "DOWN", Duration::from_secs(10)));
    let out_of_rotation = cut.elapsed();
    until("r1 without sessions", Duration::from_secs(15), || async {
        sessions(&r1).await == 0.0
    })
    .await;
    let emptied = cut.elapsed();
    until("every client on r2", Duration::from_secs(20), || async {
        sessions(&r2).await >= clients
    })
    .await;
    let moved = cut.elapsed();
    // A replica still cut off refuses sessions: they would miss the other replica's events.
    let refused = Client::connect(&site.replicas[0].ws(), None).await;
    assert!(
        refused.is_err(),
        "r1 took a session while cut off from Redis"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let healed = Instant::now();
    site.hosts[0].heal("redis");
    infra::wait_ready(&r1, Duration::from_secs(20)).await;
    let ready = healed.elapsed();
    block_in_place(|| site.lb.wait_checked_up(1, Duration::from_secs(15)));
    let back = healed.elapsed();
    let unready = (healed + ready) - (cut + noticed);
    // Clients connecting now may land on r1 again and must see everything there too.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let out = load.finish(&site.db.url).await;
    let (problems, unanswered_stored) = out.problems(TOPICS);
    let (closed_1012, unclosed, other) = out.cuts();
    let ((connect_p50, connect_max), (resub_p50, resub_max)) = out.comebacks();
    let p = pauses(&out.seen, &out.db, from, out.stopped_at);
    let count =
        |f: fn(&common::traffic::WriterReport) -> usize| out.wrote.iter().map(f).sum::<usize>();
    let r1_log = site.replicas[0].logs();
    eprintln!(
        "redis cut off from r1 of 2 replicas behind HAProxy: {AGENTS} agents, {} spectators \
         ({FIREHOSE_SPECTATORS} on the firehose), {on_r1} sessions on r1; setup {:.1} s, whole \
         run {:.1} s",
        TOPIC_SPECTATORS + FIREHOSE_SPECTATORS,
        setup.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    eprintln!(
        "  after the cut: /readyz 503 at {} ms, out of HAProxy's rotation at {} ms, no session \
         left on r1 at {} ms, every client on r2 at {} ms",
        ms(noticed),
        ms(out_of_rotation),
        ms(emptied),
        ms(moved)
    );
    eprintln!(
        "  after the heal: ready at {} ms, back in rotation at {} ms; not ready for {} ms in all",
        ms(ready),
        ms(back),
        ms(unready)
    );
    eprintln!(
        "  writes acknowledged: {} posts, {} comments, {} votes; unanswered {} ({} refused as \
         unavailable; {unanswered_stored} stored)",
        count(|w| w.posts.len()),
        count(|w| w.comments.len()),
        count(|w| w.votes.len()),
        count(|w| w.unanswered.len()),
        count(|w| w.unavailable),
    );
    eprintln!(
        "  spectator cuts: {closed_1012} by 1012, {unclosed} without a close frame, {other} \
         other; way back: connect median {connect_p50} ms (max {connect_max}), resubscribe \
         median {resub_p50} ms (max {resub_max})"
    );
    eprintln!(
        "  largest pause: {} ms ({}), {} ms at most for a topic spectator; delivery after \
         storing: max {} ms, p99 {} ms, median {} ms over {} deliveries",
        p.gap_ms, p.gap_who, p.topic_gap_ms, p.late_max, p.late_p99, p.late_p50, p.deliveries
    );
    assert!(
        problems.is_empty(),
        "{} problems, the first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(20)]
    );
    assert!(closed_1012 > 0, "no spectator was closed with 1012");
    assert_eq!(other, 0, "spectators closed with other codes");
    assert!(
        r1_log.contains("closing sessions with 1012"),
        "r1 did not say why it closed its sessions"
    );
    assert!(count(|w| w.posts.len()) > 0);
}

/// Posts through one session on `ws` as fast as they are answered until `stop`; every
/// attempt: (title, the post's id or the error code, how long the answer took). Ends at the
/// first write that got no answer at all.
async fn busy_writer(
    n: usize,
    ws: String,
    token: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<(String, Result<String, String>, Duration)> {
    let mut c = Client::connect(&ws, Some(&token))
        .await
        .expect("busy on r1");
    let mut out = Vec::new();
    for k in 0.. {
        if *stop.borrow() {
            break;
        }
        let title = format!("busy {n}.{k}");
        let (r, took) = post(&mut c, &title).await;
        let r = r.map_err(|e| e.code().unwrap_or("no answer").to_string());
        let answered = !matches!(&r, Err(e) if e == "no answer");
        out.push((title, r, took));
        if !answered {
            break;
        }
    }
    out
}

/// A post through `c`: Ok(id), or the error, and how long the answer took.
async fn post(c: &mut Client, title: &str) -> (Result<String, ClientError>, Duration) {
    post_in(c, "town0", title).await
}

/// A post into `topic` through `c`.
async fn post_in(
    c: &mut Client,
    topic: &str,
    title: &str,
) -> (Result<String, ClientError>, Duration) {
    let t0 = Instant::now();
    let r = c
        .command(
            "post",
            json!({"topic": topic, "title": title, "body": "partition"}),
        )
        .await
        .map(|v| v["post"]["id"].as_str().unwrap_or_default().to_string());
    (r, t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_cut_off_from_postgres_refuses_writes_quickly_and_half_writes_nothing() {
    let _one = SERIAL.lock().await;
    let t0 = Instant::now();
    // Rate limits off: one agent writes as fast as r1 answers, so that a write is in flight
    // when the link is cut.
    let site = Site::start(2, &["--rate-limits", "off"]).await;
    // Two topics: r1 writes into town0, r2 into town1. A write on r1 in flight at the cut
    // may have been committed without r1 hearing so: r1 then holds town0's later events
    // (it cannot fill that gap from the database) until the link heals, as it must to keep
    // them in order. Live events of town1 show that the bus still carries r2's events.
    let agents = population(&site.replicas[1].base(), 1, 3, 2).await;
    let (r1, r2) = (&site.replicas[0], &site.replicas[1]);
    let mut a = Client::connect(&r1.ws(), Some(&agents[0].token.jwt))
        .await
        .expect("a on r1");
    let mut b = Client::connect(&r2.ws(), Some(&agents[1].token.jwt))
        .await
        .expect("b on r2");
    let mut watcher = Client::connect(&r1.ws(), None)
        .await
        .expect("watcher on r1");
    watcher
        .subscribe("topic:town1", None)
        .await
        .expect("subscribed");
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for i in 0..3 {
        for (c, who, topic) in [(&mut a, "a", "town0"), (&mut b, "b", "town1")] {
            let title = format!("{who} before {i}");
            let (r, _) = post_in(c, topic, &title).await;
            acked.push((r.expect("a post before the cut"), title));
        }
    }
    let setup = t0.elapsed();
    let (stop_busy, busy_stopped) = tokio::sync::watch::channel(false);
    let busy: Vec<_> = (0..BUSY)
        .map(|n| {
            tokio::spawn(busy_writer(
                n,
                r1.ws(),
                agents[2].token.jwt.clone(),
                busy_stopped.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cut = Instant::now();
    site.hosts[0].cut("pg");
    // Writes on r1 fail, each within a bound.
    let mut slowest = Duration::ZERO;
    for i in 0..3 {
        let title = format!("a during {i}");
        let (r, took) = post(&mut a, &title).await;
        match r {
            Err(e) if e.code() == Some("unavailable") => refused.push(title),
            other => panic!("a post on r1 cut off from PostgreSQL: {other:?} after {took:?}"),
        }
        slowest = slowest.max(took);
    }
    let first_refusal = cut.elapsed();
    let _ = stop_busy.send(true);
    let (mut in_flight_took, mut maybe) = (Vec::new(), Vec::new());
    for b in busy {
        let busy = b.await.expect("busy writer");
        // Written before the cut, refused after it, and the one in flight when it came: its
        // outcome cannot be known (the commit may have reached the database, or may reach it
        // when the link heals), so it is stored at most once, like an unanswered write.
        let in_flight = busy.iter().position(|(_, r, _)| r.is_err());
        for (i, (title, r, took)) in busy.iter().enumerate() {
            match r {
                Ok(id) => acked.push((id.clone(), title.clone())),
                Err(e) if Some(i) == in_flight => {
                    in_flight_took.push(format!("{title}: {e} after {} ms", took.as_millis()));
                    maybe.push(title.clone());
                }
                Err(e) if e == "unavailable" => refused.push(title.clone()),
                Err(e) => panic!("busy write {title}: {e} after {took:?}"),
            }
            assert!(
                *took < Duration::from_secs(10),
                "busy write {title} answered after {took:?}"
            );
        }
    }
    let t = Instant::now();
    let api = client::http(&r1.base(), "GET", "/api/v1/topics/town0/posts", None, None)
        .await
        .expect("r1 answers HTTP");
    let api_took = t.elapsed();
    assert_eq!(api.status, 503, "{:?}", api.body);
    let unready = until("r1 unready", Duration::from_secs(10), || async {
        infra::readyz(&r1.base()).await == 503
    })
    .await;
    // The other replica writes on; r1's sessions still hear it through Redis.
    let mut live_titles = Vec::new();
    for i in 0..3 {
        let title = format!("b during {i}");
        let (r, _) = post_in(&mut b, "town1", &title).await;
        acked.push((r.expect("a post on r2 during the cut"), title.clone()));
        live_titles.push(title);
    }
    let mut heard: HashSet<String> = HashSet::new();
    let listen = Instant::now() + Duration::from_secs(5);
    while !live_titles.iter().all(|t| heard.contains(t)) && Instant::now() < listen {
        if let Ok(p) = watcher.next_push(Duration::from_millis(200)).await
            && let Some(t) = p.data["title"].as_str()
        {
            heard.insert(t.to_string());
        }
    }
    for t in &live_titles {
        assert!(
            heard.contains(t),
            "r1's watcher missed {t} during the cut: {heard:?}"
        );
    }

    let healed = Instant::now();
    site.hosts[0].heal("pg");
    eprintln!("  writes in flight at the cut: {in_flight_took:?}");
    let (mut after, mut attempt) = (0, 0);
    while after < 3 {
        attempt += 1;
        let title = format!("a after {attempt}");
        match post(&mut a, &title).await.0 {
            Ok(id) => {
                acked.push((id, title));
                after += 1;
            }
            Err(e) if e.code() == Some("unavailable") => {
                assert!(
                    healed.elapsed() < Duration::from_secs(20),
                    "no write on r1 {:?} after the heal: {e}",
                    healed.elapsed()
                );
                refused.push(title);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let writes_back = healed.elapsed();
    infra::wait_ready(&r1.base(), Duration::from_secs(20)).await;
    let ready_back = healed.elapsed();

    // A statement already on the wire when the link dies: the database holds r1's insert
    // (a lock taken from here), the link is cut, the lock goes; the answer is lost.
    sqlx::any::install_default_drivers();
    let mut lock = <sqlx::AnyConnection as sqlx::Connection>::connect(&site.db.url)
        .await
        .expect("a connection of the test's own");
    lock.execute("BEGIN").await.expect("begin");
    lock.execute("LOCK TABLE posts IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let stuck_title = "a stuck".to_string();
    let stuck = {
        let (ws, token, title) = (r1.ws(), agents[0].token.jwt.clone(), stuck_title.clone());
        tokio::spawn(async move {
            let mut c = Client::connect(&ws, Some(&token)).await.expect("a again");
            post(&mut c, &title).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    site.hosts[0].cut("pg");
    tokio::time::sleep(Duration::from_millis(200)).await;
    lock.execute("COMMIT").await.expect("unlock");
    let (stuck_result, stuck_took) = tokio::time::timeout(Duration::from_secs(20), stuck)
        .await
        .expect("the stuck write answered within 20 s")
        .expect("stuck task");
    eprintln!(
        "  a statement on the wire at the cut: {:?} after {} ms",
        stuck_result.as_ref().map_err(|e| e.to_string()),
        ms(stuck_took)
    );
    site.hosts[0].heal("pg");
    infra::wait_ready(&r1.base(), Duration::from_secs(20)).await;
    match &stuck_result {
        Ok(id) => acked.push((id.clone(), stuck_title.clone())),
        Err(_) => maybe.push(stuck_title.clone()),
    }
    // What r1 still had on that connection reaches the database now, or never.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Every acknowledged post stored once with its one event; nothing refused stored;
    // no event without its post.
    let db = stored(&site.db.url).await;
    let mut problems = Vec::new();
    for (id, title) in &acked {
        match db.posts.get(title).map(Vec::as_slice) {
            Some([(got, _)]) if got == id => {}
            other => problems.push(format!("acknowledged {title} ({id}) stored as {other:?}")),
        }
    }
    for title in &refused {
        if let Some(rows) = db.posts.get(title) {
            problems.push(format!("refused {title} stored: {rows:?}"));
        }
    }
    let mut maybe_stored = 0;
    for title in &maybe {
        let rows = db.posts.get(title).map(Vec::len).unwrap_or(0);
        if rows > 1 {
            problems.push(format!("{title} stored {rows} times"));
        }
        if rows > 0 {
            eprintln!("  {title}, answered unavailable, was stored");
        }
        maybe_stored += rows;
    }
    let post_ids: Vec<&str> = db
        .events
        .values()
        .flat_map(|e| e.values())
        .filter(|(e, _, _)| e == "post")
        .filter_map(|(_, d, _)| d["id"].as_str())
        .collect();
    let known: HashSet<&str> = db
        .posts
        .values()
        .flatten()
        .map(|(id, _)| id.as_str())
        .collect();
    if post_ids.len() != acked.len() + maybe_stored
        || post_ids.iter().any(|id| !known.contains(id))
        || known.len() != post_ids.len()
    {
        problems.push(format!(
            "{} post events for {} acknowledged posts ({} stored)",
            post_ids.len(),
            acked.len(),
            known.len()
        ));
    }
    for (ch, events) in &db.events {
        let seqs: Vec<u64> = events.keys().copied().collect();
        if seqs != (1..=seqs.len() as u64).collect::<Vec<_>>() {
            problems.push(format!("{ch} seqs are not 1..={}", seqs.len()));
        }
    }
    eprintln!(
        "postgres cut off from r1 of 2 replicas: setup {:.1} s, whole run {:.1} s",
        setup.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    eprintln!(
        "  during the cut: 3 posts refused as unavailable, the slowest after {} ms (all by {} \
         ms); HTTP read 503 after {} ms; /readyz 503 {} ms later; r1's watcher heard r2's posts",
        ms(slowest),
        ms(first_refusal),
        ms(api_took),
        ms(unready)
    );
    eprintln!(
        "  after the heal: writes on r1 again after {} ms, ready after {} ms; {} acknowledged, \
         {} refused, none of them stored; of {} with an unknown outcome, {maybe_stored} stored",
        ms(writes_back),
        ms(ready_back),
        acked.len(),
        refused.len(),
        maybe.len()
    );
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        slowest < Duration::from_secs(10),
        "a write took {slowest:?} to fail"
    );
}
