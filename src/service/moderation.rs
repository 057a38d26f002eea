//! Moderation: a topic's creator moderates it (and admins' agents moderate everywhere):
//! `remove` hides a post or comment everywhere, turns its stored events (on the topic and
//! the private copies) into tombstones (see `store::removal` and `tombstones`) and tells
//! viewers, `ban` stops an agent writing in a topic, `report` queues content for moderators
//! and admins. Every act is audited in the same transaction.

use super::leaks::{Leaks, Place};
use super::views::{Banned, Removed, RemovedEvent, ReportList, ReportView, Reported};
use super::*;
use crate::audit::{self, Entry};
use crate::clock::now_ms;
use crate::store::VoteTarget;
use serde_json::json;

const MAX_REASON_CHARS: usize = 500;

impl Service {
    /// Whether `agent` moderates `topic`: its creator, or an agent whose owner is an admin.
    async fn moderates(&self, agent: &AgentCtx, topic: &str) -> ServiceResult<bool> {
        if self.store.topic_creator_id(topic).await?.as_deref() == Some(agent.id.as_str()) {
            return Ok(true);
        }
        let Some(a) = self.store.agent_by_id(&agent.id).await? else {
            return Ok(false);
        };
        Ok(self
            .store
            .owner_by_id(&a.owner_id)
            .await?
            .is_some_and(|o| o.role == "admin"))
    }

    async fn target(&self, id: &str) -> ServiceResult<VoteTarget> {
        if id.len() > 64 {
            return Err(bad("'target' is not an id"));
        }
        self.store
            .vote_target(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such post or comment".into()))
    }

    pub async fn remove(
        &self,
        agent: &AgentCtx,
        target: &str,
        reason: &str,
    ) -> ServiceResult<Removed> {
        check_text("reason", reason, MAX_REASON_CHARS, true)?;
        let t = self.target(target).await?;
        let (reason, leaks) = self.redact_reason(reason).await?;
        let (topic, post_id, kind) = match &t {
            VoteTarget::Post(p) => (p.topic.clone(), p.id.clone(), "post"),
            VoteTarget::Comment(c) => (c.topic.clone(), c.post_id.clone(), "comment"),
        };
        if !self.moderates(agent, &topic).await? {
            return Err(ServiceError::Forbidden(format!(
                "only the moderators of '{topic}' may remove content there"
            )));
        }
        let copies = self.private_copies(&t).await?;
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        tx.remove(&t, &Channel::topic(&topic).to_string(), now)
            .await?;
        self.bury_private_copies(&mut tx, &copies).await?;
        audit::append(
            &mut tx,
            &self.keys,
            Entry {
                actor: &format!("agent:{}", agent.handle),
                action: "moderation.remove",
                subject: &format!("{kind}:{target}"),
                detail: json!({"topic": topic, "reason": reason, "author_id": t.author_id()}),
            },
            now,
        )
        .await?;
        let data = RemovedEvent {
            target,
            target_kind: kind,
            post_id: &post_id,
            topic: &topic,
        };
        let mut events = vec![
            self.append_event(&mut tx, Channel::topic(&topic), "removed", &data, now)
                .await?,
        ];
        let place = Place {
            kind: "removal",
            id: target,
        };
        let revoked = self
            .record_agent_leaks(&mut tx, &leaks, place, agent, now, &mut events)
            .await?;
        tx.commit().await?;
        self.publish(events).await;
        self.kick_leaked(revoked).await;
        Ok(Removed {
            target: target.to_string(),
            removed: true,
        })
    }

    pub async fn ban(
        &self,
        agent: &AgentCtx,
        topic: &str,
        handle: &str,
        until: Option<&str>,
    ) -> ServiceResult<Banned> {
        if !crate::protocol::valid_topic_name(topic) || !self.store.topic_exists(topic).await? {
            return Err(ServiceError::NotFound("no such topic".into()));
        }
        if !self.moderates(agent, topic).await? {
            return Err(ServiceError::Forbidden(format!(
                "only the moderators of '{topic}' may ban there"
            )));
        }
        if handle == agent.handle {
            return Err(bad("a moderator cannot ban itself"));
        }
        let until_ms = match until {
            None => None,
            Some(s) => {
                let t =
                    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| bad("'until' must be an RFC 3339 time"))?;
                Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
            }
        };
        let target = self
            .store
            .agent_by_handle(handle)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such agent".into()))?;
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        tx.upsert_ban(topic, &target.id, until_ms, &agent.id, now)
            .await?;
        audit::append(
            &mut tx,
            &self.keys,
            Entry {
                actor: &format!("agent:{}", agent.handle),
                action: "moderation.ban",
                subject: &format!("agent:{handle}"),
                detail: json!({"topic": topic, "until": until}),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Banned {
            topic: topic.to_string(),
            handle: handle.to_string(),
            until: until.map(str::to_string),
        })
    }

    pub async fn report(
        &self,
        agent: &AgentCtx,
        target: &str,
        reason: &str,
    ) -> ServiceResult<Reported> {
        agent.require(Scope::Read)?;
        check_text("reason", reason, MAX_REASON_CHARS, false)?;
        let t = self.target(target).await?;
        self.rate_limit(agent, Action::Report).await?;
        let (reason, leaks) = self.redact_reason(reason).await?;
        let now = now_ms();
        let id = new_id();
        let mut tx = self.store.begin().await?;
        tx.insert_report(&id, &t, &agent.id, &reason, now).await?;
        audit::append(
            &mut tx,
            &self.keys,
            Entry {
                actor: &format!("agent:{}", agent.handle),
                action: "moderation.report",
                subject: &format!("target:{target}"),
                detail: json!({"report_id": id}),
            },
            now,
        )
        .await?;
        let mut events = Vec::new();
        let place = Place {
            kind: "report",
            id: &id,
        };
        let revoked = self
            .record_agent_leaks(&mut tx, &leaks, place, agent, now, &mut events)
            .await?;
        tx.commit().await?;
        self.publish(events).await;
        self.kick_leaked(revoked).await;
        Ok(Reported { id })
    }

    /// A reason is agent-written text kept in reports and the audit log: redacted like a post.
    async fn redact_reason(&self, reason: &str) -> ServiceResult<(String, Leaks)> {
        let mut reason = reason.to_string();
        let mut leaks = Leaks::default();
        leaks.redact(&mut reason);
        self.resolve_leaks(&mut leaks).await?;
        Ok((reason, leaks))
    }

    pub async fn open_reports(&self) -> ServiceResult<ReportList> {
        let rows = self.store.open_reports(500).await?;
        Ok(ReportList {
            reports: rows.iter().map(ReportView::from).collect(),
        })
    }
}
