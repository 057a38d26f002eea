//! The Hub: per replica, the map from channel to local sessions, and the fan-out. An event
//! arrives serialized once; the Hub hands the same bytes to every local subscriber's queue.
//!
//! Order: events may reach the Hub out of `seq` order (two publishers racing, or two
//! replicas). Each channel's `Sequence` (see `channel`) knows the next seq it expects and
//! parks early arrivals; a gap that does not close by itself within `GAP_WAIT` is filled
//! from the `History`, where every event was committed before it was published. So every
//! local delivery on a channel is in seq order, with no gap and no duplicate.
//!
//! The fan-out itself runs on the egress shards, each for the writers it holds (see
//! `fan_out`); one queue per shard keeps every channel's events in order.
//!
//! A full session queue means a slow consumer: that session is closed with 4008, never waited
//! for. No lock here is held across an `.await`.

mod channel;
mod fan_out;

use crate::bus::{BusError, BusHandler, Control, Event, Presence, Subscriptions};
use crate::delivery::egress::{self, Egress};
use crate::delivery::pacing::FlushPacer;
use crate::delivery::{AgentTag, SessionShared};
use crate::history::{self, History, HistoryError};
use crate::metrics::Metrics;
use crate::protocol::{Channel, CloseCode};
use crate::service::{Perimeter, Scopes, ServiceError};
use channel::{Sequence, Then};
use dashmap::DashMap;
use fan_out::{FanOuts, Subscribers};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;

const GAP_WAIT: Duration = Duration::from_millis(150);
/// How long a subscriber waits for another one to find where a channel's stream starts.
const START_WAIT: Duration = Duration::from_secs(5);
/// How long a failed start or gap fill waits before it tries the Store again.
const RETRY_WAIT: Duration = Duration::from_millis(500);
/// Deliveries waiting for the fan-out beyond which publishing commands wait: about half a
/// second of a busy two-core replica's writing.
const MAX_FAN_OUT_BACKLOG: usize = 256 * 1024;

/// Why the Hub reads a channel's events from the Store, counted apart: a gap fill means
/// the bus delivered out of order or lost a message; a resync is routine after a reconnect
/// and on the sweep.
#[derive(Debug, Clone, Copy)]
enum CatchUp {
    GapFill,
    Resync,
}

/// Why a subscription could not begin.
#[derive(Debug, Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    History(#[from] HistoryError),
    /// Another subscriber's start of the channel did not finish within `START_WAIT`.
    #[error("{0} is not ready; try again")]
    NotReady(Channel),
}

impl From<SubscribeError> for ServiceError {
    fn from(e: SubscribeError) -> Self {
        match e {
            SubscribeError::History(e) => e.into(),
            e => ServiceError::Unavailable(e.to_string()),
        }
    }
}

/// A channel's local subscribers and its place in the stream.
#[derive(Default)]
struct ChannelState {
    subs: Subscribers,
    seq: Sequence,
}

/// Held by a live session: shutdown waits until none is left (see `Hub::sessions_ended`).
pub struct LiveSession {
    _held: watch::Receiver<()>,
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
    history: History,
    metrics: Arc<Metrics>,
    next_session: AtomicU64,
    /// One receiver per live session: the sender sees when the last one is gone.
    sessions: watch::Sender<()>,
    /// How long writers may hold events back to batch them (see `delivery::pacing`).
    pub pacer: Arc<FlushPacer>,
    /// Where session writers run, one handle per egress shard (see `delivery::egress`).
    egress: Vec<tokio::runtime::Handle>,
    fan_outs: FanOuts,
    me: Weak<Hub>,
}

impl Hub {
    pub fn new(
        subscriptions: Option<Arc<dyn Subscriptions>>,
        presence: Option<Arc<dyn Presence>>,
        history: History,
        metrics: Arc<Metrics>,
        egress: &mut Egress,
    ) -> Arc<Hub> {
        let fan_outs = FanOuts::start(egress, &metrics, MAX_FAN_OUT_BACKLOG);
        Arc::new_cyclic(|me| Hub {
            channels: DashMap::new(),
            firehose: RwLock::new(Subscribers::default()),
            agents: DashMap::new(),
            subscriptions,
            presence,
            history,
            metrics,
            next_session: AtomicU64::new(1),
            sessions: watch::channel(()).0,
            pacer: Arc::new(FlushPacer::default()),
            egress: egress.handles(),
            fan_outs,
            me: me.clone(),
        })
    }

    /// The stored history sessions replay from.
    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn new_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a session as live until the returned value is dropped.
    pub fn session_started(&self) -> LiveSession {
        LiveSession {
            _held: self.sessions.subscribe(),
        }
    }

    /// Resolves once no session is live.
    pub async fn sessions_ended(&self) {
        self.sessions.closed().await
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
    ) -> Result<(), SubscribeError> {
        if *channel == Channel::Firehose {
            return self.subscribe_firehose(s).await;
        }
        let (first, claimed, starting) = {
            let mut st = self.channels.entry(channel.clone()).or_default();
            let first = st.subs.is_empty();
            Arc::make_mut(&mut st.subs).push(s.clone());
            let claimed = st.seq.claim_start();
            let starting = (!claimed && st.seq.is_starting()).then(|| st.seq.started());
            (first, claimed, starting)
        };
        self.metrics.subscriptions.inc();
        if let (Channel::Topic(_), Some(a), Some(p)) = (channel, s.agent(), &self.presence) {
            p.join(channel, &a.handle);
        }
        // The bus follows local subscribers: the first one subscribes the replica (a channel
        // the firehose already follows has its seq, but no bus subscription of its own yet).
        // Neither bus fails here: an unreachable Redis records the wish and resubscribes later.
        if first && let Some(subs) = &self.subscriptions {
            subs.subscribe(channel).await?;
        }
        if claimed && let Err(e) = self.start(channel).await {
            self.unsubscribe(channel, s.id).await;
            // Sessions that joined meanwhile were told they are subscribed: keep trying on
            // their behalf, or they would wait for a live stream that never starts.
            self.retry_start(channel.clone());
            return Err(e.into());
        }
        // Another session is starting the channel. Its start skips every event up to the seq
        // it reads then, so this session's replay (read after this returns) must reach at
        // least that far: wait for the start.
        if let Some(started) = starting
            && !self.wait_started(channel, &started).await
        {
            self.unsubscribe(channel, s.id).await;
            return Err(SubscribeError::NotReady(channel.clone()));
        }
        Ok(())
    }

    async fn subscribe_firehose(&self, s: &Arc<SessionShared>) -> Result<(), SubscribeError> {
        let first = match self.firehose.write() {
            Ok(mut f) => {
                Arc::make_mut(&mut f).push(s.clone());
                f.len() == 1
            }
            Err(_) => false,
        };
        if first && let Some(subs) = &self.subscriptions {
            subs.subscribe(&Channel::Firehose).await?;
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
            let known = self.channels.get(channel).is_none_or(|st| st.seq.is_live());
            if known {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Ends the start this caller claimed: learns where the channel's sequence stands, then
    /// releases what arrived meanwhile. On failure the channel goes back to unknown.
    async fn start(&self, channel: &Channel) -> Result<(), HistoryError> {
        let last = self.history.last_seq(channel).await;
        let Some(mut st) = self.channels.get_mut(channel) else {
            return last.map(drop);
        };
        let st = &mut *st;
        match last {
            Ok(last) => {
                let then = st.seq.start(last, |ev| self.fan_out(channel, &st.subs, ev));
                self.then(channel, then);
                Ok(())
            }
            Err(e) => {
                st.seq.start_failed();
                Err(e)
            }
        }
    }

    /// Retries the start of a channel whose subscribers wait for it, until it is known or
    /// has no subscriber left.
    fn retry_start(&self, channel: Channel) {
        let Some(hub) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY_WAIT).await;
                let claimed = match hub.channels.get_mut(&channel) {
                    Some(mut st) if !st.subs.is_empty() => st.seq.claim_start(),
                    _ => false,
                };
                if !claimed || hub.start(&channel).await.is_ok() {
                    return;
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
                    .retain(|_, st| !st.subs.is_empty() || st.seq.is_starting());
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
                    empty && !st.seq.is_starting(),
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
                st.subs.is_empty() && !st.seq.is_starting() && !self.firehose_wants(channel)
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

    /// Does what a channel's transition asked for.
    fn then(&self, channel: &Channel, then: Then) {
        match then {
            Then::Nothing => {}
            Then::ScheduleGapFill => self.schedule_gap_fill(channel.clone()),
        }
    }

    /// Hands `event` to the fan-out of every egress shard, with the subscriber lists as
    /// they stand now.
    fn fan_out(&self, channel: &Channel, subs: &Subscribers, event: Event) {
        let firehose = matches!(channel, Channel::Topic(_))
            .then(|| self.firehose.read().ok().map(|f| f.clone()))
            .flatten()
            .filter(|f| !f.is_empty());
        self.fan_outs.send(subs, firehose, event);
    }

    /// Waits while the fan-out is far behind, so that publishers slow down to what the
    /// writers sustain instead of piling events up in front of them.
    pub async fn fan_out_room(&self) {
        self.fan_outs.room().await
    }

    /// Starts a channel the firehose alone follows at its lowest parked seq, once early
    /// arrivals had their chance to come in.
    fn schedule_firehose_start(&self, channel: Channel) {
        let Some(hub) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            tokio::time::sleep(GAP_WAIT).await;
            let Some(mut st) = hub.channels.get_mut(&channel) else {
                return;
            };
            let st = &mut *st;
            let then = st
                .seq
                .start_at_first_parked(|ev| hub.fan_out(&channel, &st.subs, ev));
            hub.then(&channel, then);
        });
    }

    /// Catches `todo`'s channels up from the Store, one after another, off the caller.
    fn spawn_resync(&self, todo: Vec<(Channel, u64)>) {
        let Some(hub) = self.me.upgrade() else { return };
        if todo.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for (ch, from) in todo {
                hub.catch_up(&ch, from, CatchUp::Resync).await;
            }
        });
    }

    fn schedule_gap_fill(&self, channel: Channel) {
        let Some(hub) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            tokio::time::sleep(GAP_WAIT).await;
            let from = hub
                .channels
                .get_mut(&channel)
                .and_then(|mut st| st.seq.take_gap_fill());
            if let Some(from) = from {
                hub.catch_up(&channel, from, CatchUp::GapFill).await;
            }
        });
    }

    /// Reads the channel's events after `from` from the History and feeds them through the
    /// normal path, which drops what was delivered already.
    async fn catch_up(&self, channel: &Channel, mut from: u64, why: CatchUp) {
        let fetched = match why {
            CatchUp::GapFill => &self.metrics.gap_fills,
            CatchUp::Resync => &self.metrics.resync_fetches,
        };
        loop {
            match self.history.after(channel, from, history::PAGE).await {
                Ok(events) => {
                    let n = events.len();
                    fetched.add(n as u64);
                    for ev in events {
                        from = ev.seq;
                        self.on_event(ev);
                    }
                    if (n as i64) < history::PAGE {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "gap fill failed; retrying");
                    tokio::time::sleep(RETRY_WAIT).await;
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
                    seq: Sequence::starting(),
                    ..ChannelState::default()
                }
            })
        } else {
            match self.channels.get_mut(&channel) {
                Some(st) => st,
                None => return,
            }
        };
        let st = &mut *st;
        let then = st
            .seq
            .arrive(event, |ev| self.fan_out(&channel, &st.subs, ev));
        self.then(&channel, then);
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
                        s.push_scopes(scopes, topics.clone());
                    }
                }
            }
        }
    }

    fn on_resync(&self) {
        let todo: Vec<(Channel, u64)> = self
            .channels
            .iter()
            .filter_map(|e| e.seq.resume_after().map(|from| (e.key().clone(), from)))
            .collect();
        self.spawn_resync(todo);
    }

    fn on_sweep(&self) {
        let todo: Vec<(Channel, u64)> = self
            .channels
            .iter_mut()
            .filter_map(|mut e| {
                e.seq
                    .quiet_since_last_sweep()
                    .map(|from| (e.key().clone(), from))
            })
            .collect();
        self.spawn_resync(todo);
    }
}
