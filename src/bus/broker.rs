//! The broker seam: events and control messages out to every replica (`Broker`), which
//! channels this replica hears (`Subscriptions`), and where what it hears goes
//! (`BusHandler`).

use super::BusError;
use crate::protocol::Channel;
use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};

/// One event on one channel: its seq and the push frame, serialized once and shared.
#[derive(Debug, Clone)]
pub struct Event {
    pub channel: Channel,
    pub seq: u64,
    pub frame: Utf8Bytes,
}

/// Messages that act on live sessions on every replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Control {
    /// Close every session of this agent with 4003 (suspended, revoked).
    KickAgent { agent_id: String },
    /// Close every session whose token came from this API key with 4003.
    KickCredential { cred_id: String },
    /// The agent's scopes or perimeter changed; sessions narrow to these.
    Scopes {
        agent_id: String,
        scopes: Vec<String>,
        topics: Vec<String>,
    },
}

/// Where a broker delivers what this replica publishes and hears: the Hub of this replica.
pub trait BusHandler: Send + Sync {
    fn on_event(&self, event: Event);
    fn on_control(&self, control: Control);
    /// The bus lost messages (a reconnect): everything live must catch up from the Store.
    fn on_resync(&self);
    /// The periodic check for a loss nothing else reveals (a replica that died between its
    /// commit and its publish): channels quiet since the last sweep catch up from the Store.
    fn on_sweep(&self);
}

/// The publishing side of the bus. It owns its `BusHandler` from construction on: this
/// replica's own events reach its Hub through a direct call, other replicas' through the
/// broker's transport.
#[async_trait::async_trait]
pub trait Broker: Send + Sync {
    async fn publish(&self, event: Event) -> Result<(), BusError>;
    async fn publish_control(&self, control: Control) -> Result<(), BusError>;
    /// Whether the bus is connected (for `/readyz`).
    async fn healthy(&self) -> bool;
    /// Stops the bus's background work (shutdown); later calls do nothing useful.
    async fn close(&self) {}
}

/// Which channels this replica hears from other replicas. Held by the Hub, which calls
/// `subscribe` on a channel's first local subscriber and `unsubscribe` on its last.
#[async_trait::async_trait]
pub trait Subscriptions: Send + Sync {
    /// Makes this replica receive `channel`'s events (reference counting is the caller's).
    async fn subscribe(&self, channel: &Channel) -> Result<(), BusError>;
    async fn unsubscribe(&self, channel: &Channel);
}
