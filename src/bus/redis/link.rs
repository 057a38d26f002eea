//! The subscriber link: one Redis pub/sub connection per replica (on a Redis Cluster, one
//! per shard master: `shards`), kept up by a supervisor task that subscribes to what the Hub
//! wants (`RedisSubscriptions`), hands what it hears to the handler, and after any loss
//! reconnects and asks the handler to resync.

use super::wire::{CONTROL, Wire};
use super::{BACKOFF_MAX, CONNECT_TIMEOUT, Mode, Shared, command, lock, stopped};
use crate::bus::{BusError, BusHandler, Control, Event, Subscriptions};
use crate::protocol::Channel;
use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::timeout;

/// The subscriber link pings this often, so a silent Redis is noticed within seconds.
pub(super) const PING_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const CLUSTER_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long `subscribe` waits for Redis to confirm before it returns anyway (the
/// subscription stays wanted, and a reconnect plus resync cover the rest).
pub(super) const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);
/// Subscription changes waiting for the link; past this the link is rebuilt from scratch.
pub(super) const OPS_QUEUE: usize = 1024;
/// A replica that dies between commit and publish leaves its event only in the Store; on a
/// busy channel the next event's gap fill brings it, on a quiet one this periodic catch-up
/// does (late, but in order).
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A change of what the link is subscribed to, applied in the order it was decided.
pub(super) enum SubOp {
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
    PSubscribe(String, oneshot::Sender<()>),
    PUnsubscribe(String),
}

/// What this replica wants to hear, and the way to tell the live link about changes.
#[derive(Default)]
pub(super) struct Wanted {
    /// Redis channel or pattern → (how many times it is wanted, whether it is a pattern).
    /// The Hub calls `subscribe` on a channel's first local subscriber and `unsubscribe` on
    /// its last, but those calls can cross on their way here, so counting (not a set) keeps
    /// the outcome right.
    pub(super) counts: HashMap<String, (usize, bool)>,
    /// The live link's queue; `None` while disconnected (the next link subscribes to
    /// everything in `counts` at once).
    pub(super) link: Option<mpsc::Sender<SubOp>>,
}

/// What this replica listens to; the Hub's handle on the link. It does not reach the
/// handler: the link task holds that.
pub struct RedisSubscriptions {
    shared: Arc<Shared>,
}

impl RedisSubscriptions {
    pub(super) fn new(shared: Arc<Shared>) -> RedisSubscriptions {
        RedisSubscriptions { shared }
    }
}

#[async_trait::async_trait]
impl Subscriptions for RedisSubscriptions {
    async fn subscribe(&self, channel: &Channel) -> Result<(), BusError> {
        let confirmations: Vec<_> = self
            .shared
            .names
            .subscriptions(channel)
            .into_iter()
            .filter_map(|(name, pattern)| self.shared.want(name, pattern))
            .collect();
        // Once confirmed, everything published from now on reaches us. When Redis is down
        // the want is recorded anyway: the reconnect subscribes and resyncs.
        let _ = timeout(
            SUBSCRIBE_WAIT,
            futures_util::future::join_all(confirmations),
        )
        .await;
        Ok(())
    }

    async fn unsubscribe(&self, channel: &Channel) {
        for (name, pattern) in self.shared.names.subscriptions(channel) {
            self.shared.unwant(name, pattern);
        }
    }
}

impl Shared {
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

    /// One message from Redis, handed to the Hub unless it is our own echo.
    pub(super) fn receive(&self, handler: &dyn BusHandler, payload: &[u8]) {
        let Some(w) = Wire::decode(payload) else {
            self.metrics.bus_errors.inc();
            tracing::warn!("ignoring a malformed bus message");
            return;
        };
        if w.origin == self.origin {
            return;
        }
        if w.channel == CONTROL {
            match serde_json::from_slice::<Control>(w.body) {
                Ok(c) => handler.on_control(c),
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
        handler.on_event(Event {
            channel,
            seq: w.seq,
            frame,
        });
    }

    /// Runs one subscriber link until it fails (`Err`) or the bus stops (`Ok`).
    async fn run_link(
        &self,
        handler: &dyn BusHandler,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let client = match &self.mode {
            Mode::Single { client, .. } => client,
            Mode::Cluster(cluster) => return self.run_shard_link(cluster, handler, stop).await,
        };
        let pubsub = timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
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
        tracing::info!(
            channels = channels.len(),
            patterns = patterns.len(),
            "redis bus connected"
        );
        let (mut ping, mut sweep) = self.came_up(handler).await;
        loop {
            tokio::select! {
                _ = stopped(stop) => return Ok(()),
                msg = stream.next() => match msg {
                    Some(m) => self.receive(handler, m.get_payload_bytes()),
                    None => return Err("connection lost".into()),
                },
                op = ops.recv() => match op {
                    Some(op) => apply(&mut sink, op).await?,
                    None => return Err("subscription queue overflowed; rebuilding".into()),
                },
                _ = sweep.tick() => handler.on_sweep(),
                _ = ping.tick() => {
                    // In subscribed mode Redis answers PING with an array, not a status string.
                    command(sink.ping::<redis::Value>()).await?;
                    if !lock(&self.pending).is_empty() {
                        self.flush_pending().await;
                    }
                }
            }
        }
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
pub(super) async fn supervise(
    shared: Arc<Shared>,
    handler: Arc<dyn BusHandler>,
    mut stop: watch::Receiver<bool>,
) {
    let mut delay = BACKOFF_MIN;
    let mut ever_up = false;
    // A cluster usually heals by itself within seconds (a replica takes over), and asking
    // it again costs one CLUSTER INFO and SLOTS: retry it often. One Redis that went away
    // needs an operator; there, back off further.
    let max = match shared.mode {
        Mode::Single { .. } => BACKOFF_MAX,
        Mode::Cluster(_) => CLUSTER_BACKOFF_MAX,
    };
    loop {
        if *stop.borrow() {
            return;
        }
        let result = shared.run_link(handler.as_ref(), &mut stop).await;
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
                } else if !ever_up || delay >= max {
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
        delay = (delay * 2).min(max);
    }
}
