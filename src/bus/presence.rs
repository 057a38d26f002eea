//! The presence seam: which agents are subscribed to a topic on any replica. Only a bus that
//! shares state between replicas has one; without it the Hub's own view is the whole truth.

use crate::protocol::Channel;

#[async_trait::async_trait]
pub trait Presence: Send + Sync {
    /// An agent's session on this replica subscribed to a topic. Called once per agent
    /// session and channel; cheap, never waits on the network.
    fn join(&self, channel: &Channel, handle: &str);
    fn leave(&self, channel: &Channel, handle: &str);
    /// Agents present on `channel` across replicas, or `None` when the shared view cannot
    /// be reached now.
    async fn members(&self, channel: &Channel) -> Option<Vec<String>>;
}
