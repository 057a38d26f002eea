//! The Hub: per replica, the map from channel to local sessions, and the fan-out. An event
//! arrives serialized once; the Hub hands the same bytes to every local subscriber's queue.
//!
//! Order: events may reach the Hub out of `seq` order (two publishers racing, or two
//! replicas). Each channel keeps the next seq it expects and parks early arrivals; a gap that
//! does not close by itself within `GAP_WAIT` is filled from the Store, where every event was
//! committed before it was published. So every local delivery on a channel is in seq order,
//! with no gap and no duplicate.
//!
//! The fan-out itself runs on the egress shards, each for the writers it holds (see
//! `fan_outs_loop`); one queue per shard keeps every channel's events in order.
//!
//! A full session queue means a slow consumer: that session is closed with 4008, never waited
//! for. No lock here is held across an `.await`.

use crate::auth::keyring::KeyRing;
use crate::bus::{BusHandler, Control, Event, Presence, Subscriptions};
use crate::egress::{self, Egress};
use crate::metrics::Metrics;
use crate::outbox;
use crate::pacing::FlushPacer;
use crate::protocol::{Channel, CloseCode};
use crate::service::{Perimeter, Scopes};
use crate::store::Store;
use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

const GAP_WAIT: Duration = Duration::from_millis(150);
/// How long a subscriber waits for another one to find where a channel's stream starts.
const START_WAIT: Duration = Duration::from_secs(5);
/// Deliveries waiting for the fan-out beyond which publishing commands wait: about half a
/// second of a busy two-core replica's writing.
const MAX_FAN_OUT_BACKLOG: usize = 256 * 1024;
/// Most events one queue item carries, so that a session's queue bound (in items) stays
/// within a small multiple of its bound in frames.
const MAX_GROUP: usize = 8;
/// History pages read to fill gaps and replay `since`.
pub const HISTORY_PAGE: i64 = 1000;

/// What a session's writer task receives, in order.
#[derive(Debug)]
pub enum Outbound {
    /// A reply or any other ready frame.
    Frame(Utf8Bytes),
    /// Live events of one channel, in order, fanned out together (see `fan_outs_loop`);
    /// `via_firehose` when they came through the firehose subscription.
    Events {
        events: Arc<[Event]>,
        via_firehose: bool,
    },
    /// A subscription begins: live events for it are accepted from now on; with `replay`,
    /// they are held until the replay is done.
    Subscribed {
        channel: Channel,
        replay: bool,
    },
    /// Replayed history. `floor` (first page only) is the seq after which events count.
    Replay {
        channel: Channel,
        events: Vec<Event>,
        floor: Option<u64>,
        done: bool,
    },
    Unsubscribed(Channel),
    /// The answer to the client's ping.
    Pong(bytes::Bytes),
}

/// Who is behind a session, for kicks and presence. The key it answers to lives beside it in
/// `SessionShared::cred`, since a refresh with a token of another key moves the session over.
#[derive(Debug, Clone)]
pub struct AgentTag {
    pub id: String,
    pub handle: String,
}

/// The part of a session the Hub holds: its queue, its close signal, its identity.
pub struct SessionShared {
    pub id: u64,
    tx: outbox::Sender<Outbound>,
    close_tx: watch::Sender<Option<CloseCode>>,
    agent: OnceLock<AgentTag>,
    /// The API key of the latest token this session accepted: revoking it closes the session,
    /// revoking a key the session has moved away from does not.
    cred: Mutex<String>,
    /// Narrowed scopes pushed by the control channel, applied before the next command.
    scopes_update: Mutex<Option<(Scopes, Perimeter)>>,
}

impl SessionShared {
    pub fn new(id: u64, tx: outbox::Sender<Outbound>) -> Arc<SessionShared> {
        Arc::new(SessionShared {
            id,
            tx,
            close_tx: watch::channel(None).0,
            agent: OnceLock::new(),
            cred: Mutex::new(String::new()),
            scopes_update: Mutex::new(None),
        })
    }

    /// Asks the session to close with `code`; the first code asked for wins.
    pub fn close(&self, code: CloseCode) {
        self.close_tx.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(code);
                true
            } else {
                false
            }
        });
    }

    pub fn closed(&self) -> watch::Receiver<Option<CloseCode>> {
        self.close_tx.subscribe()
    }

    pub fn agent(&self) -> Option<&AgentTag> {
        self.agent.get()
    }

    pub fn set_agent(&self, tag: AgentTag, cred: &str) {
        let _ = self.agent.set(tag);
        self.bind_cred(cred);
    }

    /// Binds the session to the key of a newly accepted token.
    pub fn bind_cred(&self, cred: &str) {
        if let Ok(mut g) = self.cred.lock() {
            cred.clone_into(&mut g);
        }
    }

    /// Whether the session answers to the key `cred`.
    pub fn bound_to(&self, cred: &str) -> bool {
        self.agent.get().is_some() && self.cred.lock().is_ok_and(|g| *g == cred)
    }

    pub fn take_scopes_update(&self) -> Option<(Scopes, Perimeter)> {
        self.scopes_update.lock().ok().and_then(|mut g| g.take())
    }

    pub async fn send(&self, item: Outbound) -> bool {
        self.tx.send(item).await
    }
}

#[derive(Default)]
struct ChannelState {
    subs: Subscribers,
    /// The next seq to deliver; `None` until initialised from the Store.
    next_seq: Option<u64>,
    initializing: bool,
    /// Events that arrived ahead of `next_seq`.
    pending: BTreeMap<u64, Event>,
    gap_fill_scheduled: bool,
    /// Woken when `next_seq` is first set: subscribers that joined while another one was
    /// initialising the channel wait for it (see `Hub::subscribe`).
    started: Arc<tokio::sync::Notify>,
}

pub struct Hub {
    channels: DashMap<Channel, ChannelState>,
    firehose: RwLock<Subscribers>,
    /// agent id → its live sessions on this replica.
    agents: DashMap<String, Vec<Arc<SessionShared>>>,
    /// What this replica hears from others; `None` in-process, where it hears everything.
    subscriptions: Option<Arc<dyn Subscriptions>>,
    /// Presence across replicas; `None` when this replica's view is the whole truth.
    presence: Option<Arc<dyn Presence>>,
    store: Store,
    keys: Arc<KeyRing>,
    metrics: Arc<Metrics>,
    next_session: AtomicU64,
    /// How long writers may hold events back to batch them (see `pacing`).
    pub pacer: Arc<FlushPacer>,
    /// Where session writers run, one handle per egress shard (see `egress`).
    egress: Vec<tokio::runtime::Handle>,
    /// Events on their way to each shard's `fan_outs_loop`, which queues them for the
    /// subscribers on that shard.
    fan_outs: Vec<mpsc::UnboundedSender<FanOut>>,
    /// Deliveries handed to `fan_outs` and not yet queued: what bounds that queue.
    fan_out_backlog: Arc<AtomicUsize>,
    me: Weak<Hub>,
}

impl Hub {
    pub fn new(
        store: Store,
        keys: Arc<KeyRing>,
        subscriptions: Option<Arc<dyn Subscriptions>>,
        presence: Option<Arc<dyn Presence>>,
        metrics: Arc<Metrics>,
        egress: &mut Egress,
    ) -> Arc<Hub> {
        let fan_out_backlog = Arc::new(AtomicUsize::new(0));
        let shards = egress.shards();
        let fan_outs = (0..shards)
            .map(|i| {
                let (tx, queue) = mpsc::unbounded_channel();
                egress.drive(
                    i,
                    fan_outs_loop(
                        Shard {
                            index: i,
                            of: shards,
                        },
                        queue,
                        fan_out_backlog.clone(),
                        metrics.clone(),
                    ),
                );
                tx
            })
            .collect();
        Arc::new_cyclic(|me| Hub {
            channels: DashMap::new(),
            firehose: RwLock::new(Subscribers::default()),
            agents: DashMap::new(),
            subscriptions,
            presence,
            store,
            keys,
            metrics,
            next_session: AtomicU64::new(1),
            pacer: Arc::new(FlushPacer::default()),
            egress: egress.handles(),
            fan_outs,
            fan_out_backlog,
            me: me.clone(),
        })
    }

    pub fn new_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs the writer of session `id` on its egress shard, the one whose fan-out queues
    /// that session's events.
    pub fn spawn_writer<F>(&self, id: u64, writer: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        egress::spawn_on(&self.egress, id, writer)
    }

    /// Registers a live agent session (for kicks, presence and the access review).
    pub fn register_agent(&self, s: &Arc<SessionShared>, tag: AgentTag, cred: &str) {
        self.agents
            .entry(tag.id.clone())
            .or_default()
            .push(s.clone());
        s.set_agent(tag, cred);
    }

    /// Counts `handle` as present on `channel` (on every replica, when the bus shares it).
    pub fn presence_join(&self, channel: &Channel, handle: &str) {
        if let Some(p) = &self.presence {
            p.join(channel, handle);
        }
    }

    pub fn live_sessions(&self, agent_id: &str) -> usize {
        self.agents.get(agent_id).map(|v| v.len()).unwrap_or(0)
    }

    /// Adds `s` to `channel`'s subscribers; the first local subscriber makes the replica
    /// listen on the bus and learn where the channel's sequence stands.
    pub async fn subscribe(
        &self,
        channel: &Channel,
        s: &Arc<SessionShared>,
    ) -> Result<(), crate::service::ServiceError> {
        if *channel == Channel::Firehose {
            let first = match self.firehose.write() {
                Ok(mut f) => {
                    Arc::make_mut(&mut f).push(s.clone());
                    f.len() == 1
                }
                Err(_) => false,
            };
            if first && let Some(subs) = &self.subscriptions {
                return subs
                    .subscribe(channel)
                    .await
                    .map_err(|e| crate::service::ServiceError::Unavailable(e.to_string()));
            }
            return Ok(());
        }
        let (must_init, first, starting) = {
            let mut st = self.channels.entry(channel.clone()).or_default();
            let first = st.subs.is_empty();
            Arc::make_mut(&mut st.subs).push(s.clone());
            let init = st.next_seq.is_none() && !st.initializing;
            if init {
                st.initializing = true;
            }
            let starting = (st.next_seq.is_none() && !init).then(|| st.started.clone());
            (init, first, starting)
        };
        self.metrics.subscriptions.inc();
        if let (Channel::Topic(_), Some(a), Some(p)) = (channel, s.agent(), &self.presence) {
            p.join(channel, &a.handle);
        }
        // The bus follows local subscribers: the first one subscribes the replica (a channel
        // the firehose already follows has its seq, but no bus subscription of its own yet).
        // Neither bus fails here: an unreachable Redis records the wish and resubscribes later.
        if first && let Some(subs) = &self.subscriptions {
            subs.subscribe(channel)
                .await
                .map_err(|e| crate::service::ServiceError::Unavailable(e.to_string()))?;
        }
        if must_init && let Err(e) = self.start_seq(channel).await {
            if let Some(mut st) = self.channels.get_mut(channel) {
                st.initializing = false;
            }
            self.unsubscribe(channel, s.id).await;
            // Sessions that joined meanwhile were told they are subscribed: keep trying on
            // their behalf, or they would wait for a live stream that never starts.
            self.retry_start_seq(channel.clone());
            return Err(e);
        }
        // Another session is initialising the channel. Its start skips every event up to the
        // seq it reads then, so this session's replay (read after this returns) must reach
        // at least that far: wait for the start.
        if let Some(started) = starting
            && !self.wait_started(channel, &started).await
        {
            self.unsubscribe(channel, s.id).await;
            return Err(crate::service::ServiceError::Unavailable(format!(
                "{channel} is not ready; try again"
            )));
        }
        Ok(())
    }

    /// Whether `channel`'s stream position became known within `START_WAIT`.
    async fn wait_started(&self, channel: &Channel, started: &tokio::sync::Notify) -> bool {
        let deadline = tokio::time::Instant::now() + START_WAIT;
        loop {
            let notified = started.notified();
            tokio::pin!(notified);
            // Registered before the check, so a start between the two is not missed.
            notified.as_mut().enable();
            let known = self
                .channels
                .get(channel)
                .is_none_or(|st| st.next_seq.is_some());
            if known {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Learns where the channel's sequence stands, then releases what arrived meanwhile.
    async fn start_seq(&self, channel: &Channel) -> Result<(), crate::service::ServiceError> {
        let last = self.store.last_seq(&channel.to_string()).await?;
        let mut st = match self.channels.get_mut(channel) {
            Some(st) => st,
            None => return Ok(()),
        };
        st.initializing = false;
        st.next_seq = Some(last + 1);
        st.pending = st.pending.split_off(&(last + 1));
        self.drain_ready(channel, &mut st);
        st.started.notify_waiters();
        Ok(())
    }

    fn retry_start_seq(&self, channel: Channel) {
        let Some(hub) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let claimed = match hub.channels.get_mut(&channel) {
                    Some(mut st)
                        if st.next_seq.is_none() && !st.initializing && !st.subs.is_empty() =>
                    {
                        st.initializing = true;
                        true
                    }
                    _ => false,
                };
                if !claimed {
                    return;
                }
                match hub.start_seq(&channel).await {
                    Ok(()) => return,
                    Err(_) => {
                        if let Some(mut st) = hub.channels.get_mut(&channel) {
                            st.initializing = false;
                        }
                    }
                }
            }
        });
    }

    pub async fn unsubscribe(&self, channel: &Channel, session_id: u64) {
        if *channel == Channel::Firehose {
            let now_empty = match self.firehose.write() {
                Ok(mut f) => {
                    Arc::make_mut(&mut f).retain(|s| s.id != session_id);
                    f.is_empty()
                }
                Err(_) => false,
            };
            if now_empty {
                // Entries kept only for the firehose's ordering can go.
                self.channels
                    .retain(|_, st| !st.subs.is_empty() || st.initializing);
                if let Some(subs) = &self.subscriptions {
                    subs.unsubscribe(channel).await;
                }
            }
            return;
        }
        let (removed, last_left, now_empty) = match self.channels.get_mut(channel) {
            Some(mut st) => {
                let gone = match st.subs.iter().position(|s| s.id == session_id) {
                    Some(i) => Some(Arc::make_mut(&mut st.subs).remove(i)),
                    None => None,
                };
                if let (Channel::Topic(_), Some(a), Some(p)) = (
                    channel,
                    gone.as_ref().and_then(|g| g.agent()),
                    &self.presence,
                ) {
                    p.leave(channel, &a.handle);
                }
                let empty = st.subs.is_empty();
                (
                    gone.is_some(),
                    gone.is_some() && empty,
                    empty && !st.initializing,
                )
            }
            None => (false, false, false),
        };
        if removed {
            self.metrics.subscriptions.dec();
        }
        if now_empty {
            // Entries the firehose still needs stay, for its ordering.
            self.channels.remove_if(channel, |_, st| {
                st.subs.is_empty() && !st.initializing && !self.firehose_wants(channel)
            });
        }
        // The bus follows local subscribers exactly: one unsubscribe per first subscribe.
        if last_left && let Some(subs) = &self.subscriptions {
            subs.unsubscribe(channel).await;
        }
    }

    fn firehose_wants(&self, channel: &Channel) -> bool {
        matches!(channel, Channel::Topic(_))
            && self.firehose.read().map(|f| !f.is_empty()).unwrap_or(false)
    }

    /// Forgets a session entirely (it closed).
    pub async fn remove_session(
        &self,
        s: &Arc<SessionShared>,
        channels: impl IntoIterator<Item = Channel>,
    ) {
        for ch in channels {
            self.unsubscribe(&ch, s.id).await;
        }
        if let Some(tag) = s.agent() {
            let empty = match self.agents.get_mut(&tag.id) {
                Some(mut v) => {
                    v.retain(|x| x.id != s.id);
                    v.is_empty()
                }
                None => false,
            };
            if empty {
                self.agents.remove_if(&tag.id, |_, v| v.is_empty());
            }
        }
    }

    /// Agents subscribed to `channel` on this replica.
    pub fn local_presence(&self, channel: &Channel) -> Vec<String> {
        let mut out: Vec<String> = self
            .channels
            .get(channel)
            .map(|st| {
                st.subs
                    .iter()
                    .filter_map(|s| s.agent().map(|a| a.handle.clone()))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out.dedup();
        out
    }

    /// Agents subscribed to `channel` on every replica when the bus shares presence, else on
    /// this one.
    pub async fn presence(&self, channel: &Channel) -> Vec<String> {
        let shared = match &self.presence {
            Some(p) => p.members(channel).await,
            None => None,
        };
        shared.unwrap_or_else(|| self.local_presence(channel))
    }

    /// Delivers every event that is now in order.
    fn drain_ready(&self, channel: &Channel, st: &mut ChannelState) {
        let Some(mut next) = st.next_seq else { return };
        while let Some(ev) = st.pending.remove(&next) {
            self.fan_out(channel, &st.subs, ev);
            next += 1;
        }
        st.next_seq = Some(next);
        if !st.pending.is_empty() && !st.gap_fill_scheduled {
            st.gap_fill_scheduled = true;
            self.schedule_gap_fill(channel.clone());
        }
    }

    /// Hands `event` to the fan-out of every egress shard, with the subscriber lists as
    /// they stand now. One queue per shard for all channels keeps each channel's events in
    /// order.
    fn fan_out(&self, channel: &Channel, subs: &Subscribers, event: Event) {
        let firehose = matches!(channel, Channel::Topic(_))
            .then(|| self.firehose.read().ok().map(|f| f.clone()))
            .flatten()
            .filter(|f| !f.is_empty());
        let f = FanOut {
            subs: subs.clone(),
            firehose,
            event,
        };
        self.fan_out_backlog
            .fetch_add(f.deliveries(), Ordering::Relaxed);
        if let Some((last, others)) = self.fan_outs.split_last() {
            for q in others {
                let _ = q.send(f.clone());
            }
            let _ = last.send(f);
        }
    }

    /// Waits while the fan-out is far behind, so that publishers slow down to what the
    /// writers sustain instead of piling events up in front of them.
    pub async fn fan_out_room(&self) {
        while self.fan_out_backlog.load(Ordering::Relaxed) > MAX_FAN_OUT_BACKLOG {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Starts a channel the firehose alone follows at its lowest pending seq, once early
    /// arrivals had their chance to come in.
    fn schedule_firehose_start(&self, channel: Channel) {
        let Some(hub) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            tokio::time::sleep(GAP_WAIT).await;
            let Some(mut st) = hub.channels.get_mut(&channel) else {
                return;
            };
            if st.next_seq.is_some() || !st.initializing {
                return;
            }
            st.initializing = false;
            st.next_seq = st.pending.keys().next().copied();
            hub.drain_ready(&channel, &mut st);
            st.started.notify_waiters();
        });
    }

    fn schedule_gap_fill(&self, channel: Channel) {
        let Some(hub) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            tokio::time::sleep(GAP_WAIT).await;
            hub.fill_gap(&channel).await;
        });
    }

    /// Reads the missing events from the Store and feeds them through the normal path.
    async fn fill_gap(&self, channel: &Channel) {
        let from = match self.channels.get_mut(channel) {
            Some(mut st) => {
                st.gap_fill_scheduled = false;
                match (st.next_seq, st.pending.keys().next()) {
                    (Some(n), Some(_)) => n - 1,
                    _ => return,
                }
            }
            None => return,
        };
        self.catch_up(channel, from).await;
    }

    async fn catch_up(&self, channel: &Channel, mut from: u64) {
        loop {
            match crate::service::read_history(&self.store, &self.keys, channel, from, HISTORY_PAGE)
                .await
            {
                Ok(events) => {
                    let n = events.len();
                    self.metrics.gap_fills.add(n as u64);
                    for ev in events {
                        from = ev.seq;
                        self.on_event(ev);
                    }
                    if (n as i64) < HISTORY_PAGE {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "gap fill failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if !self.channels.contains_key(channel) {
                        return;
                    }
                }
            }
        }
    }
}

impl BusHandler for Hub {
    fn on_event(&self, event: Event) {
        let channel = event.channel.clone();
        let firehose_live = matches!(channel, Channel::Topic(_)) && self.firehose_wants(&channel);
        let mut st = if firehose_live {
            // The firehose needs ordering on every topic, subscribed or not. A topic's first
            // events can arrive out of order (two replicas publishing at once), so its stream
            // starts at the lowest seq seen within GAP_WAIT of the first, not at the first.
            self.channels.entry(channel.clone()).or_insert_with(|| {
                self.schedule_firehose_start(channel.clone());
                ChannelState {
                    initializing: true,
                    ..Default::default()
                }
            })
        } else {
            match self.channels.get_mut(&channel) {
                Some(st) => st,
                None => return,
            }
        };
        if st.next_seq.is_some_and(|n| event.seq < n) {
            return;
        }
        st.pending.insert(event.seq, event);
        self.drain_ready(&channel, &mut st);
    }

    fn on_control(&self, control: Control) {
        match control {
            Control::KickAgent { agent_id } => {
                if let Some(v) = self.agents.get(&agent_id) {
                    for s in v.iter() {
                        s.close(CloseCode::Revoked);
                    }
                }
            }
            Control::KickCredential { cred_id } => {
                for v in self.agents.iter() {
                    for s in v.iter().filter(|s| s.bound_to(&cred_id)) {
                        s.close(CloseCode::Revoked);
                    }
                }
            }
            Control::Scopes {
                agent_id,
                scopes,
                topics,
            } => {
                let scopes = Scopes::from_stored(&scopes.join(" "));
                let topics = Perimeter::from_stored(&topics.join(" "));
                if let Some(v) = self.agents.get(&agent_id) {
                    for s in v.iter() {
                        if let Ok(mut g) = s.scopes_update.lock() {
                            *g = Some((scopes, topics.clone()));
                        }
                    }
                }
            }
        }
    }

    fn on_resync(&self) {
        let Some(hub) = self.me.upgrade() else { return };
        let todo: Vec<(Channel, u64)> = self
            .channels
            .iter()
            .filter_map(|e| e.next_seq.map(|n| (e.key().clone(), n - 1)))
            .collect();
        tokio::spawn(async move {
            for (ch, from) in todo {
                hub.catch_up(&ch, from).await;
            }
        });
    }
}

/// A channel's local subscribers, shared with the fan-outs in flight: a subscribe or an
/// unsubscribe copies the list only while a fan-out still holds the old one.
type Subscribers = Arc<Vec<Arc<SessionShared>>>;

/// One event to queue for a channel's subscribers and, for a topic, the firehose's.
#[derive(Clone)]
struct FanOut {
    subs: Subscribers,
    firehose: Option<Subscribers>,
    event: Event,
}

impl FanOut {
    /// The deliveries it stands for in the backlog, on all shards (the lists are snapshots:
    /// this does not change between queueing and fan-out).
    fn deliveries(&self) -> usize {
        self.subs.len() + self.firehose.as_ref().map_or(0, |f| f.len())
    }

    /// Whether it goes to exactly these lists. The same snapshot means the same sessions: a
    /// list changes by copy while any fan-out holds it.
    fn same_audience(&self, subs: &Subscribers, firehose: Option<&Subscribers>) -> bool {
        Arc::ptr_eq(&self.subs, subs)
            && match (self.firehose.as_ref(), firehose) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

/// Which egress shard a fan-out loop serves, out of how many.
struct Shard {
    index: usize,
    of: usize,
}

impl Shard {
    /// Whether session `id`'s writer runs on this shard (see `Hub::spawn_writer`).
    fn holds(&self, id: u64) -> bool {
        self.of == 1 || egress::shard_of(id, self.of) == self.index
    }
}

/// Queues each event for the subscribers on one egress shard, on that shard's thread: the
/// frame's reference count, the queues and the writers' wake-ups then stay on the thread
/// that writes, instead of bouncing between cores once per delivery.
///
/// Events that arrive together for the same audience go to each subscriber as one queue
/// item: each queue item costs a subscriber a lock, a push, a wake-up and a reference count,
/// about as much as the write of its frame. Since the shard polls this loop first,
/// events rarely wait for it long enough to group; a burst from several publishers does.
async fn fan_outs_loop(
    shard: Shard,
    mut queue: mpsc::UnboundedReceiver<FanOut>,
    backlog: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(64);
    while queue.recv_many(&mut batch, 64).await > 0 {
        let mut fan_outs = batch.drain(..).peekable();
        while let Some(first) = fan_outs.next() {
            let FanOut {
                subs,
                firehose,
                event,
            } = first;
            let mut events = vec![event];
            while events.len() < MAX_GROUP
                && let Some(next) = fan_outs.next_if(|f| {
                    f.same_audience(&subs, firehose.as_ref())
                        && f.event.channel == events[0].channel
                })
            {
                events.push(next.event);
            }
            let events: Arc<[Event]> = events.into();
            let audience = subs.iter().map(|s| (s, false));
            let audience =
                audience.chain(firehose.iter().flat_map(|l| l.iter()).map(|s| (s, true)));
            let (mut mine, mut queued) = (0, 0);
            for (s, via_firehose) in audience.filter(|(s, _)| shard.holds(s.id)) {
                mine += 1;
                queued += u64::from(deliver(&metrics, s, &events, via_firehose));
            }
            metrics.deliveries.add(queued * events.len() as u64);
            backlog.fetch_sub(mine * events.len(), Ordering::Relaxed);
        }
    }
}

/// Queues `events` for `s`; whether they were queued. The caller counts deliveries, once per
/// fan-out: one shared counter bumped per subscriber cost more than the queueing.
fn deliver(
    metrics: &Metrics,
    s: &SessionShared,
    events: &Arc<[Event]>,
    via_firehose: bool,
) -> bool {
    match s.tx.try_send(Outbound::Events {
        events: events.clone(),
        via_firehose,
    }) {
        Ok(()) => true,
        Err(outbox::TrySendError::Full) => {
            metrics.queue_drops.inc();
            s.close(CloseCode::TooSlow);
            false
        }
        Err(outbox::TrySendError::Closed) => false,
    }
}
