//! CI smoke of `carapace bench` (SPEC section 7): a short run of each scenario against the
//! real binary, asserting that the last line is the JSON report and that nothing was lost.
//! Carapace and raw always; Socket.IO and NATS only where their servers are installed; the
//! cluster scenario where PostgreSQL and Redis answer. Seconds each, not a measurement.

mod common;

use common::infra::{OwnRedis, PgDb, Replica, free_port};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_carapace");

/// Runs `carapace bench ARGS` (bounded in time) and returns its JSON line.
async fn bench(args: &[&str]) -> Value {
    let run = tokio::process::Command::new(BIN)
        .arg("bench")
        .args(args)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("bench finishes within two minutes")
        .expect("bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or("");
    let v: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}\n{stdout}"));
    for k in [
        "scenario",
        "target",
        "subscribers",
        "publishers",
        "seconds",
        "published",
        "delivered",
        "deliveries_per_s",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "lost",
        "refused",
        "rss_kib_per_conn",
    ] {
        assert!(v.get(k).is_some(), "JSON line lacks '{k}': {last}");
    }
    v
}

fn assert_fanout(v: &Value, subscribers: u64) {
    assert_eq!(v["lost"], 0, "{v}");
    let published = v["published"].as_u64().unwrap_or(0);
    assert!(published > 0, "nothing published: {v}");
    assert_eq!(
        v["delivered"].as_u64(),
        Some(published * subscribers),
        "{v}"
    );
    assert!(v["p99_ms"].as_f64().unwrap_or(0.0) >= v["p50_ms"].as_f64().unwrap_or(0.0));
}

/// A child process killed when the guard drops.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn installed(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/peers")
}

fn hub(dir: &Path) -> Replica {
    Replica::start("bench", dir, &["--rate-limits", "off"])
}

#[tokio::test]
async fn fanout_and_connections_against_carapace() {
    let dir = common::temp_dir("bench");
    let r = hub(&dir);
    let addr = format!("127.0.0.1:{}", r.port);
    let pid = r.pid().to_string();
    let v = bench(&[
        "--target",
        "carapace",
        "--addr",
        &addr,
        "--server-pid",
        &pid,
        "--subscribers",
        "20",
        "--publishers",
        "2",
        "--duration",
        "2",
        "--warmup",
        "0",
    ])
    .await;
    assert_eq!(v["scenario"], "fanout");
    assert_eq!(v["target"], "carapace");
    assert_fanout(&v, 20);

    // Spread over three topics: subscriber i hears only topic i % 3, 7 of the 21 each.
    let v = bench(&[
        "--addr",
        &addr,
        "--subscribers",
        "21",
        "--publishers",
        "3",
        "--topics",
        "3",
        "--duration",
        "2",
        "--warmup",
        "0",
    ])
    .await;
    assert_fanout(&v, 7);
    let refused = Command::new(BIN)
        .args([
            "bench",
            "--addr",
            &addr,
            "--publishers",
            "2",
            "--topics",
            "3",
        ])
        .output()
        .expect("bench runs");
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("--topics"),
        "more topics than publishers is refused: {}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let v = bench(&[
        "--scenario",
        "connections",
        "--addr",
        &addr,
        "--subscribers",
        "200",
        "--duration",
        "1",
        "--source-ips",
        "2",
    ])
    .await;
    assert_eq!(v["scenario"], "connections");
    assert_eq!(v["subscribers"], 200, "every session connected: {v}");
    assert!(
        v["rss_kib_per_conn"].as_f64().unwrap_or(0.0) > 0.0,
        "server found: {v}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn fanout_against_raw_in_its_own_process() {
    let port = free_port();
    let _raw = Proc(
        Command::new(BIN)
            .args(["bench", "--serve-raw", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .spawn()
            .expect("raw server runs"),
    );
    wait_port(port);
    let v = bench(&[
        "--target",
        "raw",
        "--addr",
        &format!("127.0.0.1:{port}"),
        "--subscribers",
        "50",
        "--publishers",
        "2",
        "--duration",
        "2",
        "--warmup",
        "0",
    ])
    .await;
    assert_eq!(v["target"], "raw");
    assert_fanout(&v, 50);
}

#[tokio::test]
async fn fanout_against_nats_when_installed() {
    if !installed("nats-server") {
        eprintln!("nats-server not installed: skipped");
        return;
    }
    let (port, ws) = (free_port(), free_port());
    let _nats = Proc(
        Command::new("nats-server")
            .arg("-c")
            .arg(peers_dir().join("nats.conf"))
            .env("NATS_PORT", port.to_string())
            .env("NATS_WS_PORT", ws.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs"),
    );
    wait_port(ws);
    let v = bench(&[
        "--target",
        "nats",
        "--addr",
        &format!("127.0.0.1:{ws}"),
        "--subscribers",
        "50",
        "--publishers",
        "2",
        "--duration",
        "2",
        "--warmup",
        "0",
    ])
    .await;
    assert_fanout(&v, 50);
}

#[tokio::test]
async fn fanout_against_socketio_when_installed() {
    if !installed("node") || !peers_dir().join("node_modules/socket.io").exists() {
        eprintln!("node or scripts/peers/node_modules missing: skipped");
        return;
    }
    let redis = OwnRedis::start();
    let port = free_port();
    let _sio = Proc(
        Command::new("node")
            .arg(peers_dir().join("socketio-server.mjs"))
            .args(["--port", &port.to_string(), "--redis", &redis.url()])
            .stdout(Stdio::null())
            .spawn()
            .expect("node runs"),
    );
    wait_port(port);
    let v = bench(&[
        "--target",
        "socketio",
        "--addr",
        &format!("127.0.0.1:{port}"),
        "--subscribers",
        "50",
        "--publishers",
        "2",
        "--duration",
        "2",
        "--warmup",
        "0",
    ])
    .await;
    assert_fanout(&v, 50);
}

#[tokio::test]
async fn cluster_against_three_carapace_replicas() {
    let db = PgDb::create("bench").await;
    let redis = OwnRedis::start();
    let dir = common::temp_dir("bench-cluster");
    let secrets = dir.join("secrets");
    let secrets = secrets.to_str().expect("UTF-8 temp path");
    let redis_url = redis.url();
    let args = [
        "--rate-limits",
        "off",
        "--database-url",
        &db.url,
        "--redis-url",
        &redis_url,
        "--secrets-dir",
        secrets,
    ];
    let replicas: Vec<Replica> = ["b1", "b2", "b3"]
        .iter()
        .map(|id| Replica::start(id, &dir, &args))
        .collect();
    let addrs = replicas
        .iter()
        .map(|r| format!("127.0.0.1:{}", r.port))
        .collect::<Vec<_>>()
        .join(",");
    let v = bench(&[
        "--scenario",
        "cluster",
        "--addr",
        &addrs,
        "--subscribers",
        "20",
        "--publishers",
        "2",
        "--duration",
        "2",
        "--warmup",
        "0",
    ])
    .await;
    assert_eq!(v["scenario"], "cluster");
    assert_fanout(&v, 20);
    drop(replicas);
    let _ = std::fs::remove_dir_all(dir);
}
