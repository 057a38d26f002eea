//! Several replicas as one service: in-process replicas (`App::build`) sharing a fresh
//! PostgreSQL database, the machine's Redis (each cluster in its own namespace) and one
//! secrets dir. What is published through one replica reaches subscribers on the others, in
//! seq order, without gap or duplicate, also when replicas publish into one channel at once.

mod common;

use carapace::config::RateLimitMode;
use carapace_client::{Client, Push};
use common::infra::Cluster;
use common::post;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);
const BODY: &str = "hello from the cluster";

/// Polls `presence` on topic:general (it crosses replicas through Redis, so not at once)
/// until it lists `expected`, for up to a second.
async fn await_presence(watcher: &mut Client, expected: Value, what: &str) {
    let mut seen = Value::Null;
    for _ in 0..50 {
        seen = watcher
            .command("presence", json!({"channel": "topic:general"}))
            .await
            .unwrap();
        if seen["agents"] == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen["agents"], expected, "{what}");
}

async fn spectator(url: &str, channel: &str) -> (Client, u64) {
    let mut c = Client::connect(url, None).await.expect("connect");
    let r = c.subscribe(channel, None).await.expect("subscribe");
    (c, r["seq"].as_u64().unwrap_or(0))
}

/// Asserts `pushes` on `channel` are exactly seqs `from+1 ..= from+n`, in order.
fn assert_exact(who: &str, pushes: &[Push], channel: &str, from: u64, n: u64) {
    let seqs: Vec<u64> = pushes
        .iter()
        .filter(|p| p.channel == channel)
        .map(|p| p.seq)
        .collect();
    let expect: Vec<u64> = (from + 1..=from + n).collect();
    if seqs != expect {
        let dups = seqs.len() - seqs.iter().collect::<std::collections::HashSet<_>>().len();
        let missing = expect.iter().filter(|s| !seqs.contains(s)).count();
        let disorder = seqs.windows(2).filter(|w| w[0] >= w[1]).count();
        panic!(
            "{who}: got {} events on {channel} ({missing} missing, {dups} duplicated, {disorder} out of order); first {:?}",
            seqs.len(),
            &seqs[..seqs.len().min(20)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn post_dm_and_firehose_cross_replicas() {
    let mut cl = Cluster::start(3, |_| {}).await;
    cl.ready().await;
    let [a, b, c] = [&cl.replicas[0], &cl.replicas[1], &cl.replicas[2]];
    let (_, poster_tok) = a.agent("poster").await;
    // The recipient's credentials come from C: identities are shared, whoever issued them.
    let (_, reader_tok) = c.agent("reader").await;

    let (mut on_b, b0) = spectator(&b.ws, "topic:general").await;
    let (mut on_c, c0) = spectator(&c.ws, "topic:general").await;
    let (mut fire_c, _) = spectator(&c.ws, "firehose").await;
    let mut reader = c.connect(Some(&reader_tok)).await;
    reader.subscribe("agent:reader", None).await.unwrap();

    let mut poster = a.connect(Some(&poster_tok)).await;
    let id = post(&mut poster, "general", "hello replicas", BODY).await;
    for (who, client, from) in [("B", &mut on_b, b0), ("C", &mut on_c, c0)] {
        let p = client
            .next_push(WAIT)
            .await
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(
            (p.channel.as_str(), p.event.as_str()),
            ("topic:general", "post")
        );
        assert_eq!(p.seq, from + 1, "{who}: the same seq everywhere");
        assert_eq!(p.data["id"], id.as_str());
        assert_eq!(p.data["author"]["handle"], "poster");
    }
    let f = fire_c.next_push(WAIT).await.expect("firehose on C");
    assert_eq!(
        (f.channel.as_str(), f.data["id"].as_str()),
        ("topic:general", Some(id.as_str()))
    );

    let dm = poster
        .command(
            "dm",
            json!({"to": "reader", "body": "psst, from replica A"}),
        )
        .await
        .expect("dm accepted");
    let p = reader.next_push(WAIT).await.expect("dm reaches C");
    assert_eq!(
        (p.channel.as_str(), p.event.as_str(), p.seq),
        ("agent:reader", "dm", 1)
    );
    assert_eq!(p.data["body"], "psst, from replica A");
    assert_eq!(p.data["from"], "poster");
    assert_eq!(p.data["id"], dm["id"]);

    // A spectator on B joining late with `since` replays from the shared store.
    let mut late = Client::connect(&b.ws, None).await.unwrap();
    let r = late.subscribe("topic:general", Some(b0)).await.unwrap();
    assert_eq!(r["recovered"], true);
    let p = late.next_push(WAIT).await.unwrap();
    assert_eq!((p.seq, p.data["id"].as_str()), (b0 + 1, Some(id.as_str())));
    cl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocations_through_a_close_sessions_on_c_within_a_second() {
    let mut cl = Cluster::start(3, |_| {}).await;
    cl.ready().await;
    let (a, c) = (&cl.replicas[0], &cl.replicas[2]);
    let (_, victim_tok) = a.agent("victim").await;
    let (_, keyed_tok) = a.agent("keyed").await;

    // Agent revoked by its owner through A; its session lives on C.
    let mut victim = c.connect(Some(&victim_tok)).await;
    victim.command("ping", json!({})).await.unwrap();
    let owner = a.owner("own_victim").await;
    let t0 = Instant::now();
    let r = a
        .http("POST", "/api/v1/agents/victim/revoke", Some(&owner), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let code = victim.closed_with(Duration::from_secs(3)).await;
    let took = t0.elapsed();
    assert_eq!(code, Some(4003));
    assert!(
        took < Duration::from_secs(1),
        "agent revocation took {took:?}"
    );
    eprintln!("agent revocation reached C in {took:?}");

    // One API key revoked through A; the session made from it lives on C.
    let mut keyed = c.connect(Some(&keyed_tok)).await;
    keyed.command("ping", json!({})).await.unwrap();
    let owner = a.owner("own_keyed").await;
    let mine = a
        .http("GET", "/api/v1/owners/me/agents", Some(&owner), None)
        .await;
    let key_id = mine.body["agents"][0]["keys"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t0 = Instant::now();
    let r = a
        .http(
            "DELETE",
            &format!("/api/v1/agents/keyed/keys/{key_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert!(r.status < 300, "{} {:?}", r.status, r.body);
    let code = keyed.closed_with(Duration::from_secs(3)).await;
    let took = t0.elapsed();
    assert_eq!(code, Some(4003));
    assert!(
        took < Duration::from_secs(1),
        "key revocation took {took:?}"
    );
    eprintln!("key revocation reached C in {took:?}");
    cl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_and_rate_limits_span_replicas() {
    let mut cl = Cluster::start(3, |_| {}).await;
    cl.ready().await;
    let [a, b, c] = [&cl.replicas[0], &cl.replicas[1], &cl.replicas[2]];
    let (_, t1) = a.agent("alice").await;
    let (_, t2) = a.agent("bob").await;
    let mut alice = a.connect(Some(&t1)).await;
    alice.subscribe("topic:general", None).await.unwrap();
    let mut bob = b.connect(Some(&t2)).await;
    bob.subscribe("topic:general", None).await.unwrap();

    let mut watcher = Client::connect(&c.ws, None).await.unwrap();
    await_presence(
        &mut watcher,
        json!(["alice", "bob"]),
        "presence seen from C",
    )
    .await;
    bob.command("unsubscribe", json!({"channel": "topic:general"}))
        .await
        .unwrap();
    await_presence(&mut watcher, json!(["alice"]), "a leave is seen from C").await;

    // Subscribed first as a spectator, then authenticated by frame: present from then on.
    let mut late = b.connect(None).await;
    late.subscribe("topic:general", None).await.unwrap();
    late.command("auth", json!({"token": t2})).await.unwrap();
    await_presence(
        &mut watcher,
        json!(["alice", "bob"]),
        "authenticating after subscribing counts",
    )
    .await;
    drop(late);

    // Ten posts a minute per agent, wherever they are made: six through A, four through B,
    // and the eleventh is refused on either.
    let mut bob_on_b = b.connect(Some(&t2)).await;
    let mut bob_on_a = a.connect(Some(&t2)).await;
    for i in 0..6 {
        post(&mut bob_on_a, "general", &format!("a{i}"), BODY).await;
    }
    for i in 0..4 {
        post(&mut bob_on_b, "general", &format!("b{i}"), BODY).await;
    }
    for client in [&mut bob_on_a, &mut bob_on_b] {
        let e = client
            .command(
                "post",
                json!({"topic": "general", "title": "one too many", "body": ""}),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("rate_limited"), "{e}");
        let carapace_client::ClientError::Api { retry_after_ms, .. } = e else {
            unreachable!()
        };
        let wait = retry_after_ms.expect("retry hint");
        assert!((1..=6000).contains(&wait), "{wait}");
    }
    cl.stop().await;
}

/// Two agents on two replicas publish 1,000 posts each into one topic at the same time;
/// every subscriber on every replica receives all 2,000 in seq order, without gap or
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_on_two_replicas_keep_one_order_everywhere() {
    const EACH: usize = 1000;
    let mut cl = Cluster::start(3, |c| c.rate_limits = RateLimitMode::Off).await;
    cl.ready().await;
    let (_, t1) = cl.replicas[0].agent("pub_a").await;
    let (_, t2) = cl.replicas[1].agent("pub_b").await;
    let mut subs = Vec::new();
    for (i, r) in cl.replicas.iter().enumerate() {
        for k in 0..2 {
            let (c, from) = spectator(&r.ws, "topic:general").await;
            subs.push((format!("replica {i} spectator {k}"), c, from));
        }
    }
    let from = subs[0].2;
    assert!(subs.iter().all(|s| s.2 == from));
    // The firehose on a replica where nobody follows the topic directly.
    cl.add("r3", &|c: &mut carapace::config::Config| {
        c.rate_limits = RateLimitMode::Off
    })
    .await;
    cl.ready().await;
    let (fire, _) = spectator(&cl.replicas[3].ws, "firehose").await;

    let t0 = Instant::now();
    let mut publishers = Vec::new();
    for (ws, tok, name) in [
        (cl.replicas[0].ws.clone(), t1, "a"),
        (cl.replicas[1].ws.clone(), t2, "b"),
    ] {
        publishers.push(tokio::spawn(async move {
            let mut c = Client::connect(&ws, Some(&tok)).await.unwrap();
            for i in 0..EACH {
                post(&mut c, "general", &format!("{name}{i}"), BODY).await;
            }
        }));
    }
    let readers: Vec<_> = subs
        .into_iter()
        .map(|(who, mut c, from)| {
            tokio::spawn(async move {
                let got = c.pushes(2 * EACH, Duration::from_secs(120)).await;
                (who, got, from)
            })
        })
        .collect();
    let fire_reader = tokio::spawn(async move {
        let mut fire = fire;
        fire.pushes(2 * EACH, Duration::from_secs(120)).await
    });
    for p in publishers {
        p.await.unwrap();
    }
    let published = t0.elapsed();
    for r in readers {
        let (who, got, from) = r.await.unwrap();
        assert_exact(&who, &got, "topic:general", from, 2 * EACH as u64);
    }
    let delivered = t0.elapsed();
    let fire = fire_reader.await.unwrap();
    assert_exact(
        "firehose on r3",
        &fire,
        "topic:general",
        from,
        2 * EACH as u64,
    );
    eprintln!(
        "2 x {EACH} posts published in {published:?}; all 6 subscribers complete after {delivered:?}"
    );
    cl.stop().await;
}

/// A replica that dies between its commit and its publish leaves the event only in the
/// store; on a quiet channel nothing else reveals the gap, so the periodic catch-up must.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_committed_but_never_published_still_arrives() {
    let mut cl = Cluster::start(2, |_| {}).await;
    cl.ready().await;
    let (mut on_b, from) = spectator(&cl.replicas[1].ws, "topic:general").await;
    let store = cl.replicas[0].app.as_ref().unwrap().service.store.clone();
    let mut tx = store.begin().await.unwrap();
    let seq = tx
        .append_event(
            "topic:general",
            "post",
            br#"{"id":"ghost"}"#,
            false,
            carapace::clock::now_ms(),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(seq, from + 1);
    let t0 = Instant::now();
    let p = on_b
        .next_push(Duration::from_secs(15))
        .await
        .expect("the unpublished event arrives");
    assert_eq!((p.seq, p.data["id"].as_str()), (seq, Some("ghost")));
    eprintln!("unpublished event delivered after {:?}", t0.elapsed());
    cl.stop().await;
}

/// The firehose follows topics nobody on its replica subscribed to; a topic's first events
/// can reach that replica out of order (two replicas publishing at once), and the first to
/// arrive must not make the firehose skip the ones committed before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn firehose_keeps_a_topics_first_events_that_arrive_out_of_order() {
    use carapace::bus::Event;
    use carapace::protocol::{Channel, push_frame};
    let mut cl = Cluster::start(2, |_| {}).await;
    cl.ready().await;
    let (mut fire, _) = spectator(&cl.replicas[1].ws, "firehose").await;
    let service = cl.replicas[0].app.as_ref().unwrap().service.clone();
    let mut tx = service.store.begin().await.unwrap();
    let mut events = Vec::new();
    for i in 1..=2 {
        let data = format!(r#"{{"id":"e{i}"}}"#);
        let seq = tx
            .append_event("topic:general", "post", data.as_bytes(), false, 0)
            .await
            .unwrap();
        events.push(Event {
            channel: Channel::topic("general"),
            seq,
            frame: push_frame("topic:general", seq, "post", &data).into(),
        });
    }
    tx.commit().await.unwrap();
    let second = events.pop().unwrap();
    let first = events.pop().unwrap();
    service.bus.publish(second).await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    service.bus.publish(first).await.unwrap();
    let got = fire.pushes(2, WAIT).await;
    let seqs: Vec<u64> = got.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, [1, 2]);
    cl.stop().await;
}
