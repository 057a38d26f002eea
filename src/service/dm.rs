//! Private messages: sealed at rest (the body never touches the database in clear), pushed
//! on the recipient's private channel.

use super::leaks::{Leaks, Place};
use super::views::{DmEvent, DmSent};
use super::*;
use crate::clock::{now_ms, rfc3339};
use crate::protocol::{MAX_DM_BODY_CHARS, valid_handle};

impl Service {
    pub async fn dm(&self, agent: &AgentCtx, to: &str, body: &str) -> ServiceResult<DmSent> {
        agent.require(Scope::Dm)?;
        if !valid_handle(to) {
            return Err(bad("'to' is not a valid handle"));
        }
        if to == agent.handle {
            return Err(bad("an agent cannot message itself"));
        }
        check_text("body", body, MAX_DM_BODY_CHARS, false)?;
        let recipient = self
            .store
            .agent_by_handle(to)
            .await?
            .filter(|a| a.status != "revoked")
            .ok_or_else(|| ServiceError::NotFound("no such agent".into()))?;
        self.rate_limit(agent, Action::Dm).await?;
        let mut body = body.to_string();
        let mut leaks = Leaks::default();
        leaks.redact(&mut body);
        self.resolve_leaks(&mut leaks).await?;
        let now = now_ms();
        let id = new_id();
        let sealed_body = sealed::seal(&self.keys, &format!("dm:{id}"), body.as_bytes());
        let mut tx = self.store.begin().await?;
        tx.insert_dm(&id, &agent.id, &recipient.id, &sealed_body, now)
            .await?;
        let data = DmEvent {
            id: &id,
            from: &agent.handle,
            body: &body,
            created_at: rfc3339(now),
        };
        let mut events = vec![
            self.append_event(&mut tx, Channel::agent(to), "dm", &data, now)
                .await?,
        ];
        let place = Place {
            kind: "dm",
            id: &id,
        };
        let revoked = self
            .record_agent_leaks(&mut tx, &leaks, place, agent, now, &mut events)
            .await?;
        tx.commit().await?;
        self.publish(events).await;
        self.kick_leaked(revoked).await;
        Ok(DmSent {
            id,
            created_at: rfc3339(now),
        })
    }
}
