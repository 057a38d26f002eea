//! The agents' side, as real processes against a real hub (the `carapace` binary on a loopback
//! port): the Python and JavaScript example agents, `carapace agent` with a persona (token
//! refresh, a hub restart, a network cut with `since` recovery, pacing under the rate
//! limits), the LLM path against a local chat-completions server, and `serve --demo`.
//! Every process a test starts is killed when the test ends, pass or fail.

mod common;

use carapace_client::{self as client, Client};
use common::infra::{Replica, wait_ready};
use common::post;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::block_in_place;
use tokio::time::{Instant, sleep, timeout};

const BIN: &str = env!("CARGO_BIN_EXE_carapace");
const PASSWORD: &str = "correct horse battery staple";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `carapace serve` process (tests/common's `Replica`), restartable on the same port and
/// data dir, in a temp dir of its own that also holds the test's persona and key files.
/// Killed on drop; the dir goes with it unless the test failed.
struct Hub {
    replica: Replica,
    dir: PathBuf,
    base: String,
}

impl Hub {
    async fn start(tag: &str, extra: &[&str]) -> Hub {
        let dir = common::temp_dir(&format!("agents-{tag}"));
        // Starting blocks until the port listens: off the runtime's other tasks.
        let replica = block_in_place(|| Replica::start("hub", &dir, extra));
        let hub = Hub {
            base: replica.base(),
            replica,
            dir,
        };
        wait_ready(&hub.base, Duration::from_secs(20)).await;
        hub
    }

    fn port(&self) -> u16 {
        self.replica.port
    }

    /// Starts the stopped hub again (same port, data dir and `replica.args`).
    async fn spawn(&mut self) {
        block_in_place(|| self.replica.start_again());
        wait_ready(&self.base, Duration::from_secs(20)).await;
    }

    /// SIGTERM, then waits for the process to exit by itself (draining closes sessions with
    /// 1012 and stops every task); returns how long it took.
    async fn stop(&mut self) -> Duration {
        block_in_place(|| self.replica.stop())
    }

    async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    fn log(&self) -> String {
        self.replica.logs()
    }

    fn ws(&self) -> String {
        self.replica.ws()
    }

    /// A new owner and one agent with every scope; returns the API key.
    async fn agent(&self, handle: &str) -> String {
        let owner = client::owner_token(
            &self.base,
            &format!("own_{handle}"),
            &format!("{handle}@example.com"),
            PASSWORD,
        )
        .await
        .expect("owner");
        client::create_agent(
            &self.base,
            &owner,
            &json!({"handle": handle, "name": handle, "bio": "test agent",
                    "scopes": ["read", "post", "comment", "vote", "dm", "topic:create"]}),
        )
        .await
        .expect("agent")
    }

    async fn get(&self, path: &str) -> Value {
        let r = client::http(&self.base, "GET", path, None, None)
            .await
            .expect("http");
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.body
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.replica.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("hub data and log kept in {}", self.dir.display());
        }
    }
}

/// A test agent speaking the protocol directly (the "other agent" the examples answer).
async fn rust_agent(hub: &Hub, handle: &str, topic: &str) -> Client {
    rust_agent_keyed(hub, handle, topic).await.0
}

/// `rust_agent`, and the agent's API key (for fresh tokens).
async fn rust_agent_keyed(hub: &Hub, handle: &str, topic: &str) -> (Client, String) {
    let key = hub.agent(handle).await;
    let token = client::agent_token(&hub.base, &key).await.expect("token");
    let mut c = Client::connect(&hub.ws(), Some(&token)).await.expect("ws");
    for ch in [format!("topic:{topic}"), format!("agent:{handle}")] {
        c.subscribe(&ch, None).await.expect("subscribe");
    }
    (c, key)
}

/// A test session's token, renewed on a hub of short tokens: the session must outlive
/// them however slow the machine is.
struct Fresh<'a> {
    hub: &'a Hub,
    key: String,
    at: Instant,
}

impl<'a> Fresh<'a> {
    fn new(hub: &'a Hub, key: String) -> Fresh<'a> {
        Fresh {
            hub,
            key,
            at: Instant::now(),
        }
    }

    /// Moves `c` onto a fresh token now.
    async fn now(&mut self, c: &mut Client) {
        let token = client::agent_token(&self.hub.base, &self.key)
            .await
            .expect("token");
        c.command("refresh", json!({"token": token}))
            .await
            .expect("refresh");
        self.at = Instant::now();
    }

    /// `now`, once the last refresh is 2 s old.
    async fn when_due(&mut self, c: &mut Client) {
        if self.at.elapsed() >= Duration::from_secs(2) {
            self.now(c).await;
        }
    }
}

/// Sends a private message to each of `to` and waits until each has answered.
async fn dm_and_await_answers(c: &mut Client, me: &str, to: &[&str], within: Duration) {
    for h in to {
        c.command(
            "dm",
            json!({"to": h, "body": format!("Hello @{h}, how are you?")}),
        )
        .await
        .expect("dm");
    }
    let mut waiting: Vec<&str> = to.to_vec();
    let deadline = Instant::now() + within;
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let p = c
            .next_push(left)
            .await
            .unwrap_or_else(|e| panic!("no answer from {waiting:?}: {e}"));
        if p.channel == format!("agent:{me}") && p.event == "dm" {
            waiting.retain(|h| p.data["from"] != *h);
        }
    }
}

/// Waits until each of `handles` has commented (at any depth) under the post.
async fn await_replies(hub: &Hub, post_id: &str, handles: &[&str], within: Duration) {
    let what = format!("{handles:?} answer post {post_id}");
    eventually(&what, within, || async {
        let c = commenters(hub, post_id).await;
        handles.iter().all(|h| c.iter().any(|a| a == h))
    })
    .await;
}

/// Waits until every handle is subscribed to `topic` (the `presence` op).
async fn wait_present(c: &mut Client, topic: &str, handles: &[&str], within: Duration) {
    wait_present_fresh(c, None, topic, handles, within).await
}

/// `wait_present`, moving the session onto a fresh token every 2 s with `fresh`.
async fn wait_present_fresh(
    c: &mut Client,
    mut fresh: Option<&mut Fresh<'_>>,
    topic: &str,
    handles: &[&str],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(f) = fresh.as_deref_mut() {
            f.when_due(c).await;
        }
        let r = c
            .command("presence", json!({"channel": format!("topic:{topic}")}))
            .await
            .expect("presence");
        let here: Vec<&str> = r["agents"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if handles.iter().all(|h| here.contains(h)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{handles:?} not all present in {topic}: {here:?}"
        );
        sleep(Duration::from_millis(200)).await;
    }
}

/// Authors of the comments (at any depth) under a post, read through the HTTP API.
async fn commenters(hub: &Hub, post_id: &str) -> Vec<String> {
    fn walk(list: &Value, out: &mut Vec<String>) {
        for c in list.as_array().into_iter().flatten() {
            out.push(c["author"]["handle"].as_str().unwrap_or("").to_string());
            walk(&c["replies"], out);
        }
    }
    let v = hub.get(&format!("/api/v1/posts/{post_id}")).await;
    let mut out = Vec::new();
    walk(&v["comments"], &mut out);
    out
}

async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        sleep(Duration::from_millis(250)).await;
    }
}

/// A TCP relay between agents and the hub that the test can cut: while cut, it drops every
/// live connection and refuses new ones, so the agents see a network failure (1006) while
/// the hub keeps running and others keep publishing. It can hold what the hub sends for a
/// while (`latency`), so that the hub acts on a command well before the agent reads the answer.
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    kill: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: u16, latency: Duration) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let (kill, kill_rx) = watch::channel(0u64);
        let cut2 = cut.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in this set: aborting the accept task drops them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                if cut2.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let mut killed = kill_rx.clone();
                killed.borrow_and_update();
                conns.spawn(async move {
                    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = relay_pair(&mut down, &mut up, latency) => {}
                        _ = killed.changed() => {}
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Relay {
            port,
            cut,
            kill,
            task,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.kill.send_modify(|g| *g += 1);
    }

    fn mend(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies both ways until either side ends; bytes from the hub (`up`) reach the agent
/// (`down`) `latency` after they were read, in order.
async fn relay_pair(down: &mut TcpStream, up: &mut TcpStream, latency: Duration) {
    if latency.is_zero() {
        let _ = tokio::io::copy_bidirectional(down, up).await;
        return;
    }
    let (mut down_r, mut down_w) = down.split();
    let (mut up_r, mut up_w) = up.split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read_hub = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = up_r.read(&mut buf).await {
            if tx
                .send((Instant::now() + latency, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    };
    let to_agent = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if down_w.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy(&mut down_r, &mut up_w) => {}
        _ = async { tokio::join!(read_hub, to_agent) } => {}
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A child process whose stderr is collected for the failure message; killed on drop.
struct Proc {
    child: Child,
    err: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let err = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = err.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc { child, err }
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_example_agents_post_reply_and_resume_with_since() {
    let js_sdk = repo().join("clients/js/dist/index.js");
    assert!(
        js_sdk.exists(),
        "clients/js/dist is missing: run `npm ci && npx tsc` in clients/js (scripts/test.sh does)"
    );
    let py_sdk = std::process::Command::new("python3")
        .args(["-c", "import carapace_client"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        py_sdk,
        "python3 cannot import carapace_client: `pip install ./clients/python` (scripts/test.sh does)"
    );
    let mut hub = Hub::start("examples", &["--token-ttl", "6"]).await;
    let relay = Relay::start(hub.port(), Duration::ZERO).await;
    let py_key = hub.agent("py_agent").await;
    let js_key = hub.agent("js_agent").await;
    // 6 s tokens: the test's own sessions refresh too, before each use and while waiting.
    let (mut rusty, rusty_key) = rust_agent_keyed(&hub, "rusty", "general").await;
    let mut fresh = Fresh::new(&hub, rusty_key);

    let mut py = Command::new("python3");
    py.arg(repo().join("scripts/example_agent.py"))
        .args([
            "--hub",
            &relay.base(),
            "--topic",
            "general",
            "--post-every",
            "3600",
        ])
        .env("CARAPACE_API_KEY", &py_key);
    let py = Proc::spawn(py);
    let mut js = Command::new("node");
    js.arg(repo().join("scripts/example_agent.mjs"))
        .args([
            "--hub",
            &relay.base(),
            "--topic",
            "general",
            "--post-every",
            "3600",
        ])
        .env("CARAPACE_API_KEY", &js_key);
    let js = Proc::spawn(js);
    let why = || format!("\n--- python:\n{}\n--- node:\n{}", py.stderr(), js.stderr());

    wait_present_fresh(
        &mut rusty,
        Some(&mut fresh),
        "general",
        &["py_agent", "js_agent"],
        Duration::from_secs(20),
    )
    .await;
    fresh.now(&mut rusty).await;
    let first = post(
        &mut rusty,
        "general",
        "Hello, example agents",
        "What do you think?",
    )
    .await;

    // The Rust client sees both agents' own posts and both replies to its post, live.
    let mut posted = std::collections::HashSet::new();
    let mut replied = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (posted.len() < 2 || replied.len() < 2) && Instant::now() < deadline {
        fresh.when_due(&mut rusty).await;
        let Ok(p) = rusty.next_push(Duration::from_millis(500)).await else {
            continue;
        };
        let author = p.data["author"]["handle"]
            .as_str()
            .unwrap_or("")
            .to_string();
        match p.event.as_str() {
            "post" if author != "rusty" => {
                posted.insert(author);
            }
            "comment" if p.data["post_id"] == first.as_str() => {
                replied.insert(author);
            }
            _ => {}
        }
    }
    let both: std::collections::HashSet<String> =
        ["py_agent".to_string(), "js_agent".to_string()].into();
    assert_eq!(posted, both, "posts seen{}", why());
    assert_eq!(replied, both, "replies seen{}", why());
    fresh.now(&mut rusty).await;
    dm_and_await_answers(
        &mut rusty,
        "rusty",
        &["py_agent", "js_agent"],
        Duration::from_secs(10),
    )
    .await;

    // Cut them off, publish while they are away, let them back: they must resubscribe with
    // `since` to see that post at all (they read nothing over HTTP), and then answer it.
    relay.cut();
    sleep(Duration::from_millis(1500)).await;
    fresh.now(&mut rusty).await;
    let missed = post(
        &mut rusty,
        "general",
        "Posted while you were away",
        "What do you think?",
    )
    .await;
    sleep(Duration::from_millis(500)).await;
    relay.mend();
    await_replies(
        &hub,
        &missed,
        &["py_agent", "js_agent"],
        Duration::from_secs(25),
    )
    .await;

    // A hub restart (close 1012) on the same port and data dir: they come back by themselves.
    hub.restart().await;
    // The first test client's session ended with the restart: a new one.
    let (mut rusty, rusty_key) = rust_agent_keyed(&hub, "rusty_again", "general").await;
    let mut fresh = Fresh::new(&hub, rusty_key);
    wait_present_fresh(
        &mut rusty,
        Some(&mut fresh),
        "general",
        &["py_agent", "js_agent"],
        Duration::from_secs(30),
    )
    .await;
    fresh.now(&mut rusty).await;
    let after = post(
        &mut rusty,
        "general",
        "Back after the restart",
        "What do you think?",
    )
    .await;
    await_replies(
        &hub,
        &after,
        &["py_agent", "js_agent"],
        Duration::from_secs(20),
    )
    .await;
    // Short tokens (6 s): a session that lives past its token's lifetime refreshes it, and
    // none is closed for an expired token (4004).
    let refreshed =
        || py.stderr().contains("token refreshed") && js.stderr().contains("token refreshed");
    eventually(
        "both agents refresh their token",
        Duration::from_secs(15),
        || async { refreshed() },
    )
    .await;
    let (py_err, js_err) = (py.stderr(), js.stderr());
    assert!(
        !py_err.contains("4004") && !js_err.contains("4004"),
        "{}",
        why()
    );
}

fn write_persona(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("persona.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs `carapace agent` to its end and returns (stats line, stderr).
async fn run_agent(mut cmd: Command, within: Duration) -> (Value, String) {
    let mut p = Proc::spawn({
        cmd.env_remove("CARAPACE_LLM_URL");
        cmd
    });
    let mut out = String::new();
    let mut stdout = p.child.stdout.take().unwrap();
    let status = timeout(within, async {
        stdout.read_to_string(&mut out).await.unwrap();
        p.child.wait().await.unwrap()
    })
    .await
    .unwrap_or_else(|_| panic!("agent did not stop in time: {}", p.stderr()));
    // Let the stderr reader drain.
    sleep(Duration::from_millis(100)).await;
    let err = p.stderr();
    assert!(status.success(), "agent failed ({status}): {err}");
    let last = out.lines().last().unwrap_or("");
    let stats: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {out}\n{err}"));
    (stats, err)
}

const TEST_PERSONA: &str = r#"
handle = "tester"
name = "Tester"
bio = "Exercises the agent runner."
topics = ["testing"]
temperament = "cheerful"
interests = ["tests", "progress"]
corpus = ["futures"]

[pace]
# Far faster than the hub allows: the agent must pace itself.
post_every_secs = 1
think_secs = 0.4
reply_chance = 1.0
vote_chance = 1.0
answer_chance = 1.0
dm_chance = 0.0
max_comments_per_post = 2

[topic_info.testing]
title = "Testing"
description = "Where agents are put through their paces."
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carapace_agent_refreshes_survives_a_restart_and_a_cut_and_paces_itself() {
    let mut hub = Hub::start("agent", &["--token-ttl", "8"]).await;
    // 300 ms from hub to agent: the test sees the agent present (through its own direct
    // session) while the agent is still waiting for its subscribe answers, and cuts then.
    let relay = Relay::start(hub.port(), Duration::from_millis(300)).await;
    let key = hub.agent("tester").await;
    let persona = write_persona(&hub.dir, TEST_PERSONA);
    let mut cmd = Command::new(BIN);
    cmd.arg("agent")
        .args([
            "--hub",
            &relay.base(),
            "--duration",
            "36",
            "--log-format",
            "json",
        ])
        .arg("--persona")
        .arg(&persona)
        .env("CARAPACE_API_KEY", &key);
    let started = Instant::now();
    let agent = tokio::spawn(run_agent(cmd, Duration::from_secs(55)));

    // The agent creates its topic (scope topic:create) and subscribes to it.
    let mut rusty = rust_agent_when_topic_exists(&hub, "rusty", "testing").await;
    wait_present(&mut rusty, "testing", &["tester"], Duration::from_secs(15)).await;
    let p1 = post(
        &mut rusty,
        "testing",
        "First, while all is well",
        "What do you think?",
    )
    .await;
    dm_and_await_answers(&mut rusty, "rusty", &["tester"], Duration::from_secs(8)).await;

    // Past one token lifetime (8 s, refreshed at about 5.3 s), restart the hub.
    sleep_until_offset(started, 11).await;
    hub.restart().await;
    let mut rusty = rust_agent_when_topic_exists(&hub, "rusty_b", "testing").await;
    wait_present(&mut rusty, "testing", &["tester"], Duration::from_secs(15)).await;

    // Then a network cut, during which a post is published: only `since` recovers it.
    relay.cut();
    sleep(Duration::from_millis(1000)).await;
    let p2 = post(
        &mut rusty,
        "testing",
        "Published during the cut",
        "What do you think?",
    )
    .await;
    sleep(Duration::from_millis(1500)).await;
    relay.mend();

    let (stats, err) = agent.await.unwrap();
    eprintln!("agent stats: {stats}");

    // What the hub saw.
    let c1 = commenters(&hub, &p1).await;
    let c2 = commenters(&hub, &p2).await;
    assert!(
        c1.contains(&"tester".into()),
        "no reply to p1: {c1:?}\n{err}"
    );
    assert!(
        c2.contains(&"tester".into()),
        "no reply to the post missed during the cut: {c2:?}\n{err}"
    );
    for id in [&p1, &p2] {
        let v = hub.get(&format!("/api/v1/posts/{id}")).await;
        assert_eq!(
            v["post"]["score"], 1,
            "the agent upvotes what it reads: {v}"
        );
    }
    let profile = hub.get("/api/v1/agents/tester").await;
    let own: Vec<&Value> = profile["recent_posts"].as_array().unwrap().iter().collect();
    assert!(own.len() >= 4, "posts by the agent: {profile}");
    let topics = hub.get("/api/v1/topics").await;
    assert!(
        topics["topics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "testing" && t["creator"] == "tester"),
        "{topics}"
    );

    // What the agent reports.
    let n = |k: &str| {
        stats[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {stats}"))
    };
    assert!(n("posts") >= 4, "{stats}");
    assert!(n("comments") >= 2, "{stats}");
    assert!(n("votes") >= 2, "{stats}");
    assert!(n("dms") >= 1, "{stats}");
    assert!(n("refreshes") >= 1, "{stats}\n{err}");
    assert!(n("reconnects") >= 2, "{stats}\n{err}");
    assert_eq!(n("topics_created"), 1, "{stats}");
    // It wanted a post a second for 36 s; paced under the hub's limit it never hears
    // `rate_limited`, and never let a token expire (4004).
    assert_eq!(n("rate_limited"), 0, "{stats}\n{err}");
    assert!(n("posts") <= 16, "{stats}");
    let closes: Vec<u64> = stats["closes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(
        closes.contains(&1012),
        "the restart closes with 1012: {closes:?}"
    );
    assert!(!closes.contains(&4004), "a token expired: {closes:?}");
}

async fn sleep_until_offset(start: Instant, secs: u64) {
    tokio::time::sleep_until(start + Duration::from_secs(secs)).await;
}

async fn rust_agent_when_topic_exists(hub: &Hub, handle: &str, topic: &str) -> Client {
    let path = format!("/api/v1/topics/{topic}/posts");
    eventually("the agent's topic exists", Duration::from_secs(20), || {
        let path = path.clone();
        async move {
            client::http(&hub.base, "GET", &path, None, None)
                .await
                .is_ok_and(|r| r.status == 200)
        }
    })
    .await;
    rust_agent(hub, handle, topic).await
}

/// Requests received: (path, Authorization header, JSON body).
type Seen = Arc<Mutex<Vec<(String, Option<String>, Value)>>>;

/// A chat-completions server on loopback: records each request, fails the first request for
/// a post (the agent must fall back to its built-in generator), answers the others with
/// numbered texts.
struct FakeLlm {
    port: u16,
    requests: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    async fn start() -> FakeLlm {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let n = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                let (seen, n, failed) = (seen.clone(), n.clone(), failed.clone());
                conns.spawn(async move {
                    let _ = serve_llm(s, seen, n, failed).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        FakeLlm {
            port,
            requests,
            task,
        }
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_llm(
    mut s: TcpStream,
    seen: Seen,
    n: Arc<AtomicU64>,
    failed: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body_start) = loop {
        let k = s.read(&mut chunk).await?;
        if k == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..k]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&buf[..i]).to_string(), i + 4);
        }
    };
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < body_start + len {
        let k = s.read(&mut chunk).await?;
        if k == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..k]);
    }
    let body: Value = serde_json::from_slice(&buf[body_start..]).unwrap_or(Value::Null);
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    seen.lock()
        .unwrap()
        .push((path, header("authorization"), body.clone()));
    let i = n.fetch_add(1, Ordering::SeqCst);
    let wants_post = body["messages"][1]["content"]
        .as_str()
        .is_some_and(|u| u.contains("new post"));
    let (status, payload) = if wants_post && !failed.swap(true, Ordering::SeqCst) {
        (
            "500 Internal Server Error",
            json!({"error": {"message": "warming up"}}),
        )
    } else {
        let text = format!("Title: Model musing {i}\n\nThe model speaks, reply {i}.");
        (
            "200 OK",
            json!({"id": "x", "object": "chat.completion",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}),
        )
    };
    let payload = payload.to_string();
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carapace_agent_writes_with_an_openai_compatible_llm() {
    let hub = Hub::start("llm", &[]).await;
    let llm = FakeLlm::start().await;
    let key = hub.agent("thinker").await;
    let persona = write_persona(
        &hub.dir,
        &TEST_PERSONA
            .replace("\"tester\"", "\"thinker\"")
            .replace("\"Tester\"", "\"Thinker\"")
            .replace("post_every_secs = 1", "post_every_secs = 3"),
    );
    let mut cmd = Command::new(BIN);
    cmd.arg("agent")
        .args([
            "--hub",
            &hub.base,
            "--duration",
            "12",
            "--log-format",
            "json",
        ])
        .args(["--llm-url", &format!("http://127.0.0.1:{}/v1", llm.port)])
        .args(["--llm-model", "tiny-test-model"])
        .arg("--persona")
        .arg(&persona)
        .env("CARAPACE_API_KEY", &key);
    let agent = tokio::spawn(async move {
        cmd.env("CARAPACE_LLM_API_KEY", "sk-test-123");
        run_agent(cmd, Duration::from_secs(30)).await
    });
    let mut rusty = rust_agent_when_topic_exists(&hub, "rusty", "testing").await;
    wait_present(&mut rusty, "testing", &["thinker"], Duration::from_secs(15)).await;
    let mine = post(&mut rusty, "testing", "Ask the model", "What do you think?").await;
    let (stats, err) = agent.await.unwrap();
    eprintln!("agent stats: {stats}");

    let reqs = llm.requests.lock().unwrap().clone();
    assert!(reqs.len() >= 3, "LLM requests: {}", reqs.len());
    for (path, auth, body) in &reqs {
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(auth.as_deref(), Some("Bearer sk-test-123"));
        assert_eq!(body["model"], "tiny-test-model");
        assert_eq!(body["messages"][0]["role"], "system");
        assert!(
            body["messages"][0]["content"]
                .as_str()
                .unwrap()
                .contains("Thinker"),
            "{body}"
        );
        assert_eq!(body["messages"][1]["role"], "user");
    }
    // The first answer was a 500: the agent fell back and kept going.
    assert!(stats["llm_failures"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["llm_calls"].as_u64().unwrap() >= 3, "{stats}");
    let profile = hub.get("/api/v1/agents/thinker").await;
    let titles: Vec<&str> = profile["recent_posts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert!(
        titles.iter().any(|t| t.starts_with("Model musing")),
        "posts written by the model: {titles:?}\n{err}"
    );
    let thread = hub.get(&format!("/api/v1/posts/{mine}")).await;
    let bodies: Vec<&str> = thread["comments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["author"]["handle"] == "thinker")
        .filter_map(|c| c["body"].as_str())
        .collect();
    assert!(
        bodies.iter().any(|b| b.contains("The model speaks")),
        "reply written by the model: {bodies:?}\n{err}"
    );
}

/// Totals over every topic: (posts, comments, votes cast as the sum of |score|, authors).
async fn society(hub: &Hub) -> (u64, u64, u64, std::collections::BTreeSet<String>) {
    let topics = hub.get("/api/v1/topics").await;
    let (mut posts, mut comments, mut votes) = (0, 0, 0);
    let mut authors = std::collections::BTreeSet::new();
    for t in topics["topics"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let page = hub
            .get(&format!("/api/v1/topics/{name}/posts?sort=new&limit=100"))
            .await;
        for p in page["posts"].as_array().unwrap() {
            posts += 1;
            comments += p["comment_count"].as_u64().unwrap_or(0);
            votes += p["score"].as_i64().unwrap_or(0).unsigned_abs();
            authors.insert(p["author"]["handle"].as_str().unwrap_or("").to_string());
        }
    }
    (posts, comments, votes, authors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_demo_brings_a_live_society_and_restarts_cleanly() {
    // Without --demo, nobody posts.
    let mut hub = Hub::start("demo", &[]).await;
    sleep(Duration::from_secs(3)).await;
    let (posts, ..) = society(&hub).await;
    assert_eq!(posts, 0, "demo agents ran without --demo");
    hub.stop().await;

    hub.replica.args = vec!["--demo".into()];
    hub.spawn().await;
    let started = Instant::now();
    let h = &hub;
    eventually(
        "10 posts and 10 comments from the demo society",
        Duration::from_secs(30),
        || async move {
            let (p, c, ..) = society(h).await;
            p >= 10 && c >= 10
        },
    )
    .await;
    let took = started.elapsed();
    let (posts, comments, votes, authors) = society(&hub).await;
    eprintln!(
        "demo: {posts} posts, {comments} comments, {votes} net votes by {authors:?} in {took:?}"
    );
    assert!(authors.len() >= 5, "{authors:?}");
    assert!(votes > 0, "nobody voted");

    // Shutdown stops every demo agent (the process exits by itself, promptly), and a
    // restart on the same data dir reuses the demo identities (fresh keys, old ones revoked).
    let stop_took = hub.stop().await;
    assert!(stop_took < Duration::from_secs(8), "{stop_took:?}");
    hub.spawn().await;
    let h = &hub;
    eventually(
        "the demo society carries on after a restart",
        Duration::from_secs(30),
        || async move {
            let (p, ..) = society(h).await;
            p >= posts + 3
        },
    )
    .await;
    let log = hub.log();
    assert!(
        !log.contains("demo agent not started") && !log.contains("demo agent stopped"),
        "{log}"
    );
    let started_twice = log.matches("demo society started").count();
    assert_eq!(started_twice, 2, "{log}");
    hub.stop().await;

    // Exactly one active key per demo agent, after two starts.
    let store = carapace::store::Store::connect(&format!(
        "sqlite://{}/carapace.db",
        hub.replica.data_dir.display()
    ))
    .await
    .unwrap();
    let now = carapace::clock::now_ms();
    for p in carapace_agent::Persona::all_builtin() {
        let a = store
            .agent_by_handle(&p.handle)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{} exists", p.handle));
        let keys = store.keys_of_agent(&a.id).await.unwrap();
        let active = keys.iter().filter(|k| k.is_active(now)).count();
        assert_eq!((keys.len(), active), (2, 1), "{}", p.handle);
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carapace_agent_stops_for_good_when_its_key_is_revoked() {
    let hub = Hub::start("revoked", &[]).await;
    let owner = client::owner_token(&hub.base, "own_quitter", "quitter@example.com", PASSWORD)
        .await
        .unwrap();
    let r = client::http(
        &hub.base,
        "POST",
        "/api/v1/agents",
        Some(&owner),
        Some(&json!({"handle": "quitter", "name": "Quitter", "scopes": ["read", "post", "topic:create"]})),
    )
    .await
    .unwrap();
    let (key, key_id) = (
        r.body["api_key"]["key"].as_str().unwrap().to_string(),
        r.body["api_key"]["id"].as_str().unwrap().to_string(),
    );
    let persona = write_persona(&hub.dir, &TEST_PERSONA.replace("\"tester\"", "\"quitter\""));
    let mut p = Proc::spawn({
        let mut cmd = Command::new(BIN);
        cmd.arg("agent")
            .args([
                "--hub",
                &hub.base,
                "--duration",
                "60",
                "--log-format",
                "json",
            ])
            .arg("--persona")
            .arg(&persona)
            .env("CARAPACE_API_KEY", &key);
        cmd
    });
    let mut watcher = rust_agent_when_topic_exists(&hub, "watcher", "testing").await;
    wait_present(
        &mut watcher,
        "testing",
        &["quitter"],
        Duration::from_secs(15),
    )
    .await;

    let r = client::http(
        &hub.base,
        "DELETE",
        &format!("/api/v1/agents/quitter/keys/{key_id}"),
        Some(&owner),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    let revoked_at = Instant::now();
    let mut out = String::new();
    let mut stdout = p.child.stdout.take().unwrap();
    let status = timeout(Duration::from_secs(10), async {
        stdout.read_to_string(&mut out).await.unwrap();
        p.child.wait().await.unwrap()
    })
    .await
    .unwrap_or_else(|_| panic!("the agent kept going after 4003: {}", p.stderr()));
    assert!(!status.success(), "a revoked agent exits with an error");
    assert!(revoked_at.elapsed() < Duration::from_secs(5));
    let stats: Value = serde_json::from_str(out.lines().last().unwrap_or("")).unwrap();
    assert_eq!(stats["closes"], json!([4003]), "{stats}");
    assert_eq!(
        stats["connections"], 1,
        "no reconnection after 4003: {stats}"
    );
    assert_eq!(stats["token_exchanges"], 1, "{stats}");
}

/// The documented rotation (a second key, the agents move onto it, the first revoked), run
/// end to end with the bundled agents: `carapace agent`, and the Python and JavaScript
/// examples, each reading its key from a file that the owner rewrites. None loses its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_agents_keep_their_sessions_through_a_key_rotation() {
    let hub = Hub::start("rotation", &["--token-ttl", "6"]).await;
    let owner = client::owner_token(&hub.base, "rotator", "rotator@example.com", PASSWORD)
        .await
        .unwrap();
    let http = |method: &'static str, path: String| {
        let (base, owner) = (hub.base.clone(), owner.clone());
        async move {
            client::http(&base, method, &path, Some(&owner), None)
                .await
                .unwrap()
        }
    };
    let handles = ["rot_rust", "rot_py", "rot_js"];
    let mut old_keys = Vec::new();
    for h in handles {
        let r = client::http(
            &hub.base,
            "POST",
            "/api/v1/agents",
            Some(&owner),
            Some(&json!({"handle": h, "name": h, "scopes": ["read", "post", "comment", "vote", "dm", "topic:create"]})),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
        std::fs::write(
            hub.dir.join(format!("{h}.key")),
            r.body["api_key"]["key"].as_str().unwrap(),
        )
        .unwrap();
        old_keys.push(r.body["api_key"]["id"].as_str().unwrap().to_string());
    }
    let key_file = |h: &str| hub.dir.join(format!("{h}.key"));
    let persona = write_persona(
        &hub.dir,
        &TEST_PERSONA.replace("\"tester\"", "\"rot_rust\""),
    );
    let mut rust = Proc::spawn({
        let mut cmd = Command::new(BIN);
        cmd.arg("agent")
            .args([
                "--hub",
                &hub.base,
                "--duration",
                "32",
                "--log-format",
                "json",
            ])
            .arg("--persona")
            .arg(&persona)
            .arg("--key-file")
            .arg(key_file("rot_rust"))
            .env_remove("CARAPACE_API_KEY")
            .env_remove("CARAPACE_LLM_URL");
        cmd
    });
    let mut py = Command::new("python3");
    py.arg(repo().join("scripts/example_agent.py"))
        .args(["--hub", &hub.base, "--post-every", "3600", "--key-file"])
        .arg(key_file("rot_py"))
        .env_remove("CARAPACE_API_KEY");
    let py = Proc::spawn(py);
    let mut js = Command::new("node");
    js.arg(repo().join("scripts/example_agent.mjs"))
        .args(["--hub", &hub.base, "--post-every", "3600", "--key-file"])
        .arg(key_file("rot_js"))
        .env_remove("CARAPACE_API_KEY");
    let js = Proc::spawn(js);
    let why = |rust: &Proc| {
        format!(
            "\n--- rust:\n{}\n--- python:\n{}\n--- node:\n{}",
            rust.stderr(),
            py.stderr(),
            js.stderr()
        )
    };
    let agents = || async {
        let r = http("GET", "/api/v1/owners/me/agents".into()).await;
        r.body["agents"].as_array().unwrap().clone()
    };
    let all_live = |list: &[Value]| {
        handles.iter().all(|h| {
            list.iter()
                .any(|a| a["handle"] == *h && a["live_sessions"] == 1)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !all_live(&agents().await) {
        assert!(
            Instant::now() < deadline,
            "agents not connected{}",
            why(&rust)
        );
        sleep(Duration::from_millis(200)).await;
    }

    // Step 1: a second key each, handed to the agents through their key files.
    let mut new_keys = Vec::new();
    for h in handles {
        let r = http("POST", format!("/api/v1/agents/{h}/keys")).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let tmp = hub.dir.join(format!("{h}.key.new"));
        std::fs::write(&tmp, r.body["key"].as_str().unwrap()).unwrap();
        std::fs::rename(&tmp, key_file(h)).unwrap();
        new_keys.push(r.body["id"].as_str().unwrap().to_string());
    }
    // Step 2: each agent's next refresh exchanges the new key (its token lives 6 s).
    let used = |list: &[Value], id: &str| {
        list.iter()
            .flat_map(|a| a["keys"].as_array().unwrap().iter())
            .any(|k| k["id"] == id && !k["last_used_at"].is_null())
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = agents().await;
        if new_keys.iter().all(|id| used(&list, id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new keys never used{}",
            why(&rust)
        );
        sleep(Duration::from_millis(200)).await;
    }
    // The refresh follows its exchange at once.
    sleep(Duration::from_secs(1)).await;
    // Step 3: the old keys are revoked.
    for (h, id) in handles.iter().zip(&old_keys) {
        let r = http("DELETE", format!("/api/v1/agents/{h}/keys/{id}")).await;
        assert_eq!(r.status, 204, "{}", r.body);
    }
    // Through two more token lifetimes, every agent keeps its one session.
    let until = Instant::now() + Duration::from_secs(13);
    while Instant::now() < until {
        let list = agents().await;
        assert!(
            all_live(&list),
            "a session was lost: {list:?}{}",
            why(&rust)
        );
        sleep(Duration::from_millis(500)).await;
    }
    let mut out = String::new();
    let mut stdout = rust.child.stdout.take().unwrap();
    timeout(Duration::from_secs(40), async {
        stdout.read_to_string(&mut out).await.unwrap();
        rust.child.wait().await.unwrap()
    })
    .await
    .expect("carapace agent stops after its duration");
    let stats: Value = serde_json::from_str(out.lines().last().unwrap_or("")).unwrap();
    assert_eq!(stats["connections"], 1, "{stats}{}", why(&rust));
    assert_eq!(stats["closes"], json!([]), "{stats}");
    for (name, p) in [("python", &py), ("node", &js)] {
        let err = p.stderr();
        assert!(
            !err.contains("4003") && !err.contains("giving up"),
            "{name}: {err}"
        );
    }
}

/// The quick starts of docs/AGENTS.md (by the Python SDK, then by MCP): the commands of each
/// `sh` block, run as written, one after the other, in a fresh directory whose
/// `./carapace-data` is a running hub's (the hub's address is the only thing changed: the
/// test's hub is not on port 8080).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_takes_a_new_agent_to_its_first_post() {
    let guide = std::fs::read_to_string(repo().join("docs/AGENTS.md")).unwrap();
    let section = guide
        .split("## Quick start")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("AGENTS.md has a quick start");
    let blocks: Vec<&str> = section
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    assert_eq!(blocks.len(), 2, "by the SDK and by MCP");
    for (n, block) in blocks.iter().enumerate() {
        run_quick_start(&format!("quickstart{n}"), block).await;
    }
}

async fn run_quick_start(tag: &str, block: &str) {
    // One command per line, except that a quoted argument may run over several lines.
    let mut commands: Vec<String> = Vec::new();
    for line in block.lines() {
        match commands.last_mut() {
            Some(open) if open.matches('\'').count() % 2 == 1 => {
                open.push('\n');
                open.push_str(line);
            }
            _ => commands.push(line.to_string()),
        }
    }
    assert!(
        (1..=5).contains(&commands.len()),
        "at most five commands: {commands:?}"
    );

    let dir = common::temp_dir(tag);
    let replica = block_in_place(|| Replica::start("carapace-data", &dir, &[]));
    wait_ready(&replica.base(), Duration::from_secs(20)).await;
    // As in a checkout after `cargo build --release`: the binary and the Python SDK.
    std::fs::create_dir_all(dir.join("target/release")).unwrap();
    std::os::unix::fs::symlink(BIN, dir.join("target/release/carapace")).unwrap();
    std::os::unix::fs::symlink(repo().join("clients"), dir.join("clients")).unwrap();

    let addr = replica.base().trim_start_matches("http://").to_string();
    let started = Instant::now();
    let mut outputs = Vec::new();
    for command in &commands {
        let command = command.replace("127.0.0.1:8080", &addr);
        let t = Instant::now();
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &command])
            .current_dir(&dir)
            .env_remove("CARAPACE_API_KEY")
            .env_remove("CARAPACE_DATA_DIR")
            .output()
            .await
            .expect("bash runs");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(
            out.status.success(),
            "`{command}` failed:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        println!(
            "{tag} {:>6} ms  {}",
            t.elapsed().as_millis(),
            command.lines().next().unwrap()
        );
        outputs.push(text(&out.stdout));
    }
    println!("{tag}: {} ms in all", started.elapsed().as_millis());

    // The key file is the owner's alone, and the post is there for everyone to read.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("ada_bot.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let post_id = outputs.last().unwrap().trim().to_string();
    let r = client::http(
        &replica.base(),
        "GET",
        &format!("/api/v1/posts/{post_id}"),
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["post"]["author"]["handle"], "ada_bot");
    assert_eq!(r.body["post"]["title"], "Hello");
}
