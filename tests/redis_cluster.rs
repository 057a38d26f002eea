//! Replicas on a Redis Cluster (`redis+cluster://`), each test with a cluster of its own
//! (`OwnRedisCluster`: 3 masters, 3 replicas, node timeout 1 s): events over sharded pub/sub
//! survive a master's SIGKILL and failover with nothing lost, duplicated or reordered, and
//! `/readyz` tells the truth meanwhile; seeds that cannot be reached give a replica that is
//! not ready; a cluster URL naming a plain Redis is refused at start.

mod common;

use carapace::config::{Config, RateLimitMode};
use carapace_client::{Client, ClientError};
use common::infra::{self, Cluster, OwnRedis, PgDb};
use common::redis_cluster::OwnRedisCluster;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPICS: [&str; 6] = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];

/// A subscriber on one replica: every (channel, seq) pushed to it, in arrival order.
struct Listener {
    who: String,
    client: Client,
    got: Vec<(String, u64)>,
}

impl Listener {
    async fn start(who: String, ws: &str, channels: &[String]) -> (Listener, HashMap<String, u64>) {
        let mut client = Client::connect(ws, None).await.expect("connect");
        let mut from = HashMap::new();
        for ch in channels {
            let r = client.subscribe(ch, None).await.expect("subscribe");
            from.insert(ch.clone(), r["seq"].as_u64().unwrap_or(0));
        }
        (
            Listener {
                who,
                client,
                got: Vec::new(),
            },
            from,
        )
    }

    /// Reads until every topic reached its last seq, or the deadline.
    async fn drain(&mut self, last: &HashMap<String, u64>, deadline: Instant) {
        let done = |got: &[(String, u64)]| {
            last.iter()
                .all(|(ch, l)| got.iter().any(|(c, s)| c == ch && s == l))
        };
        while !done(&self.got) && Instant::now() < deadline {
            match self.client.next_push(Duration::from_millis(300)).await {
                Ok(p) => self.got.push((p.channel, p.seq)),
                Err(ClientError::Timeout) => {}
                Err(e) => panic!("{}: connection lost: {e}", self.who),
            }
        }
    }

    /// Every channel's seqs are exactly `from+1 ..= last`, in order, once each.
    fn assert_exact(
        &self,
        channels: &[String],
        from: &HashMap<String, u64>,
        last: &HashMap<String, u64>,
    ) {
        for ch in channels {
            let seqs: Vec<u64> = self
                .got
                .iter()
                .filter(|(c, _)| c == ch)
                .map(|(_, s)| *s)
                .collect();
            let expect: Vec<u64> = (from[ch] + 1..=last[ch]).collect();
            assert!(
                seqs == expect,
                "{} on {ch}: {} events, {} expected ({} missing); first {:?}",
                self.who,
                seqs.len(),
                expect.len(),
                expect.iter().filter(|s| !seqs.contains(s)).count(),
                &seqs[..seqs.len().min(20)]
            );
        }
    }
}

/// Posts `n` times round-robin over `TOPICS` through one replica; returns how many were
/// accepted (the bus being down never refuses a post).
async fn publish(ws: String, token: String, n: usize) -> usize {
    let mut c = Client::connect(&ws, Some(&token)).await.expect("connect");
    let mut done = 0;
    for i in 0..n {
        let topic = TOPICS[i % TOPICS.len()];
        match c
            .command(
                "post",
                json!({"topic": topic, "title": format!("p{i}"), "body": ""}),
            )
            .await
        {
            Ok(_) => done += 1,
            Err(e) => panic!("post into {topic} refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    done
}

/// `/readyz` of every replica every 50 ms, as (replica, ms since start, status) changes.
fn watch_readyz(
    bases: Vec<String>,
    start: Instant,
    stop: Arc<Mutex<bool>>,
) -> tokio::task::JoinHandle<Vec<(usize, u128, u16)>> {
    tokio::spawn(async move {
        let mut seen: Vec<(usize, u128, u16)> = Vec::new();
        let mut now = vec![0u16; bases.len()];
        loop {
            // One whole round after the stop, so the state at the stop is recorded.
            let last = *stop.lock().unwrap();
            for (i, b) in bases.iter().enumerate() {
                let s = infra::readyz(b).await;
                if s != now[i] {
                    now[i] = s;
                    seen.push((i, start.elapsed().as_millis(), s));
                }
            }
            if last {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// A master dies mid-stream (the one serving the control channel, and some topics and
/// firehose buckets): after the failover every subscriber on every replica has every stored event of
/// its channels exactly once, in order, and `/readyz` said 503 while the bus was deaf.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn master_killed_mid_stream_loses_nothing() {
    let test_start = Instant::now();
    let mut redis = OwnRedisCluster::start(3, 1);
    eprintln!("redis cluster up in {:?}", test_start.elapsed());
    let mut cl = Cluster::start_on(2, &redis.url_of(&redis.ports[..2]), |c| {
        c.rate_limits = RateLimitMode::Off
    })
    .await;
    cl.ready().await;
    let (_, t0) = cl.replicas[0].agent("pub_a").await;
    let (_, t1) = cl.replicas[1].agent("pub_b").await;
    // Each topic exists before anyone subscribes.
    let mut seed = Client::connect(&cl.replicas[0].ws, Some(&t0))
        .await
        .unwrap();
    for t in TOPICS {
        seed.command(
            "topic.create",
            json!({"name": t, "title": t, "description": ""}),
        )
        .await
        .unwrap_or_else(|e| panic!("topic.create {t}: {e}"));
    }
    let topic_channels: Vec<String> = TOPICS.iter().map(|t| format!("topic:{t}")).collect();
    let mut listeners = Vec::new();
    let mut from = HashMap::new();
    for (i, r) in cl.replicas.iter().enumerate() {
        for t in &topic_channels {
            let (l, f) =
                Listener::start(format!("{t} on r{i}"), &r.ws, std::slice::from_ref(t)).await;
            from.extend(f);
            listeners.push((l, vec![t.clone()]));
        }
        let (l, _) = Listener::start(
            format!("firehose on r{i}"),
            &r.ws,
            &["firehose".to_string()],
        )
        .await;
        listeners.push((l, topic_channels.clone()));
    }

    // The master to kill: the one serving the control channel (and some topics and
    // firehose buckets), found by asking every master which sharded channels it serves.
    let mut victim = None;
    let mut spread = Vec::new();
    for &p in &redis.ports {
        let chans = redis.cli(p, &["PUBSUB", "SHARDCHANNELS"]);
        let topics = chans.lines().filter(|c| c.contains(":ch:topic:")).count();
        if topics > 0 || chans.contains("firehose") {
            spread.push((p, topics));
        }
        if chans.lines().any(|c| c.ends_with(":control")) {
            victim = Some(p);
        }
    }
    let victim = victim.expect("a master serves the control channel");
    eprintln!("topic channels per master (port, count): {spread:?}; killing {victim}");
    assert!(spread.len() >= 2, "topics spread over shards: {spread:?}");

    const EACH: usize = 120;
    let pubs = [
        tokio::spawn(publish(cl.replicas[0].ws.clone(), t0.clone(), EACH)),
        tokio::spawn(publish(cl.replicas[1].ws.clone(), t1.clone(), EACH)),
    ];
    let stop = Arc::new(Mutex::new(false));
    let bases: Vec<String> = cl.replicas.iter().map(|r| r.base.clone()).collect();
    let watch_start = Instant::now();
    let watcher = watch_readyz(bases, watch_start, stop.clone());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let killed_at = watch_start.elapsed().as_millis();
    redis.kill(victim);
    let down = Instant::now();
    let mut deaf = Vec::new();
    for r in &cl.replicas {
        while infra::readyz(&r.base).await != 503 {
            assert!(
                down.elapsed() < Duration::from_secs(3),
                "readyz stayed 200 with a master of its channels gone"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        deaf.push(down.elapsed());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !redis.failed_over(victim) {
        assert!(Instant::now() < deadline, "no failover within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "failover: cluster_state ok {:?} after the kill",
        down.elapsed()
    );
    cl.ready().await;
    let ready_after = down.elapsed();
    for p in pubs {
        assert_eq!(p.await.unwrap(), EACH);
    }
    *stop.lock().unwrap() = true;
    let readyz = watcher.await.unwrap();

    // The store's word on each topic's last seq, from a fresh subscription.
    let mut last = HashMap::new();
    let mut probe = Client::connect(&cl.replicas[0].ws, None).await.unwrap();
    for t in &topic_channels {
        let r = probe.subscribe(t, None).await.unwrap();
        last.insert(t.clone(), r["seq"].as_u64().unwrap());
    }
    let total: u64 = topic_channels.iter().map(|t| last[t] - from[t]).sum();
    assert_eq!(total, 2 * EACH as u64, "every post stored");
    let deadline = Instant::now() + Duration::from_secs(15);
    for (l, chans) in &mut listeners {
        let want: HashMap<String, u64> = chans.iter().map(|c| (c.clone(), last[c])).collect();
        l.drain(&want, deadline).await;
        l.assert_exact(chans, &from, &last);
    }
    // Events a replica read from the Store: to fill gaps, and to resync after a reconnect.
    let metrics = |text: &str| {
        (
            common::metric(text, "carapace_bus_reconnects_total"),
            common::metric(text, "carapace_gap_fills_total"),
            common::metric(text, "carapace_resync_fetches_total"),
        )
    };
    let mut fills = Vec::new();
    for r in &cl.replicas {
        let (reconnects, gap_fills, resyncs) = metrics(&common::raw_get(&r.base, "/metrics").await);
        assert!(reconnects >= 1.0, "the bus noticed the loss");
        fills.push((gap_fills, resyncs));
    }
    eprintln!(
        "kill at {killed_at} ms; readyz 503 on each replica after {deaf:?}; ready again after \
         {ready_after:?}; readyz changes (replica, ms, status): {readyz:?}; events fetched \
         from the store per replica (by gap fills, by resyncs): {fills:?}; {total} events checked on {} \
         subscribers",
        listeners.len(),
    );
    // 200 before the kill, 503 after it, 200 at the end, on every replica.
    for i in 0..cl.replicas.len() {
        let mine: Vec<&(usize, u128, u16)> = readyz.iter().filter(|(r, _, _)| *r == i).collect();
        assert_eq!(mine.first().map(|c| c.2), Some(200), "r{i}: {mine:?}");
        assert!(
            mine.iter().any(|c| c.2 == 503 && c.1 >= killed_at),
            "r{i}: {mine:?}"
        );
        assert_eq!(mine.last().map(|c| c.2), Some(200), "r{i}: {mine:?}");
    }

    // After the failover the bus itself carries events again (on the promoted master), not
    // only the store: posts through r0 reach r1's subscribers, and r1 reads none of them
    // from the store. Right after a failover the nodes may still disagree on the map for a
    // moment, and a replica whose link rebuilds meanwhile rightly resyncs from the store:
    // such a round proves nothing either way, so it is played again.
    let r1_metrics = async || metrics(&common::raw_get(&cl.replicas[1].base, "/metrics").await);
    for round in 1.. {
        let before = r1_metrics().await;
        assert_eq!(
            publish(cl.replicas[0].ws.clone(), t0.clone(), 2 * TOPICS.len()).await,
            12
        );
        let mut probe = Client::connect(&cl.replicas[0].ws, None).await.unwrap();
        for t in &topic_channels {
            let r = probe.subscribe(t, None).await.unwrap();
            last.insert(t.clone(), r["seq"].as_u64().unwrap());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (l, chans) in &mut listeners {
            let want: HashMap<String, u64> = chans.iter().map(|c| (c.clone(), last[c])).collect();
            l.drain(&want, deadline).await;
            l.assert_exact(chans, &from, &last);
        }
        let after = r1_metrics().await;
        if after.0 == before.0 {
            assert_eq!(
                (after.1, after.2),
                (before.1, before.2),
                "live events after the failover came over the bus (gap fills, resync fetches)"
            );
            break;
        }
        eprintln!("r1's bus link rebuilt during round {round}: {before:?} -> {after:?}");
        assert!(
            round < 5,
            "r1's bus link kept rebuilding after the failover"
        );
    }
    eprintln!("test took {:?}", test_start.elapsed());
    cl.stop().await;
}

/// Seeds nobody listens on: the replica starts (a cluster can come later) and is not ready.
#[tokio::test]
async fn unreachable_seeds_give_a_replica_that_is_not_ready() {
    let url = format!(
        "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
        infra::free_port(),
        infra::free_port()
    );
    let mut cl = Cluster::start_on(1, &url, |_| {}).await;
    for _ in 0..20 {
        assert_eq!(infra::readyz(&cl.replicas[0].base).await, 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cl.stop().await;
}

/// A cluster URL naming a plain (non-cluster) Redis is a configuration error, said at start;
/// a TLS cluster URL is refused without echoing its password.
#[tokio::test]
async fn cluster_url_on_a_plain_redis_is_refused_at_start() {
    let redis = OwnRedis::start();
    let db = PgDb::create("rcplain").await;
    let dir = common::temp_dir("rcplain");
    let build = |url: String| {
        let mut config = Config::for_tests(&dir);
        config.database_url = db.url.clone();
        config.redis_url = Some(url);
        carapace::App::build(config)
    };
    let url = format!("redis+cluster://127.0.0.1:{}", redis.port);
    let err = build(url).await.err().expect("refused").to_string();
    assert!(err.contains("not a Redis Cluster node"), "{err}");
    let err = build("rediss+cluster://:s3cret-pw@127.0.0.1:1".into())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("not supported") && !err.contains("s3cret"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Presence (a sorted set per topic, pipelined under the cluster's hash tag) and the shared
/// rate-limit buckets (a script on one key) work across replicas on a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_rate_limits_span_replicas_on_a_cluster() {
    // With a password, which every connection of the bus must present.
    let mut redis = OwnRedisCluster::start_with(3, 0, Some("cluster pw"));
    let seeds = redis
        .url()
        .replace("redis+cluster://", "redis+cluster://:cluster%20pw@");
    let mut cl = Cluster::start_on(2, &seeds, |_| {}).await;
    cl.ready().await;
    let [a, b] = [&cl.replicas[0], &cl.replicas[1]];
    let (_, ta) = a.agent("alice").await;
    let (_, tb) = a.agent("bob").await;
    let mut alice = a.connect(Some(&ta)).await;
    alice.subscribe("topic:general", None).await.unwrap();
    let mut watcher = Client::connect(&b.ws, None).await.unwrap();
    let mut seen = serde_json::Value::Null;
    for _ in 0..50 {
        seen = watcher
            .command("presence", json!({"channel": "topic:general"}))
            .await
            .unwrap();
        if seen["agents"] == json!(["alice"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen["agents"], json!(["alice"]), "presence seen from b");

    // Ten posts a minute per agent wherever they are made: the eleventh is refused on both.
    let mut bob_on_a = a.connect(Some(&tb)).await;
    let mut bob_on_b = b.connect(Some(&tb)).await;
    for i in 0..10 {
        let c = if i % 2 == 0 {
            &mut bob_on_a
        } else {
            &mut bob_on_b
        };
        common::post(c, "general", &format!("p{i}"), "").await;
    }
    for c in [&mut bob_on_a, &mut bob_on_b] {
        let e = c
            .command(
                "post",
                json!({"topic": "general", "title": "one too many", "body": ""}),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("rate_limited"), "{e}");
    }

    // A master without a replica dies: its slots have no owner, the cluster says
    // `cluster_state:fail`, and no replica may say ready while it lasts, even one whose own
    // channels all live on the masters still running (prefer such a master).
    let masters = redis.masters();
    let victim = masters
        .iter()
        .copied()
        .find(|&p| redis.cli(p, &["PUBSUB", "SHARDCHANNELS"]).trim().is_empty())
        .unwrap_or(masters[0]);
    redis.kill(victim);
    let down = Instant::now();
    for r in &cl.replicas {
        while infra::readyz(&r.base).await != 503 {
            assert!(
                down.elapsed() < Duration::from_secs(6),
                "readyz stayed 200 on a failed cluster"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let noticed = down.elapsed();
    for _ in 0..10 {
        for r in &cl.replicas {
            assert_eq!(
                infra::readyz(&r.base).await,
                503,
                "ready on a failed cluster"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("a master with no replica killed: both replicas 503 after {noticed:?}");
    cl.stop().await;
}

/// A slot moves to another master under a subscriber (a resharding): the server drops the
/// sharded subscription, the replica notices, resubscribes on the new owner and catches up;
/// events after the move arrive over the bus again, and nothing is lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_under_a_subscriber_is_followed() {
    let redis = OwnRedisCluster::start(3, 0);
    let mut cl = Cluster::start_on(2, &redis.url(), |c| c.rate_limits = RateLimitMode::Off).await;
    cl.ready().await;
    let (_, t0) = cl.replicas[0].agent("poster").await;
    let mut poster = cl.replicas[0].connect(Some(&t0)).await;
    let mut watcher = Client::connect(&cl.replicas[1].ws, None).await.unwrap();
    let from = watcher.subscribe("topic:general", None).await.unwrap()["seq"]
        .as_u64()
        .unwrap();
    for i in 0..3 {
        common::post(&mut poster, "general", &format!("before {i}"), "").await;
    }
    // Where the channel lives now, found by asking the masters.
    let masters = redis.masters();
    let (owner, name) = masters
        .iter()
        .find_map(|&p| {
            redis
                .cli(p, &["PUBSUB", "SHARDCHANNELS"])
                .lines()
                .find(|c| c.ends_with(":ch:topic:general"))
                .map(|c| (p, c.to_string()))
        })
        .expect("a master serves topic:general");
    let slot: u16 = redis
        .cli(owner, &["CLUSTER", "KEYSLOT", &name])
        .trim()
        .parse()
        .unwrap();
    let target = *masters.iter().find(|&&p| p != owner).unwrap();
    let moved = Instant::now();
    redis.move_slot(slot, owner, target);
    // The bus hears the channel again on the new owner.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis
        .cli(target, &["PUBSUB", "SHARDCHANNELS"])
        .contains(&name)
    {
        assert!(
            Instant::now() < deadline,
            "no resubscription on the new owner"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resubscribed = moved.elapsed();
    cl.ready().await;
    for i in 0..3 {
        common::post(&mut poster, "general", &format!("after {i}"), "").await;
    }
    let mut seqs = Vec::new();
    while seqs.len() < 6 {
        let p = watcher
            .next_push(Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("after {seqs:?}: {e}"));
        seqs.push(p.seq);
    }
    assert_eq!(seqs, (from + 1..=from + 6).collect::<Vec<_>>());
    eprintln!(
        "slot {slot} moved {owner} -> {target}; resubscribed on the new owner after {resubscribed:?}"
    );
    cl.stop().await;
}

/// A cluster node that knows the slot map (it claims every slot) but answers every other
/// command with `reply`, such as a MOVED that points back at itself or a CROSSSLOT: a node
/// broken in a way no retry fixes. Counts the commands it was sent.
struct BrokenNode {
    port: u16,
    commands: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl BrokenNode {
    async fn start(reply: &'static str) -> BrokenNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let commands = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = commands.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let _ = BrokenNode::serve(tcp, port, reply, counted).await;
                });
            }
        });
        BrokenNode {
            port,
            commands,
            task,
        }
    }

    async fn serve(
        tcp: tokio::net::TcpStream,
        port: u16,
        reply: &str,
        counted: Arc<std::sync::atomic::AtomicUsize>,
    ) -> std::io::Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (r, mut w) = tcp.into_split();
        let mut lines = BufReader::new(r).lines();
        // Requests are RESP arrays of bulk strings: `*N`, then `$len` and the bytes, N times.
        while let Some(head) = lines.next_line().await? {
            let n: usize = head.trim_start_matches('*').parse().unwrap_or(0);
            let mut args = Vec::with_capacity(n);
            for _ in 0..n {
                lines.next_line().await?;
                args.push(lines.next_line().await?.unwrap_or_default().to_uppercase());
            }
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = match args.as_slice() {
                ["PING", ..] => "+PONG\r\n".to_string(),
                ["CLUSTER", "INFO", ..] => {
                    let info = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\n";
                    format!("${}\r\n{info}\r\n", info.len())
                }
                ["CLUSTER", "SLOTS", ..] => {
                    let id = "0123456789abcdef0123456789abcdef01234567";
                    format!(
                        "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:{port}\r\n${}\r\n{id}\r\n",
                        id.len()
                    )
                }
                _ => reply.replace("{port}", &port.to_string()),
            };
            w.write_all(out.as_bytes()).await?;
        }
        Ok(())
    }

    fn commands(&self) -> usize {
        self.commands.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for BrokenNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A node that answers MOVED (to itself) or CROSSSLOT forever: the replica starts, says 503
/// on `/readyz` the whole time instead of pretending to hear, and retries at its backoff
/// rather than in a hot loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answering_moved_or_crossslot_forever_keeps_the_replica_not_ready() {
    for reply in [
        "-MOVED 866 127.0.0.1:{port}\r\n",
        "-CROSSSLOT Keys in request don't hash to the same slot\r\n",
    ] {
        let node = BrokenNode::start(reply).await;
        let url = format!("redis+cluster://127.0.0.1:{}", node.port);
        let mut cl = Cluster::start_on(1, &url, |_| {}).await;
        let watched = Instant::now();
        while watched.elapsed() < Duration::from_secs(3) {
            assert_eq!(
                infra::readyz(&cl.replicas[0].base).await,
                503,
                "ready on a node answering {reply:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let sent = node.commands();
        eprintln!("{reply:?}: {sent} commands in 3 s");
        assert!(sent > 0, "the replica never reached the node");
        assert!(
            sent < 600,
            "{sent} commands in 3 s: a retry loop without backoff"
        );
        cl.stop().await;
    }
}
