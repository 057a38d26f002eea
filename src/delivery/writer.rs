//! A session's writer: drains its queue to the socket, many frames per write, until the
//! session closes; then sends the replies still queued and the close frame.

use super::Outbound;
use super::outbox;
use super::pacing::FlushPacer;
use super::route::{Tracks, route};
use crate::metrics::Metrics;
use crate::protocol::CloseCode;
use crate::websocket::FrameWriter;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The writer stops taking from its queue for one write at this many frames or bytes.
const WRITE_BATCH: usize = 64;
/// How long a closing connection's last frames may take to be acknowledged once written: a
/// client that reads takes them within a round trip; a peer that is gone (its socket reset)
/// or reads nothing would hold the session until the end of its grace.
const DRAIN_WAIT: Duration = Duration::from_secs(1);
const WRITE_BYTES: usize = 64 * 1024;

/// Runs until the session closes (its close signal, or its queue's senders all gone).
pub async fn write_loop(
    mut out: FrameWriter,
    mut rx: outbox::Receiver<Outbound>,
    mut closed: watch::Receiver<Option<CloseCode>>,
    metrics: Arc<Metrics>,
    pacer: Arc<FlushPacer>,
    close_grace: Duration,
) {
    let mut tracks = Tracks::default();
    let mut last_flush: Option<Instant> = None;
    // Items taken from the queue, all at once, and not yet routed.
    let mut taken = VecDeque::new();
    {
        // One wait on the close signal for the whole session: a new one per batch would
        // register and drop a waiter on every write of a busy fan-out.
        let mut closing = std::pin::pin!(closed.changed());
        loop {
            tokio::select! {
                biased;
                _ = &mut closing => break,
                open = rx.recv_all(&mut taken) => if !open { break },
            }
            let Some(first) = taken.pop_front() else {
                continue;
            };
            let is_event = matches!(first, Outbound::Events { .. });
            route(first, &mut tracks, &mut out);
            // An event that follows the last flush closely waits out the pacing gap (zero
            // on a quiet replica) to leave with the events behind it; replies never wait.
            if is_event
                && taken.is_empty()
                && rx.is_empty()
                && let Some(gap) = last_flush.and_then(|t| pacer.gap().checked_sub(t.elapsed()))
            {
                tokio::time::sleep(gap).await;
            }
            while out.frames() < WRITE_BATCH && out.pending() < WRITE_BYTES {
                if taken.is_empty() && rx.try_recv_all(&mut taken) == 0 {
                    break;
                }
                if let Some(item) = taken.pop_front() {
                    route(item, &mut tracks, &mut out);
                }
            }
            let n = out.frames() as u64;
            if n == 0 {
                continue;
            }
            // A client that stops reading blocks the write; the close signal (4008 once the
            // queue overflows) must still get through, and the close path finishes this
            // write within the grace period.
            let flushed = tokio::select! {
                biased;
                _ = &mut closing => break,
                r = out.flush() => r,
            };
            if flushed.is_err() {
                return;
            }
            last_flush = Some(Instant::now());
            metrics.frames_out.add(n);
            metrics.flushes.inc();
        }
    }
    let code = *closed.borrow();
    // Replies already queued (say, the error that explains an auth failure) still go out;
    // events do not: a closing session owes nobody more of those.
    rx.try_recv_all(&mut taken);
    let last_words = taken.into_iter().filter_map(|item| match item {
        Outbound::Frame(f) => Some(f),
        _ => None,
    });
    for f in last_words.take(WRITE_BATCH) {
        out.text(f.as_str());
    }
    out.close(code);
    let grace_ends = tokio::time::Instant::now() + close_grace;
    // Written is not taken: a close frame that fit in the kernel's send buffer of a client
    // that reads nothing would stay there. Either way, a client that has not taken it all
    // by the end of the grace (or within `DRAIN_WAIT` of the write) gets a reset, not an
    // orphan socket that keeps its send buffer while the kernel probes a window that never
    // opens.
    let taken = match tokio::time::timeout_at(grace_ends, out.shutdown()).await {
        Ok(_) => {
            let left = grace_ends.saturating_duration_since(tokio::time::Instant::now());
            out.drained(left.min(DRAIN_WAIT)).await
        }
        Err(_) => false,
    };
    if !taken {
        out.reset_on_drop();
    }
}
