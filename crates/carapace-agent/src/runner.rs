//! One agent's life: the connection loop (token exchange, connect, subscribe with `since`,
//! refresh before expiry, reconnect with backoff) and the behaviour on top of it (post on a
//! schedule, react to what it reads after a pause, answer replies and private messages).
//!
//! Everything runs in one task over one `Client`: reading pushes and acting are interleaved
//! through a queue of scheduled actions, so there is no lock and nothing to join.

use crate::compose::{Composer, Context};
use crate::llm::Llm;
use crate::pace::{Backoff, Kind, Limits};
use crate::persona::Persona;
use crate::rng::Rng;
use crate::{AgentError, LlmConfig};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use carapace_client::{self as client, Client, ClientError, Push};
use serde::Serialize;
use serde_json::{Value, json};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Close codes after which a person or a new credential is needed (SPEC section 5).
const NO_RECONNECT: [u16; 4] = [1009, 4000, 4001, 4003];
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pending reactions beyond this are dropped: an agent back from a long disconnect should
/// not spend an hour answering yesterday.
const MAX_QUEUE: usize = 100;
/// Private messages to one peer: at most this many per `DM_WINDOW` (two agents answering
/// each other must not loop forever).
const DM_PER_PEER: usize = 3;
const DM_WINDOW: Duration = Duration::from_secs(600);
/// Recent posts read on the first connection, per topic, to have something to react to.
const RECENT_POSTS: usize = 5;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `http://host:port`
    pub http_base: String,
    /// `ws://host:port/ws`
    pub ws_url: String,
    pub api_key: String,
    /// A file holding the key, read again at every token exchange: an owner rotating keys
    /// writes the new key there, and the next refresh moves the live session onto it.
    pub key_file: Option<std::path::PathBuf>,
    pub persona: Persona,
    pub llm: Option<LlmConfig>,
    pub duration: Option<Duration>,
    /// Log each action at debug instead of info (the demo's agents, inside the hub's log).
    pub quiet: bool,
}

impl AgentConfig {
    pub fn new(
        hub: &str,
        api_key: &str,
        persona: Persona,
        llm: Option<LlmConfig>,
    ) -> Result<AgentConfig, AgentError> {
        let (http_base, ws_url) = hub_urls(hub)?;
        Ok(AgentConfig {
            http_base,
            ws_url,
            api_key: api_key.trim().to_string(),
            key_file: None,
            persona,
            llm,
            duration: None,
            quiet: false,
        })
    }

    pub fn with_duration(mut self, d: Option<Duration>) -> AgentConfig {
        self.duration = d;
        self
    }

    pub fn with_key_file(mut self, path: Option<std::path::PathBuf>) -> AgentConfig {
        self.key_file = path;
        self
    }

    /// The key to exchange now: the key file's content when there is one.
    fn current_key(&self) -> Result<String, Failure> {
        match &self.key_file {
            None => Ok(self.api_key.clone()),
            Some(path) => std::fs::read_to_string(path)
                .map(|k| k.trim().to_string())
                .map_err(|e| Failure::Transient(format!("key file {}: {e}", path.display()))),
        }
    }
}

/// `http://h:p`, `http://h:p/`, `ws://h:p/ws` → (`http://h:p`, `ws://h:p/ws`).
fn hub_urls(hub: &str) -> Result<(String, String), AgentError> {
    let hub = hub.trim().trim_end_matches('/');
    let host = if let Some(h) = hub.strip_prefix("http://") {
        h
    } else if let Some(h) = hub.strip_prefix("ws://") {
        h.strip_suffix("/ws").unwrap_or(h)
    } else {
        return Err(AgentError::HubUrl(format!(
            "'{hub}': use http://host:port (TLS is for a proxy in front of the hub)"
        )));
    };
    if host.is_empty() || host.contains('/') {
        return Err(AgentError::HubUrl(format!(
            "'{hub}': expected http://host:port"
        )));
    }
    Ok((format!("http://{host}"), format!("ws://{host}/ws")))
}

/// What an agent did, printed by `carapace agent` as its last line and read by the tests.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub handle: String,
    pub posts: u64,
    pub comments: u64,
    pub votes: u64,
    pub dms: u64,
    pub topics_created: u64,
    pub pushes: u64,
    pub token_exchanges: u64,
    pub refreshes: u64,
    /// Sessions the hub accepted (WebSocket open and authenticated), set up or not.
    pub connections: u64,
    /// `connections` after the first.
    pub reconnects: u64,
    /// `rate_limited` answers from the hub (a well-paced agent keeps this at 0).
    pub rate_limited: u64,
    /// Other refused commands (a post removed meanwhile, a perimeter, ...).
    pub refused: u64,
    pub llm_calls: u64,
    pub llm_failures: u64,
    /// The close codes the hub sent, in order.
    pub closes: Vec<u16>,
}

pub struct Report {
    pub stats: Stats,
    /// Why the agent stopped early; `None` when it ran its duration or was asked to stop.
    pub error: Option<AgentError>,
}

/// Runs one agent until `stop` flips (or its sender is dropped), its duration ends, or the
/// hub refuses it for good.
pub async fn run(cfg: AgentConfig, mut stop: watch::Receiver<bool>) -> Report {
    let mut agent = match Agent::new(cfg) {
        Ok(a) => a,
        Err(e) => {
            return Report {
                stats: Stats::default(),
                error: Some(e),
            };
        }
    };
    let error = agent.run(&mut stop).await.err();
    agent.stats.llm_calls = agent.composer.llm_calls;
    agent.stats.llm_failures = agent.composer.llm_failures;
    Report {
        stats: agent.stats,
        error,
    }
}

#[derive(Debug, Clone)]
enum Action {
    Post,
    Comment {
        post_id: String,
        parent_id: Option<String>,
        author: String,
        topic: String,
        title: String,
        body: String,
    },
    Vote {
        target: String,
        value: i8,
    },
    Dm {
        to: String,
        text: String,
        answering: bool,
    },
}

impl Action {
    fn kind(&self) -> Kind {
        match self {
            Action::Post => Kind::Post,
            Action::Comment { .. } => Kind::Comment,
            Action::Vote { .. } => Kind::Vote,
            Action::Dm { .. } => Kind::Dm,
        }
    }
}

struct Scheduled {
    due: Instant,
    order: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.order) == (o.due, o.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.order).cmp(&(o.due, o.order))
    }
}

/// Why one connection ended.
enum Failure {
    Fatal(AgentError),
    Transient(String),
}

enum SessionEnd {
    Stop,
    Lost(ClientError),
}

struct Agent {
    cfg: AgentConfig,
    /// The handle the key belongs to (from the token), which may differ from the persona's.
    me: String,
    composer: Composer,
    rng: Rng,
    limits: Limits,
    queue: BinaryHeap<Reverse<Scheduled>>,
    order: u64,
    stats: Stats,
    /// Topics subscribed in the current connection (those that exist).
    topics: Vec<String>,
    /// Last seq seen per channel, carried across connections for `since`.
    last_seq: HashMap<String, u64>,
    /// Posts and comments already reacted to (keys `p:`, `c:`, `r:` + id).
    seen: HashSet<String>,
    voted: HashSet<String>,
    /// My comments per post.
    commented: HashMap<String, u32>,
    dm_sent: HashMap<String, VecDeque<Instant>>,
    next_post: Instant,
    posts_scheduled: u64,
    deadline: Option<Instant>,
    backoff: Backoff,
    fetched_recent: bool,
}

impl Agent {
    fn new(cfg: AgentConfig) -> Result<Agent, AgentError> {
        let llm = cfg.llm.clone().map(Llm::new).transpose()?;
        let mut rng = Rng::from_entropy();
        let now = Instant::now();
        // The first post comes soon, so that a newcomer sees life at once.
        let first = Duration::from_secs_f64(rng.range(
            1.0,
            (cfg.persona.pace.post_every_secs * 0.3).clamp(1.5, 10.0),
        ));
        Ok(Agent {
            me: cfg.persona.handle.clone(),
            composer: Composer::new(cfg.persona.clone(), llm),
            stats: Stats {
                handle: cfg.persona.handle.clone(),
                ..Stats::default()
            },
            deadline: cfg.duration.map(|d| now + d),
            cfg,
            rng,
            limits: Limits::new(),
            queue: BinaryHeap::new(),
            order: 0,
            topics: Vec::new(),
            last_seq: HashMap::new(),
            seen: HashSet::new(),
            voted: HashSet::new(),
            commented: HashMap::new(),
            dm_sent: HashMap::new(),
            next_post: now + first,
            posts_scheduled: 0,
            backoff: Backoff::default(),
            fetched_recent: false,
        })
    }

    fn note(&self, what: &str, detail: &str) {
        if self.cfg.quiet {
            tracing::debug!(agent = %self.me, "{what} {detail}");
        } else {
            tracing::info!(agent = %self.me, "{what} {detail}");
        }
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    async fn run(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), AgentError> {
        loop {
            if *stop.borrow() || self.past_deadline() {
                return Ok(());
            }
            match self.connection(stop).await {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(e)) => {
                    tracing::error!(agent = %self.me, error = %e, "giving up");
                    return Err(e);
                }
                Err(Failure::Transient(_)) if *stop.borrow() => return Ok(()),
                Err(Failure::Transient(why)) => {
                    let delay = self.backoff.next_delay(&mut self.rng);
                    tracing::info!(agent = %self.me, %why, ?delay, "disconnected; reconnecting after a pause");
                    let until = match self.deadline {
                        Some(d) => d.min(Instant::now() + delay),
                        None => Instant::now() + delay,
                    };
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                    }
                }
            }
        }
    }

    /// One connection, from token exchange to its end.
    async fn connection(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), Failure> {
        let (token, expires) = self.exchange().await?;
        let mut c = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Client::connect(&self.cfg.ws_url, Some(&token)),
        )
        .await
        .map_err(|_| Failure::Transient("connect timed out".into()))?
        .map_err(|e| Failure::Transient(format!("connect: {e}")))?;
        c.last_seq = self.last_seq.clone();
        // Counted once the hub has accepted the session, not after setup: the hub already
        // lists the agent as present while its subscribes are in flight, and a session cut
        // then was still a session.
        self.stats.connections += 1;
        if self.stats.connections > 1 {
            self.stats.reconnects += 1;
        }
        let setup = self.setup(&mut c).await;
        let end = match setup {
            Ok(()) => {
                self.backoff.reset();
                self.note("connected", &format!("topics {:?}", self.topics));
                if !self.fetched_recent {
                    self.fetched_recent = true;
                    self.fetch_recent().await;
                }
                self.serve(&mut c, expires, stop).await
            }
            Err(e) => SessionEnd::Lost(e),
        };
        self.last_seq = c.last_seq.clone();
        match end {
            SessionEnd::Stop => {
                c.close().await;
                Ok(())
            }
            SessionEnd::Lost(e) => Err(self.classify(e)),
        }
    }

    fn classify(&mut self, e: ClientError) -> Failure {
        if let ClientError::Closed {
            code: Some(code),
            reason,
        } = &e
        {
            self.stats.closes.push(*code);
            if NO_RECONNECT.contains(code) {
                return Failure::Fatal(AgentError::Closed {
                    code: *code,
                    reason: reason.clone(),
                });
            }
        }
        Failure::Transient(e.to_string())
    }

    /// POST /api/v1/token: the JWT and when it expires.
    async fn exchange(&mut self) -> Result<(String, Instant), Failure> {
        let key = self.cfg.current_key()?;
        let r = client::http(
            &self.cfg.http_base,
            "POST",
            "/api/v1/token",
            Some(&key),
            None,
        )
        .await
        .map_err(|e| Failure::Transient(format!("token exchange: {e}")))?;
        if r.status == 401 || r.status == 403 {
            let msg = r.body["error"]["message"]
                .as_str()
                .unwrap_or("refused")
                .to_string();
            return Err(Failure::Fatal(AgentError::KeyRejected(msg)));
        }
        let token = r.body["token"]
            .as_str()
            .ok_or_else(|| Failure::Transient(format!("token exchange answered {}", r.status)))?
            .to_string();
        self.stats.token_exchanges += 1;
        if let Some(h) = token_handle(&token)
            && h != self.me
        {
            if self.stats.token_exchanges == 1 {
                tracing::warn!(persona = %self.me, key = %h, "the key belongs to another handle than the persona's; acting as the key's agent");
            }
            self.me = h.clone();
            self.stats.handle = h;
        }
        let left = r.body["expires_at"]
            .as_str()
            .and_then(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|t| (t - time::OffsetDateTime::now_utc()).whole_seconds())
            .unwrap_or(60)
            .max(1) as u64;
        Ok((token, Instant::now() + Duration::from_secs(left)))
    }

    /// When to refresh a token that expires at `expires`: a minute ahead, or after two
    /// thirds of its life when it is short.
    fn refresh_at(expires: Instant) -> Instant {
        let left = expires.saturating_duration_since(Instant::now());
        let ahead = left
            .saturating_sub(Duration::from_secs(60))
            .max(left.mul_f64(2.0 / 3.0));
        Instant::now() + ahead.max(Duration::from_millis(500))
    }

    /// Subscribes to the private channel and the persona's topics, each resuming after the
    /// last seq seen; creates missing topics when the agent may.
    async fn setup(&mut self, c: &mut Client) -> Result<(), ClientError> {
        let mine = format!("agent:{}", self.me);
        let since = c.last_seq.get(&mine).copied();
        c.subscribe(&mine, since).await?;
        self.topics.clear();
        for t in self.cfg.persona.topics.clone() {
            let ch = format!("topic:{t}");
            let since = c.last_seq.get(&ch).copied();
            match c.subscribe(&ch, since).await {
                Ok(_) => self.topics.push(t),
                Err(e) if e.code() == Some("not_found") => {
                    if self.create_topic(c, &t).await? {
                        c.subscribe(&ch, None).await?;
                        self.topics.push(t);
                    }
                }
                Err(e) if e.is_disconnect() => return Err(e),
                Err(e) => {
                    tracing::warn!(agent = %self.me, topic = %t, error = %e, "cannot subscribe")
                }
            }
        }
        if self.topics.is_empty() {
            tracing::warn!(agent = %self.me, "none of the persona's topics is available: only answering");
        }
        Ok(())
    }

    /// True when the topic exists now (created by us or by someone faster).
    async fn create_topic(&mut self, c: &mut Client, name: &str) -> Result<bool, ClientError> {
        if self.limits.take(Kind::TopicCreate, Instant::now()).is_err() {
            tracing::warn!(agent = %self.me, topic = %name, "not creating topic now: too many created lately");
            return Ok(false);
        }
        let info = self.cfg.persona.topic_info(name);
        let r = c
            .command(
                "topic.create",
                json!({"name": name, "title": info.title, "description": info.description}),
            )
            .await;
        match r {
            Ok(_) => {
                self.stats.topics_created += 1;
                self.note("created topic", name);
                Ok(true)
            }
            Err(e) if e.code() == Some("conflict") => Ok(true),
            Err(e) if e.is_disconnect() => Err(e),
            Err(e) => {
                self.count_refusal(&e, Kind::TopicCreate);
                tracing::warn!(agent = %self.me, topic = %name, error = %e, "cannot create topic");
                Ok(false)
            }
        }
    }

    /// Recent posts of its topics, read once, so that an agent joining a quiet hub has
    /// something to answer.
    async fn fetch_recent(&mut self) {
        for t in self.topics.clone() {
            let path = format!("/api/v1/topics/{t}/posts?sort=new&limit={RECENT_POSTS}");
            let Ok(r) = client::http(&self.cfg.http_base, "GET", &path, None, None).await else {
                continue;
            };
            for p in r.body["posts"].as_array().cloned().unwrap_or_default() {
                self.on_post(&p);
            }
        }
    }

    async fn serve(
        &mut self,
        c: &mut Client,
        expires: Instant,
        stop: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let mut refresh_at = Self::refresh_at(expires);
        loop {
            if self.past_deadline() || *stop.borrow() {
                return SessionEnd::Stop;
            }
            let now = Instant::now();
            if now >= refresh_at {
                refresh_at = match self.refresh(c).await {
                    Ok(at) => at,
                    Err(Some(e)) => return SessionEnd::Lost(e),
                    Err(None) => now + Duration::from_secs(2),
                };
            }
            // One post at a time in the queue: a persona more eager than the rate limits
            // waits for its turn instead of piling posts up.
            let post_queued = self
                .queue
                .iter()
                .any(|Reverse(s)| matches!(s.action, Action::Post));
            if now >= self.next_post {
                if !post_queued {
                    self.schedule(now, Action::Post);
                    self.posts_scheduled += 1;
                }
                let pace = &self.cfg.persona.pace;
                let mut every = pace.post_every_secs;
                if self.posts_scheduled <= pace.warmup_posts as u64 {
                    every /= 3.0;
                }
                self.next_post = now + self.rng.around(every);
            }
            while let Some(action) = self.pop_due(Instant::now()) {
                tokio::select! {
                    r = self.execute(c, action) => if let Err(e) = r { return SessionEnd::Lost(e) },
                    _ = stop.wait_for(|s| *s) => return SessionEnd::Stop,
                }
                if self.past_deadline() {
                    return SessionEnd::Stop;
                }
            }
            let mut wake = refresh_at.min(self.next_post);
            if let Some(Reverse(s)) = self.queue.peek() {
                wake = wake.min(s.due);
            }
            if let Some(d) = self.deadline {
                wake = wake.min(d);
            }
            let wait = wake.saturating_duration_since(Instant::now());
            tokio::select! {
                r = c.next_push(wait) => match r {
                    Ok(p) => self.on_push(p),
                    Err(ClientError::Timeout) => {}
                    Err(e) => return SessionEnd::Lost(e),
                },
                _ = stop.wait_for(|s| *s) => return SessionEnd::Stop,
            }
        }
    }

    /// Exchanges the key again and hands the new token to the live session. `Err(None)`:
    /// try again shortly; `Err(Some(e))`: the connection is gone.
    async fn refresh(&mut self, c: &mut Client) -> Result<Instant, Option<ClientError>> {
        let (token, expires) = match self.exchange().await {
            Ok(x) => x,
            Err(Failure::Fatal(e)) => {
                // A revoked key: the hub closes this session itself (4003); keep serving
                // until it does.
                tracing::warn!(agent = %self.me, error = %e, "token refresh refused");
                return Err(None);
            }
            Err(Failure::Transient(why)) => {
                tracing::warn!(agent = %self.me, %why, "token refresh failed; retrying");
                return Err(None);
            }
        };
        match c.command("refresh", json!({"token": token})).await {
            Ok(_) => {
                self.stats.refreshes += 1;
                self.note("refreshed token", "");
                Ok(Self::refresh_at(expires))
            }
            Err(e) if e.is_disconnect() => Err(Some(e)),
            Err(e) => {
                tracing::warn!(agent = %self.me, error = %e, "refresh refused");
                Err(None)
            }
        }
    }

    fn schedule(&mut self, due: Instant, action: Action) {
        if self.queue.len() >= MAX_QUEUE && !matches!(action, Action::Post) {
            return;
        }
        self.order += 1;
        self.queue.push(Reverse(Scheduled {
            due,
            order: self.order,
            action,
        }));
    }

    fn after_thinking(&mut self, factor: f64) -> Instant {
        let think = self.cfg.persona.pace.think_secs * factor;
        Instant::now() + self.rng.around(think)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Action> {
        if self.queue.peek().is_some_and(|Reverse(s)| s.due <= now) {
            self.queue.pop().map(|Reverse(s)| s.action)
        } else {
            None
        }
    }

    fn count_refusal(&mut self, e: &ClientError, kind: Kind) {
        if let Some(wait) = e.retry_after() {
            self.stats.rate_limited += 1;
            self.limits.hold(kind, Instant::now(), wait);
            tracing::warn!(agent = %self.me, action = kind.name(), ?wait, "rate limited by the hub; holding");
        } else {
            self.stats.refused += 1;
        }
    }

    /// Performs one action if the pace allows (else puts it back for later).
    /// `Err` only when the connection is gone; the action is then kept for the next one.
    async fn execute(&mut self, c: &mut Client, action: Action) -> Result<(), ClientError> {
        // Skip what has become pointless before spending a token on it.
        match &action {
            Action::Vote { target, .. } if self.voted.contains(target) => return Ok(()),
            Action::Comment { post_id, .. }
                if self.comments_on(post_id) >= self.cfg.persona.pace.max_comments_per_post =>
            {
                return Ok(());
            }
            Action::Post if self.topics.is_empty() => return Ok(()),
            _ => {}
        }
        let kind = action.kind();
        if let Err(at) = self.limits.take(kind, Instant::now()) {
            let jitter = Duration::from_millis(self.rng.below(500) as u64);
            self.schedule(at + jitter, action);
            return Ok(());
        }
        let (op, fields) = match &action {
            Action::Post => {
                let topic = self.rng.pick(&self.topics).cloned().unwrap_or_default();
                let (title, body) = self.composer.post(&mut self.rng, &topic).await;
                (
                    "post",
                    json!({"topic": topic, "title": title, "body": body}),
                )
            }
            Action::Comment {
                post_id,
                parent_id,
                author,
                topic,
                title,
                body,
            } => {
                let ctx = Context {
                    author,
                    topic,
                    title,
                    body,
                };
                let text = self.composer.reply(&mut self.rng, &ctx).await;
                let mut f = json!({"post_id": post_id, "body": text});
                if let Some(p) = parent_id {
                    f["parent_id"] = p.clone().into();
                }
                ("comment", f)
            }
            Action::Vote { target, value } => ("vote", json!({"target": target, "value": value})),
            Action::Dm {
                to,
                text,
                answering,
            } => {
                let body = self.composer.dm(&mut self.rng, to, text, *answering).await;
                ("dm", json!({"to": to, "body": body}))
            }
        };
        match c.command(op, fields).await {
            Ok(r) => {
                self.done(&action, &r);
                Ok(())
            }
            Err(e) if e.is_disconnect() => {
                self.schedule(Instant::now(), action);
                Err(e)
            }
            Err(e) => {
                if let Some(wait) = e.retry_after() {
                    let jitter = Duration::from_millis(self.rng.below(500) as u64);
                    self.schedule(Instant::now() + wait + jitter, action.clone());
                }
                self.count_refusal(&e, kind);
                tracing::debug!(agent = %self.me, %op, error = %e, "refused");
                Ok(())
            }
        }
    }

    fn comments_on(&self, post_id: &str) -> u32 {
        self.commented.get(post_id).copied().unwrap_or(0)
    }

    /// Bookkeeping after the hub accepted an action.
    fn done(&mut self, action: &Action, r: &Value) {
        match action {
            Action::Post => {
                self.stats.posts += 1;
                let p = &r["post"];
                self.note(
                    "posted",
                    &format!(
                        "in {}: {}",
                        p["topic"].as_str().unwrap_or("?"),
                        p["title"].as_str().unwrap_or("")
                    ),
                );
            }
            Action::Comment {
                post_id, author, ..
            } => {
                self.stats.comments += 1;
                *self.commented.entry(post_id.clone()).or_insert(0) += 1;
                self.note("replied", &format!("to @{author}"));
            }
            Action::Vote { target, value } => {
                self.stats.votes += 1;
                self.voted.insert(target.clone());
                self.note("voted", &format!("{value:+} on {target}"));
            }
            Action::Dm { to, .. } => {
                self.stats.dms += 1;
                self.dm_sent
                    .entry(to.clone())
                    .or_default()
                    .push_back(Instant::now());
                self.note("sent a private message", &format!("to @{to}"));
            }
        }
    }

    fn dm_allowed(&mut self, to: &str) -> bool {
        let now = Instant::now();
        let sent = self.dm_sent.entry(to.to_string()).or_default();
        while sent
            .front()
            .is_some_and(|t| now.duration_since(*t) > DM_WINDOW)
        {
            sent.pop_front();
        }
        let pending = self
            .queue
            .iter()
            .filter(|Reverse(s)| matches!(&s.action, Action::Dm { to: t, .. } if t == to))
            .count();
        self.dm_sent.get(to).map_or(0, VecDeque::len) + pending < DM_PER_PEER
    }

    fn first_seen(&mut self, key: String) -> bool {
        if self.seen.len() > 20_000 {
            self.seen.clear();
        }
        self.seen.insert(key)
    }

    fn on_push(&mut self, p: Push) {
        self.stats.pushes += 1;
        let private = p.channel.strip_prefix("agent:").is_some();
        match (private, p.event.as_str()) {
            (false, "post") => self.on_post(&p.data),
            (false, "comment") => self.on_comment(&p.data),
            (true, "reply") => self.on_reply(&p.data["comment"], &p.data["post"]),
            (true, "mention") => match p.data["kind"].as_str() {
                Some("post") => self.on_post(&p.data["post"]),
                Some("comment") => self.on_reply(&p.data["comment"], &Value::Null),
                _ => {}
            },
            (true, "dm") => self.on_dm(&p.data),
            _ => {}
        }
    }

    fn on_post(&mut self, post: &Value) {
        let (Some(id), Some(author)) = (post["id"].as_str(), post["author"]["handle"].as_str())
        else {
            return;
        };
        if author == self.me || !self.first_seen(format!("p:{id}")) {
            return;
        }
        let pace = self.cfg.persona.pace.clone();
        if self.rng.chance(pace.vote_chance) {
            let value = if self.rng.chance(self.composer.builtin.voice.downvote_chance) {
                -1
            } else {
                1
            };
            let due = self.after_thinking(0.7);
            self.schedule(
                due,
                Action::Vote {
                    target: id.to_string(),
                    value,
                },
            );
        }
        if self.rng.chance(pace.reply_chance) {
            let due = self.after_thinking(1.5);
            self.schedule(
                due,
                Action::Comment {
                    post_id: id.to_string(),
                    parent_id: None,
                    author: author.to_string(),
                    topic: str_of(&post["topic"]),
                    title: str_of(&post["title"]),
                    body: str_of(&post["body"]),
                },
            );
        }
        if self.rng.chance(pace.dm_chance) && self.dm_allowed(author) {
            let due = self.after_thinking(2.5);
            let text = format!("{}\n{}", str_of(&post["title"]), str_of(&post["body"]));
            self.schedule(
                due,
                Action::Dm {
                    to: author.to_string(),
                    text,
                    answering: false,
                },
            );
        }
    }

    /// A comment seen in a topic: sometimes a vote; answers come through `reply`.
    fn on_comment(&mut self, comment: &Value) {
        let (Some(id), Some(author)) =
            (comment["id"].as_str(), comment["author"]["handle"].as_str())
        else {
            return;
        };
        if author == self.me || !self.first_seen(format!("c:{id}")) {
            return;
        }
        if self.rng.chance(self.cfg.persona.pace.vote_chance * 0.5) {
            let due = self.after_thinking(0.7);
            self.schedule(
                due,
                Action::Vote {
                    target: id.to_string(),
                    value: 1,
                },
            );
        }
    }

    /// Someone answered one of my posts or comments (or mentioned me in a comment).
    fn on_reply(&mut self, comment: &Value, post: &Value) {
        let (Some(id), Some(author), Some(post_id)) = (
            comment["id"].as_str(),
            comment["author"]["handle"].as_str(),
            comment["post_id"].as_str(),
        ) else {
            return;
        };
        if author == self.me || !self.first_seen(format!("r:{id}")) {
            return;
        }
        if self.rng.chance(self.cfg.persona.pace.answer_chance) {
            let due = self.after_thinking(1.2);
            self.schedule(
                due,
                Action::Comment {
                    post_id: post_id.to_string(),
                    parent_id: Some(id.to_string()),
                    author: author.to_string(),
                    topic: str_of(&comment["topic"]),
                    title: str_of(&post["title"]),
                    body: str_of(&comment["body"]),
                },
            );
        }
    }

    fn on_dm(&mut self, dm: &Value) {
        let (Some(from), Some(body)) = (dm["from"].as_str(), dm["body"].as_str()) else {
            return;
        };
        if from == self.me || !self.dm_allowed(from) {
            return;
        }
        let due = self.after_thinking(1.0);
        self.schedule(
            due,
            Action::Dm {
                to: from.to_string(),
                text: body.to_string(),
                answering: true,
            },
        );
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// The `handle` claim of a JWT, read without verifying it: the agent only needs to know its
/// own name; the hub verifies the token.
fn token_handle(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["handle"].as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_accept_http_and_ws_forms() {
        for h in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "ws://127.0.0.1:8080/ws",
        ] {
            assert_eq!(
                hub_urls(h).unwrap(),
                (
                    "http://127.0.0.1:8080".into(),
                    "ws://127.0.0.1:8080/ws".into()
                )
            );
        }
        for h in ["https://x", "127.0.0.1:8080", "http://", "http://a/b"] {
            assert!(hub_urls(h).is_err(), "{h}");
        }
    }

    #[test]
    fn reads_the_handle_claim() {
        let claims = URL_SAFE_NO_PAD.encode(br#"{"handle":"sage","sub":"x"}"#);
        assert_eq!(
            token_handle(&format!("h.{claims}.s")).as_deref(),
            Some("sage")
        );
        assert_eq!(token_handle("garbage"), None);
    }

    #[test]
    fn refreshes_well_before_expiry() {
        let now = Instant::now();
        let short = Agent::refresh_at(now + Duration::from_secs(9)) - now;
        assert!(
            short >= Duration::from_secs(5) && short <= Duration::from_secs(7),
            "{short:?}"
        );
        let long = Agent::refresh_at(now + Duration::from_secs(600)) - now;
        assert!(
            long >= Duration::from_secs(535) && long <= Duration::from_secs(545),
            "{long:?}"
        );
    }
}
