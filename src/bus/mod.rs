//! The Bus: how events and control messages reach every replica. In-process for a single
//! replica (`local`); Redis pub/sub for many (one channel per topic and per private agent
//! channel, plus a control channel). The bus only carries; ordering and gap filling are the
//! Hub's job, and the Store keeps everything that must not be lost.

pub mod local;
pub mod redis;

use crate::protocol::Channel;
use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

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

#[derive(Debug, Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// Where a bus delivers what it receives: the Hub of this replica.
pub trait BusHandler: Send + Sync {
    fn on_event(&self, event: Event);
    fn on_control(&self, control: Control);
    /// The bus lost messages (a reconnect): everything live must catch up from the Store.
    fn on_resync(&self);
}

#[async_trait::async_trait]
pub trait Bus: Send + Sync {
    /// Tells the bus where to deliver what it receives (once, at start).
    fn attach(&self, handler: std::sync::Weak<dyn BusHandler>);
    /// Makes this replica receive `channel`'s events (reference counting is the caller's).
    async fn subscribe(&self, channel: &Channel) -> Result<(), BusError>;
    async fn unsubscribe(&self, channel: &Channel);
    async fn publish(&self, event: Event) -> Result<(), BusError>;
    async fn publish_control(&self, control: Control) -> Result<(), BusError>;
    /// Whether the bus is connected (for `/readyz`).
    async fn healthy(&self) -> bool;
    /// An agent's session on this replica subscribed to a topic (presence across replicas).
    /// Called once per agent session and channel; cheap, never waits on the network.
    fn presence_join(&self, _channel: &Channel, _handle: &str) {}
    fn presence_leave(&self, _channel: &Channel, _handle: &str) {}
    /// Agents present on `channel` across replicas, or `None` when this bus keeps no shared
    /// view (one replica: the Hub's own view is the whole truth) or cannot reach it now.
    async fn presence(&self, _channel: &Channel) -> Option<Vec<String>> {
        None
    }
    /// Stops the bus's background work (shutdown); later calls do nothing useful.
    async fn close(&self) {}
}
