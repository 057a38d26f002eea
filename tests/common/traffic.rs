//! Steady traffic through one address and the checks that nothing was lost, shared by the
//! tests that break a service under load (a rolling restart, a network partition). Agents
//! write once a second (posts, comments, votes), spectators follow topics or the firehose and
//! resume with `since` after every cut; at the end every acknowledged write must be stored
//! exactly once (an unanswered one at most once) and every spectator's view of every channel
//! must be the stored sequence, with no gap, duplicate or reorder.

use super::rand_u64;
use carapace::clock::now_ms;
use carapace_client::{self as client, Client, ClientError};
use serde_json::{Value, json};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

pub const PASSWORD: &str = "correct horse battery staple";
/// Each agent writes once a second: a post every 12th write, else alternately a comment
/// and a vote. That keeps every agent (posts 10/min, comments 60/min) and every owner of
/// five agents (posts 30/min) inside the default rate limits, which stay on.
pub const WRITE_EVERY: Duration = Duration::from_secs(1);
pub const POST_EVERY: u64 = 12;

/// A pause of about `d`, drawn from its upper half, so that clients cut together do not
/// come back together.
pub fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + Duration::from_micros(rand_u64() % (half.as_micros() as u64 + 1))
}

/// Connects through the balancer, trying again after a growing pause until `deadline`.
pub async fn connect(ws: &str, token: Option<&str>, deadline: Instant) -> Option<Client> {
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

/// The agents, each with its key, token and home topic, made through the balancer's HTTP
/// API.
pub struct Agent {
    pub handle: String,
    pub token: Token,
    pub topic: usize,
}

/// An agent's API key and the token it last exchanged it for. With `refresh_every` set (a
/// hub with short-lived tokens) the agent gets a new token that often and moves its open
/// session onto it with `refresh`, as a well-behaved agent does before its token expires.
pub struct Token {
    key: String,
    pub jwt: String,
    got: Instant,
    pub refresh_every: Option<Duration>,
}

impl Token {
    pub async fn get(base: &str, key: String) -> Result<Token, ClientError> {
        let jwt = client::agent_token(base, &key).await?;
        Ok(Token {
            key,
            jwt,
            got: Instant::now(),
            refresh_every: None,
        })
    }

    fn due(&self) -> bool {
        self.refresh_every.is_some_and(|d| self.got.elapsed() >= d)
    }

    /// When due, a new token, and the open session (if any) moved onto it: whether the
    /// session is still usable. A refusal of `refresh` is kept in `refused`; a token that
    /// could not be had is tried again at the next call.
    pub async fn refresh(
        &mut self,
        base: &str,
        session: Option<&mut Client>,
        refreshes: &mut usize,
        refused: &mut Vec<String>,
    ) -> bool {
        if !self.due() {
            return true;
        }
        let Ok(jwt) = client::agent_token(base, &self.key).await else {
            return true;
        };
        self.jwt = jwt;
        self.got = Instant::now();
        let Some(c) = session else { return true };
        match c.command("refresh", json!({"token": self.jwt})).await {
            Ok(_) => {
                *refreshes += 1;
                true
            }
            // Not moved (the database did not answer): the session keeps its older token,
            // which outlives several refresh periods.
            Err(e) if e.code() == Some("unavailable") => true,
            Err(e @ ClientError::Api { .. }) => {
                refused.push(format!("refresh: {e}"));
                true
            }
            Err(_) => false,
        }
    }
}

/// The HTTP base of a `ws://host:port/ws` address.
pub fn http_base(ws: &str) -> String {
    let host = ws
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .trim_end_matches("/ws");
    format!("http://{host}")
}

pub async fn population(base: &str, owners_n: usize, agents_n: usize, topics: usize) -> Vec<Agent> {
    let mut owners = Vec::new();
    for chunk in (0..owners_n).collect::<Vec<_>>().chunks(4) {
        let logins = chunk.iter().map(|o| async move {
            let handle = format!("owner{o:02}");
            client::owner_token(base, &handle, &format!("{handle}@example.com"), PASSWORD).await
        });
        for t in futures_util::future::join_all(logins).await {
            owners.push(t.expect("owner signs up and logs in"));
        }
    }
    let mut agents = Vec::new();
    for chunk in (0..agents_n).collect::<Vec<_>>().chunks(10) {
        let made = chunk.iter().map(|&a| {
            let owner = owners[a % owners_n].clone();
            async move {
                let handle = format!("agent{a:03}");
                let mut scopes = vec!["read", "post", "comment", "vote"];
                if a < topics {
                    scopes.push("topic:create");
                }
                let spec = json!({"handle": handle, "name": handle, "bio": "", "scopes": scopes});
                let key = client::create_agent(base, &owner, &spec)
                    .await
                    .expect("agent created");
                let token = Token::get(base, key).await.expect("token");
                Agent {
                    handle,
                    token,
                    topic: a % topics,
                }
            }
        });
        agents.extend(futures_util::future::join_all(made).await);
    }
    let ws = format!("ws://{}/ws", base.trim_start_matches("http://"));
    for (t, creator) in agents.iter().take(topics).enumerate() {
        let mut c = Client::connect(&ws, Some(&creator.token.jwt))
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

pub fn topic(t: usize) -> String {
    format!("town{t}")
}

pub fn channel(t: usize) -> String {
    format!("topic:{}", topic(t))
}

/// A write sent that got no answer (the replica went away): stored at most once.
#[derive(Debug, Clone)]
pub enum Unanswered {
    Post(String),
    Comment(String),
    Vote(String),
}

#[derive(Default)]
pub struct WriterReport {
    pub handle: String,
    /// (id, title)
    pub posts: Vec<(String, String)>,
    /// (id, body)
    pub comments: Vec<(String, String)>,
    /// (target, value)
    pub votes: Vec<(String, i64)>,
    pub unanswered: Vec<Unanswered>,
    /// Of the unanswered, those refused with `unavailable` (the database did not answer).
    pub unavailable: usize,
    pub refused: Vec<String>,
    pub reconnects: usize,
    /// Sessions moved onto a new token, and sessions the hub closed for an expired token
    /// (none, while the agent refreshes in time).
    pub refreshes: usize,
    pub expired: usize,
    pub refresh_every: Option<Duration>,
    pub connected_at_end: bool,
}

/// Posts and comments acknowledged so far in each topic, with their writer: what agents
/// vote on (never their own).
pub type Pool = Arc<Vec<Mutex<Vec<(usize, String)>>>>;

/// One agent writing once a second through the balancer until `stop`, reconnecting after
/// every cut; then it makes sure it is connected.
pub async fn write(
    me: usize,
    agent: Agent,
    ws: String,
    pool: Pool,
    mut stop: watch::Receiver<bool>,
    lasting: Duration,
) -> WriterReport {
    let mut r = WriterReport {
        handle: agent.handle.clone(),
        refresh_every: agent.token.refresh_every,
        ..WriterReport::default()
    };
    let give_up = Instant::now() + lasting;
    let base = http_base(&ws);
    let mut agent = agent;
    let mut client = connect(&ws, Some(&agent.token.jwt), give_up).await;
    let mut voted: HashSet<String> = HashSet::new();
    let mut last_post: Option<String> = None;
    tokio::time::sleep(Duration::from_millis(rand_u64() % 1000)).await;
    let mut tick = tokio::time::interval(WRITE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for k in 0u64.. {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        if let Some(c) = client.as_mut()
            && !c.is_open().await
        {
            r.expired += usize::from(
                c.closed
                    .as_ref()
                    .is_some_and(|(code, _)| *code == Some(4004)),
            );
            client = None;
        }
        if !agent
            .token
            .refresh(&base, client.as_mut(), &mut r.refreshes, &mut r.refused)
            .await
        {
            client = None;
        }
        if client.is_none() {
            client = connect(&ws, Some(&agent.token.jwt), give_up).await;
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
        && !c.is_open().await
    {
        client = None;
    }
    if client.is_none() {
        client = connect(
            &ws,
            Some(&agent.token.jwt),
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
pub struct Track {
    /// The channel's seq when it was first subscribed without `since`: the next one is
    /// `base + 1`. None for a channel first met on the firehose.
    pub base: Option<u64>,
    /// (seq, arrival in Unix ms), in the order received.
    pub got: Vec<(u64, i64)>,
}

impl Track {
    fn last(&self) -> Option<u64> {
        self.got.last().map(|g| g.0).or(self.base)
    }
}

pub struct SpectatorReport {
    pub name: String,
    pub firehose: bool,
    pub tracks: BTreeMap<String, Track>,
    pub reconnects: usize,
    /// How each cut came: the close code, or None when the connection just broke.
    pub cuts: Vec<Option<u16>>,
    /// Per reconnect: how long the new connection took, then the resubscription.
    pub comebacks: Vec<(Duration, Duration)>,
    pub connected_at_end: bool,
}

/// The last seq of every topic channel once the writers have stopped: what each spectator
/// must reach before it is done.
pub type Targets = Option<Arc<HashMap<String, u64>>>;

/// (Re)subscribes after a connect. A topic spectator subscribes each of its channels with
/// `since` its last seq (plainly, the first time). The firehose is live only, so a firehose
/// spectator does what the viewer does: every topic it has seen with `since` first (the hub
/// replays what was missed, then carries it live), then the firehose; each topic is left
/// again once its replay has caught up (`catching_up`), from when the firehose carries it.
pub async fn subscribe_all(
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

pub fn caught_up(r: &SpectatorReport, channels: &[String], targets: &HashMap<String, u64>) -> bool {
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
pub async fn spectate(
    name: String,
    channels: Option<Vec<String>>,
    ws: String,
    live: Arc<std::sync::atomic::AtomicUsize>,
    done: watch::Receiver<Targets>,
    lasting: Duration,
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
    let give_up = Instant::now() + lasting;
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
pub struct Stored {
    /// channel -> seq -> (event name, data, created_at in Unix ms)
    pub events: HashMap<String, BTreeMap<u64, (String, Value, i64)>>,
    /// title -> [(id, author handle)]
    pub posts: HashMap<String, Vec<(String, String)>>,
    /// body -> [(id, author handle)]
    pub comments: HashMap<String, Vec<(String, String)>>,
    /// (voter handle, target) -> value
    pub votes: HashMap<(String, String), i64>,
}

pub async fn stored(url: &str) -> Stored {
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
pub fn check_writes(writers: &[WriterReport], db: &Stored) -> (Vec<String>, usize) {
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
pub fn check_views(spectators: &[SpectatorReport], db: &Stored, topics: usize) -> Vec<String> {
    let mut problems = Vec::new();
    for (ch, evs) in &db.events {
        let seqs: Vec<u64> = evs.keys().copied().collect();
        let expect: Vec<u64> = (1..=seqs.len() as u64).collect();
        if seqs != expect {
            problems.push(format!("{ch}: stored seqs are not 1..={}", seqs.len()));
        }
    }
    for s in spectators {
        if s.firehose && s.tracks.len() != topics {
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
pub struct Pauses {
    pub gap_ms: i64,
    pub gap_who: String,
    /// The longest among spectators of topics only (the firehose's catch-up takes longer:
    /// it replays every topic it has seen, one after the other).
    pub topic_gap_ms: i64,
    pub late_max: i64,
    pub late_p99: i64,
    pub late_p50: i64,
    pub deliveries: usize,
}

pub fn pauses(spectators: &[SpectatorReport], db: &Stored, from: i64, to: i64) -> Pauses {
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

/// The traffic running through one address: spectators subscribed first, then the writers.
pub struct Load {
    writers: Vec<tokio::task::JoinHandle<WriterReport>>,
    spectators: Vec<tokio::task::JoinHandle<SpectatorReport>>,
    stop: watch::Sender<bool>,
    done: watch::Sender<Targets>,
}

/// What the load saw and what the database holds once it stopped.
pub struct Outcome {
    pub wrote: Vec<WriterReport>,
    pub seen: Vec<SpectatorReport>,
    pub db: Stored,
    /// When the writers were told to stop (Unix ms).
    pub stopped_at: i64,
}

impl Load {
    /// Starts `topic_spectators` spectators of topics (half follow one, half two) and
    /// `firehose_spectators` of the firehose through `ws`, waits until all have subscribed,
    /// then sets `agents` writing. Clients give up reconnecting 150 s after the start.
    pub async fn start(
        ws: &str,
        agents: Vec<Agent>,
        topics: usize,
        topic_spectators: usize,
        firehose_spectators: usize,
    ) -> Load {
        Self::start_lasting(
            ws,
            agents,
            topics,
            topic_spectators,
            firehose_spectators,
            Duration::from_secs(150),
        )
        .await
    }

    /// As `start`, for a run of about `lasting`: past it a client that cannot reconnect
    /// gives up (and ends unconnected, which the checks report).
    pub async fn start_lasting(
        ws: &str,
        agents: Vec<Agent>,
        topics: usize,
        topic_spectators: usize,
        firehose_spectators: usize,
        lasting: Duration,
    ) -> Load {
        let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (done, done_rx) = watch::channel::<Targets>(None);
        let mut spectators = Vec::new();
        for s in 0..topic_spectators + firehose_spectators {
            let channels = (s < topic_spectators).then(|| {
                let mut chs = vec![channel(s % topics)];
                if s % 2 == 1 {
                    chs.push(channel((s + 1) % topics));
                }
                chs
            });
            spectators.push(tokio::spawn(spectate(
                format!("spectator{s:03}"),
                channels,
                ws.to_string(),
                live.clone(),
                done_rx.clone(),
                lasting,
            )));
        }
        let all = topic_spectators + firehose_spectators;
        let deadline = Instant::now() + Duration::from_secs(30);
        while live.load(std::sync::atomic::Ordering::Relaxed) < all {
            assert!(
                Instant::now() < deadline,
                "spectators did not all subscribe"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pool: Pool = Arc::new((0..topics).map(|_| Mutex::new(Vec::new())).collect());
        let (stop, stop_rx) = watch::channel(false);
        let writers = agents
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                tokio::spawn(write(
                    i,
                    a,
                    ws.to_string(),
                    pool.clone(),
                    stop_rx.clone(),
                    lasting,
                ))
            })
            .collect();
        Load {
            writers,
            spectators,
            stop,
            done,
        }
    }

    /// Stops the writers, reads what `db_url` holds, and waits (a minute at most) until
    /// every spectator has every stored event.
    pub async fn finish(self, db_url: &str) -> Outcome {
        let _ = self.stop.send(true);
        let stopped_at = now_ms();
        let mut wrote = Vec::new();
        for w in self.writers {
            wrote.push(w.await.expect("writer task"));
        }
        let db = stored(db_url).await;
        let targets: HashMap<String, u64> = db
            .events
            .iter()
            .map(|(ch, e)| (ch.clone(), e.keys().last().copied().unwrap_or(0)))
            .collect();
        let _ = self.done.send(Some(Arc::new(targets)));
        let mut seen = Vec::new();
        for s in self.spectators {
            seen.push(
                tokio::time::timeout(Duration::from_secs(60), s)
                    .await
                    .expect("spectators catch up within a minute")
                    .expect("spectator task"),
            );
        }
        Outcome {
            wrote,
            seen,
            db,
            stopped_at,
        }
    }
}

impl Outcome {
    /// Everything that breaks the promise (see `check_writes`, `check_views`; no write
    /// refused but as `unavailable`; every client connected at the end), and how many
    /// unanswered writes were stored.
    pub fn problems(&self, topics: usize) -> (Vec<String>, usize) {
        let (mut problems, unanswered_stored) = check_writes(&self.wrote, &self.db);
        problems.extend(check_views(&self.seen, &self.db, topics));
        for w in &self.wrote {
            if !w.refused.is_empty() {
                problems.push(format!("{} refused: {:?}", w.handle, w.refused));
            }
            if !w.connected_at_end {
                problems.push(format!("{} is not connected at the end", w.handle));
            }
            if w.expired > 0 {
                problems.push(format!(
                    "{}: {} sessions closed for an expired token though it refreshed every {:?}",
                    w.handle, w.expired, w.refresh_every
                ));
            }
        }
        for s in &self.seen {
            if !s.connected_at_end {
                problems.push(format!("{} is not connected at the end", s.name));
            }
        }
        (problems, unanswered_stored)
    }

    /// How the spectators' connections were cut: (after a 1012, without a close frame,
    /// with another code).
    pub fn cuts(&self) -> (usize, usize, usize) {
        let cuts: Vec<Option<u16>> = self
            .seen
            .iter()
            .flat_map(|s| s.cuts.iter().copied())
            .collect();
        (
            cuts.iter().filter(|c| **c == Some(1012)).count(),
            cuts.iter().filter(|c| c.is_none()).count(),
            cuts.iter().filter(|c| c.is_some_and(|c| c != 1012)).count(),
        )
    }

    /// A spectator's way back after a cut, median and max in ms: (connect, resubscribe).
    pub fn comebacks(&self) -> ((u128, u128), (u128, u128)) {
        let mut comebacks: Vec<(Duration, Duration)> = self
            .seen
            .iter()
            .flat_map(|s| s.comebacks.iter().copied())
            .collect();
        let ms = |d: Duration| d.as_millis();
        comebacks.sort_unstable_by_key(|c| c.0);
        let connect = (
            comebacks.get(comebacks.len() / 2).map_or(0, |c| ms(c.0)),
            comebacks.last().map_or(0, |c| ms(c.0)),
        );
        comebacks.sort_unstable_by_key(|c| c.1);
        let resub = (
            comebacks.get(comebacks.len() / 2).map_or(0, |c| ms(c.1)),
            comebacks.last().map_or(0, |c| ms(c.1)),
        );
        (connect, resub)
    }
}
