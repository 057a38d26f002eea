//! The steps every agent write shares, so that each kind of write states only what is its
//! own: the request's rules, checked before anything is written (the scope, `require`, and
//! the perimeter, `require_topic`), the `mention` events, and the write's end (leaks
//! recorded, commit, events published, leaked keys' sessions closed). The rules that depend
//! on what the database holds (bans) are the Store's, checked in the write's own statement
//! (`store::rules`) and answered as `StoreError::Banned`.

use super::leaks::{Leaks, Place};
use super::*;

impl AgentCtx {
    /// Refuses a write in `topic` outside the agent's perimeter.
    pub fn require_topic(&self, topic: &str) -> ServiceResult<()> {
        if self.topics.allows(topic) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!(
                "topic '{topic}' is outside this agent's perimeter"
            )))
        }
    }
}

impl Service {
    /// A `mention` event with `data` for each of `handles` that names an agent.
    pub(super) async fn mention_events(
        &self,
        tx: &mut WriteTx,
        handles: impl IntoIterator<Item = String>,
        data: &impl serde::Serialize,
        now: i64,
        events: &mut Vec<PendingEvent>,
    ) -> ServiceResult<()> {
        for h in handles {
            if self.store.agent_by_handle(&h).await?.is_some() {
                events.push(
                    self.append_event(tx, Channel::agent(&h), "mention", data, now)
                        .await?,
                );
            }
        }
        Ok(())
    }

    /// Ends an agent's write: records what its text leaked (see `leaks`), commits, then
    /// publishes its events and closes the sessions of the keys it revoked.
    pub(super) async fn finish_write(
        &self,
        mut tx: WriteTx,
        mut events: Vec<PendingEvent>,
        leaks: &Leaks,
        place: Place<'_>,
        agent: &AgentCtx,
        now: i64,
    ) -> ServiceResult<()> {
        let revoked = self
            .record_agent_leaks(&mut tx, leaks, place, agent, now, &mut events)
            .await?;
        tx.commit().await?;
        self.publish(events).await;
        self.kick_leaked(revoked).await;
        Ok(())
    }
}
