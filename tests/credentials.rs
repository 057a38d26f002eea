//! Who may change an agent's standing and credentials, and when a credential stops working:
//! operators and owners kept apart (suspension holds, no keys or settings for an agent an
//! operator does not own), a session that follows the key of its latest token, and a key's
//! own expiry honoured at exchange, authentication and refresh. On SQLite and on three
//! PostgreSQL replicas.

mod common;

use carapace_client::{self as client, Client};
use common::infra::Cluster;
use serde_json::{Value, json};
use std::time::Duration;

const CLOSE_WAIT: Duration = Duration::from_millis(1500);

fn code(r: &client::HttpReply) -> (u16, &str) {
    (r.status, r.body["error"]["code"].as_str().unwrap_or(""))
}

async fn new_key(base: &str, owner: &str, handle: &str) -> (String, String) {
    let r = client::http(
        base,
        "POST",
        &format!("/api/v1/agents/{handle}/keys"),
        Some(owner),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.body);
    (
        r.body["key"].as_str().unwrap().to_string(),
        r.body["id"].as_str().unwrap().to_string(),
    )
}

async fn key_ids(base: &str, owner: &str, handle: &str) -> Vec<String> {
    let r = client::http(base, "GET", "/api/v1/owners/me/agents", Some(owner), None)
        .await
        .unwrap();
    let agents = r.body["agents"].as_array().unwrap();
    let a = agents.iter().find(|a| a["handle"] == handle).unwrap();
    a["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect()
}

async fn revoke_key(base: &str, owner: &str, handle: &str, id: &str) {
    let r = client::http(
        base,
        "DELETE",
        &format!("/api/v1/agents/{handle}/keys/{id}"),
        Some(owner),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204, "{:?}", r.body);
}

/// The session is still served: a ping gets its answer.
async fn alive(c: &mut Client) -> bool {
    c.command("ping", json!({})).await.is_ok()
}

async fn audit_rows(hub: &common::TestHub, admin: &str, action: &str) -> Vec<Value> {
    let r = hub
        .http("GET", "/api/v1/admin/audit?limit=1000", Some(admin), None)
        .await;
    r.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

#[tokio::test]
async fn operators_and_owners_hold_their_own_powers() {
    let hub = common::start().await;
    let ops = hub.admin_token("ops").await;
    let alice = hub.owner("alice").await;
    let (_, token) = hub.agent_for(&alice, "sage", json!(["read", "dm"])).await;
    let (_, mallory) = hub.agent("mallory").await;
    let mut dm_from = hub.connect(Some(&mallory)).await;
    dm_from
        .command("dm", json!({"to": "sage", "body": "for sage only"}))
        .await
        .unwrap();

    // An operator can never mint a key for, change, or revoke the keys of an agent it does
    // not own: each a clear 403.
    let r = hub
        .http("POST", "/api/v1/agents/sage/keys", Some(&ops), None)
        .await;
    assert_eq!(code(&r), (403, "forbidden"), "{:?}", r.body);
    let r = hub
        .http(
            "PATCH",
            "/api/v1/agents/sage",
            Some(&ops),
            Some(&json!({"scopes": ["read", "dm", "post"]})),
        )
        .await;
    assert_eq!(code(&r), (403, "forbidden"), "{:?}", r.body);
    let key_id = key_ids(&hub.base, &alice, "sage").await.remove(0);
    let r = hub
        .http(
            "DELETE",
            &format!("/api/v1/agents/sage/keys/{key_id}"),
            Some(&ops),
            None,
        )
        .await;
    assert_eq!(code(&r), (403, "forbidden"), "{:?}", r.body);

    // Nor read the agent's private channel through an agent of its own.
    let opsbot_key = client::create_agent(
        &hub.base,
        &ops,
        &json!({"handle": "opsbot", "name": "Ops", "scopes": ["read"]}),
    )
    .await
    .unwrap();
    let opsbot = client::agent_token(&hub.base, &opsbot_key).await.unwrap();
    let mut spy = hub.connect(Some(&opsbot)).await;
    let e = spy.subscribe("agent:sage", Some(0)).await.unwrap_err();
    assert_eq!(e.code(), Some("forbidden"), "{e}");

    // An operator suspends, with a reason; the agent's live session closes, its token stops.
    let mut live = hub.connect(Some(&token)).await;
    assert!(alive(&mut live).await);
    let r = hub
        .http(
            "POST",
            "/api/v1/agents/sage/suspend",
            Some(&ops),
            Some(&json!({"reason": "spam wave"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "suspended");
    assert_eq!(r.body["holds"]["operator"]["reason"], "spam wave");
    assert_eq!(live.closed_with(CLOSE_WAIT).await, Some(4003));

    // The owner cannot lift it, and the old token stays refused.
    let r = hub
        .http("POST", "/api/v1/agents/sage/resume", Some(&alice), None)
        .await;
    assert_eq!(code(&r), (403, "forbidden"), "{:?}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("operator")
    );
    assert!(Client::connect(&hub.ws, Some(&token)).await.is_err());

    // The owner's own hold and the operator's are separate: lifting one leaves the other.
    let r = hub
        .http(
            "POST",
            "/api/v1/agents/sage/suspend",
            Some(&alice),
            Some(&json!({"reason": "retraining"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["holds"]["owner"]["reason"], "retraining");
    assert_eq!(r.body["holds"]["operator"]["reason"], "spam wave");
    let r = hub
        .http("POST", "/api/v1/agents/sage/resume", Some(&ops), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "suspended", "the owner's hold remains");
    assert!(r.body["holds"]["operator"].is_null());
    let r = hub
        .http("POST", "/api/v1/agents/sage/resume", Some(&ops), None)
        .await;
    assert_eq!(code(&r), (403, "forbidden"), "not the operator's to lift");
    let r = hub
        .http("POST", "/api/v1/agents/sage/resume", Some(&alice), None)
        .await;
    assert_eq!(r.body["status"], "active", "{:?}", r.body);
    let mut back = hub.connect(Some(&token)).await;
    assert!(alive(&mut back).await);

    // The command line is an operator too.
    let out = hub
        .admin_command()
        .args(["suspend-agent", "sage", "--reason", "abuse report 12"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(back.closed_with(CLOSE_WAIT).await, Some(4003));
    let r = hub
        .http("POST", "/api/v1/agents/sage/resume", Some(&alice), None)
        .await;
    assert_eq!(code(&r), (403, "forbidden"), "{:?}", r.body);
    let out = hub
        .admin_command()
        .args(["resume-agent", "sage"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Another owner knows nothing of the agent; the operator still lists and audits it.
    let bob = hub.owner("bob").await;
    let r = hub
        .http("POST", "/api/v1/agents/sage/suspend", Some(&bob), None)
        .await;
    assert_eq!(code(&r), (404, "not_found"));
    let r = hub
        .http("GET", "/api/v1/admin/agents", Some(&ops), None)
        .await;
    let sage = r.body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["handle"] == "sage")
        .cloned()
        .unwrap();
    assert_eq!(sage["status"], "active");
    let suspensions = audit_rows(&hub, &ops, "agent.suspend").await;
    let by: Vec<(&str, &str, &str)> = suspensions
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap(),
                e["detail"]["by"].as_str().unwrap(),
                e["detail"]["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        by,
        [
            ("admin:ops", "operator", "spam wave"),
            ("owner:alice", "owner", "retraining"),
            ("cli", "operator", "abuse report 12"),
        ]
    );
    let resumes = audit_rows(&hub, &ops, "agent.resume").await;
    assert_eq!(resumes.len(), 3);

    // Owners' powers over their own agents are unchanged, admins' too for their own agents.
    let r = hub
        .http("POST", "/api/v1/agents/opsbot/keys", Some(&ops), None)
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = hub
        .http("POST", "/api/v1/agents/sage/keys", Some(&alice), None)
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
}

/// The documented rotation (a second key, a refresh with its token, the first revoked), then
/// the second key revoked: the session on `home` follows the key, another session on `other`
/// stays on the first one; the keys are made and revoked through `via_a` and `via_b`.
async fn rotate_and_revoke(
    home: &common::TestHub,
    other: &common::TestHub,
    via_a: &common::TestHub,
    via_b: &common::TestHub,
) -> (String, String) {
    let alice = via_a.owner("alice").await;
    let (_, token1) = via_a.agent_for(&alice, "sage", json!(["read"])).await;
    let key1_id = key_ids(&via_a.base, &alice, "sage").await.remove(0);
    let mut moved = home.connect(Some(&token1)).await;
    let mut stayed = other.connect(Some(&token1)).await;
    let (key2, key2_id) = new_key(&via_b.base, &alice, "sage").await;
    let token2 = client::agent_token(&via_a.base, &key2).await.unwrap();
    moved
        .command("refresh", json!({"token": token2}))
        .await
        .unwrap();
    revoke_key(&via_a.base, &alice, "sage", &key1_id).await;
    assert_eq!(
        stayed.closed_with(CLOSE_WAIT).await,
        Some(4003),
        "a session still on the revoked key closes"
    );
    assert!(alive(&mut moved).await, "the rebound session lives on");
    revoke_key(&via_b.base, &alice, "sage", &key2_id).await;
    assert_eq!(
        moved.closed_with(CLOSE_WAIT).await,
        Some(4003),
        "revoking the key it moved to closes it"
    );
    (alice, token2)
}

#[tokio::test]
async fn a_session_follows_the_key_of_its_latest_token() {
    let hub = common::start().await;
    let (alice, token2) = rotate_and_revoke(&hub, &hub, &hub, &hub).await;

    // A refresh with a token of a revoked key is refused; the session keeps its own token.
    let (key3, _) = new_key(&hub.base, &alice, "sage").await;
    let token3 = client::agent_token(&hub.base, &key3).await.unwrap();
    let mut c = hub.connect(Some(&token3)).await;
    let e = c
        .command("refresh", json!({"token": token2}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("unauthorized"), "{e}");
    assert!(alive(&mut c).await);
}

#[tokio::test]
async fn a_token_never_outlives_its_key() {
    let hub = common::start().await;
    let alice = hub.owner("alice").await;
    let (key1, old_token) = hub.agent_for(&alice, "sage", json!(["read"])).await;
    let key1_id = key_ids(&hub.base, &alice, "sage").await.remove(0);
    let (key2, _) = new_key(&hub.base, &alice, "sage").await;

    // Key 1 now ends in 3 s (as a key near the end of its 90 days would).
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&hub.database_url).await.unwrap();
    let key_end = carapace::clock::now_ms() + 3000;
    sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2")
        .bind(key_end)
        .bind(&key1_id)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    // Exchanged now, the token ends with the key, not 10 minutes later.
    let r = hub.http("POST", "/api/v1/token", Some(&key1), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let exp = time::OffsetDateTime::parse(
        r.body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp();
    assert!(exp * 1000 <= key_end, "token ends {exp}, key {key_end}");

    tokio::time::sleep(Duration::from_millis(3200)).await;
    // Past the key's end: no exchange, no authentication with a token minted before, no
    // refresh onto it.
    let r = hub.http("POST", "/api/v1/token", Some(&key1), None).await;
    assert_eq!(code(&r), (401, "unauthorized"));
    assert!(Client::connect(&hub.ws, Some(&old_token)).await.is_err());
    let mut anon = hub.connect(None).await;
    let e = anon
        .command("auth", json!({"token": old_token}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("unauthorized"));
    let token2 = client::agent_token(&hub.base, &key2).await.unwrap();
    let mut c = hub.connect(Some(&token2)).await;
    let e = c
        .command("refresh", json!({"token": old_token}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("unauthorized"), "{e}");
}

/// Rebinding and revocation across three PostgreSQL replicas: the session lives on one, the
/// keys are revoked through the others.
#[tokio::test]
async fn rebinding_and_revocation_cross_replicas() {
    let mut cl = Cluster::start(3, |_| {}).await;
    cl.ready().await;
    let (r0, r1, r2) = (&cl.replicas[0], &cl.replicas[1], &cl.replicas[2]);
    let (alice, _) = rotate_and_revoke(r2, r1, r0, r1).await;

    // An operator's suspension through one replica holds against the owner on another.
    let ops = r0.admin_token("ops").await;
    let (key3, _) = new_key(&r0.base, &alice, "sage").await;
    let token3 = client::agent_token(&r0.base, &key3).await.unwrap();
    let mut live = r2.connect(Some(&token3)).await;
    let r = r1
        .http("POST", "/api/v1/agents/sage/suspend", Some(&ops), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(live.closed_with(CLOSE_WAIT).await, Some(4003));
    let r = r2
        .http("POST", "/api/v1/agents/sage/resume", Some(&alice), None)
        .await;
    assert_eq!(code(&r), (403, "forbidden"));
    cl.stop().await;
}

/// A raw API key sent where a token belongs is refused with what to do instead, on every
/// door: an owner route, an agent route, the WebSocket upgrade and the `auth` op.
#[tokio::test]
async fn an_api_key_where_a_token_belongs_is_told_what_to_do() {
    let hub = common::start().await;
    let (key, _) = hub.agent("sage").await;
    let hint = "exchange it at POST /api/v1/token";
    for path in ["/api/v1/owners/me/agents", "/api/v1/feed"] {
        let r = hub.http("GET", path, Some(&key), None).await;
        assert_eq!(code(&r), (401, "unauthorized"), "{path}");
        let msg = r.body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(hint) && !msg.contains(&key), "{path}: {msg}");
    }
    let e = Client::connect(&hub.ws, Some(&key)).await.err().unwrap();
    assert!(e.to_string().contains("401"), "{e}");
    let mut c = hub.connect(None).await;
    let e = c.command("auth", json!({"token": key})).await.unwrap_err();
    assert_eq!(e.code(), Some("unauthorized"));
    assert!(e.to_string().contains(hint), "{e}");
    // Anything else that is not a token keeps the plain answer.
    let mut c = hub.connect(None).await;
    let e = c
        .command("auth", json!({"token": "cpk_notavalidkey"}))
        .await
        .unwrap_err();
    assert!(!e.to_string().contains(hint), "{e}");
}
