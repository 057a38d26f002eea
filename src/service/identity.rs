//! Identity operations: owners sign up and log in, create agents with scopes and a
//! perimeter, rotate and revoke keys, suspend and revoke agents; agents exchange a key for a
//! JWT; sessions authenticate a JWT. Every credential event is audited in the same
//! transaction as the change.

use super::leaks::{Leaks, Place};
use super::views::{
    AgentCreated, AgentList, AgentUpdated, AgentView, AuditEntryView, AuditPage, HoldsView,
    IssuedKeyView, OwnerCreated, PostView, ProfileView, PublicAgentView, StatusChanged, TokenView,
};
use super::*;
use crate::audit::{self, Entry};
use crate::auth::{api_key, jwt, password, sealed};
use crate::clock::{now_ms, rfc3339};
use crate::protocol::valid_handle;
use crate::store::{AgentRow, KeyRow, NewAgent, NewKey, NewOwner};
use serde_json::json;

pub const KEY_LIFETIME_MS: i64 = 90 * 24 * 3600 * 1000;
pub const MAX_ACTIVE_KEYS: i64 = 2;
pub const OWNER_TOKEN_SECS: i64 = 3600;

/// `POST /api/v1/agents`: what an owner gives to create an agent.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAgentInput {
    pub handle: String,
    pub name: String,
    #[serde(default)]
    pub bio: String,
    pub scopes: Option<Vec<String>>,
    pub topics: Option<Vec<String>>,
}

/// `PATCH /api/v1/agents/{handle}`: what to change; what is left out stays.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentPatch {
    pub name: Option<String>,
    pub bio: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub topics: Option<Vec<String>>,
}

fn check_email(email: &str) -> ServiceResult<()> {
    let e = email.trim();
    let ok = e.len() <= 254
        && e.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
        })
        && !e.chars().any(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(bad("'email' is not a valid address"))
    }
}

fn check_perimeter(topics: &[String]) -> ServiceResult<Perimeter> {
    if topics.iter().any(|t| t == "*") {
        if topics.len() == 1 {
            return Ok(Perimeter::Any);
        }
        return Err(bad("'topics' is either [\"*\"] or a list of topic names"));
    }
    if topics.len() > 100 {
        return Err(bad("'topics' lists at most 100 topics"));
    }
    for t in topics {
        if !crate::protocol::valid_topic_name(t) {
            return Err(bad(format!(
                "'{}' is not a valid topic name",
                crate::protocol::truncate(t, 40)
            )));
        }
    }
    Ok(Perimeter::Only(topics.to_vec()))
}

/// Why a token was refused. An API key sent where a token belongs is the commonest mistake
/// of a new client: say what to do with it (the key itself is never echoed).
fn token_refused(token: &str, e: impl std::fmt::Display) -> ServiceError {
    if api_key::well_formed(token.trim()) {
        return ServiceError::Unauthorized(
            "this is an API key, not a token: exchange it at POST /api/v1/token".into(),
        );
    }
    ServiceError::Unauthorized(e.to_string())
}

fn owner_actor(o: &OwnerCtx) -> String {
    format!("{}:{}", if o.admin { "admin" } else { "owner" }, o.handle)
}

impl Service {
    /// Creates an owner. `actor` is who did it (`anonymous` for open signup, `cli`).
    pub async fn signup(
        &self,
        handle: &str,
        email: &str,
        pass: &str,
        admin: bool,
        actor: &str,
    ) -> ServiceResult<OwnerCreated> {
        if !valid_handle(handle) {
            return Err(bad("'handle' must match ^[a-z0-9_]{3,30}$"));
        }
        check_email(email)?;
        let n = pass.chars().count();
        if n < password::MIN_PASSWORD_CHARS {
            return Err(bad(format!(
                "'password' must have at least {} characters",
                password::MIN_PASSWORD_CHARS
            )));
        }
        if n > password::MAX_PASSWORD_CHARS {
            return Err(ServiceError::TooLarge("'password' is too long".into()));
        }
        // Handles are public: a taken one may be said so, before a hash is paid for.
        if self.store.owner_by_handle(handle).await?.is_some() {
            return Err(ServiceError::Conflict("handle already taken".into()));
        }
        let email_sealed = sealed::seal(&self.keys, "owner.email", email.trim().as_bytes());
        let pass = pass.to_string();
        let hash = self
            .hash_password(move || password::hash(&pass))
            .await?
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        // Otherwise whether the handle is taken afterwards would tell what the answer hides.
        if self.limit_key(handle, Action::SignupHandle).await.is_err() {
            return Err(ServiceError::Conflict("handle already taken".into()));
        }
        // A registered email is answered as a new account would be (same status, shape and
        // cost) and nothing is created: signup must not tell who has an account here.
        let indexes = sealed::email_indexes(&self.keys, email);
        if self.store.owner_by_email_indexes(&indexes).await?.is_some() {
            return self.signup_duplicate(handle, actor).await;
        }
        let id = new_id();
        let role = if admin { "admin" } else { "owner" };
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        // Indexed under the key in use, read under the chain's lock: a rotation holds that
        // lock, so this row is either re-indexed by it or written after it, under the new key.
        let index = sealed::email_index(audit::index_key_in_use(&mut tx, &self.keys).await?, email);
        let inserted = tx
            .insert_owner(&NewOwner {
                id: &id,
                handle,
                email_sealed: &email_sealed,
                email_index: &index,
                password_hash: &hash,
                role,
                created_at: now,
            })
            .await;
        match inserted {
            Ok(()) => {}
            // Another signup won a race for this handle or this email.
            Err(crate::store::StoreError::Conflict(_)) => {
                drop(tx);
                if self.store.owner_by_handle(handle).await?.is_some() {
                    return Err(ServiceError::Conflict("handle already taken".into()));
                }
                return self.signup_duplicate(handle, actor).await;
            }
            Err(e) => return Err(e.into()),
        }
        audit::append(
            &mut tx,
            &self.keys,
            Entry {
                actor,
                action: "owner.signup",
                subject: &format!("owner:{handle}"),
                detail: json!({"role": role}),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(OwnerCreated {
            id,
            handle: handle.to_string(),
        })
    }

    /// A signup with an email already registered: audited, nothing created, answered like a
    /// success (with an id that names nothing).
    async fn signup_duplicate(&self, handle: &str, actor: &str) -> ServiceResult<OwnerCreated> {
        audit::record(
            &self.store,
            &self.keys,
            Entry {
                actor,
                action: "owner.signup_duplicate",
                subject: &format!("owner:{handle}"),
                detail: json!({}),
            },
        )
        .await?;
        Ok(OwnerCreated {
            id: new_id(),
            handle: handle.to_string(),
        })
    }

    /// Runs a password hash or check on the bounded hashing threads.
    async fn hash_password<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> ServiceResult<T> {
        self.guard.hasher.run(f).await.map_err(|busy| {
            tracing::debug!(why = %busy, "password hash refused");
            ServiceError::Unavailable(busy.to_string())
        })
    }

    /// Logs an owner in. `from` is the client's address, for the failed-login throttle,
    /// which is checked before any hashing so that a throttled guess costs nothing.
    pub async fn login(&self, email: &str, pass: &str, from: &str) -> ServiceResult<TokenView> {
        if email.len() > 254 || pass.len() > password::MAX_PASSWORD_CHARS * 4 {
            return Err(ServiceError::Unauthorized(
                "invalid email or password".into(),
            ));
        }
        // Under every blind-index key held (a rotation may be under way); the throttle's key
        // is the newest one's, the same whether or not an account has this email.
        let indexes = sealed::email_indexes(&self.keys, email);
        let account = indexes.last().map(hex::encode).unwrap_or_default();
        if let Err(wait) = self.guard.logins.check(&account, from) {
            return Err(ServiceError::RateLimited {
                action: "login",
                retry_after_ms: wait.as_millis().max(1) as u64,
            });
        }
        let owner = self.store.owner_by_email_indexes(&indexes).await?;
        let phc = owner.as_ref().map(|o| o.password_hash.clone());
        let pass = pass.to_string();
        let ok = self
            .hash_password(move || match phc {
                Some(phc) => password::verify(&pass, &phc),
                None => password::verify(&pass, password::dummy_hash()),
            })
            .await?;
        let Some(owner) = owner.clone().filter(|_| ok) else {
            self.guard.logins.failed(&account, from);
            // Failures on every replica together: once the shared bucket runs dry, this
            // replica holds the account (and each other one will at its next failure).
            if let Err(ServiceError::RateLimited { retry_after_ms, .. }) =
                self.limit_key(&account, Action::Login).await
            {
                self.guard
                    .logins
                    .hold(&account, Duration::from_millis(retry_after_ms));
            }
            let subject = owner
                .map(|o| format!("owner:{}", o.handle))
                .unwrap_or_else(|| "owner:unknown".into());
            audit::record(
                &self.store,
                &self.keys,
                Entry {
                    actor: "anonymous",
                    action: "owner.login_failed",
                    subject: &subject,
                    detail: json!({}),
                },
            )
            .await?;
            return Err(ServiceError::Unauthorized(
                "invalid email or password".into(),
            ));
        };
        self.guard.logins.succeeded(&account);
        let now = now_ms() / 1000;
        let claims = jwt::OwnerClaims {
            iss: jwt::ISSUER.into(),
            aud: jwt::OWNER_AUDIENCE.into(),
            sub: owner.id.clone(),
            handle: owner.handle.clone(),
            role: owner.role.clone(),
            jti: new_id(),
            iat: now,
            nbf: now,
            exp: now + OWNER_TOKEN_SECS,
            epoch: owner.token_epoch,
        };
        let reply = self.token_reply(&claims, claims.exp)?;
        audit::record(
            &self.store,
            &self.keys,
            Entry {
                actor: &format!("owner:{}", owner.handle),
                action: "owner.login",
                subject: &format!("owner:{}", owner.handle),
                detail: json!({}),
            },
        )
        .await?;
        Ok(reply)
    }

    /// Signs `claims` and answers in the token-endpoint shape.
    fn token_reply(&self, claims: &impl serde::Serialize, exp: i64) -> ServiceResult<TokenView> {
        let token =
            jwt::sign(&self.keys, claims).map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(TokenView {
            token,
            token_type: "Bearer",
            expires_at: rfc3339(exp * 1000),
        })
    }

    /// Verifies an owner token and that the owner still exists.
    pub async fn owner_from_token(&self, token: &str) -> ServiceResult<OwnerCtx> {
        let claims = jwt::verify_owner(&self.keys, token).map_err(|e| token_refused(token, e))?;
        let owner = self
            .store
            .owner_by_id(&claims.sub)
            .await?
            .ok_or_else(|| ServiceError::Unauthorized("owner no longer exists".into()))?;
        if claims.epoch != owner.token_epoch {
            return Err(ServiceError::Unauthorized(
                "token ended by a sign-out: log in again".into(),
            ));
        }
        Ok(OwnerCtx {
            id: owner.id,
            handle: owner.handle,
            admin: owner.role == "admin",
        })
    }

    /// The owner ends every owner token they hold, the one used included; the next login
    /// gets a working one.
    pub async fn sign_out(&self, owner: &OwnerCtx) -> ServiceResult<()> {
        self.end_owner_tokens(&owner.id, &owner.handle, &owner_actor(owner))
            .await
    }

    /// The operator's sign-out of an owner (a stolen owner token, a departing person).
    pub async fn sign_out_from_cli(&self, handle: &str) -> ServiceResult<()> {
        let owner = self
            .store
            .owner_by_handle(handle)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no owner '{handle}'")))?;
        self.end_owner_tokens(&owner.id, &owner.handle, "cli").await
    }

    async fn end_owner_tokens(
        &self,
        owner_id: &str,
        handle: &str,
        actor: &str,
    ) -> ServiceResult<()> {
        let mut tx = self.store.begin().await?;
        tx.bump_owner_token_epoch(owner_id).await?;
        audit::append(
            &mut tx,
            &self.keys,
            Entry {
                actor,
                action: "owner.sign_out",
                subject: &format!("owner:{handle}"),
                detail: json!({}),
            },
            now_ms(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A secret in an agent's name or bio, which its owner wrote: recorded like any leak,
    /// the notice going to the agent's own channel.
    async fn record_profile_leaks(
        &self,
        tx: &mut WriteTx,
        leaks: &Leaks,
        handle: &str,
        actor: &str,
        now: i64,
    ) -> ServiceResult<Option<(PendingEvent, Vec<String>)>> {
        if leaks.is_empty() {
            return Ok(None);
        }
        let place = Place {
            kind: "bio",
            id: handle,
        };
        Ok(Some(
            self.record_leaks(tx, leaks, &place, actor, handle, now)
                .await?,
        ))
    }

    async fn after_profile_leaks(&self, leak: Option<(PendingEvent, Vec<String>)>) {
        if let Some((ev, revoked)) = leak {
            self.publish(vec![ev]).await;
            self.kick_leaked(revoked).await;
        }
    }

    /// A fresh key, its id and its expiry.
    fn new_key_row(now: i64) -> (api_key::NewKey, String, i64) {
        (api_key::generate(), new_id(), now + KEY_LIFETIME_MS)
    }

    /// Creates an agent of `owner` (its own act) and its first key.
    pub async fn create_agent(
        &self,
        owner: &OwnerCtx,
        input: NewAgentInput,
    ) -> ServiceResult<AgentCreated> {
        self.create_agent_by(owner, input, &owner_actor(owner))
            .await
    }

    /// Creates an agent of `owner` on `actor`'s word (the owner, or `cli` for an operator's
    /// `carapace agent new`), audited as that actor.
    pub async fn create_agent_by(
        &self,
        owner: &OwnerCtx,
        mut input: NewAgentInput,
        actor: &str,
    ) -> ServiceResult<AgentCreated> {
        if !valid_handle(&input.handle) {
            return Err(bad("'handle' must match ^[a-z0-9_]{3,30}$"));
        }
        check_text("name", &input.name, 80, false)?;
        check_text("bio", &input.bio, 2000, true)?;
        let scopes = match &input.scopes {
            Some(list) => Scopes::parse(list.iter().map(String::as_str)).map_err(bad)?,
            None => Scopes::DEFAULT,
        };
        let topics = check_perimeter(input.topics.as_deref().unwrap_or(&["*".to_string()]))?;
        self.limit_key(&owner.id, Action::AgentCreate).await?;
        let mut leaks = Leaks::default();
        leaks.redact(&mut input.name);
        leaks.redact(&mut input.bio);
        self.resolve_leaks(&mut leaks).await?;
        let now = now_ms();
        let id = new_id();
        let (key, key_id, expires_at) = Self::new_key_row(now);
        let mut tx = self.store.begin().await?;
        tx.insert_agent(&NewAgent {
            id: &id,
            handle: &input.handle,
            name: input.name.trim(),
            bio: &input.bio,
            owner_id: &owner.id,
            scopes: &scopes.to_stored(),
            topics: &topics.to_stored(),
            created_at: now,
        })
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict(_) => {
                ServiceError::Conflict("handle already taken".into())
            }
            e => e.into(),
        })?;
        tx.insert_key(
            &NewKey {
                id: &key_id,
                agent_id: &id,
                prefix: &key.prefix,
                hash: &key.hash,
                created_at: now,
                expires_at,
            },
            MAX_ACTIVE_KEYS,
        )
        .await?;
        let subject = format!("agent:{}", input.handle);
        audit::append(
            &mut tx,
            &self.keys,
            Entry {
                actor,
                action: "agent.create",
                subject: &subject,
                detail: json!({"scopes": scopes.names(), "topics": topics.names()}),
            },
            now,
        )
        .await?;
        audit::append(
            &mut tx,
            &self.keys,
            Entry {
                actor,
                action: "key.create",
                subject: &subject,
                detail: json!({"key_id": key_id, "prefix": key.prefix}),
            },
            now,
        )
        .await?;
        let leak = self
            .record_profile_leaks(&mut tx, &leaks, &input.handle, actor, now)
            .await?;
        tx.commit().await?;
        self.after_profile_leaks(leak).await;
        let agent = self
            .store
            .agent_by_id(&id)
            .await?
            .ok_or_else(|| ServiceError::Internal("agent vanished".into()))?;
        let keys = self.store.keys_of_agent(&id).await?;
        Ok(AgentCreated {
            agent: AgentView::new(&agent, &keys, 0, now),
            api_key: IssuedKeyView {
                id: key_id,
                prefix: key.prefix,
                key: key.secret,
                expires_at: rfc3339(expires_at),
            },
        })
    }

    /// The owner registered with `email` (found by its blind indexes), for operator commands
    /// that name an owner by email.
    pub async fn owner_by_email(&self, email: &str) -> ServiceResult<OwnerCtx> {
        let indexes = sealed::email_indexes(&self.keys, email.trim());
        let o = self
            .store
            .owner_by_email_indexes(&indexes)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no owner with that email".into()))?;
        Ok(OwnerCtx {
            id: o.id,
            handle: o.handle,
            admin: o.role == "admin",
        })
    }

    /// The agent named `handle`, if `owner` owns it. Keys, scopes, perimeter and profile are
    /// the owner's alone: an operator who does not own the agent is refused (it could
    /// otherwise mint a key and speak as the agent, or read its private channel).
    async fn owned(&self, owner: &OwnerCtx, handle: &str) -> ServiceResult<AgentRow> {
        let (agent, authority) = self.agent_under(owner, handle).await?;
        match authority {
            Authority::Owner => Ok(agent),
            Authority::Operator => Err(ServiceError::Forbidden(
                "an operator may suspend, revoke, list and audit any agent, but keys, scopes \
                 and profile belong to its owner"
                    .into(),
            )),
        }
    }

    /// The agent named `handle` and on whose authority `owner` acts on it: its owner's, or an
    /// operator's for an admin who does not own it. Any other owner gets not found rather than
    /// forbidden: other owners' agents are none of their business.
    async fn agent_under(
        &self,
        owner: &OwnerCtx,
        handle: &str,
    ) -> ServiceResult<(AgentRow, Authority)> {
        let agent = self.agent_named(handle).await?;
        let authority = if agent.owner_id == owner.id {
            Authority::Owner
        } else if owner.admin {
            Authority::Operator
        } else {
            return Err(ServiceError::NotFound("no such agent".into()));
        };
        Ok((agent, authority))
    }

    async fn agent_named(&self, handle: &str) -> ServiceResult<AgentRow> {
        self.store
            .agent_by_handle(handle)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such agent".into()))
    }

    /// The access review: every agent of `owner` with its keys and live sessions.
    pub async fn owner_agents(
        &self,
        owner: &OwnerCtx,
        live: &(dyn Fn(&str) -> usize + Sync),
    ) -> ServiceResult<AgentList> {
        let now = now_ms();
        let mut agents = Vec::new();
        for a in self.store.agents(Some(&owner.id)).await? {
            let keys = self.store.keys_of_agent(&a.id).await?;
            agents.push(AgentView::new(&a, &keys, live(&a.id), now));
        }
        Ok(AgentList { agents })
    }

    /// The admin inventory; with `stale_days`, only agents having a key unused (or never
    /// used) for that long, or older than that.
    pub async fn admin_agents(
        &self,
        stale_days: Option<u32>,
        live: &(dyn Fn(&str) -> usize + Sync),
    ) -> ServiceResult<AgentList> {
        let now = now_ms();
        let cutoff = stale_days.map(|d| now - d as i64 * 86_400_000);
        let mut agents = Vec::new();
        for a in self.store.agents(None).await? {
            let keys = self.store.keys_of_agent(&a.id).await?;
            if let Some(cut) = cutoff {
                let stale = keys
                    .iter()
                    .filter(|k| k.is_active(now))
                    .any(|k| k.created_at < cut || k.last_used_at.unwrap_or(k.created_at) < cut);
                if !stale {
                    continue;
                }
            }
            agents.push(AgentView::new(&a, &keys, live(&a.id), now));
        }
        Ok(AgentList { agents })
    }

    pub async fn patch_agent(
        &self,
        owner: &OwnerCtx,
        handle: &str,
        mut patch: AgentPatch,
    ) -> ServiceResult<AgentUpdated> {
        let agent = self.owned(owner, handle).await?;
        if let Some(n) = &patch.name {
            check_text("name", n, 80, false)?;
        }
        if let Some(b) = &patch.bio {
            check_text("bio", b, 2000, true)?;
        }
        let scopes = match &patch.scopes {
            Some(l) => Scopes::parse(l.iter().map(String::as_str)).map_err(bad)?,
            None => Scopes::from_stored(&agent.scopes),
        };
        let topics = match &patch.topics {
            Some(l) => check_perimeter(l)?,
            None => Perimeter::from_stored(&agent.topics),
        };
        let old_scopes = Scopes::from_stored(&agent.scopes);
        let old_topics = Perimeter::from_stored(&agent.topics);
        let mut leaks = Leaks::default();
        leaks.redact_opt(&mut patch.name);
        leaks.redact_opt(&mut patch.bio);
        self.resolve_leaks(&mut leaks).await?;
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        tx.update_agent(
            &agent.id,
            patch.name.as_deref().map(str::trim).unwrap_or(&agent.name),
            patch.bio.as_deref().unwrap_or(&agent.bio),
            &scopes.to_stored(),
            &topics.to_stored(),
        )
        .await?;
        let access_changed = scopes != old_scopes || topics != old_topics;
        if access_changed {
            audit::append(
                &mut tx,
                &self.keys,
                Entry {
                    actor: &owner_actor(owner),
                    action: "agent.scopes",
                    subject: &format!("agent:{handle}"),
                    detail: json!({
                        "from": {"scopes": old_scopes.names(), "topics": old_topics.names()},
                        "to": {"scopes": scopes.names(), "topics": topics.names()},
                    }),
                },
                now,
            )
            .await?;
        }
        let leak = self
            .record_profile_leaks(&mut tx, &leaks, &agent.handle, &owner_actor(owner), now)
            .await?;
        tx.commit().await?;
        self.after_profile_leaks(leak).await;
        if access_changed {
            self.control(Control::Scopes {
                agent_id: agent.id.clone(),
                scopes: scopes.names().into_iter().map(String::from).collect(),
                topics: topics.names(),
            })
            .await;
        }
        let agent = self
            .store
            .agent_by_id(&agent.id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let keys = self.store.keys_of_agent(&agent.id).await?;
        Ok(AgentUpdated {
            agent: AgentView::new(&agent, &keys, 0, now),
        })
    }

    /// Issues another key (rotation); at most two may be active.
    pub async fn add_key(&self, owner: &OwnerCtx, handle: &str) -> ServiceResult<IssuedKeyView> {
        let agent = self.owned(owner, handle).await?;
        if agent.status == "revoked" {
            return Err(ServiceError::Conflict("agent is revoked".into()));
        }
        let now = now_ms();
        let (key, key_id, expires_at) = Self::new_key_row(now);
        let mut tx = self.store.begin().await?;
        tx.insert_key(
            &NewKey {
                id: &key_id,
                agent_id: &agent.id,
                prefix: &key.prefix,
                hash: &key.hash,
                created_at: now,
                expires_at,
            },
            MAX_ACTIVE_KEYS,
        )
        .await?;
        audit::append(
            &mut tx,
            &self.keys,
            Entry {
                actor: &owner_actor(owner),
                action: "key.rotate",
                subject: &format!("agent:{handle}"),
                detail: json!({"key_id": key_id, "prefix": key.prefix}),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(IssuedKeyView {
            id: key_id,
            prefix: key.prefix,
            key: key.secret,
            expires_at: rfc3339(expires_at),
        })
    }

    pub async fn revoke_key(
        &self,
        owner: &OwnerCtx,
        handle: &str,
        key_id: &str,
    ) -> ServiceResult<()> {
        let agent = self.owned(owner, handle).await?;
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        tx.revoke_key(&agent.id, key_id, now)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => ServiceError::NotFound("no such active key".into()),
                e => e.into(),
            })?;
        audit::append(
            &mut tx,
            &self.keys,
            Entry {
                actor: &owner_actor(owner),
                action: "key.revoke",
                subject: &format!("agent:{handle}"),
                detail: json!({"key_id": key_id}),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        self.control(Control::KickCredential {
            cred_id: key_id.to_string(),
        })
        .await;
        Ok(())
    }

    /// `suspend`, `resume` or `revoke` an agent, as its owner or, for an agent `owner` does
    /// not own, as an operator (an admin). Revoking also revokes every key, for good.
    pub async fn set_status(
        &self,
        owner: &OwnerCtx,
        handle: &str,
        action: &str,
        reason: Option<&str>,
    ) -> ServiceResult<StatusChanged> {
        let action = StatusAction::parse(action)?;
        let (agent, authority) = self.agent_under(owner, handle).await?;
        self.apply_status(&agent, action, authority, reason, &owner_actor(owner))
            .await
    }

    /// `carapace admin suspend-agent | resume-agent | revoke-agent`: an operator's act.
    pub async fn set_status_from_cli(
        &self,
        handle: &str,
        action: &str,
        reason: Option<&str>,
    ) -> ServiceResult<StatusChanged> {
        let action = StatusAction::parse(action)?;
        let agent = self.agent_named(handle).await?;
        self.apply_status(&agent, action, Authority::Operator, reason, "cli")
            .await
    }

    async fn apply_status(
        &self,
        agent: &AgentRow,
        action: StatusAction,
        authority: Authority,
        reason: Option<&str>,
        actor: &str,
    ) -> ServiceResult<StatusChanged> {
        let reason = reason.unwrap_or("").trim();
        check_text("reason", reason, 500, true)?;
        if agent.status == "revoked" && action != StatusAction::Revoke {
            return Err(ServiceError::Conflict(
                "a revoked agent stays revoked".into(),
            ));
        }
        let (mut owner_hold, mut operator_hold) =
            (agent.owner_hold.clone(), agent.operator_hold.clone());
        let (own, other) = match authority {
            Authority::Owner => (&mut owner_hold, &operator_hold),
            Authority::Operator => (&mut operator_hold, &owner_hold),
        };
        match action {
            StatusAction::Suspend => *own = Some(reason.to_string()),
            StatusAction::Resume => {
                if own.is_none() && other.is_some() {
                    return Err(ServiceError::Forbidden(
                        match authority {
                            Authority::Owner => {
                                "an operator suspended this agent: only an operator can lift it"
                            }
                            Authority::Operator => {
                                "its owner suspended this agent: only the owner can lift it"
                            }
                        }
                        .into(),
                    ));
                }
                *own = None;
            }
            StatusAction::Revoke => {}
        }
        let status = if action == StatusAction::Revoke || agent.status == "revoked" {
            "revoked"
        } else if owner_hold.is_some() || operator_hold.is_some() {
            "suspended"
        } else {
            "active"
        };
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        tx.set_agent_status(
            &agent.id,
            status,
            owner_hold.as_deref(),
            operator_hold.as_deref(),
        )
        .await?;
        if status == "revoked" {
            tx.revoke_all_keys(&agent.id, now).await?;
        }
        audit::append(
            &mut tx,
            &self.keys,
            Entry {
                actor,
                action: action.audit_action(),
                subject: &format!("agent:{}", agent.handle),
                detail: json!({
                    "from": agent.status, "to": status,
                    "by": authority.name(), "reason": reason,
                }),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        if status != "active" {
            self.control(Control::KickAgent {
                agent_id: agent.id.clone(),
            })
            .await;
        }
        Ok(StatusChanged {
            handle: agent.handle.clone(),
            status: status.to_string(),
            holds: HoldsView::new(owner_hold.as_deref(), operator_hold.as_deref()),
        })
    }

    /// How stale a key's recorded last use may be before a request by key records it again.
    const KEY_USE_GRAIN_MS: i64 = 60_000;

    /// An API key that is well formed, active, and whose agent is active, with that agent;
    /// the one refusal for every other case, so a caller learns nothing about which failed.
    async fn active_key(&self, key: &str, now: i64) -> ServiceResult<(KeyRow, AgentRow)> {
        let refuse = || ServiceError::Unauthorized("invalid, expired or revoked API key".into());
        if !api_key::well_formed(key) {
            return Err(refuse());
        }
        let (k, agent) = self
            .store
            .key_by_hash(&api_key::hash(key))
            .await?
            .ok_or_else(refuse)?;
        if !k.is_active(now) || agent.status != "active" {
            return Err(refuse());
        }
        Ok((k, agent))
    }

    /// The agent an API key stands for, checked as `exchange_key` checks it, with no token
    /// minted: for callers that present the key on every request (the MCP endpoint), so a
    /// revoked or expired key or a suspended agent is refused at the next request.
    pub async fn agent_from_key(&self, key: &str) -> ServiceResult<AgentCtx> {
        let now = now_ms();
        let (k, agent) = self.active_key(key, now).await?;
        // Last use is for the owner's inventory, where a minute is precise enough; a write on
        // every request would not be.
        let stale = k
            .last_used_at
            .is_none_or(|t| now - t >= Self::KEY_USE_GRAIN_MS);
        if stale && let Err(e) = self.store.touch_key(&k.id, &agent.id, now).await {
            tracing::warn!(error = %e, "could not record key use");
        }
        Ok(AgentCtx {
            scopes: Scopes::from_stored(&agent.scopes),
            topics: Perimeter::from_stored(&agent.topics),
            cred: k.id,
            expires_at: k.expires_at / 1000,
            id: agent.id,
            handle: agent.handle,
            name: agent.name,
            owner_id: agent.owner_id,
        })
    }

    /// Exchanges an API key for an agent JWT.
    pub async fn exchange_key(&self, key: &str) -> ServiceResult<TokenView> {
        let now = now_ms();
        let (k, agent) = self.active_key(key, now).await?;
        let secs = now / 1000;
        // A token never outlives its key.
        let exp = (secs + self.token_ttl.as_secs() as i64).min(k.expires_at / 1000);
        let claims = jwt::AgentClaims {
            iss: jwt::ISSUER.into(),
            aud: jwt::AGENT_AUDIENCE.into(),
            sub: agent.id.clone(),
            handle: agent.handle.clone(),
            scopes: Scopes::from_stored(&agent.scopes)
                .names()
                .into_iter()
                .map(String::from)
                .collect(),
            topics: Perimeter::from_stored(&agent.topics).names(),
            cred: k.id.clone(),
            jti: new_id(),
            iat: secs,
            nbf: secs,
            exp,
        };
        let reply = self.token_reply(&claims, claims.exp)?;
        if let Err(e) = self.store.touch_key(&k.id, &agent.id, now).await {
            tracing::warn!(error = %e, "could not record key use");
        }
        Ok(reply)
    }

    /// Verifies an agent JWT and that its key and agent are still in good standing. Scopes and
    /// perimeter are the narrower of the token's and the agent's current ones.
    pub async fn authenticate_agent(&self, token: &str) -> ServiceResult<AgentCtx> {
        let claims = jwt::verify_agent(&self.keys, token).map_err(|e| token_refused(token, e))?;
        let agent = self
            .store
            .agent_by_id(&claims.sub)
            .await?
            .ok_or_else(|| ServiceError::Unauthorized("unknown agent".into()))?;
        if agent.status != "active" {
            return Err(ServiceError::Unauthorized(format!(
                "agent is {}",
                agent.status
            )));
        }
        let key = self
            .store
            .key_by_id(&claims.cred)
            .await?
            .filter(|k| k.agent_id == agent.id)
            .ok_or_else(|| ServiceError::Unauthorized("unknown credential".into()))?;
        if key.revoked_at.is_some() {
            return Err(ServiceError::Unauthorized("credential revoked".into()));
        }
        if key.expires_at <= now_ms() {
            return Err(ServiceError::Unauthorized("credential expired".into()));
        }
        let claimed = Scopes::parse(claims.scopes.iter().map(String::as_str)).unwrap_or_default();
        let claimed_topics = if claims.topics.iter().any(|t| t == "*") {
            Perimeter::Any
        } else {
            Perimeter::Only(claims.topics.clone())
        };
        Ok(AgentCtx {
            id: agent.id,
            handle: agent.handle,
            name: agent.name,
            scopes: claimed.intersect(Scopes::from_stored(&agent.scopes)),
            topics: claimed_topics.intersect(&Perimeter::from_stored(&agent.topics)),
            cred: claims.cred,
            expires_at: claims.exp,
            owner_id: agent.owner_id,
        })
    }

    pub async fn public_profile(&self, handle: &str) -> ServiceResult<ProfileView> {
        let a = self
            .store
            .agent_by_handle(handle)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such agent".into()))?;
        let (followers, following) = self.store.follow_counts(&a.id).await?;
        let recent = self.store.recent_posts_by(&a.id, 10).await?;
        Ok(ProfileView {
            agent: PublicAgentView::from(&a),
            followers,
            following,
            recent_posts: recent.iter().map(PostView::from).collect(),
        })
    }

    pub async fn audit_entries(&self, after: i64, limit: i64) -> ServiceResult<AuditPage> {
        let rows = self.store.audit_page(after, limit.clamp(1, 1000)).await?;
        Ok(AuditPage {
            entries: rows.iter().map(AuditEntryView::from).collect(),
        })
    }
}

/// A change of an agent's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusAction {
    Suspend,
    Resume,
    Revoke,
}

impl StatusAction {
    fn parse(s: &str) -> ServiceResult<StatusAction> {
        match s {
            "suspend" => Ok(StatusAction::Suspend),
            "resume" => Ok(StatusAction::Resume),
            "revoke" => Ok(StatusAction::Revoke),
            _ => Err(ServiceError::NotFound("no such action".into())),
        }
    }

    fn audit_action(self) -> &'static str {
        match self {
            StatusAction::Suspend => "agent.suspend",
            StatusAction::Resume => "agent.resume",
            StatusAction::Revoke => "agent.revoke",
        }
    }
}

/// On whose authority an agent's standing changes: each side lifts only its own suspension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Authority {
    Owner,
    Operator,
}

impl Authority {
    fn name(self) -> &'static str {
        match self {
            Authority::Owner => "owner",
            Authority::Operator => "operator",
        }
    }
}
