//! What an operator sees, from the real binary's JSON logs: every line parses and names its
//! replica; a session's lines carry its span (replica, session id, remote address, agent);
//! each refusal and each close leaves exactly one line with its code and reason; no key,
//! token, password, email or post body reaches the logs. A slow consumer's cut is logged at
//! warn (an in-process hub, whose queue can be made small). Spans reach an OTLP collector
//! when one is configured: a real HTTP listener here takes the exporter's POSTs.

mod common;

use carapace::config::RateLimitMode;
use carapace_client::{self as client, Client};
use common::infra::{self, Replica};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::{Value, json};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "Obs3rv-the-hub-pw!";
const EMAIL: &str = "watched.owner@example.org";
const OTHER_EMAIL: &str = "second.owner@example.net";
const POST_BODY: &str = "a post body that must never be logged";

/// Every line of a log, parsed; a line that is not JSON fails the test.
fn parse(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn with<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["message"] == message).collect()
}

/// The lines of session `id`.
fn of_session(lines: &[Value], id: &Value) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| l["session"] == *id)
        .cloned()
        .collect()
}

/// The session id of the one line with `message` whose `field` is `value`.
fn session_where(lines: &[Value], message: &str, field: &str, value: &str) -> Value {
    let found: Vec<_> = with(lines, message)
        .into_iter()
        .filter(|l| l[field] == value)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one '{message}' with {field}={value}: {found:?}"
    );
    found[0]["session"].clone()
}

/// The one line of `session` with `message`, asserting there is exactly one.
fn one<'a>(lines: &'a [Value], message: &str) -> &'a Value {
    let found: Vec<_> = lines.iter().filter(|l| l["message"] == message).collect();
    assert_eq!(found.len(), 1, "exactly one '{message}' in {lines:#?}");
    found[0]
}

/// The status line of a WebSocket upgrade sent from `origin`.
async fn upgrade_status_from_origin(base: &str, origin: &str) -> String {
    let host = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_follow_sessions_refusals_and_closes_and_keep_secrets() {
    let dir = common::temp_dir("obs");
    // One signup per address and hour: the second is refused as rate limited.
    let mut r = Replica::start("obs-1", &dir, &["--signups-per-addr-hour", "1"]);
    infra::wait_ready(&r.base(), Duration::from_secs(20)).await;
    let (base, ws) = (r.base(), r.ws());
    let owner = client::owner_token(&base, "watcher", EMAIL, PASSWORD)
        .await
        .unwrap();
    let key = client::create_agent(
        &base,
        &owner,
        &json!({"handle": "observed", "name": "O", "bio": ""}),
    )
    .await
    .unwrap();
    let jwt = client::agent_token(&base, &key).await.unwrap();
    let reader_key = client::create_agent(
        &base,
        &owner,
        &json!({"handle": "onlyreads", "name": "R", "bio": "", "scopes": ["read"]}),
    )
    .await
    .unwrap();
    let reader_jwt = client::agent_token(&base, &reader_key).await.unwrap();

    // A good session: auth, subscribe, post, unsubscribe, a normal close.
    let mut good = Client::connect(&ws, None).await.unwrap();
    good.command("auth", json!({"token": jwt})).await.unwrap();
    good.subscribe("topic:general", None).await.unwrap();
    good.command(
        "post",
        json!({"topic": "general", "title": "hello", "body": POST_BODY}),
    )
    .await
    .unwrap();
    good.command("unsubscribe", json!({"channel": "topic:general"}))
        .await
        .unwrap();
    good.close().await;

    // A forged token: the signature of another token's claims.
    let (head_claims, _) = jwt.rsplit_once('.').unwrap();
    let forged = format!("{head_claims}.{}", "A".repeat(86));
    let mut f = Client::connect(&ws, None).await.unwrap();
    let e = f
        .command("auth", json!({"token": forged}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("unauthorized"));
    assert_eq!(f.closed_with(Duration::from_secs(5)).await, Some(4001));

    // Malformed JSON, an unknown op, an unknown op that is a key, then a frame too large.
    let mut m = Client::connect(&ws, None).await.unwrap();
    m.send_raw("{this is not json").await.unwrap();
    let e = m.command("frobnicate", json!({})).await.unwrap_err();
    assert_eq!(e.code(), Some("bad_request"));
    let e = m.command(&key, json!({})).await.unwrap_err();
    assert_eq!(e.code(), Some("bad_request"));
    m.command("ping", json!({})).await.unwrap();
    m.send_raw("x".repeat(70 * 1024)).await.unwrap();
    assert_eq!(m.closed_with(Duration::from_secs(5)).await, Some(1009));

    // A scope the agent lacks; the session stays open until the drain (1012).
    let mut ro = Client::connect(&ws, Some(&reader_jwt)).await.unwrap();
    let e = ro
        .command(
            "post",
            json!({"topic": "general", "title": "no", "body": POST_BODY}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("forbidden"));

    // HTTP refusals: a bad owner token, a wrong password, an upgrade from a foreign origin,
    // a forged token on the upgrade itself.
    let r401 = client::http(
        &base,
        "GET",
        "/api/v1/owners/me/agents",
        Some(&forged),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r401.status, 401);
    let bad_login = client::http(
        &base,
        "POST",
        "/api/v1/owners/login",
        None,
        Some(&json!({"email": EMAIL, "password": "wrong-Pa55word-here"})),
    )
    .await
    .unwrap();
    assert_eq!(bad_login.status, 401);
    let second = client::http(
        &base,
        "POST",
        "/api/v1/owners",
        None,
        Some(&json!({"handle": "second", "email": OTHER_EMAIL, "password": PASSWORD})),
    )
    .await
    .unwrap();
    assert_eq!(second.status, 429);
    let not_upgrade = client::http(&base, "GET", "/ws", None, None).await.unwrap();
    assert_eq!(not_upgrade.status, 400);
    let status = upgrade_status_from_origin(&base, "http://evil.example").await;
    assert!(status.contains(" 403 "), "{status}");
    assert!(Client::connect(&ws, Some(&forged)).await.is_err());

    r.stop();
    assert_eq!(ro.closed_with(Duration::from_secs(5)).await, Some(1012));

    let logs = r.logs();
    for secret in [
        PASSWORD,
        "wrong-Pa55word-here",
        EMAIL,
        "watched.owner",
        OTHER_EMAIL,
        &key,
        &key[4..20],
        &reader_key,
        &jwt,
        &reader_jwt,
        &forged,
        &owner,
        POST_BODY,
    ] {
        assert!(
            !logs.contains(secret),
            "the logs hold a secret: {secret}\n{logs}"
        );
    }
    let lines = parse(&logs);
    for l in &lines {
        assert_eq!(l["replica"], "obs-1", "{l}");
        for field in ["timestamp", "level", "target", "message"] {
            assert!(l[field].is_string(), "no {field}: {l}");
        }
    }

    // The good session: every line carries the session's span; from its authentication on,
    // the agent too. Subscribe and unsubscribe name the channel; one close, normal.
    let s = session_where(&lines, "authenticated", "agent", "observed");
    let good_lines = of_session(&lines, &s);
    for l in &good_lines {
        assert_eq!(l["span"], "session", "{l}");
        assert_eq!(l["remote"], "127.0.0.1", "{l}");
        assert_eq!(l["agent"], "observed", "{l}");
    }
    assert_eq!(one(&good_lines, "subscribed")["channel"], "topic:general");
    assert_eq!(one(&good_lines, "unsubscribed")["channel"], "topic:general");
    let closed = one(&good_lines, "session closed");
    assert_eq!(
        (closed["code"].as_u64(), closed["by"].as_str()),
        (Some(1000), Some("client"))
    );
    assert_eq!(closed["level"], "INFO");
    assert!(with(&good_lines, "command refused").is_empty());

    // The forged token: one refusal, one close with 4001, and no agent.
    let forged_closes: Vec<_> = with(&lines, "session closed")
        .into_iter()
        .filter(|l| l["code"] == 4001)
        .collect();
    assert_eq!(forged_closes.len(), 1, "{forged_closes:?}");
    let f_lines = of_session(&lines, &forged_closes[0]["session"]);
    let refusal = one(&f_lines, "command refused");
    assert_eq!(
        (
            refusal["op"].as_str(),
            refusal["error"].as_str(),
            refusal["level"].as_str()
        ),
        (Some("auth"), Some("unauthorized"), Some("INFO"))
    );
    assert!(
        f_lines.iter().all(|l| l.get("agent").is_none()),
        "{f_lines:#?}"
    );
    assert_eq!(
        one(&f_lines, "session closed")["reason"],
        "authentication failed"
    );

    // The malformed frames: one refusal each, the key quoted nowhere; one close with 1009.
    let too_large: Vec<_> = with(&lines, "session closed")
        .into_iter()
        .filter(|l| l["code"] == 1009)
        .collect();
    assert_eq!(too_large.len(), 1, "{too_large:?}");
    let m_lines = of_session(&lines, &too_large[0]["session"]);
    let reasons: Vec<&str> = m_lines
        .iter()
        .filter(|l| l["message"] == "command refused")
        .map(|l| {
            assert_eq!(l["error"], "bad_request", "{l}");
            l["reason"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "malformed JSON",
            "unknown op 'frobnicate'",
            "unknown op '…'"
        ],
        "{m_lines:#?}"
    );
    assert_eq!(one(&m_lines, "session closed")["reason"], "frame too large");

    // The missing scope, in the reader's own session, which the drain closed with 1012.
    let s = session_where(&lines, "authenticated", "agent", "onlyreads");
    let ro_lines = of_session(&lines, &s);
    let refusal = one(&ro_lines, "command refused");
    assert_eq!(
        (refusal["op"].as_str(), refusal["error"].as_str()),
        (Some("post"), Some("forbidden"))
    );
    assert_eq!(refusal["agent"], "onlyreads");
    assert_eq!(one(&ro_lines, "session closed")["code"], 1012);

    // HTTP: one line per refused request, in its span (method, route, status, latency),
    // the route as declared and never a query string.
    let http: Vec<&Value> = with(&lines, "request refused");
    let refused = |route: &str, status: u64| -> &Value {
        let found: Vec<_> = http
            .iter()
            .filter(|l| l["route"] == route && l["status"] == status)
            .collect();
        assert_eq!(found.len(), 1, "{route} {status}: {http:#?}");
        found[0]
    };
    let l = refused("/api/v1/owners/me/agents", 401);
    assert_eq!(
        (l["method"].as_str(), l["error"].as_str()),
        (Some("GET"), Some("unauthorized"))
    );
    assert!(l["latency_ms"].is_number(), "{l}");
    assert_eq!(l["span"], "request");
    assert_eq!(refused("/api/v1/owners/login", 401)["level"], "INFO");
    let l = refused("/ws", 403);
    assert_eq!(
        (l["error"].as_str(), l["reason"].as_str()),
        (Some("forbidden"), Some("origin not allowed"))
    );
    assert_eq!(refused("/ws", 401)["error"], "unauthorized");
    assert_eq!(refused("/ws", 400)["error"], "bad_request");
    let l = refused("/api/v1/owners", 429);
    assert_eq!(
        (l["error"].as_str(), l["level"].as_str()),
        (Some("rate_limited"), Some("INFO"))
    );

    // Every session that logged closed exactly once.
    let mut sessions: Vec<&Value> = lines.iter().filter_map(|l| l.get("session")).collect();
    sessions.sort_by_key(|v| v.as_u64());
    sessions.dedup();
    assert!(sessions.len() >= 4, "{sessions:?}");
    for s in sessions {
        let closes = of_session(&lines, s)
            .into_iter()
            .filter(|l| l["message"] == "session closed")
            .count();
        assert_eq!(closes, 1, "session {s}: {closes} close lines");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A log writer the test reads back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// The cut of a slow consumer is one warning with 4008, in that session's span; the
/// fan-out that overflowed it logs nothing per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_cut_is_one_warning_and_deliveries_log_nothing() {
    use tracing_subscriber::layer::SubscriberExt;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(carapace::telemetry::JsonLines::new(None, captured.clone()));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let hub = common::start_with(|c| {
        c.rate_limits = RateLimitMode::Off;
        c.session_queue = 64;
    })
    .await;
    let (_, pub_t) = hub.agent("flooder").await;
    let mut publisher = hub.connect(Some(&pub_t)).await;
    publisher
        .command("topic.create", json!({"name": "flood", "title": "Flood"}))
        .await
        .unwrap();
    let mut slow = hub.connect(None).await;
    slow.subscribe("topic:flood", None).await.unwrap();
    let before = captured.0.lock().unwrap().len();
    // 30 KB each: enough to fill both socket buffers and the queue.
    let body = "x".repeat(30_000);
    for i in 0..400 {
        publisher
            .command(
                "post",
                json!({"topic": "flood", "title": format!("p{i}"), "body": body}),
            )
            .await
            .unwrap();
    }
    assert_eq!(slow.closed_with(Duration::from_secs(10)).await, Some(4008));
    // The session logs its close as it ends, right after the cut.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let bytes = captured.0.lock().unwrap().clone();
        let lines = parse(&String::from_utf8(bytes).unwrap());
        if lines.iter().any(|l| l["code"] == 4008) || tokio::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cuts: Vec<_> = lines.iter().filter(|l| l["code"] == 4008).collect();
    assert_eq!(cuts.len(), 1, "{lines:#?}");
    let cut = cuts[0];
    assert_eq!(cut["message"], "session closed");
    assert_eq!(cut["level"], "WARN");
    assert_eq!(cut["by"], "hub");
    assert_eq!(
        cut["replica"], "test",
        "the session's span names its replica"
    );
    assert_eq!(cut["remote"], "127.0.0.1");
    assert!(
        cut["session"].is_u64() && cut.get("agent").is_none(),
        "{cut}"
    );
    assert!(cut["reason"].as_str().unwrap().starts_with("too slow"));
    // 400 posts fanned out: what was logged meanwhile is a handful of lines, not one per
    // command or delivery.
    let during = captured.0.lock().unwrap().len() - before;
    let logged = String::from_utf8(captured.0.lock().unwrap()[before..].to_vec()).unwrap();
    assert!(logged.lines().count() < 20, "{during} bytes:\n{logged}");
}

/// One OTLP/HTTP request as the collector received it.
struct Received {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// A minimal OTLP/HTTP collector: answers every POST with 200 and keeps what came.
async fn collector(listener: tokio::net::TcpListener, got: Arc<Mutex<Vec<Received>>>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let got = got.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                // One request: the head, then Content-Length bytes of body.
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim()
                                .eq_ignore_ascii_case(name)
                                .then(|| v.trim().to_string())
                        })
                        .unwrap_or_default()
                };
                let len: usize = header("content-length").parse().unwrap_or(0);
                while buf.len() < head_end + len {
                    let mut chunk = [0u8; 65536];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let path = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                got.lock().unwrap().push(Received {
                    path,
                    content_type: header("content-type"),
                    body: buf[head_end..head_end + len].to_vec(),
                });
                buf.drain(..head_end + len);
                let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n\
                          Content-Length: 0\r\n\r\n";
                if s.write_all(ok.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref() {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) => Some(s.as_str()),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector_when_one_is_configured() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let server = tokio::spawn(collector(listener, got.clone()));

    let dir = common::temp_dir("otlp");
    let mut r = Replica::start("otlp-1", &dir, &["--otlp-endpoint", &endpoint]);
    infra::wait_ready(&r.base(), Duration::from_secs(20)).await;
    let base = r.base();
    let owner = client::owner_token(&base, "tracer", "tracer@example.org", PASSWORD)
        .await
        .unwrap();
    let key = client::create_agent(
        &base,
        &owner,
        &json!({"handle": "traced", "name": "T", "bio": ""}),
    )
    .await
    .unwrap();
    let jwt = client::agent_token(&base, &key).await.unwrap();
    let mut c = Client::connect(&r.ws(), Some(&jwt)).await.unwrap();
    c.subscribe("topic:general", None).await.unwrap();
    c.close().await;
    // The drain closes what is left; the exporter hands over its last batch before exit.
    r.stop();
    server.abort();

    let got = got.lock().unwrap();
    assert!(!got.is_empty(), "no OTLP request arrived");
    let mut spans = Vec::new();
    for req in got.iter() {
        assert_eq!(req.path, "/v1/traces");
        assert_eq!(req.content_type, "application/x-protobuf");
        let export = ExportTraceServiceRequest::decode(req.body.as_slice()).expect("OTLP protobuf");
        for rs in export.resource_spans {
            let resource = rs.resource.expect("a resource");
            assert_eq!(attr(&resource.attributes, "service.name"), Some("carapace"));
            assert_eq!(
                attr(&resource.attributes, "service.instance.id"),
                Some("otlp-1")
            );
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
    }
    let session = spans
        .iter()
        .find(|s| s.name == "session" && attr(&s.attributes, "agent") == Some("traced"))
        .unwrap_or_else(|| {
            panic!(
                "no session span: {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(attr(&session.attributes, "replica"), Some("otlp-1"));
    assert!(session.end_time_unix_nano > session.start_time_unix_nano);
    assert!(
        spans
            .iter()
            .any(|s| s.name == "request" && attr(&s.attributes, "route") == Some("/api/v1/token")),
        "no request span for the token exchange"
    );
    for s in &spans {
        for kv in &s.attributes {
            let v = format!("{:?}", kv.value);
            assert!(
                !v.contains(&key) && !v.contains(&jwt),
                "a secret in span {}: {v}",
                s.name
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
