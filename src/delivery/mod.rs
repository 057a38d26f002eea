//! The session's outbound side: everything between the Hub's fan-out and the socket.
//!
//! - `SessionShared` is the part of a session others hold: its queue, close signal and
//!   identity. The Hub queues events to it, the session's command side queues replies.
//! - `outbox`: the bounded queue itself, one per session.
//! - `writer`: the task that drains the queue to the socket, batching writes.
//! - `route`: what of each queued item goes out, so that every channel reaches the client in
//!   `seq` order with no gap and no duplicate across replay and live events.
//! - `pacing`: how long writers may hold events back to batch them, replica-wide.
//! - `egress`: the threads the writers (and the fan-out) run on.

pub mod egress;
pub mod outbox;
pub mod pacing;
mod route;
mod shared;
mod writer;

pub use shared::{AgentTag, SessionShared};
pub use writer::write_loop;

use crate::bus::Event;
use crate::protocol::Channel;
use axum::extract::ws::Utf8Bytes;
use std::sync::Arc;

/// What a session's writer task receives, in order.
#[derive(Debug)]
pub enum Outbound {
    /// A reply or any other ready frame.
    Frame(Utf8Bytes),
    /// Live events of one channel, in order, fanned out together (see the hub's fan-out);
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

#[cfg(test)]
mod tests {
    /// docs/OPERATIONS.md ("Exhaustion") counts a stalled session's queue at 80 bytes a slot,
    /// twice over (the queue, and what the writer took from it): keep that true.
    #[test]
    fn a_queue_slot_is_at_most_80_bytes() {
        assert!(std::mem::size_of::<super::Outbound>() <= 80);
    }
}
