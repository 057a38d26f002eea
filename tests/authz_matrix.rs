//! The standing authorization suite: every HTTP route the router serves and every op the
//! protocol knows, against every kind of caller, each cell with the status or error code it
//! must get. The route and op lists come from the code (`carapace::http::routes()`,
//! `carapace::protocol::OPS`), so a route or an op added without its row fails this suite.

mod common;

use carapace::auth::jwt;
use carapace::auth::keyring::KeyRing;
use carapace_client::{self as client, Client};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};

/// Who calls. Over HTTP a spectator carries no credential, like nobody; over WebSocket nobody
/// connects with no credential, like a spectator. Each other kind presents its credential as
/// the bearer (HTTP, and the WebSocket upgrade).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Caller {
    Nobody,
    Spectator,
    /// An owner who does not own the agent the request is about.
    OtherOwner,
    /// The agent's owner.
    Owner,
    /// An admin, who does not own the agent.
    Operator,
    /// The agent's own JWT.
    AgentJwt,
    /// Another agent's JWT.
    OtherAgentJwt,
    /// The agent's raw API key (`cpk_...`) where a token belongs.
    ApiKey,
    /// A well-signed agent JWT past its `exp`.
    Expired,
    /// A JWT whose API key was revoked.
    RevokedKey,
    /// A JWT of an agent suspended after it was minted.
    Suspended,
}

use Caller::*;

/// In the order cells run: callers that must be refused before those whose success changes
/// the world (the owner last).
const CALLERS: [Caller; 11] = [
    Nobody,
    Spectator,
    ApiKey,
    Expired,
    RevokedKey,
    Suspended,
    AgentJwt,
    OtherAgentJwt,
    OtherOwner,
    Operator,
    Owner,
];

fn is_owner_token(c: Caller) -> bool {
    matches!(c, OtherOwner | Owner | Operator)
}

fn is_agent_token(c: Caller) -> bool {
    matches!(c, AgentJwt | OtherAgentJwt)
}

/// Who may call a route, and what success answers.
#[derive(Clone, Copy)]
enum Policy {
    /// Anyone, whatever credential comes along.
    Public(u16),
    /// Any logged-in owner or operator.
    AnyOwner(u16),
    /// The agent's owner only: an operator 403, another owner 404 (none of their business).
    OwnerOnly(u16),
    /// The agent's owner, or an operator.
    OwnerOrOperator(u16),
    /// Operators only.
    OperatorOnly(u16),
    /// An agent's raw API key (the token exchange).
    ApiKeyOnly(u16),
    /// A valid agent JWT.
    AgentOnly(u16),
}

impl Policy {
    fn expect(self, c: Caller) -> u16 {
        match self {
            Policy::Public(ok) => ok,
            Policy::AnyOwner(ok) if is_owner_token(c) => ok,
            Policy::OwnerOnly(ok) => match c {
                Owner => ok,
                Operator => 403,
                OtherOwner => 404,
                _ => 401,
            },
            Policy::OwnerOrOperator(ok) => match c {
                Owner | Operator => ok,
                OtherOwner => 404,
                _ => 401,
            },
            Policy::OperatorOnly(ok) => match c {
                Operator => ok,
                Owner | OtherOwner => 403,
                _ => 401,
            },
            Policy::ApiKeyOnly(ok) if c == ApiKey => ok,
            Policy::AgentOnly(ok) if is_agent_token(c) => ok,
            _ => 401,
        }
    }
}

/// The world every cell acts on: `sage` is the agent requests are about, owned by `alice`.
struct World {
    hub: common::TestHub,
    bearer: HashMap<Caller, String>,
    sage_key: String,
    sage_key_id: String,
    /// A fresh token of sage's, for `auth` and `refresh` cells.
    sage_token: String,
    /// A post by sage in `general`.
    post: String,
    /// Posts by nina in `sagetopic` (created by sage), for `remove` cells.
    removable: Vec<String>,
    /// The agent `keys` routes act on (one key: room for one more), and its key's id.
    keyed: (String, String),
}

async fn agent(hub: &common::TestHub, owner: &str, handle: &str) -> (String, String, String) {
    let r = hub
        .http(
            "POST",
            "/api/v1/agents",
            Some(owner),
            Some(&json!({"handle": handle, "name": handle,
                "scopes": ["read", "post", "comment", "vote", "dm", "topic:create"]})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let key = r.body["api_key"]["key"].as_str().unwrap().to_string();
    let id = r.body["api_key"]["id"].as_str().unwrap().to_string();
    let token = client::agent_token(&hub.base, &key).await.unwrap();
    (key, id, token)
}

async fn ok(c: &mut Client, op: &str, fields: Value) -> Value {
    c.command(op, fields)
        .await
        .unwrap_or_else(|e| panic!("{op}: {e}"))
}

async fn world() -> World {
    let hub = common::start().await;
    let alice = hub.owner("alice").await;
    let bob = hub.owner("bob").await;
    let ops = hub.admin_token("ops").await;
    let (sage_key, sage_key_id, sage_jwt) = agent(&hub, &alice, "sage").await;
    let (_, _, mallory) = agent(&hub, &bob, "mallory").await;
    let (_, _, nina) = agent(&hub, &bob, "nina").await;
    let (_, keyed_key_id, _) = agent(&hub, &alice, "keyed").await;
    agent(&hub, &alice, "target").await;

    // A token of a key that is then revoked (sage keeps its first key).
    let r = hub
        .http("POST", "/api/v1/agents/sage/keys", Some(&alice), None)
        .await;
    let key2 = r.body["key"].as_str().unwrap().to_string();
    let key2_id = r.body["id"].as_str().unwrap().to_string();
    let revoked = client::agent_token(&hub.base, &key2).await.unwrap();
    let r = hub
        .http(
            "DELETE",
            &format!("/api/v1/agents/sage/keys/{key2_id}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    // A token of an agent suspended after it was minted.
    let (_, _, zed) = agent(&hub, &alice, "zed").await;
    let r = hub
        .http("POST", "/api/v1/agents/zed/suspend", Some(&alice), None)
        .await;
    assert_eq!(r.status, 200);
    // Sage's genuine token, re-signed with an `exp` in the past.
    let ring = KeyRing::load(&hub.secrets_dir).unwrap();
    let mut claims = jwt::verify_agent(&ring, &sage_jwt).unwrap();
    claims.exp = carapace::clock::now_ms() / 1000 - 120;
    let expired = jwt::sign(&ring, &claims).unwrap();

    let mut s = hub.connect(Some(&sage_jwt)).await;
    let post = ok(
        &mut s,
        "post",
        json!({"topic": "general", "title": "matrix", "body": "a post to act on"}),
    )
    .await["post"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(
        &mut s,
        "topic.create",
        json!({"name": "sagetopic", "title": "Sage's", "description": "moderated by sage"}),
    )
    .await;
    let mut n = hub.connect(Some(&nina)).await;
    let mut removable = Vec::new();
    for i in 0..3 {
        let r = ok(
            &mut n,
            "post",
            json!({"topic": "sagetopic", "title": format!("removable {i}"), "body": "x"}),
        )
        .await;
        removable.push(r["post"]["id"].as_str().unwrap().to_string());
    }
    let sage_token = client::agent_token(&hub.base, &sage_key).await.unwrap();
    let bearer = HashMap::from([
        (OtherOwner, bob),
        (Owner, alice),
        (Operator, ops),
        (AgentJwt, sage_jwt),
        (OtherAgentJwt, mallory),
        (ApiKey, sage_key.clone()),
        (Expired, expired),
        (RevokedKey, revoked),
        (Suspended, zed),
    ]);
    World {
        hub,
        bearer,
        sage_key,
        sage_key_id,
        sage_token,
        post,
        removable,
        keyed: ("keyed".into(), keyed_key_id),
    }
}

/// One HTTP row: the route it covers, and how to call it for a caller (`n` numbers the cell,
/// for names that must be fresh).
struct HttpRow {
    method: &'static str,
    route: &'static str,
    policy: Policy,
    call: fn(&World, usize) -> (String, Option<Value>),
    /// Headers the route needs besides the bearer.
    headers: &'static [(&'static str, &'static str)],
}

impl HttpRow {
    fn with_headers(self, headers: &'static [(&'static str, &'static str)]) -> HttpRow {
        HttpRow { headers, ..self }
    }
}

fn http_rows() -> Vec<HttpRow> {
    fn row(
        method: &'static str,
        route: &'static str,
        policy: Policy,
        call: fn(&World, usize) -> (String, Option<Value>),
    ) -> HttpRow {
        HttpRow {
            method,
            route,
            policy,
            call,
            headers: &[],
        }
    }
    use Policy::*;
    vec![
        row("POST", "/api/v1/owners", Public(201), |_, n| {
            let h = format!("newcomer{n}");
            let body = json!({"handle": h, "email": format!("{h}@example.com"),
                "password": "a long enough password"});
            ("/api/v1/owners".into(), Some(body))
        }),
        row("POST", "/api/v1/owners/login", Public(200), |_, _| {
            let body = json!({"email": "alice@example.com",
                "password": "correct horse battery staple"});
            ("/api/v1/owners/login".into(), Some(body))
        }),
        row("GET", "/api/v1/owners/me/agents", AnyOwner(200), |_, _| {
            ("/api/v1/owners/me/agents".into(), None)
        }),
        row("POST", "/api/v1/agents", AnyOwner(201), |_, n| {
            let body = json!({"handle": format!("made{n}"), "name": "Made"});
            ("/api/v1/agents".into(), Some(body))
        }),
        row(
            "PATCH",
            "/api/v1/agents/{handle}",
            OwnerOnly(200),
            |_, _| {
                let body = json!({"bio": "changed", "scopes": ["read", "post", "comment", "vote", "dm", "topic:create"]});
                ("/api/v1/agents/sage".into(), Some(body))
            },
        ),
        row("GET", "/api/v1/agents/{handle}", Public(200), |_, _| {
            ("/api/v1/agents/sage".into(), None)
        }),
        row(
            "POST",
            "/api/v1/agents/{handle}/keys",
            OwnerOnly(201),
            |w, _| (format!("/api/v1/agents/{}/keys", w.keyed.0), None),
        ),
        row(
            "DELETE",
            "/api/v1/agents/{handle}/keys/{id}",
            OwnerOnly(204),
            |w, _| {
                (
                    format!("/api/v1/agents/{}/keys/{}", w.keyed.0, w.keyed.1),
                    None,
                )
            },
        ),
        row(
            "POST",
            "/api/v1/agents/{handle}/{action}",
            OwnerOrOperator(200),
            |_, _| ("/api/v1/agents/target/suspend".into(), None),
        ),
        row(
            "POST",
            "/api/v1/agents/{handle}/{action}",
            OwnerOrOperator(200),
            |_, _| ("/api/v1/agents/target/resume".into(), None),
        ),
        row(
            "POST",
            "/api/v1/agents/{handle}/{action}",
            OwnerOrOperator(200),
            |_, _| {
                let body = json!({"reason": "the end"});
                ("/api/v1/agents/target/revoke".into(), Some(body))
            },
        ),
        row("POST", "/api/v1/token", ApiKeyOnly(200), |_, _| {
            ("/api/v1/token".into(), None)
        }),
        row("GET", "/.well-known/jwks.json", Public(200), |_, _| {
            ("/.well-known/jwks.json".into(), None)
        }),
        row("GET", "/api/v1/topics", Public(200), |_, _| {
            ("/api/v1/topics".into(), None)
        }),
        row("GET", "/api/v1/topics/{name}/posts", Public(200), |_, _| {
            ("/api/v1/topics/general/posts".into(), None)
        }),
        row("GET", "/api/v1/posts/{id}", Public(200), |w, _| {
            (format!("/api/v1/posts/{}", w.post), None)
        }),
        row("GET", "/api/v1/admin/agents", OperatorOnly(200), |_, _| {
            ("/api/v1/admin/agents".into(), None)
        }),
        row("GET", "/api/v1/admin/audit", OperatorOnly(200), |_, _| {
            ("/api/v1/admin/audit".into(), None)
        }),
        row("GET", "/api/v1/admin/reports", OperatorOnly(200), |_, _| {
            ("/api/v1/admin/reports".into(), None)
        }),
        row("GET", "/api/v1/feed", AgentOnly(200), |_, _| {
            ("/api/v1/feed".into(), None)
        }),
        row("GET", "/api/v1/search", Public(200), |_, _| {
            ("/api/v1/search?q=matrix".into(), None)
        }),
        row("GET", "/api/v1/search/status", Public(200), |_, _| {
            ("/api/v1/search/status".into(), None)
        }),
        row("GET", "/api/v1/posts/{id}/related", Public(200), |w, _| {
            (format!("/api/v1/posts/{}/related", w.post), None)
        }),
        row("GET", "/api/v1/openapi.json", Public(200), |_, _| {
            ("/api/v1/openapi.json".into(), None)
        }),
        row("GET", "/api/v1/asyncapi.json", Public(200), |_, _| {
            ("/api/v1/asyncapi.json".into(), None)
        }),
        row("GET", "/healthz", Public(200), |_, _| {
            ("/healthz".into(), None)
        }),
        row("GET", "/readyz", Public(200), |_, _| {
            ("/readyz".into(), None)
        }),
        row("GET", "/metrics", Public(200), |_, _| {
            ("/metrics".into(), None)
        }),
        // A plain GET, not an upgrade: refused alike whoever asks (the WebSocket table below
        // covers the upgrade itself).
        row("GET", "/ws", Public(400), |_, _| ("/ws".into(), None)),
        // MCP: the API key itself is the bearer, checked on every request; a Streamable HTTP
        // client accepts JSON and an event stream.
        row("POST", "/mcp", ApiKeyOnly(200), |_, _| {
            let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
            ("/mcp".into(), Some(ping))
        })
        .with_headers(&[("Accept", "application/json, text/event-stream")]),
        row("GET", "/skill.md", Public(200), |_, _| {
            ("/skill.md".into(), None)
        }),
        row("GET", "/llms.txt", Public(200), |_, _| {
            ("/llms.txt".into(), None)
        }),
        row("GET", "/", Public(200), |_, _| ("/".into(), None)),
        row("GET", "/index.html", Public(200), |_, _| {
            ("/index.html".into(), None)
        }),
        row("GET", "/js/{*file}", Public(200), |_, _| {
            ("/js/main.js".into(), None)
        }),
        row("GET", "/css/{*file}", Public(200), |_, _| {
            ("/css/base.css".into(), None)
        }),
        row("GET", "/favicon.svg", Public(200), |_, _| {
            ("/favicon.svg".into(), None)
        }),
        // Last: it ends every token of the owner who calls it.
        row("POST", "/api/v1/owners/logout", AnyOwner(204), |_, _| {
            ("/api/v1/owners/logout".into(), None)
        }),
    ]
}

/// What a WebSocket cell must get: the op's result, or an error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ws {
    Ok,
    Err(&'static str),
}

/// One WebSocket row: an op, its fields for a cell, and what the spectator, the agent and
/// another agent get. Every other caller is refused at the upgrade (401) and at `auth`
/// (`unauthorized`, then close 4001), before any op.
struct WsRow {
    op: &'static str,
    fields: fn(&World, usize) -> Value,
    spectator: Ws,
    agent: Ws,
    other_agent: Ws,
}

fn ws_rows() -> Vec<WsRow> {
    use Ws::*;
    const FORBIDDEN: Ws = Err("forbidden");
    fn row(
        op: &'static str,
        fields: fn(&World, usize) -> Value,
        spectator: Ws,
        agent: Ws,
        other_agent: Ws,
    ) -> WsRow {
        WsRow {
            op,
            fields,
            spectator,
            agent,
            other_agent,
        }
    }
    vec![
        row(
            "auth",
            |w, _| json!({"token": w.sage_token}),
            Ok,
            Err("bad_request"),
            Err("bad_request"),
        ),
        row(
            "refresh",
            |w, _| json!({"token": w.sage_token}),
            Err("bad_request"),
            Ok,
            FORBIDDEN,
        ),
        row(
            "subscribe",
            |_, _| json!({"channel": "agent:sage", "since": 0}),
            FORBIDDEN,
            Ok,
            FORBIDDEN,
        ),
        row(
            "subscribe",
            |_, _| json!({"channel": "topic:general", "since": 0}),
            Ok,
            Ok,
            Ok,
        ),
        row(
            "unsubscribe",
            |_, _| json!({"channel": "topic:general"}),
            Ok,
            Ok,
            Ok,
        ),
        row(
            "presence",
            |_, _| json!({"channel": "topic:general"}),
            Ok,
            Ok,
            Ok,
        ),
        row(
            "post",
            |_, n| json!({"topic": "general", "title": format!("cell {n}"), "body": "hello"}),
            FORBIDDEN,
            Ok,
            Ok,
        ),
        row(
            "comment",
            |w, n| json!({"post_id": w.post, "body": format!("comment {n}")}),
            FORBIDDEN,
            Ok,
            Ok,
        ),
        // On nina's post (one's own gets a vote from nobody, its author included); the
        // `remove` cells below take only the last of these posts.
        row(
            "vote",
            |w, _| json!({"target": w.removable[0], "value": 1}),
            FORBIDDEN,
            Ok,
            Ok,
        ),
        row(
            "dm",
            |_, _| json!({"to": "nina", "body": "hello nina"}),
            FORBIDDEN,
            Ok,
            Ok,
        ),
        row(
            "topic.create",
            |_, n| json!({"name": format!("made_{n}"), "title": "T", "description": "d"}),
            FORBIDDEN,
            Ok,
            Ok,
        ),
        row(
            "follow",
            |_, _| json!({"handle": "nina"}),
            FORBIDDEN,
            Ok,
            Ok,
        ),
        row(
            "unfollow",
            |_, _| json!({"handle": "nina"}),
            FORBIDDEN,
            Ok,
            Ok,
        ),
        row(
            "join",
            |_, _| json!({"topic": "general"}),
            FORBIDDEN,
            Ok,
            Ok,
        ),
        row(
            "leave",
            |_, _| json!({"topic": "general"}),
            FORBIDDEN,
            Ok,
            Ok,
        ),
        row("feed", |_, _| json!({}), FORBIDDEN, Ok, Ok),
        row("search", |_, _| json!({"q": "matrix"}), Ok, Ok, Ok),
        // Sage created `sagetopic`, so sage moderates it; mallory does not.
        row(
            "remove",
            |w, n| json!({"target": w.removable[n], "reason": "off topic"}),
            FORBIDDEN,
            Ok,
            FORBIDDEN,
        ),
        row(
            "report",
            |w, _| json!({"target": w.post, "reason": "spam"}),
            FORBIDDEN,
            Ok,
            Ok,
        ),
        row(
            "ban",
            |_, _| json!({"topic": "sagetopic", "handle": "nina"}),
            FORBIDDEN,
            Ok,
            FORBIDDEN,
        ),
        row("ping", |_, _| json!({}), Ok, Ok, Ok),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_and_op_against_every_caller() {
    let w = world().await;
    let mut failures = Vec::new();

    // HTTP: every route the router serves has a row, and every row is a route.
    let rows = http_rows();
    let served: BTreeSet<(String, &str)> = carapace::http::routes()
        .map(|(m, p)| (m.to_uppercase(), p))
        .collect();
    let covered: BTreeSet<(String, &str)> = rows
        .iter()
        .map(|r| (r.method.to_string(), r.route))
        .collect();
    assert_eq!(
        served.difference(&covered).collect::<Vec<_>>(),
        Vec::<&(String, &str)>::new(),
        "routes without a row in the authorization matrix"
    );
    assert_eq!(
        covered.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, &str)>::new(),
        "rows for routes the router does not serve"
    );
    let mut cells = 0;
    for row in &rows {
        for (n, caller) in CALLERS.into_iter().enumerate() {
            let (path, body) = (row.call)(&w, n);
            let bearer = w.bearer.get(&caller).map(String::as_str);
            let r = if row.headers.is_empty() {
                w.hub.http(row.method, &path, bearer, body.as_ref()).await
            } else {
                let auth = bearer.map(|b| format!("Bearer {b}"));
                let mut headers = row.headers.to_vec();
                headers.extend(auth.as_deref().map(|a| ("Authorization", a)));
                client::request(
                    &w.hub.base,
                    row.method,
                    &path,
                    &headers,
                    body.as_ref(),
                    client::DEFAULT_TIMEOUT,
                )
                .await
                .expect("http")
            };
            let want = row.policy.expect(caller);
            cells += 1;
            if r.status != want {
                failures.push(format!(
                    "{} {path} as {caller:?}: {} (want {want}) {}",
                    row.method, r.status, r.body
                ));
            }
        }
    }

    // WebSocket: every op has a row; every row is an op.
    let rows = ws_rows();
    let ops: BTreeSet<&str> = carapace::protocol::OPS.iter().copied().collect();
    let covered: BTreeSet<&str> = rows.iter().map(|r| r.op).collect();
    assert_eq!(ops, covered, "ops and rows of the WebSocket matrix differ");

    // The callers whose credential is no agent token: refused before any op.
    for caller in CALLERS {
        let Some(cred) = w.bearer.get(&caller).filter(|_| !is_agent_token(caller)) else {
            continue;
        };
        cells += rows.len();
        match Client::connect(&w.hub.ws, Some(cred)).await {
            Err(e) if e.to_string().contains("401") => {}
            other => failures.push(format!(
                "upgrade as {caller:?}: {:?} (want 401)",
                other.map(|_| "connected")
            )),
        }
        let mut c = w.hub.connect(None).await;
        match c.command("auth", json!({"token": cred})).await {
            Err(e) if e.code() == Some("unauthorized") => {}
            other => failures.push(format!("auth as {caller:?}: {other:?} (want unauthorized)")),
        }
        if c.closed_with(std::time::Duration::from_secs(2)).await != Some(4001) {
            failures.push(format!("auth as {caller:?}: no close 4001"));
        }
    }

    // Spectator, agent and another agent, op by op (a session each; a fresh one where the
    // cell changes who the session is).
    let mut spectator = w.hub.connect(None).await;
    let mut agent = w.hub.connect(Some(&w.bearer[&AgentJwt])).await;
    let mut other = w.hub.connect(Some(&w.bearer[&OtherAgentJwt])).await;
    for row in &rows {
        for (n, who, want) in [
            (0, Spectator, row.spectator),
            (1, OtherAgentJwt, row.other_agent),
            (2, AgentJwt, row.agent),
        ] {
            let fields = (row.fields)(&w, n);
            let mut fresh;
            let c = match who {
                Spectator if row.op == "auth" => {
                    fresh = w.hub.connect(None).await;
                    &mut fresh
                }
                Spectator => &mut spectator,
                OtherAgentJwt => &mut other,
                _ => &mut agent,
            };
            cells += 1;
            let got = match c.command(row.op, fields.clone()).await {
                Result::Ok(_) => Ws::Ok,
                Err(e) => match e.code() {
                    Some(code) => Ws::Err(match code {
                        "forbidden" => "forbidden",
                        "bad_request" => "bad_request",
                        "unauthorized" => "unauthorized",
                        "not_found" => "not_found",
                        other => {
                            failures.push(format!("{} as {who:?}: code {other}", row.op));
                            continue;
                        }
                    }),
                    None => {
                        failures.push(format!("{} as {who:?}: {e}", row.op));
                        continue;
                    }
                },
            };
            if got != want {
                failures.push(format!(
                    "{} {fields} as {who:?}: {got:?} (want {want:?})",
                    row.op
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cells} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The agent's key still works after all this: no cell revoked what it should not have.
    let r = w
        .hub
        .http("POST", "/api/v1/token", Some(&w.sage_key), None)
        .await;
    assert_eq!(r.status, 200, "{:?} ({})", r.body, w.sage_key_id);
}
