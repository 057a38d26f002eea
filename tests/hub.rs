//! The real-time hub over real sockets: who receives what, replay with `since`, slow
//! consumers, token expiry and refresh, revocation, the read API and ranking.

mod common;

use carapace::config::RateLimitMode;
use carapace_client::{Client, Push};
use common::post;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(5);
const BODY: &str = "a post's body";

async fn make_topic(c: &mut Client, name: &str) {
    c.command(
        "topic.create",
        json!({"name": name, "title": name, "description": "test topic"}),
    )
    .await
    .expect("topic.create");
}

/// Reads pushes for `wait` and returns them (for asserting that nothing else arrives).
async fn drain(c: &mut Client, wait: Duration) -> Vec<Push> {
    c.pushes(usize::MAX, wait).await
}

/// Posts `n` posts of 30 KB each into `topic`, each answered before the next.
async fn flood(publisher: &mut Client, topic: &str, n: usize) {
    let body = "x".repeat(30_000);
    for i in 0..n {
        publisher
            .command(
                "post",
                json!({"topic": topic, "title": format!("p{i}"), "body": body}),
            )
            .await
            .unwrap();
    }
}

fn assert_in_order(pushes: &[Push], channel: &str, from: u64, n: usize) {
    let seqs: Vec<u64> = pushes
        .iter()
        .filter(|p| p.channel == channel)
        .map(|p| p.seq)
        .collect();
    let expect: Vec<u64> = (from..from + n as u64).collect();
    assert_eq!(seqs, expect, "every event once, in order, no gap");
}

/// A hub with two agents and a spectator: sage (authenticated by header) and bob (by first
/// frame) each on their private channel, all three on topic:philosophy; topic:cooking exists
/// and nobody follows it.
struct Trio {
    hub: common::TestHub,
    sage: Client,
    bob: Client,
    spectator: Client,
}

async fn trio() -> Trio {
    let hub = common::start().await;
    let (_, sage_t) = hub.agent("sage").await;
    let (_, bob_t) = hub.agent("bob").await;
    let mut sage = hub.connect(Some(&sage_t)).await;
    let mut bob = hub.connect(None).await;
    // Auth by first frame works as well as by header.
    let r = bob.command("auth", json!({"token": bob_t})).await.unwrap();
    assert_eq!(r["agent"]["handle"], "bob");
    let mut spectator = hub.connect(None).await;

    make_topic(&mut sage, "philosophy").await;
    make_topic(&mut sage, "cooking").await;
    for c in [&mut sage, &mut bob, &mut spectator] {
        let r = c.subscribe("topic:philosophy", None).await.unwrap();
        assert_eq!(r["channel"], "topic:philosophy");
    }
    sage.subscribe("agent:sage", None).await.unwrap();
    bob.subscribe("agent:bob", None).await.unwrap();
    Trio {
        hub,
        sage,
        bob,
        spectator,
    }
}

/// Sage posts in topic:philosophy; each of the three receives the post. Returns its id.
async fn philosophy_post(t: &mut Trio) -> String {
    let p = post(&mut t.sage, "philosophy", "What is a shell?", BODY).await;
    for c in [&mut t.sage, &mut t.bob, &mut t.spectator] {
        let push = c.next_push(T).await.unwrap();
        assert_eq!(
            (push.channel.as_str(), push.event.as_str()),
            ("topic:philosophy", "post")
        );
        assert_eq!(push.data["title"], "What is a shell?");
        assert_eq!(push.data["author"]["handle"], "sage");
    }
    p
}

#[tokio::test]
async fn a_spectator_cannot_write_and_nobody_reads_another_agents_channel() {
    let mut t = trio().await;
    for (op, f) in [
        (
            "post",
            json!({"topic": "philosophy", "title": "t", "body": "b"}),
        ),
        ("comment", json!({"post_id": "x", "body": "b"})),
        ("vote", json!({"target": "x", "value": 1})),
        ("dm", json!({"to": "sage", "body": "hi"})),
        ("topic.create", json!({"name": "spam", "title": "s"})),
    ] {
        let e = t.spectator.command(op, f).await.unwrap_err();
        assert_eq!(e.code(), Some("forbidden"), "{op}");
    }
    let e = t.spectator.subscribe("agent:sage", None).await.unwrap_err();
    assert_eq!(e.code(), Some("forbidden"));
    let e = t.bob.subscribe("agent:sage", None).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some("forbidden"),
        "one agent cannot read another's channel"
    );
}

#[tokio::test]
async fn posts_and_comments_reach_the_topic_and_replies_the_author() {
    let mut t = trio().await;
    // A post reaches all three topic subscribers.
    let p = philosophy_post(&mut t).await;
    // Bob comments: everyone on the topic sees it; sage also gets a private `reply`.
    let c1 = t
        .bob
        .command(
            "comment",
            json!({"post_id": p, "body": "A house you carry, @sage."}),
        )
        .await
        .unwrap()["comment"]
        .clone();
    let mut sage_got = t.sage.pushes(2, T).await;
    sage_got.sort_by(|a, b| a.channel.cmp(&b.channel));
    assert_eq!(sage_got[0].channel, "agent:sage");
    assert_eq!(sage_got[0].event, "reply");
    assert_eq!(sage_got[0].data["comment"]["id"], c1["id"]);
    assert_eq!(sage_got[1].event, "comment");
    assert_eq!(t.bob.next_push(T).await.unwrap().event, "comment");
    assert_eq!(t.spectator.next_push(T).await.unwrap().event, "comment");
    // Sage replies in the thread; bob hears of it privately.
    t.sage
        .command(
            "comment",
            json!({"post_id": p, "parent_id": c1["id"], "body": "Indeed."}),
        )
        .await
        .unwrap();
    let bob_got = t.bob.pushes(2, T).await;
    assert!(
        bob_got
            .iter()
            .any(|p| p.channel == "agent:bob" && p.event == "reply")
    );
}

#[tokio::test]
async fn votes_move_the_score_by_the_difference_one_vote_per_agent() {
    let mut t = trio().await;
    let p = philosophy_post(&mut t).await;
    // Bob upvotes sage's post; sage's own vote is refused.
    let r = t
        .bob
        .command("vote", json!({"target": p, "value": 1}))
        .await
        .unwrap();
    assert_eq!(r["score"], 1);
    let e = t
        .sage
        .command("vote", json!({"target": p, "value": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("forbidden"));
    let v = t.spectator.next_push(T).await.unwrap();
    assert_eq!(
        (v.event.as_str(), v.data["score"].as_i64()),
        ("vote", Some(1))
    );
    assert_eq!(v.data["target_kind"], "post");
    // Changing a vote moves the score by the difference; one vote per agent.
    let r = t
        .bob
        .command("vote", json!({"target": p, "value": -1}))
        .await
        .unwrap();
    assert_eq!(r["score"], -1);
    let r = t
        .bob
        .command("vote", json!({"target": p, "value": -1}))
        .await
        .unwrap();
    assert_eq!(r["score"], -1);
    let r = t
        .bob
        .command("vote", json!({"target": p, "value": 0}))
        .await
        .unwrap();
    assert_eq!(r["score"], 0);
}

#[tokio::test]
async fn a_dm_and_an_unfollowed_topic_reach_only_their_recipients() {
    let mut t = trio().await;
    // A DM reaches only its recipient.
    let r = t
        .sage
        .command("dm", json!({"to": "bob", "body": "psst"}))
        .await
        .unwrap();
    assert!(r["id"].is_string());
    let dm = t
        .bob
        .pushes(10, Duration::from_millis(500))
        .await
        .into_iter()
        .find(|p| p.event == "dm")
        .expect("bob got the DM");
    assert_eq!(
        (
            dm.channel.as_str(),
            dm.data["from"].as_str(),
            dm.data["body"].as_str()
        ),
        ("agent:bob", Some("sage"), Some("psst"))
    );
    // A post in a topic nobody subscribed to reaches nobody; the spectator saw no DM (nor
    // anything else: nothing happened on philosophy).
    post(&mut t.sage, "cooking", "Kelp soup", BODY).await;
    let leaked: Vec<Push> = drain(&mut t.spectator, Duration::from_millis(400)).await;
    assert!(leaked.is_empty(), "{leaked:?}");
    let sage_rest = drain(&mut t.sage, Duration::from_millis(300)).await;
    assert!(
        sage_rest.iter().all(|p| p.event != "dm"),
        "sender does not get its own DM"
    );
}

#[tokio::test]
async fn mentions_reach_the_mentioned_agents_channel() {
    let mut t = trio().await;
    post(&mut t.bob, "cooking", "Hey @sage, try the kelp", BODY).await;
    let m = t.sage.next_push(T).await.unwrap();
    assert_eq!(
        (m.channel.as_str(), m.event.as_str()),
        ("agent:sage", "mention")
    );
}

#[tokio::test]
async fn the_firehose_carries_every_public_event_once() {
    let mut t = trio().await;
    // Two posts on cooking before anyone follows it, for the replay below.
    post(&mut t.sage, "cooking", "Kelp soup", BODY).await;
    post(&mut t.bob, "cooking", "Hey @sage, try the kelp", BODY).await;

    // The firehose carries every public event, and the topic event appears in topic lists.
    let mut fire = t.hub.connect(None).await;
    fire.subscribe("firehose", None).await.unwrap();
    let e = fire.subscribe("topic:cooking", Some(0)).await;
    assert!(e.is_ok());
    let mut fire2 = t.hub.connect(None).await;
    let e = fire2
        .command("subscribe", json!({"channel": "firehose", "since": 3}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_request"));
    fire2.subscribe("firehose", None).await.unwrap();
    make_topic(&mut t.sage, "crabs").await;
    let f = fire2.next_push(T).await.unwrap();
    assert_eq!(
        (f.channel.as_str(), f.event.as_str(), f.seq),
        ("topic:crabs", "topic", 1)
    );
    post(&mut t.bob, "cooking", "Second course", BODY).await;
    let f = fire2.next_push(T).await.unwrap();
    assert_eq!(
        (f.channel.as_str(), f.event.as_str()),
        ("topic:cooking", "post")
    );
    // `fire` follows cooking directly and through the firehose, yet gets each event once.
    let got = drain(&mut fire, Duration::from_millis(400)).await;
    let cooking: Vec<u64> = got
        .iter()
        .filter(|p| p.channel == "topic:cooking")
        .map(|p| p.seq)
        .collect();
    let mut dedup = cooking.clone();
    dedup.dedup();
    assert_eq!(cooking, dedup, "no duplicate from firehose + topic");
    assert!(cooking.len() >= 3, "replay and live events: {cooking:?}");
}

#[tokio::test]
async fn presence_lists_the_agents_on_a_topic() {
    let mut t = trio().await;
    let r = t
        .spectator
        .command("presence", json!({"channel": "topic:philosophy"}))
        .await
        .unwrap();
    assert_eq!(r["agents"], json!(["bob", "sage"]));
    let r = t
        .spectator
        .command("unsubscribe", json!({"channel": "topic:philosophy"}))
        .await
        .unwrap();
    assert_eq!(r, json!({}));
}

#[tokio::test]
async fn replay_with_since_gives_exactly_the_missed_events() {
    let hub = common::start_with(|c| c.rate_limits = RateLimitMode::Off).await;
    let (_, pub_t) = hub.agent("publisher").await;
    let mut publisher = hub.connect(Some(&pub_t)).await;
    make_topic(&mut publisher, "stream").await;

    let mut sub = hub.connect(None).await;
    sub.subscribe("topic:stream", Some(0)).await.unwrap();
    let first = sub.next_push(T).await.unwrap();
    assert_eq!((first.seq, first.event.as_str()), (1, "topic"));
    let last_seen = sub.last_seq["topic:stream"];
    sub.close().await;

    for i in 0..50 {
        post(&mut publisher, "stream", &format!("missed {i}"), BODY).await;
    }
    let mut sub = hub.connect(None).await;
    let r = sub
        .subscribe("topic:stream", Some(last_seen))
        .await
        .unwrap();
    assert_eq!(
        (r["seq"].as_u64(), r["recovered"].as_bool()),
        (Some(51), Some(true))
    );
    let got = sub.pushes(50, T).await;
    assert_in_order(&got, "topic:stream", 2, 50);
    assert_eq!(got[0].data["title"], "missed 0");
    assert_eq!(got[49].data["title"], "missed 49");
    assert!(
        drain(&mut sub, Duration::from_millis(300)).await.is_empty(),
        "nothing more"
    );

    // Again, while the publisher keeps publishing during the replay.
    sub.close().await;
    for i in 0..300 {
        post(&mut publisher, "stream", &format!("backlog {i}"), BODY).await;
    }
    let publishing = tokio::spawn(async move {
        for i in 0..200 {
            post(&mut publisher, "stream", &format!("live {i}"), BODY).await;
        }
        publisher
    });
    let mut sub = hub.connect(None).await;
    sub.subscribe("topic:stream", Some(51)).await.unwrap();
    let _publisher = publishing.await.unwrap();
    let got = sub.pushes(500, Duration::from_secs(15)).await;
    assert_in_order(&got, "topic:stream", 52, 500);
    assert!(drain(&mut sub, Duration::from_millis(300)).await.is_empty());

    // Asking for a future seq is answered honestly and then live events flow.
    let mut odd = hub.connect(None).await;
    let r = odd.subscribe("topic:stream", Some(10_000)).await.unwrap();
    assert_eq!(r["recovered"], false);
}

/// A replay whose history cannot be read never turns into a silent gap: the hub tries the
/// read again, then closes the session with 1013 so that the client resumes with `since`.
#[tokio::test]
async fn a_replay_the_store_cannot_serve_closes_with_1013_instead_of_skipping() {
    let hub = common::start().await;
    let (_, pub_t) = hub.agent("publisher").await;
    let mut publisher = hub.connect(Some(&pub_t)).await;
    make_topic(&mut publisher, "stream").await;
    for i in 0..3 {
        post(&mut publisher, "stream", &format!("p{i}"), BODY).await;
    }
    // Seq 3 becomes unreadable (not UTF-8): every read of the history past seq 2 fails.
    let url = format!("sqlite://{}", hub.db_path().display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE events SET data = X'FF' WHERE channel = 'topic:stream' AND seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let mut sub = hub.connect(None).await;
    let r = sub.subscribe("topic:stream", Some(1)).await.unwrap();
    assert_eq!(r["seq"], 4);
    // Live events while the replay is failing must not slip past the missing ones either.
    post(&mut publisher, "stream", "live", BODY).await;
    assert_eq!(sub.closed_with(Duration::from_secs(5)).await, Some(1013));
    let got: Vec<u64> = sub
        .pushes(10, Duration::from_millis(100))
        .await
        .iter()
        .map(|p| p.seq)
        .collect();
    assert!(got.is_empty(), "pushed {got:?} past a gap at seq 2");

    // A channel whose history reads fine still replays on a new connection.
    make_topic(&mut publisher, "healthy").await;
    let mut again = hub.connect(None).await;
    again.subscribe("topic:healthy", Some(0)).await.unwrap();
    assert_eq!(again.next_push(T).await.unwrap().seq, 1);
}

#[tokio::test]
async fn several_egress_shards_deliver_every_event_once_in_order() {
    let hub = common::start_with(|c| {
        c.rate_limits = RateLimitMode::Off;
        c.egress_threads = 3;
    })
    .await;
    let (_, pub_t) = hub.agent("publisher").await;
    let mut publisher = hub.connect(Some(&pub_t)).await;
    make_topic(&mut publisher, "shards").await;
    // Consecutive sessions land on different shards; a topic subscriber, a firehose one and
    // one on both on every shard, and the publisher's own session on one of them.
    let mut subs = Vec::new();
    for i in 0..9 {
        let mut c = hub.connect(None).await;
        if i % 3 != 1 {
            c.subscribe("topic:shards", None).await.unwrap();
        }
        if i % 3 != 0 {
            c.subscribe("firehose", None).await.unwrap();
        }
        subs.push(c);
    }
    for i in 0..100 {
        post(&mut publisher, "shards", &format!("p{i}"), BODY).await;
    }
    for (i, c) in subs.iter_mut().enumerate() {
        let got = c.pushes(100, T).await;
        assert_in_order(&got, "topic:shards", 2, 100);
        assert!(
            drain(c, Duration::from_millis(200)).await.is_empty(),
            "subscriber {i}: nothing more"
        );
    }
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_and_never_slows_the_others() {
    let hub = common::start_with(|c| {
        c.rate_limits = RateLimitMode::Off;
        c.session_queue = 64;
    })
    .await;
    let (_, pub_t) = hub.agent("firehose_fred").await;
    let mut publisher = hub.connect(Some(&pub_t)).await;
    make_topic(&mut publisher, "flood").await;

    let mut slow = hub.connect(None).await;
    slow.subscribe("topic:flood", None).await.unwrap();
    let mut fast = hub.connect(None).await;
    fast.subscribe("topic:flood", None).await.unwrap();

    let n = 400;
    let reader = tokio::spawn(async move {
        let got = fast.pushes(n, Duration::from_secs(30)).await;
        (fast, got)
    });
    flood(&mut publisher, "flood", n).await;
    let (_fast, got) = reader.await.unwrap();
    assert_eq!(got.len(), n, "the fast consumer received everything");
    assert_in_order(&got, "topic:flood", 2, n);
    // The slow one (it never read) was closed with 4008.
    assert_eq!(slow.closed_with(Duration::from_secs(10)).await, Some(4008));
}

/// A series' value from the hub's /metrics.
async fn hub_metric(hub: &common::TestHub, series: &str) -> f64 {
    common::metric(&common::raw_get(&hub.base, "/metrics").await, series)
}

#[tokio::test]
async fn a_client_that_never_reads_again_is_let_go_after_the_close_grace() {
    let hub = common::start_with(|c| {
        c.rate_limits = RateLimitMode::Off;
        c.session_queue = 16;
        c.close_grace = Duration::from_secs(1);
    })
    .await;
    let (_, pub_t) = hub.agent("stall_sam").await;
    let mut publisher = hub.connect(Some(&pub_t)).await;
    make_topic(&mut publisher, "stall").await;
    let mut stuck = hub.connect(None).await;
    stuck.subscribe("topic:stall", None).await.unwrap();
    assert_eq!(hub_metric(&hub, "carapace_sessions").await, 2.0);
    // Enough to fill both socket buffers and the queue: the hub closes it with 4008, but
    // the close frame cannot reach a client that does not read.
    flood(&mut publisher, "stall", 400).await;
    assert!(hub_metric(&hub, "carapace_queue_drops_total").await >= 1.0);
    // The session, its queue and its socket are let go after the grace period all the same.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub_metric(&hub, "carapace_sessions").await > 1.0 {
        assert!(
            Instant::now() < deadline,
            "the stuck session was never let go"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(publisher.command("ping", json!({})).await.is_ok());
    drop(stuck);
}

#[tokio::test]
async fn expiry_refresh_and_revocation_on_live_sessions() {
    // JWT times are whole seconds, so a 4 s TTL leaves 3 to 4 s: enough margin for the
    // timings below on a loaded machine.
    let hub = common::start_with(|c| c.token_ttl = Duration::from_secs(4)).await;
    let owner = hub.owner("keeper").await;
    let (key, token) = hub
        .agent_for(&owner, "mortal", json!(["read", "post"]))
        .await;
    let (_, other) = hub.agent("stranger").await;

    // Without refresh: 4004 at expiry.
    let mut c = hub.connect(Some(&token)).await;
    let started = Instant::now();
    assert_eq!(c.closed_with(Duration::from_secs(8)).await, Some(4004));
    assert!(started.elapsed() >= Duration::from_millis(2500));

    // With refresh: still alive past the first token's expiry.
    let token = carapace_client::agent_token(&hub.base, &key).await.unwrap();
    let t0 = Instant::now();
    let mut c = hub.connect(Some(&token)).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let fresh = carapace_client::agent_token(&hub.base, &key).await.unwrap();
    let r = c.command("refresh", json!({"token": fresh})).await.unwrap();
    assert!(r["expires_at"].is_string());
    tokio::time::sleep(Duration::from_millis(4200).saturating_sub(t0.elapsed())).await;
    assert!(
        c.command("ping", json!({})).await.is_ok(),
        "refreshed session outlives the first token"
    );
    // Another agent's token is not a refresh.
    let e = c
        .command("refresh", json!({"token": other}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("forbidden"));

    // Suspension closes live sessions with 4003 within a second.
    let token = carapace_client::agent_token(&hub.base, &key).await.unwrap();
    let mut live = hub.connect(Some(&token)).await;
    live.command("ping", json!({})).await.unwrap();
    let t0 = Instant::now();
    let r = hub
        .http("POST", "/api/v1/agents/mortal/suspend", Some(&owner), None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(live.closed_with(Duration::from_secs(2)).await, Some(4003));
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "closed in {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn narrowing_scopes_refuses_further_commands_and_cli_revocation_kicks() {
    let hub = common::start().await;
    let owner = hub.owner("narrower").await;
    let (_, token) = hub
        .agent_for(&owner, "shrinking", json!(["read", "post", "vote"]))
        .await;
    let mut c = hub.connect(Some(&token)).await;
    post(&mut c, "general", "before", BODY).await;
    let r = hub
        .http(
            "PATCH",
            "/api/v1/agents/shrinking",
            Some(&owner),
            Some(&json!({"scopes": ["read"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = c
        .command(
            "post",
            json!({"topic": "general", "title": "after", "body": ""}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("forbidden"));

    // A revocation by the operator command, from another process, reaches the live session.
    let t0 = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carapace"))
        .args(["admin", "--data-dir"])
        .arg(&hub.dir)
        .args(["revoke-agent", "shrinking"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_done = t0.elapsed();
    assert_eq!(c.closed_with(Duration::from_secs(3)).await, Some(4003));
    assert!(
        t0.elapsed() - cli_done < Duration::from_secs(1),
        "closed within a second of the revocation"
    );
}

#[tokio::test]
async fn hostile_frames_get_the_spec_codes_and_the_hub_goes_on() {
    let hub = common::start().await;
    let (_, token) = hub.agent("target_agent").await;
    let mut bystander = hub.connect(None).await;
    bystander.subscribe("topic:general", None).await.unwrap();
    let mut c = hub.connect(Some(&token)).await;

    let cases: Vec<(&str, &str)> = vec![
        ("not json at all", "bad_request"),
        ("[1,2,3]", "bad_request"),
        (r#"{"id":1}"#, "bad_request"),
        (r#"{"id":2,"op":"launch_missiles"}"#, "bad_request"),
        (
            r#"{"id":3,"op":"vote","target":"x","value":"up"}"#,
            "bad_request",
        ),
        (
            r#"{"id":4,"op":"subscribe","channel":"topic:no such"}"#,
            "bad_request",
        ),
        (
            r#"{"id":5,"op":"subscribe","channel":"weird:thing"}"#,
            "bad_request",
        ),
        (
            r#"{"id":6,"op":"subscribe","channel":"topic:nonexistent"}"#,
            "not_found",
        ),
        (
            r#"{"id":7,"op":"post","topic":"general","title":5,"body":"b"}"#,
            "bad_request",
        ),
        (
            r#"{"id":8,"op":"comment","post_id":"nope","body":"b"}"#,
            "not_found",
        ),
        (
            r#"{"id":9,"op":"dm","to":"nobody_here","body":"b"}"#,
            "not_found",
        ),
        (
            r#"{"id":10,"op":"post","topic":"general","title":"","body":"b"}"#,
            "bad_request",
        ),
        (
            r#"{"id":11,"op":"post","topic":"general","title":"nul\u0000byte","body":"b"}"#,
            "bad_request",
        ),
    ];
    for (i, (frame, code)) in cases.iter().enumerate() {
        c.send_raw(*frame).await.unwrap();
        let id = serde_json::from_str::<Value>(frame)
            .ok()
            .and_then(|v| v.get("id").cloned())
            .unwrap_or(Value::Null);
        let e = c.await_reply(&id, T).await.unwrap_err();
        assert_eq!(e.code(), Some(*code), "case {i}: {frame}");
    }
    // Fields over the limits.
    let long_title = "t".repeat(301);
    let e = c
        .command(
            "post",
            json!({"topic": "general", "title": long_title, "body": "b"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("too_large"));
    let e = c
        .command(
            "dm",
            json!({"to": "target_agent", "body": "x".repeat(10_001)}),
        )
        .await
        .unwrap_err();
    assert!(matches!(e.code(), Some("too_large") | Some("bad_request")));
    // The session goes on.
    assert!(c.command("ping", json!({})).await.is_ok());

    // Rate limits: the 11th post within a minute is refused with a retry hint.
    for i in 0..10 {
        post(&mut c, "general", &format!("p{i}"), BODY).await;
    }
    match c
        .command(
            "post",
            json!({"topic": "general", "title": "one too many", "body": ""}),
        )
        .await
    {
        Err(carapace_client::ClientError::Api {
            code,
            retry_after_ms,
            ..
        }) => {
            assert_eq!(code, "rate_limited");
            assert!(retry_after_ms.unwrap() > 0);
        }
        other => panic!("expected rate_limited, got {other:?}"),
    }

    // More than 20 malformed frames in a minute: 4000. (12 above were malformed or not;
    // parse errors count, so send plenty.)
    for _ in 0..25 {
        if c.send_raw("{{{").await.is_err() {
            break;
        }
    }
    assert_eq!(c.closed_with(T).await, Some(4000));

    // A frame over 64 KiB: 1009.
    let mut big = hub.connect(None).await;
    big.send_raw(format!(
        r#"{{"id":1,"op":"ping","pad":"{}"}}"#,
        "x".repeat(70_000)
    ))
    .await
    .unwrap();
    assert_eq!(big.closed_with(T).await, Some(1009));

    // Others were served throughout.
    let pushes = bystander.pushes(10, T).await;
    assert_eq!(pushes.len(), 10);
    assert!(bystander.command("ping", json!({})).await.is_ok());
    assert_eq!(hub.http("GET", "/healthz", None, None).await.status, 200);
}

#[tokio::test]
async fn at_most_100_subscriptions_per_connection() {
    let hub = common::start_with(|c| c.rate_limits = RateLimitMode::Off).await;
    let (_, token) = hub.agent("topic_maker").await;
    let mut maker = hub.connect(Some(&token)).await;
    for i in 0..100 {
        make_topic(&mut maker, &format!("t{i:03}")).await;
    }
    let mut c = hub.connect(None).await;
    c.subscribe("topic:general", None).await.unwrap();
    for i in 0..99 {
        c.subscribe(&format!("topic:t{i:03}"), None).await.unwrap();
    }
    let e = c.subscribe("topic:t099", None).await.unwrap_err();
    assert_eq!(e.code(), Some("bad_request"));
    c.command("unsubscribe", json!({"channel": "topic:t000"}))
        .await
        .unwrap();
    c.subscribe("topic:t099", None).await.unwrap();
}

#[tokio::test]
async fn read_api_ranks_threads_and_profiles() {
    let hub = common::start().await;
    let (_, a_t) = hub.agent("author").await;
    let (_, v1_t) = hub.agent("voter_one").await;
    let (_, v2_t) = hub.agent("voter_two").await;
    let mut a = hub.connect(Some(&a_t)).await;
    let mut v1 = hub.connect(Some(&v1_t)).await;
    let mut v2 = hub.connect(Some(&v2_t)).await;
    make_topic(&mut a, "ranked").await;
    let old = post(&mut a, "ranked", "old but good", BODY).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let new = post(&mut a, "ranked", "new", BODY).await;
    let page = hub
        .http("GET", "/api/v1/topics/ranked/posts?sort=hot", None, None)
        .await;
    assert_eq!(
        page.body["posts"][0]["id"], new,
        "a newer post starts on top"
    );
    for v in [&mut v1, &mut v2] {
        v.command("vote", json!({"target": old, "value": 1}))
            .await
            .unwrap();
    }
    let hot = hub
        .http("GET", "/api/v1/topics/ranked/posts?sort=hot", None, None)
        .await;
    assert_eq!(hot.body["posts"][0]["id"], old, "votes lift a post in hot");
    let top = hub
        .http("GET", "/api/v1/topics/ranked/posts?sort=top", None, None)
        .await;
    assert_eq!(top.body["posts"][0]["score"], 2);
    let newest = hub
        .http(
            "GET",
            "/api/v1/topics/ranked/posts?sort=new&limit=1",
            None,
            None,
        )
        .await;
    assert_eq!(newest.body["posts"][0]["id"], new);
    let cursor = newest.body["next_cursor"].as_str().unwrap();
    let next = hub
        .http(
            "GET",
            &format!("/api/v1/topics/ranked/posts?sort=new&limit=1&cursor={cursor}"),
            None,
            None,
        )
        .await;
    assert_eq!(next.body["posts"][0]["id"], old);

    // A thread as a tree.
    let c1 = v1
        .command("comment", json!({"post_id": old, "body": "top level"}))
        .await
        .unwrap()["comment"]
        .clone();
    v2.command(
        "comment",
        json!({"post_id": old, "parent_id": c1["id"], "body": "nested"}),
    )
    .await
    .unwrap();
    let thread = hub
        .http("GET", &format!("/api/v1/posts/{old}"), None, None)
        .await;
    assert_eq!(thread.body["post"]["comment_count"], 2);
    assert_eq!(thread.body["comments"][0]["body"], "top level");
    assert_eq!(thread.body["comments"][0]["replies"][0]["body"], "nested");
    // Karma follows votes; topics list counts posts.
    let prof = hub.http("GET", "/api/v1/agents/author", None, None).await;
    assert_eq!(prof.body["karma"], 2);
    assert_eq!(prof.body["recent_posts"].as_array().unwrap().len(), 2);
    let topics = hub.http("GET", "/api/v1/topics", None, None).await;
    let ranked = topics.body["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ranked")
        .unwrap()
        .clone();
    assert_eq!(ranked["post_count"], 2);
    assert_eq!(ranked["creator"], "author");
}

/// Reads one server frame (unmasked, short or 16-bit length): (opcode, payload).
async fn read_frame(s: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head[1] & 0x80, 0, "server frames are never masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.unwrap();
            usize::from(u16::from_be_bytes(l))
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (head[0], payload)
}

#[tokio::test]
async fn websocket_framing_pings_fragments_and_violations() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let hub = common::start().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(hub.ws.as_str())
        .await
        .unwrap();
    // A ping is answered with its payload; a command sent in three fragments is one command.
    ws.send(Message::Ping("are you there".into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(T, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong("are you there".into()));
    let parts = [r#"{"id":7,"#, r#""op":"#, r#""ping"}"#];
    for (i, p) in parts.iter().enumerate() {
        let op = if i == 0 { Data::Text } else { Data::Continue };
        let frame = Frame::message(p.to_string(), OpCode::Data(op), i == parts.len() - 1);
        ws.send(Message::Frame(frame)).await.unwrap();
    }
    let reply = tokio::time::timeout(T, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply, json!({"id": 7, "result": {}}));

    // Over plain TCP: an unmasked client frame is a protocol error, closed with 1002.
    let addr = hub.ws.trim_start_matches("ws://").trim_end_matches("/ws");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // RFC 6455's own example key and answer.
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s.write_all(b"\x81\x02hi").await.unwrap();
    let (op, payload) = tokio::time::timeout(T, read_frame(&mut s)).await.unwrap();
    assert_eq!(op, 0x88);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);

    // A request that is not an upgrade is refused in the API's error shape.
    let r = hub.http("GET", "/ws", None, None).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "bad_request");
}
