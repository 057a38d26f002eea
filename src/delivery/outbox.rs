//! A session's outbound queue: one sender half shared by whoever queues for the session (the
//! fan-out, the session's reader), one receiver half owned by its writer. Bounded in items.
//!
//! Why not `tokio::sync::mpsc`: in a busy fan-out every subscriber gets an item per event,
//! and the channel's per-item machinery (a semaphore permit taken and given back, a slot
//! marked ready and read back, an atomic waker) is paid per delivery, on cache lines of its
//! own. Here an item costs one uncontended lock to queue, and the writer takes everything
//! queued in one lock, so a write of many events pays a fraction of a lock for each.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use tokio::sync::Notify;

/// Emptied buffers longer than this many items are dropped, not reused: a burst (a replay, a
/// slow reader's backlog) should not pin its memory for the rest of the session.
const KEEP: usize = 64;

/// A queue of at most `capacity` items (items the receiver has taken no longer count).
pub fn outbox<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            waker: None,
            space_wanted: false,
            sender_gone: false,
            receiver_gone: false,
        }),
        space: Notify::new(),
        capacity: capacity.max(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// Why `try_send` did not queue its item (the item is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError {
    #[error("the queue is full")]
    Full,
    #[error("the receiver is gone")]
    Closed,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Senders waiting for room; notified when the receiver takes items or goes away.
    space: Notify,
    capacity: usize,
}

struct State<T> {
    items: VecDeque<T>,
    /// Set while the receiver waits for an item.
    waker: Option<Waker>,
    space_wanted: bool,
    sender_gone: bool,
    receiver_gone: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while the lock is held; a poisoned lock still guards a sound queue.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item` if there is room and wakes the receiver, outside the lock, if it waits.
    fn push(&self, item: T) -> Result<(), (TrySendError, T)> {
        let mut s = self.lock();
        if s.receiver_gone {
            return Err((TrySendError::Closed, item));
        }
        if s.items.len() >= self.capacity {
            s.space_wanted = true;
            return Err((TrySendError::Full, item));
        }
        s.items.push_back(item);
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

/// The queueing half. Not `Clone`: the receiver sees the end of the queue when it is dropped.
pub struct Sender<T>(Arc<Shared<T>>);

impl<T> Sender<T> {
    /// Queues `item` unless the queue is full or the receiver is gone.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError> {
        self.0.push(item).map_err(|(e, _)| e)
    }

    /// Queues `item`, waiting for room; false if the receiver is gone.
    pub async fn send(&self, mut item: T) -> bool {
        loop {
            // Registered before the check, so room made in between is not missed.
            let space = self.0.space.notified();
            let mut space = std::pin::pin!(space);
            space.as_mut().enable();
            match self.0.push(item) {
                Ok(()) => return true,
                Err((TrySendError::Closed, _)) => return false,
                Err((TrySendError::Full, back)) => item = back,
            }
            space.await;
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.0.lock();
            s.sender_gone = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The writer's half.
pub struct Receiver<T>(Arc<Shared<T>>);

impl<T> Receiver<T> {
    /// Moves every queued item to the back of `into`, waiting while there is none; false
    /// once the sender is gone and nothing is left. Returns at once, taking nothing, while
    /// `into` still holds items: what the writer holds back counts against nobody's bound,
    /// so it takes more only when it has written what it took.
    pub async fn recv_all(&mut self, into: &mut VecDeque<T>) -> bool {
        poll_fn(|cx| self.poll_recv_all(cx, into)).await
    }

    fn poll_recv_all(&mut self, cx: &mut Context<'_>, into: &mut VecDeque<T>) -> Poll<bool> {
        if !into.is_empty() {
            return Poll::Ready(true);
        }
        let mut s = self.0.lock();
        if s.items.is_empty() {
            if s.sender_gone {
                return Poll::Ready(false);
            }
            if into.capacity() > KEEP {
                // Nothing to do for now, maybe for long: the receiver's buffer goes too.
                *into = VecDeque::new();
            }
            if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                s.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        self.take(s, into);
        Poll::Ready(true)
    }

    /// Moves every queued item to the back of `into`; how many.
    pub fn try_recv_all(&mut self, into: &mut VecDeque<T>) -> usize {
        let s = self.0.lock();
        if s.items.is_empty() {
            return 0;
        }
        self.take(s, into)
    }

    fn take(&self, mut s: MutexGuard<'_, State<T>>, into: &mut VecDeque<T>) -> usize {
        let n = s.items.len();
        if into.is_empty() {
            // The emptied buffer goes back to the queue: no allocation in a steady state.
            if into.capacity() > KEEP {
                *into = VecDeque::new();
            }
            std::mem::swap(&mut s.items, into);
        } else {
            into.extend(s.items.drain(..));
        }
        s.waker = None;
        let notify = std::mem::take(&mut s.space_wanted);
        drop(s);
        if notify {
            self.0.space.notify_waiters();
        }
        n
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.0.lock().items.is_empty()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut s = self.0.lock();
            s.receiver_gone = true;
            std::mem::take(&mut s.items)
        };
        // Items are dropped outside the lock; waiting senders learn that nobody reads.
        drop(items);
        self.0.space.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn items_arrive_in_order_and_the_bound_holds_until_the_receiver_takes_them() {
        let (tx, mut rx) = outbox(3);
        for i in 0..3 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(tx.try_send(3), Err(TrySendError::Full));
        let mut got = VecDeque::new();
        assert!(rx.recv_all(&mut got).await);
        assert_eq!(got, [0, 1, 2]);
        // Items held by the receiver do not count; it takes no more until it has used them.
        tx.try_send(3).unwrap();
        assert!(rx.recv_all(&mut got).await);
        assert_eq!(got, [0, 1, 2]);
        got.clear();
        assert_eq!(rx.try_recv_all(&mut got), 1);
        assert_eq!(got, [3]);
        assert!(rx.is_empty());
    }

    #[tokio::test]
    async fn a_burst_does_not_pin_its_buffer() {
        let (tx, mut rx) = outbox(4096);
        let mut got = VecDeque::new();
        for i in 0..1000 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(rx.try_recv_all(&mut got), 1000);
        got.clear();
        tx.try_send(0).unwrap();
        rx.try_recv_all(&mut got);
        tx.try_send(1).unwrap();
        // The burst's buffer was not handed back to the queue.
        assert!(rx.0.lock().items.capacity() <= KEEP);
        got.clear();
        rx.try_recv_all(&mut got);
        assert_eq!(got, [1]);
        // Nor by the receiver once it waits with nothing left.
        got = VecDeque::with_capacity(1000);
        let waited = tokio::time::timeout(Duration::from_millis(10), rx.recv_all(&mut got)).await;
        assert!(waited.is_err(), "nothing is queued");
        assert!(got.capacity() <= KEEP);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_an_item_and_sees_the_end_after_the_last_one() {
        let (tx, mut rx) = outbox(4);
        let reader = tokio::spawn(async move {
            let (mut all, mut got) = (Vec::new(), VecDeque::new());
            while rx.recv_all(&mut got).await {
                all.extend(got.drain(..));
            }
            all
        });
        for i in 0..10 {
            assert!(tx.send(i).await);
            tokio::task::yield_now().await;
        }
        drop(tx);
        let all = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the receiver saw the end")
            .unwrap();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_sender_waits_for_room_and_gives_up_when_the_receiver_goes() {
        let (tx, mut rx) = outbox(1);
        let tx = Arc::new(tx);
        tx.try_send(1).unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(2).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a full queue makes the sender wait");
        let mut got = VecDeque::new();
        rx.try_recv_all(&mut got);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .unwrap()
                .unwrap()
        );
        got.clear();
        rx.try_recv_all(&mut got);
        assert_eq!(got, [2]);

        tx.try_send(3).unwrap();
        let stuck = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(4).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        let sent = tokio::time::timeout(Duration::from_secs(5), stuck)
            .await
            .unwrap()
            .unwrap();
        assert!(!sent, "nobody reads any more");
        assert_eq!(tx.try_send(5), Err(TrySendError::Closed));
    }
}
