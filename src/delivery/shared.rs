//! The part of a session others hold: the Hub queues its events and closes it, the control
//! channel narrows its scopes, the session's command side queues its replies.

use super::Outbound;
use super::outbox::{self, TrySendError};
use crate::bus::Event;
use crate::metrics::Metrics;
use crate::protocol::CloseCode;
use crate::service::{Perimeter, Scopes};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::watch;

/// Who is behind a session, for kicks and presence. The key it answers to lives beside it in
/// `SessionShared::cred`, since a refresh with a token of another key moves the session over.
#[derive(Debug, Clone)]
pub struct AgentTag {
    pub id: String,
    pub handle: String,
}

/// A session's queue, its close signal, its identity.
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
    /// A session with a queue of `capacity` items; the receiver goes to its writer.
    pub fn new(id: u64, capacity: usize) -> (Arc<SessionShared>, outbox::Receiver<Outbound>) {
        let (tx, rx) = outbox::outbox(capacity);
        let shared = Arc::new(SessionShared {
            id,
            tx,
            close_tx: watch::channel(None).0,
            agent: OnceLock::new(),
            cred: Mutex::new(String::new()),
            scopes_update: Mutex::new(None),
        });
        (shared, rx)
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

    /// Narrows the session's scopes before its next command.
    pub fn push_scopes(&self, scopes: Scopes, topics: Perimeter) {
        if let Ok(mut g) = self.scopes_update.lock() {
            *g = Some((scopes, topics));
        }
    }

    pub fn take_scopes_update(&self) -> Option<(Scopes, Perimeter)> {
        self.scopes_update.lock().ok().and_then(|mut g| g.take())
    }

    /// Queues `item`, waiting for room; false once the writer is gone.
    pub async fn send(&self, item: Outbound) -> bool {
        self.tx.send(item).await
    }

    /// Queues live `events` without waiting; whether they were queued. A full queue means a
    /// slow consumer: the session is closed with 4008, never waited for. The caller counts
    /// deliveries, once per fan-out: one shared counter bumped per subscriber cost more than
    /// the queueing.
    #[inline]
    pub fn deliver(&self, metrics: &Metrics, events: &Arc<[Event]>, via_firehose: bool) -> bool {
        match self.tx.try_send(Outbound::Events {
            events: events.clone(),
            via_firehose,
        }) {
            Ok(()) => true,
            Err(TrySendError::Full) => {
                metrics.queue_drops.inc();
                self.close(CloseCode::TooSlow);
                false
            }
            Err(TrySendError::Closed) => false,
        }
    }
}
