//! The fan-out: one queue per egress shard carries each event, with the subscriber lists as
//! they stood when it was released in order, to a loop on that shard that queues it for the
//! sessions whose writers run there. One queue per shard for all channels keeps each
//! channel's events in order.
//!
//! The queues are unbounded so that the bus never waits on a session; what bounds them is
//! the `Backlog`, which publishing commands wait on while the writers catch up.

use crate::bus::Event;
use crate::delivery::SessionShared;
use crate::delivery::egress::{self, Egress};
use crate::metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Notify, mpsc};

/// Most events one queue item carries, so that a session's queue bound (in items) stays
/// within a small multiple of its bound in frames.
const MAX_GROUP: usize = 8;

/// A channel's local subscribers, shared with the fan-outs in flight: a subscribe or an
/// unsubscribe copies the list only while a fan-out still holds the old one.
pub(super) type Subscribers = Arc<Vec<Arc<SessionShared>>>;

/// The way in to every shard's fan-out loop, and the backlog they share.
pub(super) struct FanOuts {
    queues: Vec<mpsc::UnboundedSender<FanOut>>,
    backlog: Arc<Backlog>,
}

impl FanOuts {
    /// Starts one fan-out loop per egress shard, as the future that shard polls first.
    pub(super) fn start(
        egress: &mut Egress,
        metrics: &Arc<Metrics>,
        max_backlog: usize,
    ) -> FanOuts {
        let backlog = Arc::new(Backlog::new(max_backlog));
        let shards = egress.shards();
        let queues = (0..shards)
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
                        backlog.clone(),
                        metrics.clone(),
                    ),
                );
                tx
            })
            .collect();
        FanOuts { queues, backlog }
    }

    /// Hands `event` to the fan-out of every shard, for these subscriber lists.
    pub(super) fn send(&self, subs: &Subscribers, firehose: Option<Subscribers>, event: Event) {
        let f = FanOut {
            subs: subs.clone(),
            firehose,
            event,
        };
        self.backlog.add(f.deliveries());
        if let Some((last, others)) = self.queues.split_last() {
            for q in others {
                let _ = q.send(f.clone());
            }
            let _ = last.send(f);
        }
    }

    /// Waits while the fan-out is far behind (see `Backlog`).
    pub(super) async fn room(&self) {
        self.backlog.room().await
    }
}

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
    backlog: Arc<Backlog>,
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
                queued += u64::from(s.deliver(&metrics, &events, via_firehose));
            }
            metrics.deliveries.add(queued * events.len() as u64);
            backlog.done(mine * events.len());
        }
    }
}

/// Deliveries handed to the fan-out and not yet queued for their sessions. Above `max`,
/// publishers wait (see `room`) so that they slow down to what the writers sustain instead
/// of piling events up in front of them. The fan-out itself never waits on it: the bus must
/// not block.
pub(super) struct Backlog {
    queued: AtomicUsize,
    /// Woken when `queued` falls back to `max`.
    room: Notify,
    max: usize,
}

impl Backlog {
    pub(super) fn new(max: usize) -> Backlog {
        Backlog {
            queued: AtomicUsize::new(0),
            room: Notify::new(),
            max,
        }
    }

    /// `n` more deliveries are on their way.
    pub(super) fn add(&self, n: usize) {
        self.queued.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` deliveries were queued; wakes the waiting publishers if that made room.
    fn done(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Ordering::Relaxed);
        if before > self.max && before - n <= self.max {
            self.room.notify_waiters();
        }
    }

    /// Waits while more than `max` deliveries are on their way.
    pub(super) async fn room(&self) {
        while self.queued.load(Ordering::Relaxed) > self.max {
            let room = self.room.notified();
            let mut room = std::pin::pin!(room);
            // Registered before the check, so room made in between is not missed.
            room.as_mut().enable();
            if self.queued.load(Ordering::Relaxed) <= self.max {
                return;
            }
            room.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn publishers_wait_while_the_backlog_is_over_its_bound_and_go_once_it_is_not() {
        let backlog = Arc::new(Backlog::new(10));
        backlog.add(10);
        tokio::time::timeout(Duration::from_secs(1), backlog.room())
            .await
            .expect("at the bound there is room");
        backlog.add(5);
        let waiting = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.room().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "over the bound, publishers wait");
        backlog.done(3);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "still over the bound");
        backlog.done(2);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("back at the bound, the publisher goes")
            .unwrap();
    }
}
