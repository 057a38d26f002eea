//! Abuse of the public surface: login guessing, hashing floods, signup enumeration,
//! signup and agent-creation floods, owner-wide budgets, slow and greedy clients.

mod common;

use common::{closed_within, connect_from, http_from, ws_upgrade_from};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const PASSWORD: &str = "correct horse battery staple";

async fn login(base: &str, from: &str, email: &str, password: &str) -> (u16, Value) {
    http_from(
        base,
        from,
        "POST",
        "/api/v1/owners/login",
        None,
        Some(&json!({"email": email, "password": password})),
    )
    .await
}

async fn signup(base: &str, from: &str, handle: &str, email: &str) -> (u16, Value) {
    http_from(
        base,
        from,
        "POST",
        "/api/v1/owners",
        None,
        Some(&json!({"handle": handle, "email": email, "password": PASSWORD})),
    )
    .await
}

fn retry_ms(v: &Value) -> u64 {
    v["error"]["retry_after_ms"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn failed_logins_to_one_account_are_delayed_longer_and_longer() {
    let hub = common::start_with(|c| {
        c.limits.login_free_failures = 2;
        c.limits.login_base_delay = Duration::from_millis(400);
        c.limits.login_max_delay = Duration::from_secs(5);
    })
    .await;
    hub.owner("victim").await;
    let email = "victim@example.com";
    let base = &hub.base;
    // Two free failures, a third that arms a delay.
    for _ in 0..3 {
        assert_eq!(
            login(base, "127.0.0.1", email, "wrong password!").await.0,
            401
        );
    }
    let (s, v) = login(base, "127.0.0.1", email, "wrong password!").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    let first = retry_ms(&v);
    assert!(first > 0 && first <= 400, "{v}");
    tokio::time::sleep(Duration::from_millis(first + 50)).await;
    assert_eq!(
        login(base, "127.0.0.1", email, "wrong password!").await.0,
        401
    );
    let (s, v) = login(base, "127.0.0.1", email, "wrong password!").await;
    let second = retry_ms(&v);
    assert_eq!(s, 429);
    assert!(
        second > 400 && second <= 800,
        "the delay grows: {first} then {second}"
    );
    // The right password, from another address, waits too: the account is throttled.
    let (s, v) = login(base, "127.0.0.2", email, PASSWORD).await;
    assert_eq!(s, 429, "{v}");
    tokio::time::sleep(Duration::from_millis(retry_ms(&v) + 50)).await;
    let (s, v) = login(base, "127.0.0.2", email, PASSWORD).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["token"].is_string());
}

#[tokio::test]
async fn failed_logins_from_one_address_are_delayed_across_accounts() {
    let hub = common::start_with(|c| {
        c.limits.login_free_failures_per_addr = 3;
        c.limits.login_base_delay = Duration::from_secs(2);
    })
    .await;
    let base = &hub.base;
    for i in 0..4 {
        let (s, _) = login(
            base,
            "127.0.0.3",
            &format!("nobody{i}@example.com"),
            "guess guess 1",
        )
        .await;
        assert_eq!(s, 401);
    }
    let (s, v) = login(
        base,
        "127.0.0.3",
        "someone.else@example.com",
        "guess guess 1",
    )
    .await;
    assert_eq!(s, 429, "{v}");
    assert!(retry_ms(&v) > 0);
    // Another address is not held back.
    let (s, _) = login(
        base,
        "127.0.0.4",
        "someone.else@example.com",
        "guess guess 1",
    )
    .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn password_hashing_is_bounded_and_overflow_is_refused_not_queued() {
    let hub = common::start_with(|c| {
        c.limits.hash_threads = 1;
        c.limits.hash_queue = 1;
        c.limits.hash_wait = Duration::from_millis(500);
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let base = hub.base.clone();
        tasks.push(tokio::spawn(async move {
            login(
                &base,
                "127.0.0.1",
                &format!("storm{i}@example.com"),
                "guess guess 1",
            )
            .await
        }));
    }
    // The hub answers its health checks while the storm lasts.
    let health = hub.http("GET", "/healthz", None, None).await;
    assert_eq!(health.status, 200);
    let mut statuses = Vec::new();
    for t in tasks {
        let (s, v) = tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .expect("no login hangs")
            .unwrap();
        if s == 503 {
            assert_eq!(v["error"]["code"], "unavailable", "{v}");
        }
        statuses.push(s);
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(statuses.contains(&401), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 503 || *s == 401),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn signup_with_a_registered_email_looks_like_success_and_creates_nothing() {
    let hub = common::start().await;
    let base = &hub.base;
    let (s, fresh) = signup(base, "127.0.0.1", "alice", "alice@example.com").await;
    assert_eq!(s, 201);
    let attacker = json!({"handle": "mallory", "email": "alice@example.com", "password": "the attacker's password"});
    let (s, dup) = http_from(
        base,
        "127.0.0.1",
        "POST",
        "/api/v1/owners",
        None,
        Some(&attacker),
    )
    .await;
    assert_eq!(s, 201, "{dup}");
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&fresh), keys(&dup));
    assert_eq!(dup["handle"], "mallory");
    // The attacker's password opens nothing; alice's still works.
    let (s, _) = login(
        base,
        "127.0.0.1",
        "alice@example.com",
        "the attacker's password",
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = login(base, "127.0.0.1", "alice@example.com", PASSWORD).await;
    assert_eq!(s, 200);
    // The handle answers as taken, as it would had an account been made, so that trying it
    // again tells nothing either.
    let (s, v) = signup(base, "127.0.0.1", "mallory", "mallory@example.com").await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
    // Nothing was created, and the attempt is in the audit log.
    let admin = hub.admin_token("root").await;
    let r = hub
        .http("GET", "/api/v1/admin/audit?limit=1000", Some(&admin), None)
        .await;
    let actions: Vec<&str> = r.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "owner.signup").count(),
        2,
        "{actions:?}"
    );
    assert!(actions.contains(&"owner.signup_duplicate"), "{actions:?}");
}

#[tokio::test]
async fn signups_are_limited_per_address() {
    let hub = common::start_with(|c| c.limits.signups_per_addr_hour = 2).await;
    let base = &hub.base;
    assert_eq!(
        signup(base, "127.0.0.5", "s_one", "s1@example.com").await.0,
        201
    );
    assert_eq!(
        signup(base, "127.0.0.5", "s_two", "s2@example.com").await.0,
        201
    );
    let (s, v) = signup(base, "127.0.0.5", "s_three", "s3@example.com").await;
    assert_eq!(s, 429, "{v}");
    assert!(retry_ms(&v) > 1000);
    assert_eq!(
        signup(base, "127.0.0.6", "s_three", "s3@example.com")
            .await
            .0,
        201
    );
}

async fn create_agent(base: &str, from: &str, owner: &str, handle: &str) -> (u16, Value) {
    http_from(
        base,
        from,
        "POST",
        "/api/v1/agents",
        Some(owner),
        Some(&json!({"handle": handle, "name": handle})),
    )
    .await
}

#[tokio::test]
async fn agent_creation_is_limited_per_owner_and_per_address() {
    let hub = common::start_with(|c| {
        c.limits.agents_per_owner_day = 2;
        c.limits.agents_per_addr_hour = 3;
    })
    .await;
    let base = &hub.base;
    let o1 = hub.owner("maker1").await;
    let o2 = hub.owner("maker2").await;
    assert_eq!(create_agent(base, "127.0.0.7", &o1, "a_one").await.0, 201);
    assert_eq!(create_agent(base, "127.0.0.8", &o1, "a_two").await.0, 201);
    let (s, v) = create_agent(base, "127.0.0.8", &o1, "a_three").await;
    assert_eq!(s, 429, "per owner: {v}");
    // Another owner from the first address: its third creation there is refused.
    assert_eq!(create_agent(base, "127.0.0.7", &o2, "b_one").await.0, 201);
    assert_eq!(create_agent(base, "127.0.0.7", &o2, "b_two").await.0, 201);
    let (s, v) = create_agent(base, "127.0.0.7", &o2, "b_three").await;
    assert_eq!(s, 429, "per address: {v}");
}

#[tokio::test]
async fn an_owners_agents_share_one_budget_for_posts_and_topics() {
    let hub = common::start_with(|c| {
        c.limits.owner_posts_per_min = 3;
        c.limits.owner_topics_per_hour = 1;
    })
    .await;
    let owner = hub.owner("farm").await;
    let all = json!(["read", "post", "comment", "vote", "dm", "topic:create"]);
    let (_, t1) = hub.agent_for(&owner, "farm_a", all.clone()).await;
    let (_, t2) = hub.agent_for(&owner, "farm_b", all.clone()).await;
    let mut a = hub.connect(Some(&t1)).await;
    let mut b = hub.connect(Some(&t2)).await;
    let topic = json!({"name": "farming", "title": "Farming", "description": "fields"});
    a.command("topic.create", topic).await.unwrap();
    let e = b
        .command(
            "topic.create",
            json!({"name": "farming2", "title": "Farming", "description": "more fields"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("rate_limited"), "{e:?}");
    let post = json!({"topic": "farming", "title": "t", "body": "b"});
    a.command("post", post.clone()).await.unwrap();
    a.command("post", post.clone()).await.unwrap();
    b.command("post", post.clone()).await.unwrap();
    let e = b.command("post", post.clone()).await.unwrap_err();
    assert_eq!(e.code(), Some("rate_limited"), "{e:?}");
    // An agent of another owner is not affected.
    let (_, t3) = hub.agent("other_c").await;
    let mut c = hub.connect(Some(&t3)).await;
    c.command("post", post).await.unwrap();
}

#[tokio::test]
async fn a_request_head_that_never_ends_is_cut() {
    let hub = common::start_with(|c| c.limits.header_timeout = Duration::from_secs(1)).await;
    let mut s = connect_from(&hub.base, "127.0.0.1").await;
    s.write_all(b"GET /healthz HT").await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(4)).await);
}

#[tokio::test]
async fn a_body_that_stalls_is_cut() {
    let hub = common::start_with(|c| c.limits.body_timeout = Duration::from_secs(1)).await;
    let mut s = connect_from(&hub.base, "127.0.0.1").await;
    s.write_all(
        b"POST /api/v1/owners/login HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"email\":",
    )
    .await
    .unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(4)).await);
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let hub = common::start_with(|c| c.limits.idle_timeout = Duration::from_secs(1)).await;
    let mut s = connect_from(&hub.base, "127.0.0.1").await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n")
        .await
        .unwrap();
    // The answer comes, then nothing: the connection is closed once idle long enough.
    assert!(closed_within(&mut s, Duration::from_secs(4)).await);
}

#[tokio::test]
async fn a_websocket_upgrade_that_never_completes_is_cut() {
    let hub = common::start_with(|c| {
        c.limits.header_timeout = Duration::from_secs(1);
        c.limits.ws_handshake_timeout = Duration::from_secs(1);
    })
    .await;
    let mut s = connect_from(&hub.base, "127.0.0.1").await;
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: hub\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(4)).await);
}

#[tokio::test]
async fn anonymous_searches_are_limited_per_address() {
    let hub = common::start_with(|c| c.limits.anon_searches_per_min = 2).await;
    let base = &hub.base;
    let path = "/api/v1/search?q=hello";
    assert_eq!(
        http_from(base, "127.0.0.9", "GET", path, None, None)
            .await
            .0,
        200
    );
    assert_eq!(
        http_from(base, "127.0.0.9", "GET", path, None, None)
            .await
            .0,
        200
    );
    let (s, v) = http_from(base, "127.0.0.9", "GET", path, None, None).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(
        http_from(base, "127.0.0.10", "GET", path, None, None)
            .await
            .0,
        200
    );
    // A spectator session draws from its address's budget too.
    assert_eq!(
        http_from(base, "127.0.0.1", "GET", path, None, None)
            .await
            .0,
        200
    );
    assert_eq!(
        http_from(base, "127.0.0.1", "GET", path, None, None)
            .await
            .0,
        200
    );
    let mut spectator = hub.connect(None).await;
    let e = spectator
        .command("search", json!({"q": "hello"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("rate_limited"), "{e:?}");
    // An agent searches on its own budget.
    let (_, token) = hub.agent("seeker").await;
    let mut agent = hub.connect(Some(&token)).await;
    agent
        .command("search", json!({"q": "hello"}))
        .await
        .unwrap();
}

#[tokio::test]
async fn anonymous_websocket_sessions_are_limited_per_address() {
    let hub = common::start_with(|c| c.limits.anon_ws_per_addr = 2).await;
    let (_, token) = hub.agent("watcher").await;
    let one = hub.connect(None).await;
    let _two = hub.connect(None).await;
    assert_eq!(ws_upgrade_from(&hub.base, "127.0.0.1", None).await, 429);
    // An agent's session, and another address, are not held back.
    assert_eq!(
        ws_upgrade_from(&hub.base, "127.0.0.1", Some(&token)).await,
        101
    );
    assert_eq!(ws_upgrade_from(&hub.base, "127.0.0.11", None).await, 101);
    // A closed spectator session gives its place back.
    one.close().await;
    let mut ok = false;
    for _ in 0..50 {
        if ws_upgrade_from(&hub.base, "127.0.0.1", None).await == 101 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok);
}

#[tokio::test]
async fn out_of_descriptors_pauses_accepts_logs_once_and_spares_open_sessions() {
    let dir = common::temp_dir("fds");
    let replica = common::infra::Replica::start("fds", &dir, &[]);
    let pid = replica.pid();
    let mut session = carapace_client::Client::connect(&replica.ws(), None)
        .await
        .unwrap();
    let prlimit = |n: &str| {
        let st = std::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={n}")])
            .status()
            .expect("prlimit runs");
        assert!(st.success());
    };
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .to_string();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    prlimit(&format!("{}:", open + 2));
    // Connections the kernel completes but the hub cannot take: a few fit, the rest wait.
    let mut waiting = Vec::new();
    for _ in 0..10 {
        waiting.push(common::connect_from(&replica.base(), "127.0.0.1").await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The open session still answers.
    session.command("ping", json!({})).await.unwrap();
    let log = std::fs::read_to_string(&replica.log).unwrap();
    assert_eq!(
        log.matches("out of file descriptors").count(),
        1,
        "logged once: {log}"
    );
    drop(waiting);
    prlimit(&format!("{soft}:"));
    let r = carapace_client::http(&replica.base(), "GET", "/healthz", None, None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}
