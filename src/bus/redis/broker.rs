//! Publishing over Redis, and the owner of the Redis side's background work. A publish reaches
//! this replica's Hub by a direct call, then other replicas through Redis; while Redis is
//! unreachable it waits in a bounded queue of pending publishes.

use super::wire::{CONTROL, Wire};
use super::{COMMAND_TIMEOUT, Mode, Shared, link, lock, presence};
use crate::bus::{Broker, BusError, BusHandler, Control, Event};
use crate::protocol::Channel;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Publishes kept while Redis is unreachable; the oldest go first past this.
const PENDING_MAX: usize = 10_000;

/// The broker of a replica among many, over Redis pub/sub. It owns the link and presence
/// tasks (stopped by `close`, or when it is dropped) and, with the link task, the handler.
pub struct RedisBroker {
    shared: Arc<Shared>,
    handler: Arc<dyn BusHandler>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl RedisBroker {
    pub(super) fn start(shared: Arc<Shared>, handler: Arc<dyn BusHandler>) -> Arc<RedisBroker> {
        let (stop, stop_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(link::supervise(
                shared.clone(),
                handler.clone(),
                stop_rx.clone(),
            )),
            tokio::spawn(presence::presence_loop(shared.clone(), stop_rx)),
        ];
        Arc::new(RedisBroker {
            shared,
            handler,
            stop,
            tasks: Mutex::new(tasks),
        })
    }
}

impl Shared {
    /// Sharded pub/sub on a cluster, so each channel's traffic stays on its shard.
    fn publish_verb(&self) -> &'static str {
        match self.mode {
            Mode::Single { .. } => "PUBLISH",
            Mode::Cluster(_) => "SPUBLISH",
        }
    }

    /// Publishes `payload` on `channel`, or keeps it for later when Redis is unreachable.
    pub(super) async fn send(&self, channel: String, payload: Vec<u8>) {
        if self.up.load(Ordering::Acquire)
            && let Some(mut conn) = self.commands()
        {
            let cmd = redis::cmd(self.publish_verb())
                .arg(&channel)
                .arg(&payload)
                .to_owned();
            match timeout(COMMAND_TIMEOUT, cmd.query_async::<i64>(&mut conn)).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => tracing::debug!(error = %e, "publish failed; kept for later"),
                Err(_) => tracing::debug!("publish timed out; kept for later"),
            }
            self.metrics.bus_errors.inc();
        }
        let mut out = lock(&self.pending);
        if out.len() >= PENDING_MAX {
            out.pop_front();
            self.metrics.bus_outbox_dropped.inc();
        }
        out.push_back((channel, payload));
    }

    /// The subscriber side hears everything wanted again: mark the bus up, send what was
    /// kept meanwhile, have the Hub catch up from the Store, and hand back the link's two
    /// timers (its ping, and the periodic sweep that catches what nothing else reveals).
    pub(super) async fn came_up(
        &self,
        handler: &dyn BusHandler,
    ) -> (tokio::time::Interval, tokio::time::Interval) {
        self.up.store(true, Ordering::Release);
        self.metrics.bus_up.set(1);
        self.flush_pending().await;
        handler.on_resync();
        let mut ping = tokio::time::interval(link::PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval_at(
            tokio::time::Instant::now() + link::SWEEP_EVERY,
            link::SWEEP_EVERY,
        );
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        (ping, sweep)
    }

    /// Sends what was kept while Redis was unreachable; stops at the first failure.
    pub(super) async fn flush_pending(&self) {
        loop {
            let Some((channel, payload)) = lock(&self.pending).pop_front() else {
                return;
            };
            let cmd = redis::cmd(self.publish_verb())
                .arg(&channel)
                .arg(&payload)
                .to_owned();
            let sent = match self.commands() {
                Some(mut conn) => matches!(
                    timeout(COMMAND_TIMEOUT, cmd.query_async::<i64>(&mut conn)).await,
                    Ok(Ok(_))
                ),
                None => false,
            };
            if !sent {
                lock(&self.pending).push_front((channel, payload));
                return;
            }
        }
    }
}

#[async_trait::async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, event: Event) -> Result<(), BusError> {
        let name = event.channel.to_string();
        let payload = Wire::encode(
            &self.shared.origin,
            &name,
            event.seq,
            event.frame.as_bytes(),
        );
        let redis_channel = self.shared.names.channel(&event.channel);
        // On a cluster a topic event goes to its firehose bucket too (sharded pub/sub has
        // no patterns); a replica hearing both drops the second copy by its seq.
        let firehose = match (&self.shared.names.tagged, &event.channel) {
            (Some(_), Channel::Topic(topic)) => {
                Some((self.shared.names.firehose_of(topic), payload.clone()))
            }
            _ => None,
        };
        // Local subscribers first, without the round trip; our echo from Redis is ignored.
        self.handler.on_event(event);
        self.shared.send(redis_channel, payload).await;
        if let Some((channel, payload)) = firehose {
            self.shared.send(channel, payload).await;
        }
        Ok(())
    }

    async fn publish_control(&self, control: Control) -> Result<(), BusError> {
        let body = serde_json::to_vec(&control)
            .map_err(|e| BusError::Unavailable(format!("cannot encode control: {e}")))?;
        let payload = Wire::encode(&self.shared.origin, CONTROL, 0, &body);
        self.handler.on_control(control);
        self.shared.send(self.shared.names.control(), payload).await;
        Ok(())
    }

    async fn healthy(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    async fn close(&self) {
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = lock(&self.tasks).drain(..).collect();
        for t in tasks {
            let _ = timeout(Duration::from_secs(2), t).await;
        }
        // Leave no presence behind.
        self.shared.clear_presence().await;
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use crate::bus::recorder::Recorder;
    use crate::bus::redis::RedisBus;
    use crate::bus::{Broker, BusHandler, Event};
    use crate::metrics::Metrics;
    use crate::protocol::Channel;
    use std::sync::Arc;

    /// Nothing but the broker and its tasks may keep the handler (the Hub): once closed and
    /// dropped, the handler is free, whether or not Redis ever answered. The port is one no
    /// Redis listens on, so the link is still retrying when it is told to stop.
    #[tokio::test]
    async fn closing_the_broker_lets_go_of_the_handler() {
        let redis = RedisBus::open(
            "redis://127.0.0.1:1/",
            "test",
            "r1",
            Arc::new(Metrics::default()),
        )
        .unwrap();
        let subscriptions = redis.subscriptions();
        let hub = Arc::new(Recorder::default());
        let handler: Arc<dyn BusHandler> = hub.clone();
        let broker = redis.start(handler);
        broker
            .publish(Event {
                channel: Channel::topic("rust"),
                seq: 7,
                frame: "{}".into(),
            })
            .await
            .unwrap();
        assert_eq!(*hub.events.lock().unwrap(), vec![7]);
        assert!(!broker.healthy().await);
        broker.close().await;
        drop(broker);
        // The Hub's handle on the link is still alive, and does not reach the handler.
        assert_eq!(Arc::strong_count(&hub), 1);
        drop(subscriptions);
    }
}
