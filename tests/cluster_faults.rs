//! Faults a cluster must survive, each test owning the server it breaks: Redis killed and
//! restarted under load (a private redis-server), a replica SIGKILLed mid-stream (replicas
//! from the real binary), PostgreSQL stopped and started (a throwaway cluster); and the
//! operator's view: graceful SIGTERM, JSON logs with the replica id and no secrets, metrics.

mod common;

use carapace::config::{Config, RateLimitMode};
use carapace_client::{self as client, Client, ClientError};
use common::infra::{self, Cluster, OwnPostgres, OwnRedis, PgDb, Replica};
use common::{metric, raw_get};
use serde_json::json;
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery staple";

/// A subscriber that follows one channel across reconnects, resuming with `since`, and
/// keeps every seq it was given.
struct Follower {
    name: String,
    urls: Vec<String>,
    at: usize,
    channel: String,
    client: Option<Client>,
    seqs: Vec<u64>,
    reconnects: usize,
}

impl Follower {
    async fn start(name: &str, urls: Vec<String>, channel: &str) -> (Follower, u64) {
        let mut c = Client::connect(&urls[0], None).await.expect("connect");
        let r = c.subscribe(channel, None).await.expect("subscribe");
        let f = Follower {
            name: name.into(),
            urls,
            at: 0,
            channel: channel.into(),
            client: Some(c),
            seqs: Vec::new(),
            reconnects: 0,
        };
        (f, r["seq"].as_u64().unwrap_or(0))
    }

    /// Reads until seq `until` arrived or `deadline`, moving to the next replica (and
    /// resubscribing with `since`) whenever the connection breaks.
    async fn follow(&mut self, from: u64, until: u64, deadline: Instant) {
        while self.seqs.last().copied().unwrap_or(from) < until && Instant::now() < deadline {
            let Some(c) = self.client.as_mut() else {
                self.at = (self.at + 1) % self.urls.len();
                let since = self.seqs.last().copied().unwrap_or(from);
                match Client::connect(&self.urls[self.at], None).await {
                    Ok(mut c) => {
                        if c.subscribe(&self.channel, Some(since)).await.is_ok() {
                            self.client = Some(c);
                            self.reconnects += 1;
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
                continue;
            };
            match c.next_push(Duration::from_millis(500)).await {
                Ok(p) if p.channel == self.channel => self.seqs.push(p.seq),
                Ok(_) | Err(ClientError::Timeout) => {}
                Err(_) => self.client = None,
            }
        }
    }

    fn assert_exact(&self, from: u64, until: u64) {
        let expect: Vec<u64> = (from + 1..=until).collect();
        assert!(
            self.seqs == expect,
            "{}: {} events, {} expected; first {:?} last {:?}",
            self.name,
            self.seqs.len(),
            expect.len(),
            &self.seqs[..self.seqs.len().min(10)],
            &self.seqs[self.seqs.len().saturating_sub(10)..]
        );
    }
}

/// Posts `n` times into `general`, retrying a post that failed for lack of a replica or
/// database (a client would); returns how many were accepted.
async fn publish(urls: Vec<String>, token: String, n: usize, pause: Duration) -> usize {
    let mut at = 0;
    let mut client: Option<Client> = None;
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while done < n && Instant::now() < deadline {
        let Some(c) = client.as_mut() else {
            match Client::connect(&urls[at % urls.len()], Some(&token)).await {
                Ok(c) => client = Some(c),
                Err(_) => {
                    at += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            continue;
        };
        let r = c
            .command(
                "post",
                json!({"topic": "general", "title": format!("p{done}"), "body": ""}),
            )
            .await;
        match r {
            Ok(_) => done += 1,
            Err(ClientError::Api { code, .. }) if code == "unavailable" => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e @ ClientError::Api { .. }) => panic!("post refused: {e}"),
            Err(_) => {
                // The replica went away mid-command: the post may or may not have been
                // committed, so this one is not counted; the followers' exact check below
                // uses the store's own last seq.
                client = None;
                at += 1;
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    done
}

/// Redis dies and comes back while two replicas keep publishing: writes go on, `/readyz`
/// says 503 meanwhile, the bus reconnects by itself, and every subscriber ends with every
/// event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_while_publishing() {
    let mut redis = OwnRedis::start();
    // The outages here are meant to be hidden from sessions: shorter than the bus-loss grace
    // after which a replica sends its clients elsewhere. Their length depends on the link's
    // reconnect backoff (up to ~5 s with jitter), so the grace is set well above it.
    let mut cl = Cluster::start_on(2, &redis.url(), |c| {
        c.rate_limits = RateLimitMode::Off;
        c.bus_loss_grace = Duration::from_secs(30);
    })
    .await;
    cl.ready().await;
    let (_, t1) = cl.replicas[0].agent("pub_a").await;
    let (_, t2) = cl.replicas[1].agent("pub_b").await;
    let mut followers = Vec::new();
    let mut from = 0;
    for (i, r) in cl.replicas.iter().enumerate() {
        let (f, s) =
            Follower::start(&format!("on r{i}"), vec![r.ws.clone()], "topic:general").await;
        from = s;
        followers.push(f);
    }
    const EACH: usize = 150;
    let pause = Duration::from_millis(10);
    let pubs = [
        tokio::spawn(publish(
            vec![cl.replicas[0].ws.clone()],
            t1.clone(),
            EACH,
            pause,
        )),
        tokio::spawn(publish(
            vec![cl.replicas[1].ws.clone()],
            t2.clone(),
            EACH,
            pause,
        )),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    let down = Instant::now();
    for r in &cl.replicas {
        while infra::readyz(&r.base).await != 503 {
            assert!(
                down.elapsed() < Duration::from_secs(5),
                "readyz stayed 200 without Redis"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart();
    cl.ready().await;
    eprintln!("redis down for {:?}; replicas ready again", down.elapsed());
    for p in pubs {
        assert_eq!(p.await.unwrap(), EACH, "every post accepted, Redis or not");
    }
    let until = from + 2 * EACH as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    for f in &mut followers {
        f.follow(from, until, deadline).await;
    }

    // Again, but now the last events are published through r1 alone while Redis is away:
    // nothing local shows r0 that it missed them, only the reconnect (resync from the store,
    // r1's outbox) can bring them over.
    redis.kill();
    for r in &cl.replicas {
        while infra::readyz(&r.base).await != 503 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    const LAST: usize = 10;
    let sent = publish(
        vec![cl.replicas[1].ws.clone()],
        t2.clone(),
        LAST,
        Duration::ZERO,
    )
    .await;
    assert_eq!(sent, LAST);
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    cl.ready().await;
    let until = until + LAST as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    for f in &mut followers {
        f.follow(from, until, deadline).await;
        f.assert_exact(from, until);
        assert_eq!(f.reconnects, 0, "the hub hid the outage from its sessions");
    }
    let text = raw_get(&cl.replicas[0].base, "/metrics").await;
    assert!(metric(&text, "carapace_bus_reconnects_total") >= 1.0);
    assert_eq!(metric(&text, "carapace_bus_up"), 1.0);
    for series in [
        "carapace_sessions",
        "carapace_subscriptions",
        "carapace_frames_in_total",
        "carapace_frames_out_total",
        "carapace_deliveries_total",
        "carapace_queue_drops_total",
        "carapace_command_seconds_count",
        "carapace_bus_errors_total",
        "carapace_db_errors_total",
    ] {
        metric(&text, series);
    }
    assert!(text.contains("carapace_command_seconds_bucket{replica=\"r0\",le=\"+Inf\"}"));
    cl.stop().await;
}

/// Replicas run from the real binary over the machine's PostgreSQL and Redis.
struct BinCluster {
    replicas: Vec<Replica>,
    _db: PgDb,
    dir: std::path::PathBuf,
}

impl BinCluster {
    async fn start(n: usize, extra: &[&str]) -> BinCluster {
        let db = PgDb::create("bin").await;
        let dir = common::temp_dir("bincluster");
        let secrets = dir.join("secrets");
        let redis = infra::redis_server();
        let mut args = vec![
            "--database-url",
            &db.url,
            "--redis-url",
            &redis,
            "--secrets-dir",
            secrets.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        // The first replica makes the keys and the schema; the others then share them.
        let mut replicas = vec![Replica::start("b0", &dir, &args)];
        for i in 1..n {
            replicas.push(Replica::start(&format!("b{i}"), &dir, &args));
        }
        for r in &replicas {
            infra::wait_ready(&r.base(), Duration::from_secs(20)).await;
        }
        BinCluster {
            replicas,
            _db: db,
            dir,
        }
    }

    async fn agent(&self, at: usize, handle: &str) -> String {
        let base = self.replicas[at].base();
        let owner = client::owner_token(
            &base,
            &format!("own_{handle}"),
            &format!("{handle}@example.com"),
            PASSWORD,
        )
        .await
        .expect("owner");
        let key = client::create_agent(
            &base,
            &owner,
            &json!({"handle": handle, "name": handle, "bio": "", "scopes": ["read", "post", "dm"]}),
        )
        .await
        .expect("agent");
        client::agent_token(&base, &key).await.expect("token")
    }
}

impl Drop for BinCluster {
    fn drop(&mut self) {
        self.replicas.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A replica is SIGKILLed while events stream: its subscribers reconnect to the others,
/// resume with `since`, and miss nothing; subscribers elsewhere never notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_killed_mid_stream_its_clients_resume_elsewhere() {
    let mut bc = BinCluster::start(3, &["--rate-limits", "off"]).await;
    let urls: Vec<String> = bc.replicas.iter().map(|r| r.ws()).collect();
    let token = bc.agent(0, "streamer").await;
    let mut followers = Vec::new();
    let mut from = 0;
    for (i, name) in [(2, "victim-1"), (2, "victim-2"), (1, "bystander")] {
        let mut order = urls.clone();
        order.rotate_left(i);
        let (f, s) = Follower::start(name, order, "topic:general").await;
        from = s;
        followers.push(f);
    }
    const N: usize = 300;
    let publisher = tokio::spawn(publish(
        vec![urls[0].clone()],
        token,
        N,
        Duration::from_millis(5),
    ));
    let readers: Vec<_> = followers
        .into_iter()
        .map(|mut f| {
            tokio::spawn(async move {
                f.follow(
                    from,
                    from + N as u64,
                    Instant::now() + Duration::from_secs(60),
                )
                .await;
                f
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    bc.replicas[2].signal("KILL");
    assert!(bc.replicas[2].wait_exit(Duration::from_secs(5)).is_some());
    assert_eq!(publisher.await.unwrap(), N);
    for r in readers {
        let f = r.await.unwrap();
        f.assert_exact(from, from + N as u64);
        if f.name.starts_with("victim") {
            assert!(f.reconnects >= 1, "{} never had to reconnect", f.name);
        } else {
            assert_eq!(f.reconnects, 0);
        }
    }
}

/// SIGTERM: sessions are told 1012 (reconnect elsewhere), the process exits 0 promptly.
/// Logs: JSON lines, each with the replica id, none holding a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_with_1012_and_logs_keep_secrets() {
    // A password in the database URL (trust auth ignores it) must never reach the logs.
    let db = PgDb::create("term").await;
    let url = db.url.replacen("postgres@", "postgres:pw-Zq7v9LKs@", 1);
    let dir = common::temp_dir("term");
    let secrets = dir.join("secrets");
    let redis = infra::redis_server();
    let mut r = Replica::start(
        "term-1",
        &dir,
        &[
            "--database-url",
            &url,
            "--redis-url",
            &redis,
            "--secrets-dir",
            secrets.to_str().unwrap(),
        ],
    );
    infra::wait_ready(&r.base(), Duration::from_secs(20)).await;
    let base = r.base();
    let email = "hidden.person@example.org";
    let owner = client::owner_token(&base, "hidden", email, PASSWORD)
        .await
        .unwrap();
    let bad = client::http(
        &base,
        "POST",
        "/api/v1/owners/login",
        None,
        Some(&json!({"email": email, "password": "not the password at all"})),
    )
    .await
    .unwrap();
    assert_eq!(bad.status, 401);
    let key = client::create_agent(
        &base,
        &owner,
        &json!({"handle": "talker", "name": "T", "bio": ""}),
    )
    .await
    .unwrap();
    let jwt = client::agent_token(&base, &key).await.unwrap();
    let refused = client::http(
        &base,
        "POST",
        "/api/v1/token",
        Some(&format!("{key}x")),
        None,
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 401);
    let mut agent = Client::connect(&r.ws(), Some(&jwt)).await.unwrap();
    agent.subscribe("topic:general", None).await.unwrap();
    agent
        .command(
            "post",
            json!({"topic": "general", "title": "t", "body": "secret-ish body"}),
        )
        .await
        .unwrap();
    agent
        .command("dm", json!({"to": "talker", "body": "a private note"}))
        .await
        .ok();
    let mut spectator = Client::connect(&r.ws(), None).await.unwrap();
    spectator.subscribe("firehose", None).await.unwrap();

    let t0 = Instant::now();
    r.signal("TERM");
    assert_eq!(agent.closed_with(Duration::from_secs(5)).await, Some(1012));
    assert_eq!(
        spectator.closed_with(Duration::from_secs(5)).await,
        Some(1012)
    );
    let status = r
        .wait_exit(Duration::from_secs(10))
        .expect("exits within 10 s");
    eprintln!("SIGTERM to exit: {:?}", t0.elapsed());
    assert!(status.success(), "exit status {status:?}");

    let logs = r.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{logs}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert_eq!(v["replica"], "term-1", "{l}");
    }
    for secret in [
        PASSWORD,
        "not the password at all",
        email,
        "hidden.person",
        &key,
        &key[4..20],
        &jwt,
        &owner,
        "pw-Zq7v9LKs",
        "a private note",
    ] {
        assert!(
            !logs.contains(secret),
            "the logs contain a secret: {secret}\n{logs}"
        );
    }

    // Each committed audit row put the chain's head in the log; kept off the machine, it
    // lets an operator catch rows cut off the end, which the chain alone cannot show.
    let head = lines
        .iter()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "audit head")
        .unwrap_or_else(|| panic!("no audit head in the logs\n{logs}"));
    let head = format!(
        "{}:{}",
        head["audit_id"],
        head["audit_hash"].as_str().unwrap()
    );
    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_carapace"))
            .args(["admin", "--database-url", &db.url, "--secrets-dir"])
            .arg(&secrets)
            .args(["audit", "verify", "--head", &head])
            .output()
            .unwrap()
    };
    let ok = verify();
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.contains(&format!("head {head}")), "{out}");
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    sqlx::query("DELETE FROM audit_log WHERE id = (SELECT MAX(id) FROM audit_log)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let cut = verify();
    let err = String::from_utf8_lossy(&cut.stderr);
    assert_eq!(cut.status.code(), Some(1), "{err}");
    assert!(err.contains("cut off"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// PostgreSQL stops: writes fail with `unavailable` and leave nothing half-written,
/// `/readyz` says 503; it starts again: the replicas recover by themselves and subscribers
/// get every accepted event, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_briefly_down_writes_fail_cleanly_and_the_hub_recovers() {
    let mut pg = OwnPostgres::start();
    let db = PgDb::create_on(&pg.server(), "pgdown").await;
    let mut cl = Cluster::empty(db, &infra::redis_server());
    let tweak = |c: &mut Config| c.rate_limits = RateLimitMode::Off;
    cl.add("p0", &tweak).await;
    cl.add("p1", &tweak).await;
    cl.ready().await;
    let (_, tok) = cl.replicas[0].agent("writer").await;
    let (mut follower, from) =
        Follower::start("on p1", vec![cl.replicas[1].ws.clone()], "topic:general").await;
    let mut w = cl.replicas[0].connect(Some(&tok)).await;
    for i in 0..5 {
        w.command(
            "post",
            json!({"topic": "general", "title": format!("before {i}"), "body": ""}),
        )
        .await
        .unwrap();
    }
    pg.stop();
    let e = w
        .command(
            "post",
            json!({"topic": "general", "title": "during", "body": ""}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("unavailable"), "{e}");
    assert_eq!(infra::readyz(&cl.replicas[0].base).await, 503);
    pg.start_again();
    let t0 = Instant::now();
    let mut after = 0;
    while after < 5 {
        match w
            .command(
                "post",
                json!({"topic": "general", "title": format!("after {after}"), "body": ""}),
            )
            .await
        {
            Ok(_) => after += 1,
            Err(e) if e.code() == Some("unavailable") => {
                assert!(t0.elapsed() < Duration::from_secs(15), "no recovery: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!(
        "writes accepted again {:?} after PostgreSQL restarted",
        t0.elapsed()
    );
    infra::wait_ready(&cl.replicas[0].base, Duration::from_secs(10)).await;
    follower
        .follow(from, from + 10, Instant::now() + Duration::from_secs(10))
        .await;
    follower.assert_exact(from, from + 10);
    // Nothing half-written: ten posts, ten events, one per seq.
    let page = cl.replicas[1]
        .http(
            "GET",
            "/api/v1/topics/general/posts?sort=new&limit=50",
            None,
            None,
        )
        .await;
    let titles: Vec<&str> = page.body["posts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(titles.len(), 10, "{titles:?}");
    assert!(!titles.contains(&"during"));
    cl.stop().await;
}
