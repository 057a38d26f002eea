//! One address for clients, and a rolling upgrade with nothing lost. Three replicas from the
//! real binary share a PostgreSQL database, a Redis and a secrets dir behind a real HAProxy
//! running deploy/haproxy.cfg. A hundred agents post, comment and vote through it at a steady
//! rate while three hundred spectators (topics and the firehose) watch through it, resuming
//! with `since` whenever they are cut. Every replica is restarted in turn, by SIGTERM (drain
//! grace, 1012) or by SIGKILL; then every acknowledged write must be stored exactly once
//! (an unanswered one at most once), every spectator's view of every channel must be the
//! stored sequence with no gap, duplicate or reorder, and every client must end connected.
//! The largest pause a spectator saw is printed.
//!
//! Beside it: the drain grace as HAProxy sees it (out of rotation before any session is
//! closed), and `option forwardfor` with `--trusted-proxies` (a forged address changes
//! nothing).

mod common;

use carapace::clock::now_ms;
use carapace_client::{self as client, Client, ClientError};
use common::haproxy::Haproxy;
use common::infra::{self, OwnRedis, PgDb, Replica};
use serde_json::{Value, json};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::block_in_place;
use tokio::time::Instant;

const PASSWORD: &str = "correct horse battery staple";
const OWNERS: usize = 20;
const AGENTS: usize = 100;
const TOPICS: usize = 6;
const TOPIC_SPECTATORS: usize = 270;
const FIREHOSE_SPECTATORS: usize = 30;
/// Each agent writes once a second: a post every 12th write, else alternately a comment
/// and a vote. That keeps every agent (posts 10/min, comments 60/min) and every owner of
/// five agents (posts 30/min) inside the default rate limits, which stay on.
const WRITE_EVERY: Duration = Duration::from_secs(1);
const POST_EVERY: u64 = 12;
/// The drain grace the replicas run with (the default with Redis, spelled out).
const GRACE: &str = "2";

/// The heavy tests share two cores with everything else: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A replica is taken down by the operator's SIGTERM (it drains) or by SIGKILL (a crash).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Stop {
    Term,
    Kill,
}

impl Stop {
    fn signal(self) -> &'static str {
        match self {
            Stop::Term => "TERM",
            Stop::Kill => "KILL",
        }
    }
}

/// The service under test: replicas behind the balancer, and what they share.
struct Service {
    db: PgDb,
    replicas: Vec<Replica>,
    lb: Haproxy,
    dir: std::path::PathBuf,
    _redis: OwnRedis,
}

impl Service {
    async fn start(n: usize, extra: &[&str]) -> Service {
        let db = PgDb::create("rolling").await;
        // A Redis of its own: the replicas' channels are namespaced per database anyway,
        // but this test's traffic stays off the machine's.
        let redis = OwnRedis::start();
        let dir = common::temp_dir("rolling");
        let secrets = dir.join("secrets");
        let redis_url = redis.url();
        let mut args = vec![
            "--database-url",
            &db.url,
            "--redis-url",
            &redis_url,
            "--secrets-dir",
            secrets.to_str().expect("UTF-8 temp dir"),
            "--drain-grace",
            GRACE,
            // The balancer's address: its X-Forwarded-For is believed.
            "--trusted-proxies",
            "127.0.0.1",
        ];
        args.extend_from_slice(extra);
        // The first replica makes the keys and the schema; the others share them.
        let mut replicas = vec![block_in_place(|| Replica::start("r1", &dir, &args))];
        infra::wait_ready(&replicas[0].base(), Duration::from_secs(20)).await;
        for i in 2..=n {
            let id = format!("r{i}");
            replicas.push(block_in_place(|| Replica::start(&id, &dir, &args)));
        }
        for r in &replicas {
            infra::wait_ready(&r.base(), Duration::from_secs(20)).await;
        }
        let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
        let lb = block_in_place(|| Haproxy::start(&ports));
        Service {
            db,
            replicas,
            lb,
            dir,
            _redis: redis,
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.replicas.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A pause of about `d`, drawn from its upper half, so that clients cut together do not
/// come back together.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + Duration::from_micros(common::rand_u64() % (half.as_micros() as u64 + 1))
}

/// Connects through the balancer, trying again after a growing pause until `deadline`.
async fn connect(ws: &str, token: Option<&str>, deadline: Instant) -> Option<Client> {
    let mut pause = Duration::from_millis(50);
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(5), Client::connect(ws, token));
        if let Ok(Ok(c)) = attempt.await {
            return Some(c);
        }
        if Instant::now() + pause >= deadline {
            return None;
        }
        tokio::time::sleep(jitter(pause)).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Whether the connection is still usable: a close already received is read now, before a
/// command would be sent into it. For a session that receives no pushes (the agents).
async fn still_open(c: &mut Client) -> bool {
    !matches!(
        c.next_push(Duration::ZERO).await,
        Err(e) if !matches!(e, ClientError::Timeout)
    )
}

/// The agents, each with its token and home topic, made through the balancer's HTTP API.
struct Agent {
    handle: String,
    token: String,
    topic: usize,
}

async fn population(base: &str) -> Vec<Agent> {
    let mut owners = Vec::new();
    for chunk in (0..OWNERS).collect::<Vec<_>>().chunks(4) {
        let logins = chunk.iter().map(|o| async move {
            let handle = format!("owner{o:02}");
            client::owner_token(base, &handle, &format!("{handle}@example.com"), PASSWORD).await
        });
        for t in futures_util::future::join_all(logins).await {
            owners.push(t.expect("owner signs up and logs in"));
        }
    }
    let mut agents = Vec::new();
    for chunk in (0..AGENTS).collect::<Vec<_>>().chunks(10) {
        let made = chunk.iter().map(|&a| {
            let owner = owners[a % OWNERS].clone();
            async move {
                let handle = format!("agent{a:03}");
                let mut scopes = vec!["read", "post", "comment", "vote"];
                if a < TOPICS {
                    scopes.push("topic:create");
                }
                let spec = json!({"handle": handle, "name": handle, "bio": "", "scopes": scopes});
                let key = client::create_agent(base, &owner, &spec)
                    .await
                    .expect("agent created");
                let token = client::agent_token(base, &key).await.expect("token");
                Agent {
                    handle,
                    token,
                    topic: a % TOPICS,
                }
            }
        });
        agents.extend(futures_util::future::join_all(made).await);
    }
    let ws = format!("ws://{}/ws", base.trim_start_matches("http://"));
    for (t, creator) in agents.iter().take(TOPICS).enumerate() {
        let mut c = Client::connect(&ws, Some(&creator.token))
            .await
            .expect("creator connects");
        c.command(
            "topic.create",
            json!({"name": topic(t), "title": topic(t), "description": "steady traffic"}),
        )
        .await
        .expect("topic created");
        c.close().await;
    }
    agents
}

fn topic(t: usize) -> String {
    format!("town{t}")
}

fn channel(t: usize) -> String {
    format!("topic:{}", topic(t))
}

/// A write sent that got no answer (the replica went away): stored at most once.
#[derive(Debug, Clone)]
enum Unanswered {
    Post(String),
    Comment(String),
    Vote(String),
}

#[derive(Default)]
struct WriterReport {
    handle: String,
    /// (id, title)
    posts: Vec<(String, String)>,
    /// (id, body)
    comments: Vec<(String, String)>,
    /// (target, value)
    votes: Vec<(String, i64)>,
    unanswered: Vec<Unanswered>,
    /// Of the unanswered, those refused with `unavailable` (the database did not answer).
    unavailable: usize,
    refused: Vec<String>,
    reconnects: usize,
    connected_at_end: bool,
}

/// Posts and comments acknowledged so far in each topic, with their writer: what agents
/// vote on (never their own).
type Pool = Arc<Vec<Mutex<Vec<(usize, String)>>>>;

/// One agent writing once a second through the balancer until `stop`, reconnecting after
/// every cut; then it makes sure it is connected.
async fn write(
    me: usize,
    agent: Agent,
    ws: String,
    pool: Pool,
    mut stop: watch::Receiver<bool>,
) -> WriterReport {
    let mut r = WriterReport {
        handle: agent.handle.clone(),
        ..WriterReport::default()
    };
    let give_up = Instant::now() + Duration::from_secs(150);
    let mut client = connect(&ws, Some(&agent.token), give_up).await;
    let mut voted: HashSet<String> = HashSet::new();
    let mut last_post: Option<String> = None;
    tokio::time::sleep(Duration::from_millis(common::rand_u64() % 1000)).await;
    let mut tick = tokio::time::interval(WRITE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for k in 0u64.. {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        if let Some(c) = client.as_mut()
            && !still_open(c).await
        {
            client = None;
        }
        if client.is_none() {
            client = connect(&ws, Some(&agent.token), give_up).await;
            r.reconnects += 1;
        }
        let Some(c) = client.as_mut() else { continue };
        let marker = format!("{} w{k}", agent.handle);
        let target = pool[agent.topic]
            .lock()
            .expect("pool")
            .iter()
            .rev()
            .find(|(by, id)| *by != me && !voted.contains(id))
            .map(|(_, id)| id.clone());
        let (op, fields, attempt) = match (&last_post, target) {
            (Some(post), _) if k % POST_EVERY != 0 && k % 2 == 1 => (
                "comment",
                json!({"post_id": post, "body": marker}),
                Unanswered::Comment(marker.clone()),
            ),
            (Some(_), Some(target)) if k % POST_EVERY != 0 => {
                // Whatever comes of it, never again: a second vote would overwrite the first.
                voted.insert(target.clone());
                let value = if k % 4 == 0 { 1 } else { -1 };
                (
                    "vote",
                    json!({"target": target, "value": value}),
                    Unanswered::Vote(target),
                )
            }
            (Some(post), None) if k % POST_EVERY != 0 => (
                "comment",
                json!({"post_id": post, "body": marker}),
                Unanswered::Comment(marker.clone()),
            ),
            _ => (
                "post",
                json!({"topic": topic(agent.topic), "title": marker, "body": "steady traffic"}),
                Unanswered::Post(marker.clone()),
            ),
        };
        match c.command(op, fields.clone()).await {
            Ok(reply) => {
                let made = match &attempt {
                    Unanswered::Post(title) => {
                        let id = reply["post"]["id"].as_str().unwrap_or_default().to_string();
                        r.posts.push((id.clone(), title.clone()));
                        last_post = Some(id.clone());
                        Some(id)
                    }
                    Unanswered::Comment(body) => {
                        let id = reply["comment"]["id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        r.comments.push((id.clone(), body.clone()));
                        Some(id)
                    }
                    Unanswered::Vote(target) => {
                        r.votes
                            .push((target.clone(), fields["value"].as_i64().unwrap_or(0)));
                        None
                    }
                };
                if let Some(id) = made {
                    pool[agent.topic].lock().expect("pool").push((me, id));
                }
            }
            // The hub wrote nothing (one transaction), unless the answer to a commit that
            // went through was lost: stored at most once, like an unanswered write.
            Err(e) if e.code() == Some("unavailable") => {
                r.unavailable += 1;
                r.unanswered.push(attempt);
            }
            Err(e @ ClientError::Api { .. }) => r.refused.push(format!("{op} {fields}: {e}")),
            Err(_) => {
                r.unanswered.push(attempt);
                client = None;
            }
        }
    }
    if let Some(c) = client.as_mut()
        && !still_open(c).await
    {
        client = None;
    }
    if client.is_none() {
        client = connect(
            &ws,
            Some(&agent.token),
            Instant::now() + Duration::from_secs(20),
        )
        .await;
    }
    r.connected_at_end = match client.as_mut() {
        Some(c) => c.command("ping", json!({})).await.is_ok(),
        None => false,
    };
    r
}

/// What one spectator received on one channel.
#[derive(Default)]
struct Track {
    /// The channel's seq when it was first subscribed without `since`: the next one is
    /// `base + 1`. None for a channel first met on the firehose.
    base: Option<u64>,
    /// (seq, arrival in Unix ms), in the order received.
    got: Vec<(u64, i64)>,
}

impl Track {
    fn last(&self) -> Option<u64> {
        self.got.last().map(|g| g.0).or(self.base)
    }
}

struct SpectatorReport {
    name: String,
    firehose: bool,
    tracks: BTreeMap<String, Track>,
    reconnects: usize,
    /// How each cut came: the close code, or None when the connection just broke.
    cuts: Vec<Option<u16>>,
    /// Per reconnect: how long the new connection took, then the resubscription.
    comebacks: Vec<(Duration, Duration)>,
    connected_at_end: bool,
}

/// The last seq of every topic channel once the writers have stopped: what each spectator
/// must reach before it is done.
type Targets = Option<Arc<HashMap<String, u64>>>;

/// (Re)subscribes after a connect. A topic spectator subscribes each of its channels with
/// `since` its last seq (plainly, the first time). The firehose is live only, so a firehose
/// spectator does what the viewer does: every topic it has seen with `since` first (the hub
/// replays what was missed, then carries it live), then the firehose; each topic is left
/// again once its replay has caught up (`catching_up`), from when the firehose carries it.
async fn subscribe_all(
    c: &mut Client,
    r: &mut SpectatorReport,
    channels: &[String],
    catching_up: &mut HashMap<String, u64>,
) -> Result<(), ClientError> {
    catching_up.clear();
    if !r.firehose {
        for ch in channels {
            let t = r.tracks.entry(ch.clone()).or_default();
            match t.last() {
                Some(last) => {
                    c.subscribe(ch, Some(last)).await?;
                }
                None => {
                    let reply = c.subscribe(ch, None).await?;
                    t.base = reply["seq"].as_u64();
                }
            }
        }
        return Ok(());
    }
    let seen: Vec<(String, u64)> = r
        .tracks
        .iter()
        .filter_map(|(ch, t)| t.last().map(|l| (ch.clone(), l)))
        .collect();
    for (ch, last) in seen {
        let reply = c.subscribe(&ch, Some(last)).await?;
        catching_up.insert(ch, reply["seq"].as_u64().unwrap_or(0));
    }
    c.subscribe("firehose", None).await?;
    let level: Vec<String> = catching_up
        .iter()
        .filter(|(ch, until)| r.tracks[*ch].last() >= Some(**until))
        .map(|(ch, _)| ch.clone())
        .collect();
    for ch in level {
        catching_up.remove(&ch);
        c.command("unsubscribe", json!({"channel": ch})).await?;
    }
    Ok(())
}

fn caught_up(r: &SpectatorReport, channels: &[String], targets: &HashMap<String, u64>) -> bool {
    let at = |ch: &String| r.tracks.get(ch).and_then(Track::last);
    if r.firehose {
        targets.iter().all(|(ch, seq)| at(ch) >= Some(*seq))
    } else {
        channels
            .iter()
            .all(|ch| at(ch) >= targets.get(ch).copied().or(Some(0)))
    }
}

/// One spectator watching through the balancer (`channels`, or the firehose when None)
/// until it has every event up to the targets, resuming after every cut.
async fn spectate(
    name: String,
    channels: Option<Vec<String>>,
    ws: String,
    live: Arc<std::sync::atomic::AtomicUsize>,
    done: watch::Receiver<Targets>,
) -> SpectatorReport {
    let mut r = SpectatorReport {
        name,
        firehose: channels.is_none(),
        tracks: BTreeMap::new(),
        reconnects: 0,
        cuts: Vec::new(),
        comebacks: Vec::new(),
        connected_at_end: false,
    };
    let channels = channels.unwrap_or_default();
    let give_up = Instant::now() + Duration::from_secs(150);
    let mut client: Option<Client> = None;
    let mut catching_up = HashMap::new();
    let mut first = true;
    while Instant::now() < give_up {
        let Some(c) = client.as_mut() else {
            if !first {
                tokio::time::sleep(jitter(Duration::from_millis(300))).await;
            }
            let t0 = Instant::now();
            let Some(mut c) = connect(&ws, None, give_up).await else {
                break;
            };
            let connected = t0.elapsed();
            match subscribe_all(&mut c, &mut r, &channels, &mut catching_up).await {
                Ok(()) => {
                    if first {
                        live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    } else {
                        r.reconnects += 1;
                        r.comebacks.push((connected, t0.elapsed() - connected));
                    }
                    first = false;
                    client = Some(c);
                }
                Err(_) => r.cuts.push(c.closed.as_ref().and_then(|x| x.0)),
            }
            continue;
        };
        let targets = done.borrow().clone();
        if let Some(t) = targets
            && caught_up(&r, &channels, &t)
        {
            break;
        }
        match c.next_push(Duration::from_millis(200)).await {
            Ok(p) => {
                let t = r.tracks.entry(p.channel.clone()).or_default();
                t.got.push((p.seq, now_ms()));
                if catching_up
                    .get(&p.channel)
                    .is_some_and(|until| p.seq >= *until)
                {
                    catching_up.remove(&p.channel);
                    if c.command("unsubscribe", json!({"channel": p.channel}))
                        .await
                        .is_err()
                    {
                        r.cuts.push(c.closed.as_ref().and_then(|x| x.0));
                        client = None;
                    }
                }
            }
            Err(ClientError::Timeout) => {}
            Err(_) => {
                r.cuts.push(c.closed.as_ref().and_then(|x| x.0));
                client = None;
            }
        }
    }
    r.connected_at_end = match client.as_mut() {
        Some(c) => c.command("ping", json!({})).await.is_ok(),
        None => false,
    };
    r
}

/// What the database holds at the end.
struct Stored {
    /// channel -> seq -> (event name, data, created_at in Unix ms)
    events: HashMap<String, BTreeMap<u64, (String, Value, i64)>>,
    /// title -> [(id, author handle)]
    posts: HashMap<String, Vec<(String, String)>>,
    /// body -> [(id, author handle)]
    comments: HashMap<String, Vec<(String, String)>>,
    /// (voter handle, target) -> value
    votes: HashMap<(String, String), i64>,
}

async fn stored(url: &str) -> Stored {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("database");
    let mut events: HashMap<String, BTreeMap<u64, (String, Value, i64)>> = HashMap::new();
    let rows = sqlx::query(
        "SELECT channel, seq, event, convert_from(data, 'UTF8') AS data, created_at FROM events \
         WHERE channel LIKE 'topic:%' AND sealed = 0",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    for row in rows {
        let data: String = row.get("data");
        events.entry(row.get("channel")).or_default().insert(
            row.get::<i64, _>("seq") as u64,
            (
                row.get("event"),
                serde_json::from_str(&data).unwrap_or(Value::Null),
                row.get("created_at"),
            ),
        );
    }
    let mut posts: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for row in sqlx::query(
        "SELECT p.id, p.title, a.handle FROM posts p JOIN agents a ON a.id = p.author_id",
    )
    .fetch_all(&pool)
    .await
    .expect("posts")
    {
        posts
            .entry(row.get("title"))
            .or_default()
            .push((row.get("id"), row.get("handle")));
    }
    let mut comments: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for row in sqlx::query(
        "SELECT c.id, c.body, a.handle FROM comments c JOIN agents a ON a.id = c.author_id",
    )
    .fetch_all(&pool)
    .await
    .expect("comments")
    {
        comments
            .entry(row.get("body"))
            .or_default()
            .push((row.get("id"), row.get("handle")));
    }
    let mut votes = HashMap::new();
    for row in sqlx::query(
        "SELECT a.handle, v.target_id, v.value FROM votes v JOIN agents a ON a.id = v.agent_id",
    )
    .fetch_all(&pool)
    .await
    .expect("votes")
    {
        votes.insert((row.get("handle"), row.get("target_id")), row.get("value"));
    }
    pool.close().await;
    Stored {
        events,
        posts,
        comments,
        votes,
    }
}

/// Every acknowledged write stored exactly once, with its one event; an unanswered one at
/// most once; nothing stored that no agent sent. Returns the problems and how many of the
/// unanswered writes were stored.
fn check_writes(writers: &[WriterReport], db: &Stored) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let mut event_ids: HashMap<&str, usize> = HashMap::new();
    let mut vote_events = 0;
    for evs in db.events.values() {
        for (event, data, _) in evs.values() {
            match event.as_str() {
                "post" | "comment" => {
                    if let Some(id) = data["id"].as_str() {
                        *event_ids.entry(id).or_default() += 1;
                    }
                }
                "vote" => vote_events += 1,
                _ => {}
            }
        }
    }
    let mut sent_titles = HashSet::new();
    let mut sent_bodies = HashSet::new();
    let mut sent_votes = HashSet::new();
    let (mut acked_votes, mut unanswered_votes, mut unanswered_stored) = (0, 0, 0);
    for w in writers {
        for (id, title) in &w.posts {
            sent_titles.insert(title.clone());
            let rows = db.posts.get(title).map(Vec::as_slice).unwrap_or_default();
            if rows.len() != 1 || rows[0].0 != *id || rows[0].1 != w.handle {
                problems.push(format!(
                    "acknowledged post {title} ({id}) stored as {rows:?}"
                ));
            }
            if event_ids.get(id.as_str()) != Some(&1) {
                problems.push(format!(
                    "acknowledged post {title}: {:?} events",
                    event_ids.get(id.as_str())
                ));
            }
        }
        for (id, body) in &w.comments {
            sent_bodies.insert(body.clone());
            let rows = db.comments.get(body).map(Vec::as_slice).unwrap_or_default();
            if rows.len() != 1 || rows[0].0 != *id || rows[0].1 != w.handle {
                problems.push(format!(
                    "acknowledged comment {body} ({id}) stored as {rows:?}"
                ));
            }
            if event_ids.get(id.as_str()) != Some(&1) {
                problems.push(format!(
                    "acknowledged comment {body}: {:?} events",
                    event_ids.get(id.as_str())
                ));
            }
        }
        for (target, value) in &w.votes {
            acked_votes += 1;
            sent_votes.insert((w.handle.clone(), target.clone()));
            let got = db.votes.get(&(w.handle.clone(), target.clone()));
            if got != Some(value) {
                problems.push(format!(
                    "acknowledged vote {} on {target} = {value} stored as {got:?}",
                    w.handle
                ));
            }
        }
        for u in &w.unanswered {
            let (n, id) = match u {
                Unanswered::Post(title) => {
                    sent_titles.insert(title.clone());
                    let rows = db.posts.get(title).map(Vec::as_slice).unwrap_or_default();
                    (rows.len(), rows.first().map(|r| r.0.clone()))
                }
                Unanswered::Comment(body) => {
                    sent_bodies.insert(body.clone());
                    let rows = db.comments.get(body).map(Vec::as_slice).unwrap_or_default();
                    (rows.len(), rows.first().map(|r| r.0.clone()))
                }
                Unanswered::Vote(target) => {
                    unanswered_votes += 1;
                    sent_votes.insert((w.handle.clone(), target.clone()));
                    let stored = db.votes.contains_key(&(w.handle.clone(), target.clone()));
                    (usize::from(stored), None)
                }
            };
            if n > 1 {
                problems.push(format!("unanswered {u:?} stored {n} times"));
            }
            if let Some(id) = id
                && event_ids.get(id.as_str()).copied().unwrap_or(0) != 1
            {
                problems.push(format!("unanswered {u:?} stored without its one event"));
            }
            unanswered_stored += n.min(1);
        }
    }
    for (title, rows) in &db.posts {
        if !sent_titles.contains(title) && title.starts_with("agent") {
            problems.push(format!("post {title} stored, never sent: {rows:?}"));
        }
    }
    for (body, rows) in &db.comments {
        if !sent_bodies.contains(body) {
            problems.push(format!("comment {body} stored, never sent: {rows:?}"));
        }
    }
    for key in db.votes.keys() {
        if !sent_votes.contains(key) {
            problems.push(format!("vote {key:?} stored, never sent"));
        }
    }
    if vote_events < acked_votes || vote_events > acked_votes + unanswered_votes {
        problems.push(format!(
            "{vote_events} vote events for {acked_votes} acknowledged and {unanswered_votes} unanswered votes"
        ));
    }
    (problems, unanswered_stored)
}

/// Every spectator's view of every channel is the stored sequence from where it began
/// (the seq its subscription answered, or the first the firehose brought) to the end.
fn check_views(spectators: &[SpectatorReport], db: &Stored) -> Vec<String> {
    let mut problems = Vec::new();
    for (ch, evs) in &db.events {
        let seqs: Vec<u64> = evs.keys().copied().collect();
        let expect: Vec<u64> = (1..=seqs.len() as u64).collect();
        if seqs != expect {
            problems.push(format!("{ch}: stored seqs are not 1..={}", seqs.len()));
        }
    }
    for s in spectators {
        if s.firehose && s.tracks.len() != TOPICS {
            problems.push(format!(
                "{}: saw {} topics on the firehose",
                s.name,
                s.tracks.len()
            ));
        }
        for (ch, t) in &s.tracks {
            let got: Vec<u64> = t.got.iter().map(|g| g.0).collect();
            let Some(from) = t.base.map(|b| b + 1).or(got.first().copied()) else {
                problems.push(format!("{}: nothing on {ch}", s.name));
                continue;
            };
            let expect: Vec<u64> = db
                .events
                .get(ch)
                .map(|e| e.range(from..).map(|(seq, _)| *seq).collect())
                .unwrap_or_default();
            if got != expect {
                let set: HashSet<u64> = got.iter().copied().collect();
                let missing: Vec<u64> = expect
                    .iter()
                    .filter(|x| !set.contains(x))
                    .copied()
                    .collect();
                let dups = got.len() - set.len();
                let disorder = got.windows(2).filter(|w| w[0] >= w[1]).count();
                problems.push(format!(
                    "{} on {ch}: {} received, {} stored from {from}: missing {:?}, {dups} duplicated, {disorder} out of order",
                    s.name,
                    got.len(),
                    expect.len(),
                    &missing[..missing.len().min(10)]
                ));
            }
        }
    }
    problems
}

/// The pauses spectators saw between `from` and `to` (Unix ms): the longest time between two
/// consecutive events reaching one spectator, and how late events arrived after they were
/// stored (max, p99, median).
struct Pauses {
    gap_ms: i64,
    gap_who: String,
    /// The longest among spectators of topics only (the firehose's catch-up takes longer:
    /// it replays every topic it has seen, one after the other).
    topic_gap_ms: i64,
    late_max: i64,
    late_p99: i64,
    late_p50: i64,
    deliveries: usize,
}

fn pauses(spectators: &[SpectatorReport], db: &Stored, from: i64, to: i64) -> Pauses {
    let mut late = Vec::new();
    let (mut gap_ms, mut gap_who, mut topic_gap_ms) = (0, String::new(), 0);
    for s in spectators {
        let mut arrivals = Vec::new();
        for (ch, t) in &s.tracks {
            for &(seq, at) in &t.got {
                if let Some((_, _, created)) = db.events.get(ch).and_then(|e| e.get(&seq))
                    && (from..=to).contains(created)
                {
                    late.push(at - created);
                    arrivals.push(at);
                }
            }
        }
        arrivals.sort_unstable();
        for w in arrivals.windows(2) {
            if w[1] - w[0] > gap_ms {
                gap_ms = w[1] - w[0];
                gap_who = format!("{}{}", s.name, if s.firehose { " (firehose)" } else { "" });
            }
            if !s.firehose {
                topic_gap_ms = topic_gap_ms.max(w[1] - w[0]);
            }
        }
    }
    late.sort_unstable();
    let at = |q: f64| {
        late.get(((late.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    Pauses {
        gap_ms,
        gap_who,
        topic_gap_ms,
        late_max: late.last().copied().unwrap_or(0),
        late_p99: at(0.99),
        late_p50: at(0.5),
        deliveries: late.len(),
    }
}

/// Restarts every replica in turn: SIGTERM (it drains) or SIGKILL, then starts it again and
/// waits until HAProxy has it back in rotation. Returns a line per replica.
async fn roll(svc: &mut Service, how: Stop) -> Vec<String> {
    let mut lines = Vec::new();
    for i in 0..svc.replicas.len() {
        let n = i + 1;
        let t0 = Instant::now();
        svc.replicas[i].signal(how.signal());
        // Both watched at once: when HAProxy takes it out, and when the process ends.
        let (mut out, mut exit) = (None, None);
        let (out, status, exited) = loop {
            if out.is_none() && block_in_place(|| svc.lb.server(n).0 == "DOWN") {
                out = Some(t0.elapsed());
            }
            if exit.is_none()
                && let Some(status) = svc.replicas[i].wait_exit(Duration::ZERO)
            {
                exit = Some((status, t0.elapsed()));
            }
            if let (Some(out), Some((status, exited))) = (out, exit) {
                break (out, status, exited);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "r{n}: out of rotation after {out:?}, exited {exit:?}: {}",
                svc.replicas[i].logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if how == Stop::Term {
            assert!(
                status.success(),
                "r{n} exited badly: {}",
                svc.replicas[i].logs()
            );
            assert!(
                out < Duration::from_secs(2),
                "r{n} was still in HAProxy's rotation {out:?} after SIGTERM, when its drain \
                 grace ({GRACE} s) ended"
            );
        }
        block_in_place(|| svc.replicas[i].start_again());
        infra::wait_ready(&svc.replicas[i].base(), Duration::from_secs(30)).await;
        block_in_place(|| svc.lb.wait_checked_up(n, Duration::from_secs(15)));
        lines.push(format!(
            "r{n}: out of rotation {} ms after SIG{}, exited after {} ms, back in rotation after {} ms",
            out.as_millis(),
            how.signal(),
            exited.as_millis(),
            t0.elapsed().as_millis()
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    lines
}

/// The whole run: the service behind HAProxy, the population, the load, the rolling
/// restart, then the checks against the database.
async fn rolling_upgrade(how: Stop) {
    let _one_at_a_time = SERIAL.lock().await;
    let t0 = Instant::now();
    // Per-address budgets raised for signups, agent creation and spectator sessions: every
    // client of this test comes from 127.0.0.1. Every other limit stays at its default.
    let mut svc = Service::start(
        3,
        &[
            "--signups-per-addr-hour",
            "1000",
            "--agents-per-addr-hour",
            "1000",
            "--anon-ws-per-addr",
            "1000",
        ],
    )
    .await;
    let agents = population(&svc.lb.base()).await;
    let setup = t0.elapsed();
    let ws = svc.lb.ws();

    let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (done_tx, done_rx) = watch::channel::<Targets>(None);
    let mut spectators = Vec::new();
    for s in 0..TOPIC_SPECTATORS + FIREHOSE_SPECTATORS {
        // Half the topic spectators follow one topic, half two; the rest the firehose.
        let channels = (s < TOPIC_SPECTATORS).then(|| {
            let mut chs = vec![channel(s % TOPICS)];
            if s % 2 == 1 {
                chs.push(channel((s + 1) % TOPICS));
            }
            chs
        });
        spectators.push(tokio::spawn(spectate(
            format!("spectator{s:03}"),
            channels,
            ws.clone(),
            live.clone(),
            done_rx.clone(),
        )));
    }
    let all = TOPIC_SPECTATORS + FIREHOSE_SPECTATORS;
    let deadline = Instant::now() + Duration::from_secs(30);
    while live.load(std::sync::atomic::Ordering::Relaxed) < all {
        assert!(
            Instant::now() < deadline,
            "spectators did not all subscribe"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pool: Pool = Arc::new((0..TOPICS).map(|_| Mutex::new(Vec::new())).collect());
    let (stop_tx, stop_rx) = watch::channel(false);
    let writers: Vec<_> = agents
        .into_iter()
        .enumerate()
        .map(|(i, a)| tokio::spawn(write(i, a, ws.clone(), pool.clone(), stop_rx.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let from = now_ms();
    let restarts = roll(&mut svc, how).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_tx.send(true);
    let to = now_ms();
    let mut wrote = Vec::new();
    for w in writers {
        wrote.push(w.await.expect("writer task"));
    }
    let db = stored(&svc.db.url).await;
    let targets: HashMap<String, u64> = db
        .events
        .iter()
        .map(|(ch, e)| (ch.clone(), e.keys().last().copied().unwrap_or(0)))
        .collect();
    let _ = done_tx.send(Some(Arc::new(targets)));
    let mut seen = Vec::new();
    for s in spectators {
        seen.push(
            tokio::time::timeout(Duration::from_secs(60), s)
                .await
                .expect("spectators catch up within a minute")
                .expect("spectator task"),
        );
    }

    let (mut problems, unanswered_stored) = check_writes(&wrote, &db);
    problems.extend(check_views(&seen, &db));
    for w in &wrote {
        if !w.refused.is_empty() {
            problems.push(format!("{} refused: {:?}", w.handle, w.refused));
        }
        if !w.connected_at_end {
            problems.push(format!("{} is not connected at the end", w.handle));
        }
    }
    for s in &seen {
        if !s.connected_at_end {
            problems.push(format!("{} is not connected at the end", s.name));
        }
    }
    let warnings: Vec<String> = svc
        .replicas
        .iter()
        .flat_map(|r| {
            r.logs()
                .lines()
                .filter(|l| l.contains("\"WARN\""))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut said: BTreeMap<String, usize> = BTreeMap::new();
    for w in &warnings {
        let v: Value = serde_json::from_str(w).unwrap_or(Value::Null);
        *said
            .entry(v["message"].as_str().unwrap_or(w).to_string())
            .or_default() += 1;
    }
    let p = pauses(&seen, &db, from, to);
    let count = |f: fn(&WriterReport) -> usize| wrote.iter().map(f).sum::<usize>();
    let cuts: Vec<Option<u16>> = seen.iter().flat_map(|s| s.cuts.iter().copied()).collect();
    let closed_1012 = cuts.iter().filter(|c| **c == Some(1012)).count();
    let events: usize = db.events.values().map(BTreeMap::len).sum();
    eprintln!(
        "rolling upgrade by SIG{} behind HAProxy: {AGENTS} agents, {} spectators \
         ({TOPIC_SPECTATORS} on topics, {FIREHOSE_SPECTATORS} on the firehose), 3 replicas; \
         setup {:.1} s, whole run {:.1} s",
        how.signal(),
        all,
        setup.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    for l in &restarts {
        eprintln!("  {l}");
    }
    eprintln!(
        "  writes acknowledged: {} posts, {} comments, {} votes; unanswered {} ({} of them \
         refused as unavailable; {unanswered_stored} stored); refused otherwise {}",
        count(|w| w.posts.len()),
        count(|w| w.comments.len()),
        count(|w| w.votes.len()),
        count(|w| w.unanswered.len()),
        count(|w| w.unavailable),
        count(|w| w.refused.len()),
    );
    eprintln!(
        "  events stored on {} topics: {events}; delivered to spectators while restarting: {}",
        db.events.len(),
        p.deliveries
    );
    eprintln!(
        "  reconnects: spectators {} ({closed_1012} after a 1012, {} without a close frame, {} other), agents {}",
        seen.iter().map(|s| s.reconnects).sum::<usize>(),
        cuts.iter().filter(|c| c.is_none()).count(),
        cuts.iter().filter(|c| c.is_some_and(|c| c != 1012)).count(),
        count(|w| w.reconnects),
    );
    let mut comebacks: Vec<(Duration, Duration)> = seen
        .iter()
        .flat_map(|s| s.comebacks.iter().copied())
        .collect();
    let ms = |d: Duration| d.as_millis();
    comebacks.sort_unstable_by_key(|c| c.0);
    let connect_p50 = comebacks.get(comebacks.len() / 2).map_or(0, |c| ms(c.0));
    let connect_max = comebacks.last().map_or(0, |c| ms(c.0));
    comebacks.sort_unstable_by_key(|c| c.1);
    let resub_p50 = comebacks.get(comebacks.len() / 2).map_or(0, |c| ms(c.1));
    let resub_max = comebacks.last().map_or(0, |c| ms(c.1));
    eprintln!(
        "  a spectator's way back: connect median {connect_p50} ms (max {connect_max}), resubscribe median {resub_p50} ms (max {resub_max})"
    );
    eprintln!("  replica warnings: {said:?}");
    eprintln!(
        "  largest pause: {} ms between two events reaching {} ({} ms at most for a topic \
         spectator); delivery after storing: max {} ms, p99 {} ms, median {} ms",
        p.gap_ms, p.gap_who, p.topic_gap_ms, p.late_max, p.late_p99, p.late_p50
    );

    assert!(
        problems.is_empty(),
        "{} problems, the first: {:#?}\nreplica warnings ({}), the first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(20)],
        warnings.len(),
        &warnings[..warnings.len().min(20)],
    );
    assert!(count(|w| w.posts.len()) > 0 && count(|w| w.votes.len()) > 0);
    if how == Stop::Term {
        assert!(closed_1012 > 0, "no spectator was closed with 1012");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_by_sigterm_behind_haproxy_loses_nothing() {
    rolling_upgrade(Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_by_sigkill_behind_haproxy_loses_nothing() {
    rolling_upgrade(Stop::Kill).await;
}

/// The drain as HAProxy sees it: on SIGTERM the replica answers `/readyz` 503 at once and
/// leaves rotation within the drain grace while it still serves (its sessions answer, a new
/// one can still open); HAProxy sends it no new client from then on; only after the grace
/// are its sessions closed with 1012, and it exits cleanly. Bad `--drain-grace` values are
/// refused before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_takes_a_replica_out_of_rotation_before_its_sessions_close() {
    let _one_at_a_time = SERIAL.lock().await;
    for bad in ["-1", "soon", "301", "NaN", "2s"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_carapace"))
            .args(["serve", &format!("--drain-grace={bad}")])
            .output()
            .expect("carapace runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--drain-grace {bad}: {err}");
        assert!(err.contains("--drain-grace"), "{err}");
    }

    let mut svc = Service::start(2, &[]).await;
    let r1 = svc.replicas[0].base();
    let mut on_r1 = Client::connect(&svc.replicas[0].ws(), None)
        .await
        .expect("connect to r1");
    on_r1
        .subscribe("topic:general", None)
        .await
        .expect("subscribe");
    let t0 = Instant::now();
    svc.replicas[0].signal("TERM");
    while infra::readyz(&r1).await != 503 {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "r1 still ready after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let unready = t0.elapsed();
    let out = block_in_place(|| svc.lb.wait_state(1, "DOWN", Duration::from_secs(5)));
    assert!(
        out < Duration::from_secs(2),
        "r1 left rotation only after {out:?}"
    );
    // Out of rotation, and still serving: the grace is for the balancer, not the clients.
    on_r1
        .command("ping", json!({}))
        .await
        .expect("r1's session still answers");
    let mut late = Client::connect(&svc.replicas[0].ws(), None)
        .await
        .expect("r1 still accepts a session during its grace");
    let served_until = t0.elapsed();
    let [before] = svc.lb.stat(1, ["stot"]);
    for _ in 0..10 {
        let mut c = Client::connect(&svc.lb.ws(), None)
            .await
            .expect("a client through HAProxy");
        c.command("ping", json!({})).await.expect("answered");
    }
    let [after] = svc.lb.stat(1, ["stot"]);
    assert_eq!(
        before, after,
        "HAProxy sent a client to r1 after taking it out"
    );
    assert_eq!(on_r1.closed_with(Duration::from_secs(5)).await, Some(1012));
    let closed = t0.elapsed();
    assert_eq!(late.closed_with(Duration::from_secs(5)).await, Some(1012));
    assert!(
        closed >= Duration::from_millis(1900),
        "sessions closed {closed:?} after SIGTERM, before the {GRACE} s grace ended"
    );
    let status =
        block_in_place(|| svc.replicas[0].wait_exit(Duration::from_secs(10))).expect("r1 exits");
    assert!(status.success(), "{}", svc.replicas[0].logs());
    // Gone altogether: clients through HAProxy still get in, on r2.
    let mut c = Client::connect(&svc.lb.ws(), None)
        .await
        .expect("a client through HAProxy after r1 exited");
    c.command("ping", json!({})).await.expect("answered");
    let logs = svc.lb.logs();
    assert!(
        logs.contains("Server replicas/r1 is DOWN") && logs.contains("code: 503"),
        "{logs}"
    );
    eprintln!(
        "SIGTERM: /readyz 503 after {} ms, out of HAProxy's rotation after {} ms, still \
         serving at {} ms, sessions closed with 1012 after {} ms",
        unready.as_millis(),
        out.as_millis(),
        served_until.as_millis(),
        closed.as_millis()
    );
}

/// `GET /api/v1/search` from the loopback address `local` through `base`, with a
/// client-written `X-Forwarded-For` when `forged` is given; the answer's status.
async fn search_from(base: &str, local: &str, forged: Option<&str>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = common::connect_from(base, local).await;
    let forged = forged
        .map(|f| format!("X-Forwarded-For: {f}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /api/v1/search?q=shell HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n{forged}\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("request sent");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("an answer in time")
        .expect("answer read");
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// `option forwardfor`: a replica that lists HAProxy in `--trusted-proxies` counts each
/// client by its own address, and an address a client writes itself changes nothing (HAProxy
/// appends the real one, the hub takes the nearest untrusted hop); a replica that does not
/// trust it sees every client as HAProxy, one budget for all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn haproxy_forwards_client_addresses_only_a_trusting_replica_believes() {
    let _one_at_a_time = SERIAL.lock().await;
    let dir = common::temp_dir("forwarded");
    let limit = ["--anon-searches-per-min", "2"];
    let trusting = block_in_place(|| {
        Replica::start(
            "trusting",
            &dir,
            &[limit[0], limit[1], "--trusted-proxies", "127.0.0.1"],
        )
    });
    let plain = block_in_place(|| Replica::start("plain", &dir, &limit));
    infra::wait_ready(&trusting.base(), Duration::from_secs(20)).await;
    infra::wait_ready(&plain.base(), Duration::from_secs(20)).await;
    let via_trusting = block_in_place(|| Haproxy::start(&[trusting.port]));
    let via_plain = block_in_place(|| Haproxy::start(&[plain.port]));

    let t = via_trusting.base();
    assert_eq!(search_from(&t, "127.0.0.2", None).await, 200);
    assert_eq!(search_from(&t, "127.0.0.2", None).await, 200);
    assert_eq!(search_from(&t, "127.0.0.2", None).await, 429);
    assert_eq!(
        search_from(&t, "127.0.0.3", None).await,
        200,
        "its own budget"
    );
    assert_eq!(
        search_from(&t, "127.0.0.2", Some("127.0.0.9")).await,
        429,
        "a forged X-Forwarded-For bought a fresh budget"
    );
    assert_eq!(
        search_from(&t, "127.0.0.2", Some("not an address")).await,
        429
    );

    let p = via_plain.base();
    assert_eq!(search_from(&p, "127.0.0.2", None).await, 200);
    assert_eq!(search_from(&p, "127.0.0.2", None).await, 200);
    assert_eq!(
        search_from(&p, "127.0.0.3", None).await,
        429,
        "untrusted, the balancer's address is everyone's"
    );
    drop((via_trusting, via_plain, trusting, plain));
    let _ = std::fs::remove_dir_all(&dir);
}
