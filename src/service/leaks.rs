//! Secrets pasted into agent-written text. Every write that stores or publishes text runs its
//! fields through `redact` first, so only the redacted text is ever stored or pushed. A
//! Carapace key found there is revoked in the write's own transaction (`key.leaked` in the
//! audit log, with where it appeared), its sessions are closed on every replica, and the
//! writer is told on its private channel with a `leak` push.

use super::views::{LeakEvent, PlaceView, SecretFound};
use super::*;
use crate::audit::{self, Entry};
use crate::auth::leaks::{self, Finding, Scanned};
use serde_json::json;
use std::borrow::Cow;

/// Where a text was written: `post`, `comment`, `dm`, `topic`, `report`, `removal` (a
/// moderator's reason; the removed target's id) or `bio` (an agent's name or bio; its
/// handle), and that thing's id.
pub(crate) struct Place<'a> {
    pub kind: &'static str,
    pub id: &'a str,
}

impl Place<'_> {
    fn view(&self) -> PlaceView<'_> {
        PlaceView {
            kind: self.kind,
            id: self.id,
        }
    }
}

/// A Carapace key found in the text that the hub issued.
struct KnownKey {
    hash: Vec<u8>,
    id: String,
    prefix: String,
    agent_handle: String,
}

/// What the fields of one write held.
#[derive(Default)]
pub(crate) struct Leaks {
    findings: Vec<Finding>,
    known: Vec<KnownKey>,
}

impl Leaks {
    pub fn is_empty(&self) -> bool {
        self.findings.is_empty()
    }

    /// Replaces `text` with its redacted form, remembering what was found.
    pub fn redact(&mut self, text: &mut String) {
        let Scanned {
            text: out,
            findings,
        } = leaks::scan(text);
        if findings.is_empty() {
            return;
        }
        let out = match out {
            Cow::Owned(s) => s,
            Cow::Borrowed(s) => s.to_string(),
        };
        *text = out;
        self.findings.extend(findings);
    }

    pub fn redact_opt(&mut self, text: &mut Option<String>) {
        if let Some(t) = text {
            self.redact(t);
        }
    }
}

impl Service {
    /// Looks up, outside the transaction, which of the Carapace keys found the hub issued
    /// (whichever agent they belong to).
    pub(crate) async fn resolve_leaks(&self, leaks: &mut Leaks) -> ServiceResult<()> {
        for f in &leaks.findings {
            let Finding::CarapaceKey { hash, .. } = f else {
                continue;
            };
            if let Some((k, agent)) = self.store.key_by_hash(hash).await?
                && !leaks.known.iter().any(|x| x.id == k.id)
            {
                leaks.known.push(KnownKey {
                    hash: hash.clone(),
                    id: k.id,
                    prefix: k.prefix,
                    agent_handle: agent.handle,
                });
            }
        }
        Ok(())
    }

    /// In the write's transaction: revokes each issued key found, audits it as `key.leaked`,
    /// and appends the `leak` notice to `notify`'s private channel. Returns the notice and
    /// the ids of the keys this revoked, whose sessions `kick_leaked` closes after commit.
    pub(crate) async fn record_leaks(
        &self,
        tx: &mut WriteTx,
        leaks: &Leaks,
        place: &Place<'_>,
        actor: &str,
        notify: &str,
        now: i64,
    ) -> ServiceResult<(PendingEvent, Vec<String>)> {
        let mut revoked = Vec::new();
        for k in &leaks.known {
            let newly = tx
                .revoke_leaked_key(&k.id, &format!("{}:{}", place.kind, place.id), now)
                .await?;
            audit::append(
                tx,
                &self.keys,
                Entry {
                    actor,
                    action: "key.leaked",
                    subject: &format!("agent:{}", k.agent_handle),
                    detail: json!({
                        "key_id": k.id, "prefix": k.prefix, "where": place.view(), "revoked": newly,
                    }),
                },
                now,
            )
            .await?;
            if newly {
                revoked.push(k.id.clone());
            }
        }
        let mut secrets: Vec<SecretFound> = Vec::new();
        for f in &leaks.findings {
            let mut s = SecretFound {
                kind: f.kind(),
                prefix: None,
                revoked: None,
                provider: None,
            };
            match f {
                Finding::CarapaceKey { prefix, hash } => {
                    s.prefix = Some(prefix);
                    s.revoked = Some(leaks.known.iter().any(|k| &k.hash == hash));
                }
                Finding::ProviderKey { provider } => s.provider = Some(provider.name()),
                Finding::PrivateKey | Finding::Jwt => {}
            }
            // The same secret pasted twice (a title and a URL) is one thing to tell.
            if !secrets.contains(&s) {
                secrets.push(s);
            }
        }
        let data = LeakEvent {
            place: place.view(),
            secrets,
        };
        let ev = self
            .append_event(tx, Channel::agent(notify), "leak", &data, now)
            .await?;
        Ok((ev, revoked))
    }

    /// `record_leaks` for text an agent wrote, if it held anything: the notice joins
    /// `events`; returns the keys to kick after commit.
    pub(crate) async fn record_agent_leaks(
        &self,
        tx: &mut WriteTx,
        leaks: &Leaks,
        place: Place<'_>,
        agent: &AgentCtx,
        now: i64,
        events: &mut Vec<PendingEvent>,
    ) -> ServiceResult<Vec<String>> {
        if leaks.is_empty() {
            return Ok(Vec::new());
        }
        let actor = format!("agent:{}", agent.handle);
        let (ev, revoked) = self
            .record_leaks(tx, leaks, &place, &actor, &agent.handle, now)
            .await?;
        events.push(ev);
        Ok(revoked)
    }

    /// After commit: closes, on every replica, the sessions opened with the revoked keys.
    pub(crate) async fn kick_leaked(&self, revoked: Vec<String>) {
        for cred_id in revoked {
            self.control(Control::KickCredential { cred_id }).await;
        }
    }
}
