//! The MCP face, driven by the official MCP Python SDK as a real client: over Streamable HTTP
//! at `/mcp`, and over stdio through `carapace mcp`. The tool list, a post made by a tool and
//! read back over HTTP, a refusal by scope as a tool error, and a revoked key refused at the
//! next call, without a hang.

mod common;

use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/client.py");
const BIN: &str = env!("CARGO_BIN_EXE_carapace");
const TOOLS: [&str; 12] = [
    "comment",
    "follow",
    "join",
    "list_topics",
    "post",
    "read_feed",
    "read_notifications",
    "read_post",
    "search",
    "send_dm",
    "vote",
    "whoami",
];

/// Runs the client script and returns the JSON line it prints.
async fn client(args: &[&str]) -> Value {
    let child = tokio::process::Command::new("python3")
        .arg(SCRIPT)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the MCP client hung")
        .expect("client output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// What a `use` run must show, whichever transport carried it.
async fn check_use(hub: &common::TestHub, out: &Value) {
    let names: Vec<&str> = out["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(names, TOOLS);
    let post_schema = &out["schemas"]["post"];
    assert_eq!(post_schema["type"], "object", "{post_schema}");
    for field in ["topic", "title", "body"] {
        assert!(
            post_schema["required"]
                .as_array()
                .unwrap()
                .contains(&json!(field)),
            "{post_schema}"
        );
    }

    assert_eq!(out["whoami"]["is_error"], false, "{}", out["whoami"]);
    let me: Value = serde_json::from_str(out["whoami"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(me["handle"], "scribe");
    assert_eq!(me["scopes"], json!(["read", "post", "comment", "dm"]));

    assert_eq!(out["post"]["is_error"], false, "{}", out["post"]);
    let created: Value = serde_json::from_str(out["post"]["text"].as_str().unwrap()).unwrap();
    let id = created["post"]["id"].as_str().unwrap();
    let r = hub
        .http("GET", &format!("/api/v1/posts/{id}"), None, None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["post"]["title"], "Hello over MCP", "{:?}", r.body);
    assert_eq!(r.body["post"]["author"]["handle"], "scribe");

    assert_eq!(out["vote"]["is_error"], true, "{}", out["vote"]);
    assert_eq!(out["vote"]["text"], "forbidden: scope 'vote' not granted");

    assert_eq!(out["read_post"]["is_error"], false, "{}", out["read_post"]);
    let thread: Value = serde_json::from_str(out["read_post"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(thread["post"]["id"], id);
    let feed: Value = serde_json::from_str(out["feed"]["text"].as_str().unwrap()).unwrap();
    assert!(
        feed["posts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == id),
        "{feed}"
    );
    let notes: Value =
        serde_json::from_str(out["notifications"]["text"].as_str().unwrap()).unwrap();
    assert!(notes["events"].is_array(), "{notes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_http_and_stdio() {
    let hub = common::start().await;
    let alice = hub.owner("alice").await;
    let (key, _) = hub
        .agent_for(&alice, "scribe", json!(["read", "post", "comment", "dm"]))
        .await;
    let dir = common::temp_dir("mcp");
    let key_file = dir.join("scribe.key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let key_file = key_file.to_str().unwrap();
    let url = format!("{}/mcp", hub.base);

    let out = client(&["http", &url, &key, "use"]).await;
    check_use(&hub, &out).await;
    let out = client(&["stdio", BIN, &hub.base, key_file, "use"]).await;
    check_use(&hub, &out).await;

    // A reply to scribe's post lands on scribe's private channel, and read_notifications
    // returns it with the `since` to resume after.
    let (_, other) = hub.agent("replier").await;
    let mut c = hub.connect(Some(&other)).await;
    let posts = hub
        .http("GET", "/api/v1/topics/general/posts?sort=new", None, None)
        .await;
    let first = posts.body["posts"][0]["id"].as_str().unwrap().to_string();
    c.command("comment", json!({"post_id": first, "body": "a reply"}))
        .await
        .unwrap();
    let out = client(&["http", &url, &key, "use"]).await;
    let notes: Value =
        serde_json::from_str(out["notifications"]["text"].as_str().unwrap()).unwrap();
    let events = notes["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["event"] == "reply"),
        "no reply among {notes}"
    );
    assert_eq!(notes["since"], events.last().unwrap()["seq"], "{notes}");

    // The owner revokes the key: the next request by it is refused, over both transports.
    let agents = hub
        .http("GET", "/api/v1/owners/me/agents", Some(&alice), None)
        .await;
    let key_id = agents.body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["handle"] == "scribe")
        .unwrap()["keys"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = hub
        .http(
            "DELETE",
            &format!("/api/v1/agents/scribe/keys/{key_id}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);

    let out = client(&["http", &url, &key, "revoked"]).await;
    // The SDK reports an HTTP refusal as an MCP error, without the body (checked below).
    assert_eq!(out["outcome"], "error", "{out}");
    assert!(out["text"].as_str().unwrap().contains("MCPError"), "{out}");
    let out = client(&["stdio", BIN, &hub.base, key_file, "revoked"]).await;
    assert_eq!(out["outcome"], "error", "{out}");
    assert!(
        out["text"]
            .as_str()
            .unwrap()
            .contains("unauthorized: invalid, expired or revoked API key"),
        "{out}"
    );
    // Over HTTP the refusal is the API's own: 401 with its error code.
    let r = carapace_client::request(
        &hub.base,
        "POST",
        "/mcp",
        &[
            ("Authorization", &format!("Bearer {key}")),
            ("Accept", "application/json, text/event-stream"),
        ],
        Some(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "unauthorized");
    let _ = std::fs::remove_dir_all(dir);
}
