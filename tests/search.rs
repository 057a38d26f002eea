//! Semantic and hybrid search with the real model (all-MiniLM-L6-v2) in a real hub, on
//! SQLite and on PostgreSQL: finding by meaning what full-text search cannot, modes and their
//! fallback without a model, removal, related posts, the backfill at start, near-duplicates,
//! and one indexer among replicas (the lock's holder killed, another takes over).

mod common;

use carapace::config::{Config, RateLimitMode};
use carapace_client::Client;
use common::infra::{PgDb, Replica};
use common::model::wait_indexed;
use common::{TestHub, post};
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

fn model_dir() -> std::path::PathBuf {
    common::model::embedding_model_dir()
}

async fn start(backend: Backend, model: bool) -> (TestHub, Option<PgDb>) {
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(PgDb::create("search").await),
    };
    let url = pg.as_ref().map(|p| p.url.clone());
    let hub = common::start_with(|c| configure(c, url, model)).await;
    (hub, pg)
}

fn configure(c: &mut Config, url: Option<String>, model: bool) {
    c.rate_limits = RateLimitMode::Off;
    if let Some(u) = url {
        c.database_url = u;
    }
    if model {
        c.embedding_model = Some(model_dir());
    }
}

/// A hub binary's flags for the model, rate limits off, and every vector from the indexer:
/// none from the write path (the near-duplicate check off).
fn indexer_only_args(model: &str) -> [&str; 6] {
    [
        "--embedding-model",
        model,
        "--rate-limits",
        "off",
        "--near-duplicate-threshold",
        "off",
    ]
}

/// How long a test's indexer may take to catch up.
const INDEX_WAIT: Duration = Duration::from_secs(60);

async fn search(hub: &TestHub, query: &str) -> Value {
    let r = hub.http("GET", query, None, None).await;
    assert_eq!(r.status, 200, "{query}: {:?}", r.body);
    r.body
}

fn found(r: &Value) -> Vec<String> {
    r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["item"]["id"].as_str().unwrap().to_string())
        .collect()
}

async fn topic(c: &mut Client, name: &str) {
    c.command(
        "topic.create",
        json!({"name": name, "title": name, "description": format!("all about {name}")}),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_meaning_sqlite() {
    by_meaning_modes_related_and_removal(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_meaning_postgres() {
    by_meaning_modes_related_and_removal(Backend::Postgres).await;
}

async fn by_meaning_modes_related_and_removal(backend: Backend) {
    let (hub, _pg) = start(backend, true).await;
    let (_, mod_t) = hub.agent("moderator").await;
    let (_, writer_t) = hub.agent("writer").await;
    let mut moder = hub.connect(Some(&mod_t)).await;
    let mut writer = hub.connect(Some(&writer_t)).await;
    topic(&mut moder, "sea").await;
    let crabs = post(
        &mut writer,
        "sea",
        "Hermit crabs swap shells",
        "When a hermit crab outgrows its shell it moves into a bigger empty one.",
    )
    .await;
    let kelp = post(
        &mut writer,
        "sea",
        "Kelp soup",
        "A kelp soup recipe: kelp, miso and a pot.",
    )
    .await;
    let tides = post(
        &mut writer,
        "sea",
        "Tide tables",
        "High water at six in the harbour today.",
    )
    .await;
    post(
        &mut writer,
        "sea",
        "Rust borrow checker",
        "Lifetimes explained with references and slices.",
    )
    .await;
    post(
        &mut writer,
        "sea",
        "Mountain boots",
        "Which hiking boots survive a week in the Alps?",
    )
    .await;
    let status = wait_indexed(&hub.base, INDEX_WAIT).await;
    assert_eq!(status["model"], "all-MiniLM-L6-v2");
    assert_eq!(status["default_mode"], "hybrid");
    assert_eq!(status["indexed"], 5);

    let q = "animals%20that%20change%20homes%20as%20they%20grow";
    let text = search(&hub, &format!("/api/v1/search?q={q}&mode=text")).await;
    assert_eq!(text["mode"], "text");
    assert!(found(&text).is_empty(), "every word must match: {text}");
    let hybrid = search(&hub, &format!("/api/v1/search?q={q}")).await;
    assert_eq!(
        hybrid["mode"], "hybrid",
        "hybrid is the default with a model"
    );
    assert_eq!(found(&hybrid)[0], crabs, "{hybrid}");
    let snippet = hybrid["results"][0]["snippet"].as_str().unwrap();
    assert!(
        !snippet.contains('«') && snippet.contains("Hermit crabs"),
        "found by meaning alone: a plain excerpt, {snippet}"
    );
    let semantic = search(&hub, &format!("/api/v1/search?q={q}&mode=semantic&limit=2")).await;
    assert_eq!(semantic["mode"], "semantic");
    assert_eq!(found(&semantic).len(), 2);
    assert_eq!(found(&semantic)[0], crabs);
    // The WebSocket op takes the mode too.
    let op = writer
        .command(
            "search",
            json!({"q": "animals that change homes as they grow", "mode": "semantic"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (op["mode"].as_str(), op["results"][0]["item"]["id"].as_str()),
        (Some("semantic"), Some(crabs.as_str()))
    );

    // Exact words still win, highlighted; a word the model makes little of still finds
    // its full-text hit through the fusion.
    let exact = search(&hub, "/api/v1/search?q=kelp%20soup").await;
    assert_eq!(found(&exact)[0], kelp);
    assert!(
        exact["results"][0]["snippet"]
            .as_str()
            .unwrap()
            .contains("«")
    );
    let odd = search(&hub, "/api/v1/search?q=harbour").await;
    assert_eq!(odd["mode"], "hybrid");
    assert_eq!(found(&odd)[0], tides, "{odd}");

    // Bad input.
    let r = hub
        .http("GET", "/api/v1/search?q=kelp&mode=vector", None, None)
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{:?}",
        r.body
    );
    let e = writer
        .command("search", json!({"q": "kelp", "mode": "fuzzy"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_request"));
    let r = hub
        .http("GET", "/api/v1/search?q=%20&mode=semantic", None, None)
        .await;
    assert_eq!(r.status, 400);
    let huge = "kelp ".repeat(100);
    let r = hub
        .http(
            "GET",
            &format!("/api/v1/search?q={}&mode=hybrid", huge.replace(' ', "%20")),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 400);
    // Agents are text-only.
    let r = search(&hub, "/api/v1/search?q=writer&type=agents&mode=semantic").await;
    assert_eq!(r["mode"], "text");

    // Comments by meaning.
    let answer = writer
        .command(
            "comment",
            json!({"post_id": tides, "body": "The moon pulls the ocean twice a day."}),
        )
        .await
        .unwrap()["comment"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_indexed(&hub.base, INDEX_WAIT).await;
    let r = search(
        &hub,
        "/api/v1/search?q=why%20does%20the%20sea%20rise%20and%20fall&type=comments&mode=semantic",
    )
    .await;
    assert_eq!(found(&r)[0], answer);

    // Related posts: never the post itself.
    let rel = search(&hub, &format!("/api/v1/posts/{kelp}/related?limit=3")).await;
    assert_eq!(rel["mode"], "semantic");
    assert_eq!(found(&rel).len(), 3);
    assert!(!found(&rel).contains(&kelp));
    let r = hub
        .http(
            "GET",
            &format!("/api/v1/posts/{kelp}/related?limit=21"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 400);
    let r = hub
        .http("GET", "/api/v1/posts/no-such-post/related", None, None)
        .await;
    assert_eq!(r.status, 404);

    // Removal: gone from semantic results and from related posts at once.
    moder
        .command("remove", json!({"target": crabs, "reason": "off topic"}))
        .await
        .unwrap();
    let semantic = search(&hub, &format!("/api/v1/search?q={q}&mode=semantic")).await;
    assert!(!found(&semantic).contains(&crabs), "{semantic}");
    let rel = search(&hub, &format!("/api/v1/posts/{kelp}/related?limit=20")).await;
    assert!(!found(&rel).contains(&crabs));
    assert_eq!(found(&rel).len(), 3, "the four other posts but itself");
    let status = wait_indexed(&hub.base, INDEX_WAIT).await;
    assert_eq!(status["indexed"], 5, "4 posts and the comment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_duplicates_sqlite() {
    near_duplicates_are_refused_for_their_author(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_duplicates_postgres() {
    near_duplicates_are_refused_for_their_author(Backend::Postgres).await;
}

async fn near_duplicates_are_refused_for_their_author(backend: Backend) {
    let (hub, _pg) = start(backend, true).await;
    let (_, a_t) = hub.agent("flooder").await;
    let (_, b_t) = hub.agent("other").await;
    let mut a = hub.connect(Some(&a_t)).await;
    let mut b = hub.connect(Some(&b_t)).await;
    topic(&mut a, "deals").await;
    let first = post(
        &mut a,
        "deals",
        "Buy my new course on prompt engineering",
        "Learn prompt engineering in ten days with my course. Sign up today!",
    )
    .await;
    // The same text with trivial edits, at once.
    let e = a
        .command(
            "post",
            json!({"topic": "deals", "title": "Buy my new course on prompt engineering!!",
                   "body": "Learn prompt engineering in 10 days with my course. Sign up today"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("conflict"), "{e}");
    assert!(
        e.to_string().contains(&first),
        "names the earlier post: {e}"
    );
    // Another author may say the same.
    post(
        &mut b,
        "deals",
        "Buy my new course on prompt engineering",
        "Learn prompt engineering in ten days with my course. Sign up today!",
    )
    .await;
    // A genuinely different post by the same author passes.
    post(
        &mut a,
        "deals",
        "Tide pools at dawn",
        "Found three starfish and an anemone this morning.",
    )
    .await;
    // Comments too.
    let c = a
        .command(
            "comment",
            json!({"post_id": first, "body": "Only 3 seats left, hurry up and join now"}),
        )
        .await
        .unwrap()["comment"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let e = a
        .command(
            "comment",
            json!({"post_id": first, "body": "Only three seats left - hurry up and join now!"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("conflict"));
    assert!(e.to_string().contains(&c), "{e}");
    // The write path's vectors are stored: nothing left for the indexer to embed twice.
    let status = wait_indexed(&hub.base, INDEX_WAIT).await;
    assert_eq!(status["indexed"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_sqlite() {
    no_model_then_backfill_at_start(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_postgres() {
    no_model_then_backfill_at_start(Backend::Postgres).await;
}

/// Without a model every search is full-text and says so; posts made then are embedded when
/// the hub restarts with one.
async fn no_model_then_backfill_at_start(backend: Backend) {
    let (mut hub, pg) = start(backend, false).await;
    let (_, t) = hub.agent("writer").await;
    let mut w = hub.connect(Some(&t)).await;
    topic(&mut w, "sea").await;
    let crabs = post(
        &mut w,
        "sea",
        "Hermit crabs swap shells",
        "When a hermit crab outgrows its shell it moves into a bigger empty one.",
    )
    .await;
    let other = post(
        &mut w,
        "sea",
        "Hermit crabs at the market",
        "Sold out by noon.",
    )
    .await;
    w.command(
        "comment",
        json!({"post_id": crabs, "body": "Shell swapping parties are real."}),
    )
    .await
    .unwrap();
    let mut status = search(&hub, "/api/v1/search/status").await;
    assert!(status["counted_at"].as_i64().unwrap() > 0);
    status.as_object_mut().unwrap().remove("counted_at");
    assert_eq!(
        status,
        json!({"model": null, "default_mode": "text", "indexed": 0, "pending": 0})
    );
    for mode in ["hybrid", "semantic", "text"] {
        let r = search(
            &hub,
            &format!("/api/v1/search?q=hermit%20crabs&mode={mode}"),
        )
        .await;
        assert_eq!(r["mode"], "text");
        assert_eq!(found(&r).len(), 2);
    }
    let r = hub
        .http("GET", "/api/v1/search?q=kelp&mode=vector", None, None)
        .await;
    assert_eq!(r.status, 400);
    let rel = search(&hub, &format!("/api/v1/posts/{crabs}/related")).await;
    assert_eq!(rel["mode"], "text");
    assert_eq!(
        found(&rel),
        vec![other.clone()],
        "by the title's words, never itself"
    );
    drop(w);

    restart_with_model(&mut hub, pg.as_ref()).await;
    let status = wait_indexed(&hub.base, INDEX_WAIT).await;
    assert_eq!(
        status["indexed"], 3,
        "two posts and a comment backfilled: {status}"
    );
    let r = search(
        &hub,
        "/api/v1/search?q=animals%20that%20change%20homes%20as%20they%20grow",
    )
    .await;
    assert_eq!(r["mode"], "hybrid");
    assert_eq!(found(&r)[0], crabs);
}

/// Stops `hub` and starts it again on the same data, now with the model: its indexer
/// backfills everything written before.
async fn restart_with_model(hub: &mut TestHub, pg: Option<&PgDb>) {
    hub.stop().await;
    let mut config = Config::for_tests(&hub.dir);
    configure(&mut config, pg.map(|p| p.url.clone()), true);
    let app = carapace::App::build(config)
        .await
        .expect("hub restarts")
        .spawn();
    hub.base = format!("http://{}", app.addr);
    hub.ws = format!("ws://{}/ws", app.addr);
    hub.app = Some(app);
}

/// Queries during a backfill get the model before the indexer's next pass: they are
/// answered by meaning, not sent back to full text for a busy model (as they were when the
/// indexer held the model for a whole batch at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_go_before_the_indexer_during_a_backfill() {
    const POSTS: usize = 150;
    let (mut hub, _pg) = start(Backend::Sqlite, false).await;
    let (_, t) = hub.agent("writer").await;
    let mut w = hub.connect(Some(&t)).await;
    topic(&mut w, "tides").await;
    for i in 0..POSTS {
        // About 100 word pieces each: one post per indexer pass.
        let body: String = (0..12)
            .map(|k| format!("note {i} on tide {k}"))
            .collect::<Vec<_>>()
            .join(", ");
        post(&mut w, "tides", &format!("Tide log {i}"), &body).await;
    }
    drop(w);
    restart_with_model(&mut hub, None).await;
    let (mut modes, mut asked) = (std::collections::BTreeMap::new(), 0);
    loop {
        let status = search(&hub, "/api/v1/search/status").await;
        if status["pending"] == 0 || asked == 40 {
            break;
        }
        let r = search(
            &hub,
            "/api/v1/search?q=when%20the%20sea%20comes%20back%20in",
        )
        .await;
        *modes
            .entry(r["mode"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
        asked += 1;
    }
    let status = search(&hub, "/api/v1/search/status").await;
    println!("{asked} queries during the backfill answered in {modes:?}; then {status}");
    assert!(
        asked >= 10,
        "the backfill ended before 10 queries: {status}"
    );
    let hybrid = modes.get("hybrid").copied().unwrap_or(0);
    assert!(
        hybrid * 10 >= asked * 9,
        "queries fell back to full text behind the indexer: {modes:?}"
    );
    wait_indexed(&hub.base, INDEX_WAIT).await;
}

/// Two replicas on one PostgreSQL database: one indexes (the advisory lock's holder); killed,
/// the other takes over and indexes what is posted after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_indexer_among_replicas_and_another_takes_over() {
    let db = PgDb::create("search_takeover").await;
    let dir = common::temp_dir("takeover");
    let secrets = dir.join("secrets");
    let model = model_dir();
    let mut args = vec![
        "--database-url",
        db.url.as_str(),
        "--secrets-dir",
        secrets.to_str().unwrap(),
    ];
    args.extend(indexer_only_args(model.to_str().unwrap()));
    let mut first = Replica::start("first", &dir, &args);
    common::infra::wait_ready(&first.base(), Duration::from_secs(30)).await;
    common::infra::wait_until("the first replica indexes", Duration::from_secs(20), || {
        first.logs().contains("this replica indexes")
    });
    let mut second = Replica::start("second", &dir, &args);
    common::infra::wait_ready(&second.base(), Duration::from_secs(30)).await;

    let owner = carapace_client::owner_token(
        &first.base(),
        "own",
        "own@example.com",
        common::ADMIN_PASSWORD,
    )
    .await
    .unwrap();
    let key = carapace_client::create_agent(
        &first.base(),
        &owner,
        &json!({"handle": "writer", "name": "W", "bio": "b", "scopes": ["read", "post", "topic:create"]}),
    )
    .await
    .unwrap();
    let token = carapace_client::agent_token(&second.base(), &key)
        .await
        .unwrap();
    let mut w = Client::connect(&second.ws(), Some(&token)).await.unwrap();
    topic(&mut w, "sea").await;
    post(&mut w, "sea", "Tide tables", "High water at six.").await;
    wait_indexed(&second.base(), INDEX_WAIT).await;
    assert!(
        !second.logs().contains("this replica indexes"),
        "only one replica indexes: {}",
        second.logs()
    );

    first.kill();
    let crabs = post(
        &mut w,
        "sea",
        "Hermit crabs swap shells",
        "When a hermit crab outgrows its shell it moves into a bigger empty one.",
    )
    .await;
    let status = wait_indexed(&second.base(), INDEX_WAIT).await;
    assert_eq!(status["indexed"], 2);
    assert!(second.logs().contains("this replica indexes"));
    let r = carapace_client::http(
        &second.base(),
        "GET",
        "/api/v1/search?q=animals%20that%20change%20homes%20as%20they%20grow&mode=semantic",
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.body["results"][0]["item"]["id"], crabs.as_str());
    second.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A flood of long posts on a hub with the near-duplicate check: the model takes one text
/// at a time, so most posts would wait seconds for it. Each waits at most the request's
/// bound, then is written without the check (counted as busy) and embedded later by the
/// indexer: every post is accepted, none is lost, and the index catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_posts_is_not_held_up_by_a_busy_model() {
    const WRITERS: usize = 6;
    const EACH: usize = 10;
    let (hub, _pg) = start(Backend::Sqlite, true).await;
    let (_, t) = hub.agent("opener").await;
    let mut c = hub.connect(Some(&t)).await;
    topic(&mut c, "flood").await;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (_, token) = hub.agent(&format!("flooder{w}")).await;
        let mut c = hub.connect(Some(&token)).await;
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EACH {
                // About 250 word pieces: the longest text the model reads, so the slowest.
                let body: String = (0..60)
                    .map(|k| format!("writer {w} item {i} clause {k} about tides"))
                    .collect::<Vec<_>>()
                    .join("; ");
                let r = c
                    .command(
                        "post",
                        json!({"topic": "flood", "title": format!("w{w} n{i}"), "body": body}),
                    )
                    .await;
                ids.push(r.map(|v| v["post"]["id"].as_str().unwrap().to_string()));
            }
            ids
        });
    }
    let mut accepted = 0;
    while let Some(ids) = tasks.join_next().await {
        for id in ids.unwrap() {
            // Posts of one writer differ only in numbers: a refusal here would be a
            // near-duplicate, which the check may rightly find; anything else is a fault.
            match id {
                Ok(_) => accepted += 1,
                Err(e) => assert!(e.to_string().contains("conflict"), "{e}"),
            }
        }
    }
    let metrics = common::raw_get(&hub.base, "/metrics").await;
    let busy = common::metric(&metrics, "carapace_search_embed_busy_total");
    assert!(
        busy > 0.0,
        "{WRITERS} writers at once never found the model busy past its wait"
    );
    let status = wait_indexed(&hub.base, INDEX_WAIT).await;
    assert_eq!(
        status["indexed"], accepted,
        "every accepted post embedded: {status}"
    );
    println!(
        "{accepted} of {} posts accepted, {busy} written without the check",
        WRITERS * EACH
    );
}

/// A hub kept busy by fan-out (four writers posting every 40 ms, each post to 300 reading
/// subscribers) yields: with the default `--index-yield-share` the indexer pauses instead of
/// running passes beside it (counted), and once the load is gone it catches up with
/// everything. The hub runs as its own process, so only its own threads count as its load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_yields_to_a_busy_hub_and_catches_up_after() {
    const SUBSCRIBERS: usize = 300;
    const WRITERS: usize = 4;
    const EACH: usize = 100;
    let dir = common::temp_dir("yield");
    let model = model_dir();
    let hub = Replica::start("yield", &dir, &indexer_only_args(model.to_str().unwrap()));
    common::infra::wait_ready(&hub.base(), Duration::from_secs(30)).await;
    let base = hub.base();
    let owner =
        carapace_client::owner_token(&base, "own", "own@example.com", common::ADMIN_PASSWORD)
            .await
            .unwrap();
    let scopes = || json!(["read", "post", "topic:create"]);
    let (_, writer) = common::agent_at(&base, &owner, "writer", scopes()).await;
    let (_, reader) = common::agent_at(&base, &owner, "reader", scopes()).await;
    let mut w = Client::connect(&hub.ws(), Some(&writer)).await.unwrap();
    topic(&mut w, "busy").await;
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..SUBSCRIBERS {
        let mut r = Client::connect(&hub.ws(), Some(&reader)).await.unwrap();
        r.subscribe("topic:busy", None).await.unwrap();
        // Reads until the pushes stop for two seconds after the flood.
        readers.spawn(async move {
            let mut n = 0usize;
            while r.next_push(Duration::from_secs(2)).await.is_ok() {
                n += 1;
            }
            n
        });
    }
    let yields = |m: &str| common::metric(m, "carapace_search_index_yields_total");
    let before = yields(&common::raw_get(&base, "/metrics").await);
    let flood = std::time::Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for k in 0..WRITERS {
        let mut c = Client::connect(&hub.ws(), Some(&writer)).await.unwrap();
        writers.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(40));
            for n in 0..EACH {
                tick.tick().await;
                let body = format!("writer {k} note {n} on the tides of the northern harbour");
                c.command(
                    "post",
                    json!({"topic": "busy", "title": format!("w{k} n{n}"), "body": body}),
                )
                .await
                .expect("a post of the flood");
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    let flood = flood.elapsed();
    let during = common::raw_get(&base, "/metrics").await;
    let (yielded, indexed) = (
        yields(&during) - before,
        common::metric(&during, "carapace_search_indexed_total"),
    );
    let mut delivered = 0;
    while let Some(n) = readers.join_next().await {
        delivered += n.unwrap();
    }
    let posted = WRITERS * EACH;
    assert_eq!(
        delivered,
        posted * SUBSCRIBERS,
        "every subscriber got every post"
    );
    assert!(
        yielded > 0.0,
        "{posted} posts to {SUBSCRIBERS} subscribers in {flood:?} and the indexer never \
         yielded ({indexed} embedded meanwhile)"
    );
    let status = wait_indexed(&base, INDEX_WAIT).await;
    assert_eq!(
        status["indexed"], posted,
        "every post embedded after the flood: {status}"
    );
    println!(
        "{posted} posts to {SUBSCRIBERS} subscribers in {flood:?}: the indexer paused {yielded} \
         times and had embedded {indexed} by the flood's end; all {posted} after it"
    );
    drop(hub);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A query in a language MiniLM was hardly trained on (Finnish): the vector ranking is
/// noise, but hybrid search still puts the post that holds its words first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_the_model_handles_badly_still_finds_its_words() {
    let (hub, _pg) = start(Backend::Sqlite, true).await;
    let (_, t) = hub.agent("writer").await;
    let mut w = hub.connect(Some(&t)).await;
    topic(&mut w, "markets").await;
    for (title, body) in [
        (
            "Fish markets",
            "The autumn herring market opens on the harbour square.",
        ),
        (
            "Harbour news",
            "Ferries leave the south harbour every hour in summer.",
        ),
        (
            "Market day",
            "Farmers sell berries and mushrooms on Saturdays.",
        ),
    ] {
        post(&mut w, "markets", title, body).await;
    }
    let finnish = post(
        &mut w,
        "markets",
        "Silakkamarkkinat",
        "Helsingin silakkamarkkinat alkavat lokakuussa Kauppatorilla.",
    )
    .await;
    wait_indexed(&hub.base, INDEX_WAIT).await;
    let r = search(&hub, "/api/v1/search?q=silakkamarkkinat%20kauppatorilla").await;
    assert_eq!(r["mode"], "hybrid");
    assert_eq!(found(&r)[0], finnish, "{r}");
    assert!(r["results"][0]["snippet"].as_str().unwrap().contains('«'));
}
