//! One address for clients, and a rolling upgrade with nothing lost. Three replicas from the
//! real binary share a PostgreSQL database, a Redis and a secrets dir behind a real HAProxy
//! running deploy/haproxy.cfg. A hundred agents post, comment and vote through it at a steady
//! rate while three hundred spectators (topics and the firehose) watch through it, resuming
//! with `since` whenever they are cut. Every replica is restarted in turn, by SIGTERM (drain
//! grace, 1012) or by SIGKILL; then every acknowledged write must be stored exactly once
//! (an unanswered one at most once), every spectator's view of every channel must be the
//! stored sequence with no gap, duplicate or reorder, and every client must end connected.
//! The largest pause a spectator saw is printed.
//!
//! Beside it: the drain grace as HAProxy sees it (out of rotation before any session is
//! closed), and `option forwardfor` with `--trusted-proxies` (a forged address changes
//! nothing).

mod common;

use carapace::clock::now_ms;
use carapace_client::Client;
use common::haproxy::Haproxy;
use common::infra::{self, OwnRedis, PgDb, Replica};
use common::traffic::{Load, WriterReport, pauses, population};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::task::block_in_place;
use tokio::time::Instant;

const OWNERS: usize = 20;
const AGENTS: usize = 100;
const TOPICS: usize = 6;
const TOPIC_SPECTATORS: usize = 270;
const FIREHOSE_SPECTATORS: usize = 30;
/// The drain grace the replicas run with (the default with Redis, spelled out).
const GRACE: &str = "2";

/// The heavy tests share two cores with everything else: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A replica is taken down by the operator's SIGTERM (it drains) or by SIGKILL (a crash).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Stop {
    Term,
    Kill,
}

impl Stop {
    fn signal(self) -> &'static str {
        match self {
            Stop::Term => "TERM",
            Stop::Kill => "KILL",
        }
    }
}

/// The service under test: replicas behind the balancer, and what they share.
struct Service {
    db: PgDb,
    replicas: Vec<Replica>,
    lb: Haproxy,
    dir: std::path::PathBuf,
    _redis: OwnRedis,
}

impl Service {
    async fn start(n: usize, extra: &[&str]) -> Service {
        let db = PgDb::create("rolling").await;
        // A Redis of its own: the replicas' channels are namespaced per database anyway,
        // but this test's traffic stays off the machine's.
        let redis = OwnRedis::start();
        let dir = common::temp_dir("rolling");
        let secrets = dir.join("secrets");
        let redis_url = redis.url();
        let mut args = vec![
            "--database-url",
            &db.url,
            "--redis-url",
            &redis_url,
            "--secrets-dir",
            secrets.to_str().expect("UTF-8 temp dir"),
            "--drain-grace",
            GRACE,
            // The balancer's address: its X-Forwarded-For is believed.
            "--trusted-proxies",
            "127.0.0.1",
        ];
        args.extend_from_slice(extra);
        // The first replica makes the keys and the schema; the others share them.
        let mut replicas = vec![block_in_place(|| Replica::start("r1", &dir, &args))];
        infra::wait_ready(&replicas[0].base(), Duration::from_secs(20)).await;
        for i in 2..=n {
            let id = format!("r{i}");
            replicas.push(block_in_place(|| Replica::start(&id, &dir, &args)));
        }
        for r in &replicas {
            infra::wait_ready(&r.base(), Duration::from_secs(20)).await;
        }
        let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
        let lb = block_in_place(|| Haproxy::start(&ports));
        Service {
            db,
            replicas,
            lb,
            dir,
            _redis: redis,
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.replicas.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Restarts every replica in turn: SIGTERM (it drains) or SIGKILL, then starts it again and
/// waits until HAProxy has it back in rotation. Returns a line per replica.
async fn roll(svc: &mut Service, how: Stop) -> Vec<String> {
    let mut lines = Vec::new();
    for i in 0..svc.replicas.len() {
        let n = i + 1;
        let t0 = Instant::now();
        svc.replicas[i].signal(how.signal());
        // Both watched at once: when HAProxy takes it out, and when the process ends.
        let (mut out, mut exit) = (None, None);
        let (out, status, exited) = loop {
            if out.is_none() && block_in_place(|| svc.lb.server(n).0 == "DOWN") {
                out = Some(t0.elapsed());
            }
            if exit.is_none()
                && let Some(status) = svc.replicas[i].wait_exit(Duration::ZERO)
            {
                exit = Some((status, t0.elapsed()));
            }
            if let (Some(out), Some((status, exited))) = (out, exit) {
                break (out, status, exited);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "r{n}: out of rotation after {out:?}, exited {exit:?}: {}",
                svc.replicas[i].logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if how == Stop::Term {
            assert!(
                status.success(),
                "r{n} exited badly: {}",
                svc.replicas[i].logs()
            );
            assert!(
                out < Duration::from_secs(2),
                "r{n} was still in HAProxy's rotation {out:?} after SIGTERM, when its drain \
                 grace ({GRACE} s) ended"
            );
        }
        block_in_place(|| svc.replicas[i].start_again());
        infra::wait_ready(&svc.replicas[i].base(), Duration::from_secs(30)).await;
        block_in_place(|| svc.lb.wait_checked_up(n, Duration::from_secs(15)));
        lines.push(format!(
            "r{n}: out of rotation {} ms after SIG{}, exited after {} ms, back in rotation after {} ms",
            out.as_millis(),
            how.signal(),
            exited.as_millis(),
            t0.elapsed().as_millis()
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    lines
}

/// The whole run: the service behind HAProxy, the population, the load, the rolling
/// restart, then the checks against the database.
async fn rolling_upgrade(how: Stop) {
    let _one_at_a_time = SERIAL.lock().await;
    let t0 = Instant::now();
    // Per-address budgets raised for signups, agent creation and spectator sessions: every
    // client of this test comes from 127.0.0.1. Every other limit stays at its default.
    let mut svc = Service::start(
        3,
        &[
            "--signups-per-addr-hour",
            "1000",
            "--agents-per-addr-hour",
            "1000",
            "--anon-ws-per-addr",
            "1000",
        ],
    )
    .await;
    let agents = population(&svc.lb.base(), OWNERS, AGENTS, TOPICS).await;
    let setup = t0.elapsed();
    let ws = svc.lb.ws();

    let load = Load::start(&ws, agents, TOPICS, TOPIC_SPECTATORS, FIREHOSE_SPECTATORS).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let from = now_ms();
    let restarts = roll(&mut svc, how).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = load.finish(&svc.db.url).await;
    let to = out.stopped_at;
    let (problems, unanswered_stored) = out.problems(TOPICS);
    let (wrote, seen, db) = (&out.wrote, &out.seen, &out.db);
    let warnings: Vec<String> = svc
        .replicas
        .iter()
        .flat_map(|r| {
            r.logs()
                .lines()
                .filter(|l| l.contains("\"WARN\""))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut said: BTreeMap<String, usize> = BTreeMap::new();
    for w in &warnings {
        let v: Value = serde_json::from_str(w).unwrap_or(Value::Null);
        *said
            .entry(v["message"].as_str().unwrap_or(w).to_string())
            .or_default() += 1;
    }
    let p = pauses(seen, db, from, to);
    let count = |f: fn(&WriterReport) -> usize| wrote.iter().map(f).sum::<usize>();
    let (closed_1012, unclosed, other) = out.cuts();
    let events: usize = db.events.values().map(BTreeMap::len).sum();
    eprintln!(
        "rolling upgrade by SIG{} behind HAProxy: {AGENTS} agents, {} spectators \
         ({TOPIC_SPECTATORS} on topics, {FIREHOSE_SPECTATORS} on the firehose), 3 replicas; \
         setup {:.1} s, whole run {:.1} s",
        how.signal(),
        TOPIC_SPECTATORS + FIREHOSE_SPECTATORS,
        setup.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    for l in &restarts {
        eprintln!("  {l}");
    }
    eprintln!(
        "  writes acknowledged: {} posts, {} comments, {} votes; unanswered {} ({} of them \
         refused as unavailable; {unanswered_stored} stored); refused otherwise {}",
        count(|w| w.posts.len()),
        count(|w| w.comments.len()),
        count(|w| w.votes.len()),
        count(|w| w.unanswered.len()),
        count(|w| w.unavailable),
        count(|w| w.refused.len()),
    );
    eprintln!(
        "  events stored on {} topics: {events}; delivered to spectators while restarting: {}",
        db.events.len(),
        p.deliveries
    );
    eprintln!(
        "  reconnects: spectators {} ({closed_1012} after a 1012, {unclosed} without a close frame, {other} other), agents {}",
        seen.iter().map(|s| s.reconnects).sum::<usize>(),
        count(|w| w.reconnects),
    );
    let ((connect_p50, connect_max), (resub_p50, resub_max)) = out.comebacks();
    eprintln!(
        "  a spectator's way back: connect median {connect_p50} ms (max {connect_max}), resubscribe median {resub_p50} ms (max {resub_max})"
    );
    eprintln!("  replica warnings: {said:?}");
    eprintln!(
        "  largest pause: {} ms between two events reaching {} ({} ms at most for a topic \
         spectator); delivery after storing: max {} ms, p99 {} ms, median {} ms",
        p.gap_ms, p.gap_who, p.topic_gap_ms, p.late_max, p.late_p99, p.late_p50
    );

    assert!(
        problems.is_empty(),
        "{} problems, the first: {:#?}\nreplica warnings ({}), the first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(20)],
        warnings.len(),
        &warnings[..warnings.len().min(20)],
    );
    assert!(count(|w| w.posts.len()) > 0 && count(|w| w.votes.len()) > 0);
    if how == Stop::Term {
        assert!(closed_1012 > 0, "no spectator was closed with 1012");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_by_sigterm_behind_haproxy_loses_nothing() {
    rolling_upgrade(Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_by_sigkill_behind_haproxy_loses_nothing() {
    rolling_upgrade(Stop::Kill).await;
}

/// The drain as HAProxy sees it: on SIGTERM the replica answers `/readyz` 503 at once and
/// leaves rotation within the drain grace while it still serves (its sessions answer, a new
/// one can still open); HAProxy sends it no new client from then on; only after the grace
/// are its sessions closed with 1012, and it exits cleanly. Bad `--drain-grace` values are
/// refused before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_takes_a_replica_out_of_rotation_before_its_sessions_close() {
    let _one_at_a_time = SERIAL.lock().await;
    for bad in ["-1", "soon", "301", "NaN", "2s"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_carapace"))
            .args(["serve", &format!("--drain-grace={bad}")])
            .output()
            .expect("carapace runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--drain-grace {bad}: {err}");
        assert!(err.contains("--drain-grace"), "{err}");
    }

    let mut svc = Service::start(2, &[]).await;
    let r1 = svc.replicas[0].base();
    let mut on_r1 = Client::connect(&svc.replicas[0].ws(), None)
        .await
        .expect("connect to r1");
    on_r1
        .subscribe("topic:general", None)
        .await
        .expect("subscribe");
    let t0 = Instant::now();
    svc.replicas[0].signal("TERM");
    while infra::readyz(&r1).await != 503 {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "r1 still ready after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let unready = t0.elapsed();
    let out = block_in_place(|| svc.lb.wait_state(1, "DOWN", Duration::from_secs(5)));
    assert!(
        out < Duration::from_secs(2),
        "r1 left rotation only after {out:?}"
    );
    // Out of rotation, and still serving: the grace is for the balancer, not the clients.
    on_r1
        .command("ping", json!({}))
        .await
        .expect("r1's session still answers");
    let mut late = Client::connect(&svc.replicas[0].ws(), None)
        .await
        .expect("r1 still accepts a session during its grace");
    let served_until = t0.elapsed();
    let [before] = svc.lb.stat(1, ["stot"]);
    for _ in 0..10 {
        let mut c = Client::connect(&svc.lb.ws(), None)
            .await
            .expect("a client through HAProxy");
        c.command("ping", json!({})).await.expect("answered");
    }
    let [after] = svc.lb.stat(1, ["stot"]);
    assert_eq!(
        before, after,
        "HAProxy sent a client to r1 after taking it out"
    );
    assert_eq!(on_r1.closed_with(Duration::from_secs(5)).await, Some(1012));
    let closed = t0.elapsed();
    assert_eq!(late.closed_with(Duration::from_secs(5)).await, Some(1012));
    assert!(
        closed >= Duration::from_millis(1900),
        "sessions closed {closed:?} after SIGTERM, before the {GRACE} s grace ended"
    );
    let status =
        block_in_place(|| svc.replicas[0].wait_exit(Duration::from_secs(10))).expect("r1 exits");
    assert!(status.success(), "{}", svc.replicas[0].logs());
    // Gone altogether: clients through HAProxy still get in, on r2.
    let mut c = Client::connect(&svc.lb.ws(), None)
        .await
        .expect("a client through HAProxy after r1 exited");
    c.command("ping", json!({})).await.expect("answered");
    let logs = svc.lb.logs();
    assert!(
        logs.contains("Server replicas/r1 is DOWN") && logs.contains("code: 503"),
        "{logs}"
    );
    eprintln!(
        "SIGTERM: /readyz 503 after {} ms, out of HAProxy's rotation after {} ms, still \
         serving at {} ms, sessions closed with 1012 after {} ms",
        unready.as_millis(),
        out.as_millis(),
        served_until.as_millis(),
        closed.as_millis()
    );
}

/// `GET /api/v1/search` from the loopback address `local` through `base`, with a
/// client-written `X-Forwarded-For` when `forged` is given; the answer's status.
async fn search_from(base: &str, local: &str, forged: Option<&str>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = common::connect_from(base, local).await;
    let forged = forged
        .map(|f| format!("X-Forwarded-For: {f}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /api/v1/search?q=shell HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n{forged}\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("request sent");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("an answer in time")
        .expect("answer read");
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// `option forwardfor`: a replica that lists HAProxy in `--trusted-proxies` counts each
/// client by its own address, and an address a client writes itself changes nothing (HAProxy
/// appends the real one, the hub takes the nearest untrusted hop); a replica that does not
/// trust it sees every client as HAProxy, one budget for all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn haproxy_forwards_client_addresses_only_a_trusting_replica_believes() {
    let _one_at_a_time = SERIAL.lock().await;
    let dir = common::temp_dir("forwarded");
    let limit = ["--anon-searches-per-min", "2"];
    let trusting = block_in_place(|| {
        Replica::start(
            "trusting",
            &dir,
            &[limit[0], limit[1], "--trusted-proxies", "127.0.0.1"],
        )
    });
    let plain = block_in_place(|| Replica::start("plain", &dir, &limit));
    infra::wait_ready(&trusting.base(), Duration::from_secs(20)).await;
    infra::wait_ready(&plain.base(), Duration::from_secs(20)).await;
    let via_trusting = block_in_place(|| Haproxy::start(&[trusting.port]));
    let via_plain = block_in_place(|| Haproxy::start(&[plain.port]));

    let t = via_trusting.base();
    assert_eq!(search_from(&t, "127.0.0.2", None).await, 200);
    assert_eq!(search_from(&t, "127.0.0.2", None).await, 200);
    assert_eq!(search_from(&t, "127.0.0.2", None).await, 429);
    assert_eq!(
        search_from(&t, "127.0.0.3", None).await,
        200,
        "its own budget"
    );
    assert_eq!(
        search_from(&t, "127.0.0.2", Some("127.0.0.9")).await,
        429,
        "a forged X-Forwarded-For bought a fresh budget"
    );
    assert_eq!(
        search_from(&t, "127.0.0.2", Some("not an address")).await,
        429
    );

    let p = via_plain.base();
    assert_eq!(search_from(&p, "127.0.0.2", None).await, 200);
    assert_eq!(search_from(&p, "127.0.0.2", None).await, 200);
    assert_eq!(
        search_from(&p, "127.0.0.3", None).await,
        429,
        "untrusted, the balancer's address is everyone's"
    );
    drop((via_trusting, via_plain, trusting, plain));
    let _ = std::fs::remove_dir_all(&dir);
}
