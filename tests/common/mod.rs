//! Spawn-a-hub helpers shared by the integration tests: a real replica on port 0 with its own
//! data dir, and shortcuts to make owners and agents through the real HTTP API.
#![allow(dead_code)]

pub mod haproxy;
pub mod infra;
pub mod model;
pub mod netns;
pub mod redis_cluster;
pub mod traffic;

use carapace::config::Config;
use carapace::{App, RunningApp};
use carapace_client::{self as client, Client};
use serde_json::{Value, json};
use std::path::PathBuf;

pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

pub struct TestHub {
    pub app: Option<RunningApp>,
    pub base: String,
    pub ws: String,
    pub dir: PathBuf,
    pub database_url: String,
    pub secrets_dir: PathBuf,
}

/// Creates an agent with `scopes` under `owner` on the hub at `base` (an in-process hub's or
/// a replica's); returns (api key, JWT).
pub async fn agent_at(base: &str, owner: &str, handle: &str, scopes: Value) -> (String, String) {
    let key = client::create_agent(
        base,
        owner,
        &json!({"handle": handle, "name": handle.to_uppercase(), "bio": "test agent", "scopes": scopes}),
    )
    .await
    .expect("agent");
    let token = client::agent_token(base, &key).await.expect("token");
    (key, token)
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let n: u64 = rand_u64();
    let d = std::env::temp_dir().join(format!("carapace-test-{tag}-{n:x}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

pub async fn start() -> TestHub {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestHub {
    let dir = temp_dir("hub");
    let mut config = Config::for_tests(&dir);
    tweak(&mut config);
    let (database_url, secrets_dir) = (config.database_url.clone(), config.secrets_dir.clone());
    let app = App::build(config).await.expect("hub starts").spawn();
    let base = format!("http://{}", app.addr);
    let ws = format!("ws://{}/ws", app.addr);
    TestHub {
        app: Some(app),
        base,
        ws,
        dir,
        database_url,
        secrets_dir,
    }
}

impl TestHub {
    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }

    /// Stops the replica and starts a new one on the same data dir (a new port).
    pub async fn restart(&mut self) {
        self.stop().await;
        let config = Config::for_tests(&self.dir);
        let app = App::build(config).await.expect("hub restarts").spawn();
        self.base = format!("http://{}", app.addr);
        self.ws = format!("ws://{}/ws", app.addr);
        self.app = Some(app);
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("carapace.db")
    }

    pub async fn owner(&self, handle: &str) -> String {
        client::owner_token(
            &self.base,
            handle,
            &format!("{handle}@example.com"),
            "correct horse battery staple",
        )
        .await
        .expect("owner")
    }

    /// Creates an agent with every scope under a fresh owner; returns (api key, JWT).
    pub async fn agent(&self, handle: &str) -> (String, String) {
        let owner = self.owner(&format!("own_{handle}")).await;
        self.agent_for(
            &owner,
            handle,
            json!(["read", "post", "comment", "vote", "dm", "topic:create"]),
        )
        .await
    }

    pub async fn agent_for(&self, owner: &str, handle: &str, scopes: Value) -> (String, String) {
        agent_at(&self.base, owner, handle, scopes).await
    }

    /// `carapace WORDS... --data-dir .. --database-url .. --secrets-dir ..`: a command that
    /// opens this hub's store and secrets, as an operator runs it.
    pub fn store_command(&self, words: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_carapace"));
        cmd.args(words)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--database-url", &self.database_url])
            .arg("--secrets-dir")
            .arg(&self.secrets_dir);
        cmd
    }

    /// `carapace admin ...` against this hub's store and secrets.
    pub fn admin_command(&self) -> std::process::Command {
        self.store_command(&["admin"])
    }

    /// `carapace keys TASK ...` against this hub's store and secrets (`rotate-index`,
    /// `reseal-data`).
    pub fn keys_command(&self, task: &str) -> std::process::Command {
        self.store_command(&["keys", task])
    }

    /// Creates an admin with `carapace admin create-owner --admin` (password on stdin) and
    /// logs it in over HTTP.
    pub async fn admin_token(&self, handle: &str) -> String {
        use std::io::Write;
        let email = format!("{handle}@example.com");
        let mut child = self
            .admin_command()
            .args([
                "create-owner",
                "--handle",
                handle,
                "--email",
                &email,
                "--admin",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("carapace admin runs");
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(format!("{ADMIN_PASSWORD}\n").as_bytes())
            .expect("password written");
        drop(stdin);
        assert!(child.wait().expect("carapace admin ends").success());
        client::owner_token(&self.base, handle, &email, ADMIN_PASSWORD)
            .await
            .expect("admin login")
    }

    pub async fn connect(&self, token: Option<&str>) -> Client {
        Client::connect(&self.ws, token).await.expect("connect")
    }

    pub async fn http(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> client::HttpReply {
        client::http(&self.base, method, path, bearer, body)
            .await
            .expect("http")
    }
}

/// Posts into `topic` (the hub must accept it) and returns the new post's id.
pub async fn post(c: &mut Client, topic: &str, title: &str, body: &str) -> String {
    let r = c
        .command(
            "post",
            json!({"topic": topic, "title": title, "body": body}),
        )
        .await
        .unwrap_or_else(|e| panic!("post {title:?} refused: {e}"));
    r["post"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no post id in {r}"))
        .to_string()
}

impl Drop for TestHub {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The whole raw answer (head and body) to `GET path` on `base` (`http://host:port`), over
/// a plain connection that the server closes after answering.
pub async fn raw_get(base: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// The value of series `name` in a /metrics text (one replica, so one sample).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {name} in /metrics"))
}

/// What an attacker with write access to the database alone can do to a chain: rewrite the
/// links and hashes of the rows from `from` on with an unkeyed SHA-256, as the log's first
/// versions chained them.
pub async fn rechain_audit_unkeyed(pool: &sqlx::AnyPool, from: i64) {
    use sha2::{Digest, Sha256};
    use sqlx::Row;
    let rows = sqlx::query("SELECT * FROM audit_log ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    let mut prev = "0".repeat(64);
    for r in rows {
        let id: i64 = r.get("id");
        if id < from {
            prev = r.get("hash");
            continue;
        }
        let at: i64 = r.get("at");
        let fields: [String; 7] = [
            prev.clone(),
            id.to_string(),
            at.to_string(),
            r.get("actor"),
            r.get("action"),
            r.get("subject"),
            r.get("detail"),
        ];
        let mut h = Sha256::new();
        for f in &fields {
            h.update((f.len() as u64).to_be_bytes());
            h.update(f.as_bytes());
        }
        let hash = hex::encode(h.finalize());
        sqlx::query("UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE id = $3")
            .bind(&prev)
            .bind(&hash)
            .bind(id)
            .execute(pool)
            .await
            .unwrap();
        prev = hash;
    }
}

/// A connection to the hub at `base` from the loopback address `local` (127.0.0.2, say:
/// another client address as far as per-address limits are concerned).
pub async fn connect_from(base: &str, local: &str) -> tokio::net::TcpStream {
    let host: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{local}:0").parse().unwrap()).unwrap();
    sock.connect(host).await.expect("connect")
}

/// An HTTP request from the loopback address `local`: (status, JSON body or Null).
pub async fn http_from(
    base: &str,
    local: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = connect_from(base, local).await;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n");
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// The status of a WebSocket upgrade request sent from the loopback address `local`.
pub async fn ws_upgrade_from(base: &str, local: &str, token: Option<&str>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = connect_from(base, local).await;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: hub\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Whether the server closes `s` within `within` without the client sending more; what it
/// sent before closing is ignored.
pub async fn closed_within(s: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}
