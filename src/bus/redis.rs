//! The Redis bus: how replicas sharing one Redis hear each other. It owns the Redis side of
//! a replica: the pub/sub link (one Redis channel per Carapace channel, subscribed only while
//! a local session wants it, a pattern for the firehose, a control channel), publishing, the
//! presence sets and the shared rate-limit buckets. It does not order events or remember
//! them: the Hub orders, the Store remembers.
//!
//! Names: everything lives under `carapace:<cluster id>:` (the id is kept in the database, so
//! every replica of one deployment agrees on it and two deployments on one Redis never hear
//! each other): `ch:<channel>` (e.g. `ch:topic:philosophy`), `control`, `presence:<channel>`,
//! `rl:<action>:<agent id>`.
//!
//! Wire: `1\n<origin>\n<channel>\n<seq>\n<frame>`, where origin names the publishing process
//! (a replica ignores its own messages: it delivered them to its Hub already, without a round
//! trip) and frame is the push exactly as sessions send it. Control messages use the same
//! shape with channel `control`, seq 0 and the JSON of a `Control`.
//!
//! Faults: one supervisor task owns the subscriber connection. When it drops, the bus reports
//! unhealthy, reconnects with exponential backoff and jitter, subscribes to everything wanted,
//! then calls `on_resync` so the Hub catches up from the Store: nothing published meanwhile is
//! lost, it is in the Store. Publishes made while Redis is unreachable are kept in a bounded
//! outbox and sent when it answers again, so replicas that stayed connected still hear them.
//! Every `SWEEP_EVERY` the Hub also catches up from the Store, for the one loss nothing else
//! reveals: a replica that died between its commit and its publish, on a quiet channel.

use super::{Bus, BusError, BusHandler, Control, Event};
use crate::metrics::Metrics;
use crate::protocol::Channel;
use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Connecting (TCP and handshake) may take this long before it counts as a failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Any one Redis command may take this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// The subscriber link pings this often, so a silent Redis is noticed within seconds.
const PING_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long `subscribe` waits for Redis to confirm before it returns anyway (the
/// subscription stays wanted, and a reconnect plus resync cover the rest).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);
/// Subscription changes waiting for the link; past this the link is rebuilt from scratch.
const OPS_QUEUE: usize = 1024;
/// Publishes kept while Redis is unreachable; the oldest go first past this.
const OUTBOX_MAX: usize = 10_000;
/// Presence entries live this long unless their replica refreshes them.
const PRESENCE_TTL: Duration = Duration::from_secs(30);
const PRESENCE_HEARTBEAT: Duration = Duration::from_secs(10);
/// A replica that dies between commit and publish leaves its event only in the Store; on a
/// busy channel the next event's gap fill brings it, on a quiet one this periodic catch-up
/// does (late, but in order).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RedisBusError {
    #[error("invalid Redis URL: {0}")]
    Url(String),
}

/// Key and channel names under the deployment's prefix.
struct Names {
    prefix: String,
}

impl Names {
    fn channel(&self, c: &Channel) -> String {
        match c {
            Channel::Firehose => format!("{}ch:topic:*", self.prefix),
            c => format!("{}ch:{c}", self.prefix),
        }
    }
    fn control(&self) -> String {
        format!("{}control", self.prefix)
    }
    fn presence(&self, c: &Channel) -> String {
        format!("{}presence:{c}", self.prefix)
    }
    fn rate(&self, action: &str, agent_id: &str) -> String {
        format!("{}rl:{action}:{agent_id}", self.prefix)
    }
}

/// One message on the wire, borrowed from the payload.
#[derive(Debug, PartialEq)]
struct Wire<'a> {
    origin: &'a str,
    channel: &'a str,
    seq: u64,
    body: &'a [u8],
}

const WIRE_VERSION: &str = "1";
const CONTROL: &str = "control";

impl<'a> Wire<'a> {
    fn encode(origin: &str, channel: &str, seq: u64, body: &[u8]) -> Vec<u8> {
        let head = format!("{WIRE_VERSION}\n{origin}\n{channel}\n{seq}\n");
        let mut v = Vec::with_capacity(head.len() + body.len());
        v.extend_from_slice(head.as_bytes());
        v.extend_from_slice(body);
        v
    }

    fn decode(payload: &'a [u8]) -> Option<Wire<'a>> {
        let mut parts = payload.splitn(5, |b| *b == b'\n');
        let version = parts.next()?;
        if version != WIRE_VERSION.as_bytes() {
            return None;
        }
        let origin = std::str::from_utf8(parts.next()?).ok()?;
        let channel = std::str::from_utf8(parts.next()?).ok()?;
        let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let body = parts.next()?;
        Some(Wire {
            origin,
            channel,
            seq,
            body,
        })
    }
}

/// A change of what the link is subscribed to, applied in the order it was decided.
enum SubOp {
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
    PSubscribe(String, oneshot::Sender<()>),
    PUnsubscribe(String),
}

/// What this replica wants to hear, and the way to tell the live link about changes.
#[derive(Default)]
struct Wanted {
    /// Redis channel or pattern → (how many times it is wanted, whether it is a pattern).
    /// The Hub calls `subscribe` on a channel's first local subscriber and `unsubscribe` on
    /// its last, but those calls can cross on their way here, so counting (not a set) keeps
    /// the outcome right.
    counts: HashMap<String, (usize, bool)>,
    /// The live link's queue; `None` while disconnected (the next link subscribes to
    /// everything in `counts` at once).
    link: Option<mpsc::Sender<SubOp>>,
}

/// Agents of this replica present on topics, and what Redis still has to learn.
#[derive(Default)]
struct PresenceLocal {
    /// presence key → handle → local sessions.
    members: HashMap<String, HashMap<String, usize>>,
    /// Joined since the last flush.
    joined: HashSet<(String, String)>,
    /// Left (no local session any more) since the last flush.
    left: HashSet<(String, String)>,
}

struct Shared {
    client: redis::Client,
    /// Commands (publish, presence, rate limits); reconnects by itself.
    conn: ConnectionManager,
    names: Names,
    /// This process, on the wire: replica id plus a random tag, so two processes
    /// misconfigured with one replica id still hear each other.
    origin: String,
    handler: OnceLock<Weak<dyn BusHandler>>,
    wanted: Mutex<Wanted>,
    up: AtomicBool,
    outbox: Mutex<VecDeque<(String, Vec<u8>)>>,
    presence: Mutex<PresenceLocal>,
    presence_wake: Notify,
    limiter: redis::Script,
    metrics: Arc<Metrics>,
}

/// The bus of a replica among many, over Redis pub/sub.
pub struct RedisBus {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A poisoned lock only means another thread panicked mid-update of plain data; carry on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// GCRA over one key: the theoretical arrival time in ms, in Redis's own clock so replicas'
/// clocks do not matter. Returns 0 when allowed, else the milliseconds to wait.
const GCRA: &str = r#"
-- Redis 5 and 6 refuse a write after TIME unless effects are replicated; 7 always does.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if allow_at > now then
  return allow_at - now
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, new_tat - now))
return 0
"#;

impl RedisBus {
    /// Prepares the bus and starts its background tasks; it does not wait for Redis (a
    /// replica starts, serves what it can and reports unready until Redis answers).
    pub fn start(
        url: &str,
        cluster_id: &str,
        replica_id: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RedisBus>, RedisBusError> {
        // The error text of a bad URL could echo a password: say only what kind it was.
        // TCP_NODELAY: publishes are small writes sent as they happen, and Nagle would hold
        // one back until the reply to the one before it comes in.
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| RedisBusError::Url(format!("{:?}", e.kind())))?;
        let info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client =
            redis::Client::open(info).map_err(|e| RedisBusError::Url(format!("{:?}", e.kind())))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(BACKOFF_MAX);
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(|e| RedisBusError::Url(format!("{:?}", e.kind())))?;
        let mut tag = [0u8; 4];
        let _ = getrandom::fill(&mut tag);
        let origin = format!(
            "{}/{}",
            replica_id.replace(['\n', '|'], "_"),
            hex::encode(tag)
        );
        let shared = Arc::new(Shared {
            client,
            conn,
            names: Names {
                prefix: format!("carapace:{cluster_id}:"),
            },
            origin,
            handler: OnceLock::new(),
            wanted: Mutex::new(Wanted::default()),
            up: AtomicBool::new(false),
            outbox: Mutex::new(VecDeque::new()),
            presence: Mutex::new(PresenceLocal::default()),
            presence_wake: Notify::new(),
            limiter: redis::Script::new(GCRA),
            metrics,
        });
        let (stop, stop_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(supervise(shared.clone(), stop_rx.clone())),
            tokio::spawn(presence_loop(shared.clone(), stop_rx)),
        ];
        Ok(Arc::new(RedisBus {
            shared,
            stop,
            tasks: Mutex::new(tasks),
        }))
    }

    /// Takes one unit from the shared bucket `action` of `agent_id` (`limit` per `period`):
    /// `Ok(Ok(()))` allowed, `Ok(Err(wait))` refused, `Err` when Redis cannot say.
    pub async fn take(
        &self,
        action: &str,
        agent_id: &str,
        limit: u32,
        period: Duration,
    ) -> Result<Result<(), Duration>, BusError> {
        let interval = (period.as_millis() as u64 / limit.max(1) as u64).max(1);
        let mut conn = self.shared.conn.clone();
        let mut inv = self
            .shared
            .limiter
            .key(self.shared.names.rate(action, agent_id));
        inv.arg(interval).arg(limit.max(1));
        match timeout(COMMAND_TIMEOUT, inv.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(0)) => Ok(Ok(())),
            Ok(Ok(wait)) => Ok(Err(Duration::from_millis(wait.max(1) as u64))),
            Ok(Err(e)) => Err(BusError::Unavailable(e.to_string())),
            Err(_) => Err(BusError::Unavailable("rate limit check timed out".into())),
        }
    }
}

#[async_trait::async_trait]
impl crate::ratelimit::SharedBuckets for RedisBus {
    async fn take(
        &self,
        action: &str,
        agent_id: &str,
        limit: u32,
        period: Duration,
    ) -> Result<Result<(), Duration>, String> {
        RedisBus::take(self, action, agent_id, limit, period)
            .await
            .map_err(|e| e.to_string())
    }
}

impl Shared {
    fn handler(&self) -> Option<Arc<dyn BusHandler>> {
        self.handler.get().and_then(Weak::upgrade)
    }

    /// Records that `name` is wanted once more; on the first want, tells the live link and
    /// returns the confirmation to wait for.
    fn want(&self, name: String, pattern: bool) -> Option<oneshot::Receiver<()>> {
        let mut w = lock(&self.wanted);
        let (n, _) = w.counts.entry(name.clone()).or_insert((0, pattern));
        *n += 1;
        if *n > 1 {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let op = if pattern {
            SubOp::PSubscribe(name, tx)
        } else {
            SubOp::Subscribe(name, tx)
        };
        self.send_op(&mut w, op).then_some(rx)
    }

    fn unwant(&self, name: String, pattern: bool) {
        let mut w = lock(&self.wanted);
        let Some((n, _)) = w.counts.get_mut(&name) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        w.counts.remove(&name);
        let op = if pattern {
            SubOp::PUnsubscribe(name)
        } else {
            SubOp::Unsubscribe(name)
        };
        self.send_op(&mut w, op);
    }

    /// Queues `op` for the live link, under the `wanted` lock so ops reach Redis in the order
    /// the counts changed. A full queue retires the link: the next one starts from `counts`.
    fn send_op(&self, w: &mut Wanted, op: SubOp) -> bool {
        let Some(link) = &w.link else { return false };
        if link.try_send(op).is_ok() {
            return true;
        }
        w.link = None;
        false
    }

    /// Publishes `payload` on `channel`, or keeps it for later when Redis is unreachable.
    async fn send(&self, channel: String, payload: Vec<u8>) {
        if self.up.load(Ordering::Acquire) {
            let mut conn = self.conn.clone();
            let cmd = redis::cmd("PUBLISH").arg(&channel).arg(&payload).to_owned();
            match timeout(COMMAND_TIMEOUT, cmd.query_async::<i64>(&mut conn)).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => tracing::debug!(error = %e, "publish failed; kept for later"),
                Err(_) => tracing::debug!("publish timed out; kept for later"),
            }
            self.metrics.bus_errors.inc();
        }
        let mut out = lock(&self.outbox);
        if out.len() >= OUTBOX_MAX {
            out.pop_front();
            self.metrics.bus_outbox_dropped.inc();
        }
        out.push_back((channel, payload));
    }

    /// Sends what was kept while Redis was unreachable; stops at the first failure.
    async fn flush_outbox(&self) {
        loop {
            let Some((channel, payload)) = lock(&self.outbox).pop_front() else {
                return;
            };
            let mut conn = self.conn.clone();
            let cmd = redis::cmd("PUBLISH").arg(&channel).arg(&payload).to_owned();
            if !matches!(
                timeout(COMMAND_TIMEOUT, cmd.query_async::<i64>(&mut conn)).await,
                Ok(Ok(_))
            ) {
                lock(&self.outbox).push_front((channel, payload));
                return;
            }
        }
    }

    /// One message from Redis, handed to the Hub unless it is our own echo.
    fn receive(&self, payload: &[u8]) {
        let Some(w) = Wire::decode(payload) else {
            self.metrics.bus_errors.inc();
            tracing::warn!("ignoring a malformed bus message");
            return;
        };
        if w.origin == self.origin {
            return;
        }
        let Some(h) = self.handler() else { return };
        if w.channel == CONTROL {
            match serde_json::from_slice::<Control>(w.body) {
                Ok(c) => h.on_control(c),
                Err(e) => tracing::warn!(error = %e, "ignoring an unknown control message"),
            }
            return;
        }
        let (Ok(channel), Ok(frame)) = (
            Channel::parse(w.channel),
            Utf8Bytes::try_from(w.body.to_vec()),
        ) else {
            self.metrics.bus_errors.inc();
            tracing::warn!("ignoring a bus message with a bad channel or frame");
            return;
        };
        h.on_event(Event {
            channel,
            seq: w.seq,
            frame,
        });
    }

    /// Runs one subscriber connection until it fails (`Err`) or the bus stops (`Ok`).
    async fn run_link(&self, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        let pubsub = timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sink, mut stream) = pubsub.split();
        let (tx, mut ops) = mpsc::channel(OPS_QUEUE);
        let (mut channels, mut patterns) = (Vec::new(), Vec::new());
        {
            let mut w = lock(&self.wanted);
            w.link = Some(tx);
            for (name, (_, pattern)) in &w.counts {
                if *pattern {
                    patterns.push(name.clone());
                } else {
                    channels.push(name.clone());
                }
            }
        }
        // From here on every change of `wanted` also arrives as an op, so nothing is missed
        // between this snapshot and the loop below.
        let res: Result<(), String> = async {
            command(sink.subscribe(self.names.control())).await?;
            for chunk in channels.chunks(256) {
                command(sink.subscribe(chunk)).await?;
            }
            for p in &patterns {
                command(sink.psubscribe(p)).await?;
            }
            Ok(())
        }
        .await;
        res?;
        self.up.store(true, Ordering::Release);
        self.metrics.bus_up.set(1);
        tracing::info!(
            channels = channels.len(),
            patterns = patterns.len(),
            "redis bus connected"
        );
        self.flush_outbox().await;
        if let Some(h) = self.handler() {
            h.on_resync();
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep =
            tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_EVERY, SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped(stop) => return Ok(()),
                msg = stream.next() => match msg {
                    Some(m) => self.receive(m.get_payload_bytes()),
                    None => return Err("connection lost".into()),
                },
                op = ops.recv() => match op {
                    Some(op) => apply(&mut sink, op).await?,
                    None => return Err("subscription queue overflowed; rebuilding".into()),
                },
                _ = sweep.tick() => {
                    if let Some(h) = self.handler() {
                        h.on_resync();
                    }
                }
                _ = ping.tick() => {
                    // In subscribed mode Redis answers PING with an array, not a status string.
                    command(sink.ping::<redis::Value>()).await?;
                    if !lock(&self.outbox).is_empty() {
                        self.flush_outbox().await;
                    }
                }
            }
        }
    }
}

/// Resolves once the bus is told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs a Redis command under the command timeout.
async fn command<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match timeout(COMMAND_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("command timed out".into()),
    }
}

async fn apply(sink: &mut PubSubSink, op: SubOp) -> Result<(), String> {
    match op {
        SubOp::Subscribe(name, done) => {
            command(sink.subscribe(&name)).await?;
            let _ = done.send(());
        }
        SubOp::Unsubscribe(name) => command(sink.unsubscribe(&name)).await?,
        SubOp::PSubscribe(name, done) => {
            command(sink.psubscribe(&name)).await?;
            let _ = done.send(());
        }
        SubOp::PUnsubscribe(name) => command(sink.punsubscribe(&name)).await?,
    }
    Ok(())
}

/// Keeps a subscriber link up: connect, run, and after a failure back off and start over.
async fn supervise(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut delay = BACKOFF_MIN;
    let mut ever_up = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let result = shared.run_link(&mut stop).await;
        let was_up = shared.up.swap(false, Ordering::AcqRel);
        shared.metrics.bus_up.set(0);
        lock(&shared.wanted).link = None;
        match result {
            Ok(()) => return,
            Err(e) => {
                if was_up {
                    ever_up = true;
                    delay = BACKOFF_MIN;
                    shared.metrics.bus_reconnects.inc();
                    tracing::warn!(error = %e, "redis bus disconnected; reconnecting");
                } else if !ever_up || delay >= BACKOFF_MAX {
                    // Once per attempt while starting; at the ceiling, once per attempt too
                    // (every few seconds) rather than at every quick retry.
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "redis unreachable");
                }
            }
        }
        let jitter = {
            let mut b = [0u8; 2];
            let _ = getrandom::fill(&mut b);
            Duration::from_millis(u16::from_le_bytes(b) as u64 % (delay.as_millis() as u64 / 2 + 1))
        };
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(delay + jitter) => {}
        }
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

/// Writes this replica's presence to Redis: joins and leaves as they happen, and every
/// member again on each heartbeat, so a replica that dies stops counting after the TTL.
async fn presence_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut beat = tokio::time::interval(PRESENCE_HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let full = tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = beat.tick() => true,
            _ = shared.presence_wake.notified() => false,
        };
        let (joined, left) = {
            let mut p = lock(&shared.presence);
            let joined: Vec<(String, String)> = if full {
                p.joined.clear();
                p.members
                    .iter()
                    .flat_map(|(k, hs)| hs.keys().map(move |h| (k.clone(), h.clone())))
                    .collect()
            } else {
                p.joined.drain().collect()
            };
            (joined, p.left.drain().collect::<Vec<_>>())
        };
        if joined.is_empty() && left.is_empty() {
            continue;
        }
        let expiry = crate::clock::now_ms() + PRESENCE_TTL.as_millis() as i64;
        let mut pipe = redis::pipe();
        for (key, handle) in &joined {
            let member = format!("{}|{handle}", shared.origin);
            pipe.zadd(key, member, expiry).ignore();
            pipe.pexpire(key, 2 * PRESENCE_TTL.as_millis() as i64)
                .ignore();
        }
        for (key, handle) in &left {
            pipe.zrem(key, format!("{}|{handle}", shared.origin))
                .ignore();
        }
        let mut conn = shared.conn.clone();
        if command(pipe.query_async::<()>(&mut conn)).await.is_err() {
            // Try again at the next beat; what is still local then is written in full.
            let mut p = lock(&shared.presence);
            for l in left {
                if !p.members.get(&l.0).is_some_and(|m| m.contains_key(&l.1)) {
                    p.left.insert(l);
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Bus for RedisBus {
    fn attach(&self, handler: Weak<dyn BusHandler>) {
        let _ = self.shared.handler.set(handler);
    }

    async fn subscribe(&self, channel: &Channel) -> Result<(), BusError> {
        let pattern = *channel == Channel::Firehose;
        if let Some(done) = self
            .shared
            .want(self.shared.names.channel(channel), pattern)
        {
            // Once confirmed, everything published from now on reaches us. When Redis is
            // down the want is recorded anyway: the reconnect subscribes and resyncs.
            let _ = timeout(SUBSCRIBE_WAIT, done).await;
        }
        Ok(())
    }

    async fn unsubscribe(&self, channel: &Channel) {
        let pattern = *channel == Channel::Firehose;
        self.shared
            .unwant(self.shared.names.channel(channel), pattern);
    }

    async fn publish(&self, event: Event) -> Result<(), BusError> {
        let name = event.channel.to_string();
        let payload = Wire::encode(
            &self.shared.origin,
            &name,
            event.seq,
            event.frame.as_bytes(),
        );
        let redis_channel = self.shared.names.channel(&event.channel);
        // Local subscribers first, without the round trip; our echo from Redis is ignored.
        if let Some(h) = self.shared.handler() {
            h.on_event(event);
        }
        self.shared.send(redis_channel, payload).await;
        Ok(())
    }

    async fn publish_control(&self, control: Control) -> Result<(), BusError> {
        let body = serde_json::to_vec(&control)
            .map_err(|e| BusError::Unavailable(format!("cannot encode control: {e}")))?;
        let payload = Wire::encode(&self.shared.origin, CONTROL, 0, &body);
        if let Some(h) = self.shared.handler() {
            h.on_control(control);
        }
        self.shared.send(self.shared.names.control(), payload).await;
        Ok(())
    }

    async fn healthy(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    fn presence_join(&self, channel: &Channel, handle: &str) {
        let key = self.shared.names.presence(channel);
        let mut p = lock(&self.shared.presence);
        let n = p
            .members
            .entry(key.clone())
            .or_default()
            .entry(handle.to_string())
            .or_insert(0);
        *n += 1;
        if *n == 1 {
            let entry = (key, handle.to_string());
            p.left.remove(&entry);
            p.joined.insert(entry);
            drop(p);
            self.shared.presence_wake.notify_one();
        }
    }

    fn presence_leave(&self, channel: &Channel, handle: &str) {
        let key = self.shared.names.presence(channel);
        let mut p = lock(&self.shared.presence);
        let Some(hs) = p.members.get_mut(&key) else {
            return;
        };
        let Some(n) = hs.get_mut(handle) else { return };
        *n -= 1;
        if *n > 0 {
            return;
        }
        hs.remove(handle);
        if hs.is_empty() {
            p.members.remove(&key);
        }
        let entry = (key, handle.to_string());
        p.joined.remove(&entry);
        p.left.insert(entry);
        drop(p);
        self.shared.presence_wake.notify_one();
    }

    async fn presence(&self, channel: &Channel) -> Option<Vec<String>> {
        let key = self.shared.names.presence(channel);
        let now = crate::clock::now_ms();
        let mut pipe = redis::pipe();
        pipe.zrembyscore(&key, "-inf", now).ignore();
        pipe.zrangebyscore(&key, now, "+inf");
        let mut conn = self.shared.conn.clone();
        let (members,): (Vec<String>,) = command(pipe.query_async(&mut conn)).await.ok()?;
        let mut handles: Vec<String> = members
            .iter()
            .filter_map(|m| m.rsplit_once('|').map(|(_, h)| h.to_string()))
            .collect();
        // What this replica knows itself counts even before the presence task wrote it.
        {
            let p = lock(&self.shared.presence);
            if let Some(hs) = p.members.get(&key) {
                handles.extend(hs.keys().cloned());
            }
        }
        handles.sort();
        handles.dedup();
        Some(handles)
    }

    async fn close(&self) {
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = lock(&self.tasks).drain(..).collect();
        for t in tasks {
            let _ = timeout(Duration::from_secs(2), t).await;
        }
        // Leave no presence behind; the TTL would clear it anyway, but later.
        let members: Vec<(String, String)> = {
            let p = lock(&self.shared.presence);
            p.members
                .iter()
                .flat_map(|(k, hs)| hs.keys().map(move |h| (k.clone(), h.clone())))
                .collect()
        };
        if !members.is_empty() {
            let mut pipe = redis::pipe();
            for (key, handle) in members {
                pipe.zrem(key, format!("{}|{handle}", self.shared.origin))
                    .ignore();
            }
            let mut conn = self.shared.conn.clone();
            let _ = command(pipe.query_async::<()>(&mut conn)).await;
        }
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trips_and_keeps_newlines_in_the_frame() {
        let frame = b"{\"a\":\"x\ny\"}\n";
        let p = Wire::encode("r1/abcd", "topic:general", 42, frame);
        let w = Wire::decode(&p).unwrap();
        assert_eq!(
            w,
            Wire {
                origin: "r1/abcd",
                channel: "topic:general",
                seq: 42,
                body: frame
            }
        );
    }

    #[test]
    fn wire_refuses_other_versions_and_garbage() {
        assert!(Wire::decode(b"2\no\ntopic:a\n1\n{}").is_none());
        assert!(Wire::decode(b"1\no\ntopic:a\nx\n{}").is_none());
        assert!(Wire::decode(b"1\no\ntopic:a").is_none());
        assert!(Wire::decode(b"").is_none());
    }

    #[test]
    fn names_live_under_the_cluster_prefix() {
        let n = Names {
            prefix: "carapace:c1:".into(),
        };
        assert_eq!(
            n.channel(&Channel::topic("rust")),
            "carapace:c1:ch:topic:rust"
        );
        assert_eq!(
            n.channel(&Channel::agent("sage")),
            "carapace:c1:ch:agent:sage"
        );
        assert_eq!(n.channel(&Channel::Firehose), "carapace:c1:ch:topic:*");
        assert_eq!(n.control(), "carapace:c1:control");
        assert_eq!(
            n.presence(&Channel::topic("rust")),
            "carapace:c1:presence:topic:rust"
        );
    }
}
