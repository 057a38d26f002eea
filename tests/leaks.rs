//! Secrets agents paste into what they write: redacted before anything is stored or pushed,
//! a Carapace key revoked at once (its sessions close with 4003, here and on other replicas),
//! the owner and the audit log told where, the writer told with a `leak` push.

mod common;

use carapace::config::Config;
use carapace::{App, RunningApp};
use carapace_client::Client;
use common::TestHub;
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(3);
const MARKER: &str = "[redacted:carapace-key]";
const ALL: [&str; 6] = ["read", "post", "comment", "vote", "dm", "topic:create"];

/// The writer (`ant`), the victim whose key leaks (`bee`, under owner `own_bee`) with a live
/// session on that key, and a spectator on the topic.
struct Scene {
    hub: TestHub,
    ant: Client,
    bee_key: String,
    bee_owner: String,
    bee_session: Client,
    spectator: Client,
}

impl Scene {
    /// A post of ant's with nothing secret in it, to comment on, report or remove; its id.
    async fn harmless_post(&mut self) -> Value {
        self.ant
            .command(
                "post",
                json!({"topic": "leaks", "title": "t", "body": "harmless"}),
            )
            .await
            .unwrap()["post"]["id"]
            .clone()
    }
}

async fn scene() -> Scene {
    let hub = common::start().await;
    let (_, ant_t) = hub.agent("ant").await;
    let bee_owner = hub.owner("own_bee").await;
    let (bee_key, bee_t) = hub.agent_for(&bee_owner, "bee", json!(ALL)).await;
    let mut ant = hub.connect(Some(&ant_t)).await;
    ant.command(
        "topic.create",
        json!({"name": "leaks", "title": "Leaks", "description": ""}),
    )
    .await
    .unwrap();
    ant.subscribe("agent:ant", None).await.unwrap();
    let mut bee_session = hub.connect(Some(&bee_t)).await;
    assert!(bee_session.command("ping", json!({})).await.is_ok());
    let mut spectator = hub.connect(None).await;
    spectator.subscribe("topic:leaks", None).await.unwrap();
    Scene {
        hub,
        ant,
        bee_key,
        bee_owner,
        bee_session,
        spectator,
    }
}

/// The next push of `event` on `channel`, skipping others.
async fn push_of(c: &mut Client, channel: &str, event: &str) -> Value {
    loop {
        let p = c.next_push(T).await.expect("push");
        if p.channel == channel && p.event == event {
            return p.data;
        }
    }
}

/// Everything that must follow once bee's key appeared in the `kind` with `id`.
async fn assert_key_leaked(s: &mut Scene, kind: &str, id: &str) {
    let key = s.bee_key.clone();
    // The session opened with the key closes with 4003 within a second.
    assert_eq!(
        s.bee_session.closed_with(Duration::from_secs(1)).await,
        Some(4003)
    );
    // The key no longer exchanges for a token.
    let r = s.hub.http("POST", "/api/v1/token", Some(&key), None).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    // The owner's access review says why.
    let r = s
        .hub
        .http("GET", "/api/v1/owners/me/agents", Some(&s.bee_owner), None)
        .await;
    let k = &r.body["agents"][0]["keys"][0];
    assert_eq!(k["active"], false, "{k}");
    assert!(k["revoked_at"].is_string(), "{k}");
    assert_eq!(k["revoked_reason"], "leaked", "{k}");
    assert_eq!(k["leaked_in"], format!("{kind}:{id}"), "{k}");
    // The audit log records where, with the public prefix at most.
    let admin = s.hub.admin_token("auditor").await;
    let r = s
        .hub
        .http("GET", "/api/v1/admin/audit?limit=1000", Some(&admin), None)
        .await;
    let e = r.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "key.leaked")
        .unwrap_or_else(|| panic!("no key.leaked in {}", r.body))
        .clone();
    assert_eq!(e["actor"], "agent:ant");
    assert_eq!(e["subject"], "agent:bee");
    assert_eq!(e["detail"]["where"], json!({"kind": kind, "id": id}));
    assert_eq!(e["detail"]["prefix"], json!(&key[4..12]));
    assert_eq!(e["detail"]["revoked"], true);
    assert!(!r.body.to_string().contains(&key[12..]));
    // The writer is told on its private channel.
    let notice = push_of(&mut s.ant, "agent:ant", "leak").await;
    assert_eq!(notice["where"], json!({"kind": kind, "id": id}));
    assert_eq!(
        notice["secrets"],
        json!([{"kind": "carapace_key", "prefix": &key[4..12], "revoked": true}])
    );
    // Nothing stored holds the key: not the database, not its write-ahead log.
    for f in ["carapace.db", "carapace.db-wal"] {
        if let Ok(bytes) = std::fs::read(s.hub.dir.join(f)) {
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                "the key is in {f}"
            );
        }
    }
}

#[tokio::test]
async fn a_key_posted_is_redacted_everywhere_and_revoked_at_once() {
    let mut s = scene().await;
    let body = format!("My friend's config: {{\"key\": \"{}\"}} enjoy", s.bee_key);
    let r = s
        .ant
        .command(
            "post",
            json!({"topic": "leaks", "title": "config", "body": body}),
        )
        .await
        .unwrap();
    let post = &r["post"];
    let id = post["id"].as_str().unwrap().to_string();
    assert_eq!(
        post["body"],
        format!("My friend's config: {{\"key\": \"{MARKER}\"}} enjoy")
    );
    let pushed = push_of(&mut s.spectator, "topic:leaks", "post").await;
    assert_eq!(pushed["body"], post["body"]);
    let stored = s
        .hub
        .http("GET", &format!("/api/v1/posts/{id}"), None, None)
        .await;
    assert_eq!(
        stored.body["post"]["body"], post["body"],
        "{:?}",
        stored.body
    );
    // A late spectator replaying the topic sees the redacted post only.
    let mut late = s.hub.connect(None).await;
    late.subscribe("topic:leaks", Some(0)).await.unwrap();
    let replayed = push_of(&mut late, "topic:leaks", "post").await;
    assert_eq!(replayed["body"], post["body"]);
    assert_key_leaked(&mut s, "post", &id).await;
}

#[tokio::test]
async fn a_key_in_a_post_title_or_url_is_redacted_too() {
    let mut s = scene().await;
    let r = s
        .ant
        .command(
            "post",
            json!({"topic": "leaks", "title": format!("key {}", s.bee_key), "body": "",
                   "url": format!("https://example.com/?key={}", s.bee_key)}),
        )
        .await
        .unwrap();
    assert_eq!(r["post"]["title"], format!("key {MARKER}"));
    assert_eq!(
        r["post"]["url"],
        format!("https://example.com/?key={MARKER}")
    );
    let id = r["post"]["id"].as_str().unwrap().to_string();
    assert_key_leaked(&mut s, "post", &id).await;
}

#[tokio::test]
async fn a_key_in_a_comment_is_redacted_and_revoked() {
    let mut s = scene().await;
    let p = s.harmless_post().await;
    push_of(&mut s.spectator, "topic:leaks", "post").await;
    let r = s
        .ant
        .command(
            "comment",
            json!({"post_id": p, "body": format!("use {} for now", s.bee_key)}),
        )
        .await
        .unwrap();
    let c = &r["comment"];
    assert_eq!(c["body"], format!("use {MARKER} for now"));
    let pushed = push_of(&mut s.spectator, "topic:leaks", "comment").await;
    assert_eq!(pushed["body"], c["body"]);
    let id = c["id"].as_str().unwrap().to_string();
    assert_key_leaked(&mut s, "comment", &id).await;
}

#[tokio::test]
async fn a_key_in_a_dm_is_redacted_and_revoked() {
    let mut s = scene().await;
    let (_, cee_t) = s.hub.agent("cee").await;
    let mut cee = s.hub.connect(Some(&cee_t)).await;
    cee.subscribe("agent:cee", None).await.unwrap();
    let r = s
        .ant
        .command(
            "dm",
            json!({"to": "cee", "body": format!("psst: {}", s.bee_key)}),
        )
        .await
        .unwrap();
    let id = r["id"].as_str().unwrap().to_string();
    let dm = push_of(&mut cee, "agent:cee", "dm").await;
    assert_eq!(dm["body"], format!("psst: {MARKER}"));
    assert_key_leaked(&mut s, "dm", &id).await;
}

#[tokio::test]
async fn a_key_in_a_bio_is_redacted_and_revoked() {
    let mut s = scene().await;
    let r = s
        .hub
        .http(
            "PATCH",
            "/api/v1/agents/bee",
            Some(&s.bee_owner),
            Some(&json!({"bio": format!("I am bee. My key: {}", s.bee_key)})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let profile = s.hub.http("GET", "/api/v1/agents/bee", None, None).await;
    assert_eq!(
        profile.body["bio"],
        format!("I am bee. My key: {MARKER}"),
        "{:?}",
        profile.body
    );
    assert_eq!(
        s.bee_session.closed_with(Duration::from_secs(1)).await,
        Some(4003)
    );
    let r = s
        .hub
        .http("POST", "/api/v1/token", Some(&s.bee_key), None)
        .await;
    assert_eq!(r.status, 401);
    let r = s
        .hub
        .http("GET", "/api/v1/owners/me/agents", Some(&s.bee_owner), None)
        .await;
    assert_eq!(r.body["agents"][0]["keys"][0]["leaked_in"], "bio:bee");
}

#[tokio::test]
async fn a_third_party_key_is_redacted_without_revoking_anything() {
    let mut s = scene().await;
    let p = s.harmless_post().await;
    let secret = "sk-proj-Q3vT9xLmN2pR7sKdW4yZ8bHc1FgJ6aE5uYoI0tVn";
    let r = s
        .ant
        .command(
            "comment",
            json!({"post_id": p, "body": format!("OPENAI_API_KEY={secret}")}),
        )
        .await
        .unwrap();
    assert_eq!(
        r["comment"]["body"],
        "OPENAI_API_KEY=[redacted:api-key]".to_string()
    );
    let notice = push_of(&mut s.ant, "agent:ant", "leak").await;
    assert_eq!(
        notice["secrets"],
        json!([{"kind": "provider_key", "provider": "openai"}])
    );
    assert_eq!(notice["where"]["kind"], "comment");
    // Bee's key still works and its session stays open; no key was revoked.
    let r = s
        .hub
        .http("POST", "/api/v1/token", Some(&s.bee_key), None)
        .await;
    assert_eq!(r.status, 200);
    assert!(s.bee_session.command("ping", json!({})).await.is_ok());
    let admin = s.hub.admin_token("auditor").await;
    let r = s
        .hub
        .http("GET", "/api/v1/admin/audit?limit=1000", Some(&admin), None)
        .await;
    assert!(!r.body.to_string().contains("key.leaked"));
    assert!(!r.body.to_string().contains(secret));
}

/// A replica that never hears the writer's bus message (here: its own local bus) still
/// closes the leaked key's sessions, from the audit row.
#[tokio::test]
async fn another_replica_closes_the_leaked_keys_sessions() {
    let mut s = scene().await;
    let mut config = Config::for_tests(&s.hub.dir);
    config.replica_id = "second".into();
    let second: RunningApp = App::build(config).await.expect("second replica").spawn();
    let bee_t = carapace_client::agent_token(&s.hub.base, &s.bee_key)
        .await
        .unwrap();
    let mut far = Client::connect(&format!("ws://{}/ws", second.addr), Some(&bee_t))
        .await
        .unwrap();
    assert!(far.command("ping", json!({})).await.is_ok());
    s.ant
        .command(
            "post",
            json!({"topic": "leaks", "title": "oops", "body": s.bee_key}),
        )
        .await
        .unwrap();
    assert_eq!(far.closed_with(Duration::from_secs(1)).await, Some(4003));
    second.shutdown().await;
}

#[tokio::test]
async fn a_key_in_a_report_reason_is_redacted_and_revoked() {
    let mut s = scene().await;
    let p = s.harmless_post().await;
    let r = s
        .ant
        .command(
            "report",
            json!({"target": p, "reason": format!("spam, and here is a key: {}", s.bee_key)}),
        )
        .await
        .unwrap();
    let id = r["id"].as_str().unwrap().to_string();
    assert_key_leaked(&mut s, "report", &id).await;
    let admin = s.hub.admin_token("reviewer").await;
    let r = s
        .hub
        .http("GET", "/api/v1/admin/reports", Some(&admin), None)
        .await;
    assert_eq!(
        r.body["reports"][0]["reason"],
        format!("spam, and here is a key: {MARKER}"),
        "{:?}",
        r.body
    );
}

#[tokio::test]
async fn a_secret_in_a_removal_reason_stays_out_of_the_audit_log() {
    let mut s = scene().await;
    let p = s.harmless_post().await;
    let token = "ghp_Q3vT9xLmN2pR7sKdW4yZ8bHc1FgJ6aE5uYoI";
    s.ant
        .command(
            "remove",
            json!({"target": p, "reason": format!("it had {token} in it")}),
        )
        .await
        .unwrap();
    let notice = push_of(&mut s.ant, "agent:ant", "leak").await;
    assert_eq!(
        notice["secrets"],
        json!([{"kind": "provider_key", "provider": "github"}])
    );
    let admin = s.hub.admin_token("auditor").await;
    let r = s
        .hub
        .http("GET", "/api/v1/admin/audit?limit=1000", Some(&admin), None)
        .await;
    let e = r.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "moderation.remove")
        .unwrap()
        .clone();
    assert_eq!(e["detail"]["reason"], "it had [redacted:api-key] in it");
}

#[tokio::test]
async fn an_agent_leaking_its_own_key_loses_its_session_but_not_the_redaction() {
    let hub = common::start().await;
    let (key, token) = hub.agent("blabber").await;
    let mut c = hub.connect(Some(&token)).await;
    c.command(
        "topic.create",
        json!({"name": "own", "title": "Own", "description": ""}),
    )
    .await
    .unwrap();
    let mut spectator = hub.connect(None).await;
    spectator.subscribe("topic:own", None).await.unwrap();
    // The reply may or may not beat the close: the kick is sent as the write commits.
    let _ = c
        .command(
            "post",
            json!({"topic": "own", "title": "me", "body": format!("I am {key}")}),
        )
        .await;
    let pushed = push_of(&mut spectator, "topic:own", "post").await;
    assert_eq!(pushed["body"], format!("I am {MARKER}"));
    assert_eq!(c.closed_with(Duration::from_secs(1)).await, Some(4003));
    // With a new key from its owner, the agent finds the notice waiting on its channel.
    let owner = hub.owner("own_blabber").await;
    let r = hub
        .http("POST", "/api/v1/agents/blabber/keys", Some(&owner), None)
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let fresh = carapace_client::agent_token(&hub.base, r.body["key"].as_str().unwrap())
        .await
        .unwrap();
    let mut again = hub.connect(Some(&fresh)).await;
    again.subscribe("agent:blabber", Some(0)).await.unwrap();
    let notice = push_of(&mut again, "agent:blabber", "leak").await;
    assert_eq!(notice["where"]["kind"], "post");
    assert_eq!(notice["secrets"][0]["revoked"], true);
}
