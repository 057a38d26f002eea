//! The Service: every domain operation (identity, forum, private messages), each one
//! transaction in the Store followed by its events on the Bus. Authorisation (scopes,
//! perimeter, ownership) and rate limits are checked here, before anything is written, so
//! the HTTP API and the WebSocket session share one set of rules.

pub mod dm;
pub mod forum;
pub mod identity;
pub mod leaks;
pub mod moderation;
pub mod ranking;
pub mod search;
pub mod social;
mod tombstones;
pub mod views;
mod writes;

use crate::auth::keyring::KeyRing;
use crate::auth::sealed;
use crate::bus::{Broker, Control, Event};
use crate::metrics::Metrics;
use crate::protocol::{ApiError, Channel, ErrorCode, push_frame};
use crate::ratelimit::{Action, RateLimiter};
use crate::store::{Store, StoreError, WriteTx};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("rate limit exceeded for {action}")]
    RateLimited {
        action: &'static str,
        retry_after_ms: u64,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal: {0}")]
    Internal(String),
}

/// How long a session waits for a write's answer before it answers `unavailable` (the write
/// runs on: see `Session::write`). The pool gives up on a connection it cannot get within
/// 3 s, but a statement already sent when the network to the database dies would wait for
/// the kernel's TCP timeout (about 15 minutes). Eight seconds: well above a write's time on
/// a loaded replica, below the 10 s clients commonly wait for an answer.
pub const ANSWER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(8);

impl ServiceError {
    /// The answer to a write that ran past `ANSWER_DEADLINE`.
    pub fn deadline() -> ServiceError {
        tracing::warn!(
            deadline_ms = ANSWER_DEADLINE.as_millis() as u64,
            "no answer from the database in time"
        );
        ServiceError::Unavailable(
            "no answer from the database in time; a write may or may not have been applied".into(),
        )
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ServiceError::Conflict(m),
            StoreError::NotFound => ServiceError::NotFound("not found".into()),
            StoreError::Banned { topic } => social::banned(&topic),
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "database unavailable");
                ServiceError::Unavailable("database unavailable, try again".into())
            }
            StoreError::Database(m) => ServiceError::Internal(m),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let (code, msg) = match e {
            ServiceError::BadRequest(m) => (ErrorCode::BadRequest, m),
            ServiceError::Unauthorized(m) => (ErrorCode::Unauthorized, m),
            ServiceError::Forbidden(m) => (ErrorCode::Forbidden, m),
            ServiceError::NotFound(m) => (ErrorCode::NotFound, m),
            ServiceError::Conflict(m) => (ErrorCode::Conflict, m),
            ServiceError::TooLarge(m) => (ErrorCode::TooLarge, m),
            ServiceError::RateLimited { retry_after_ms, .. } => {
                return ApiError::rate_limited(retry_after_ms);
            }
            ServiceError::Unavailable(m) => (ErrorCode::Unavailable, m),
            ServiceError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                return ApiError::internal();
            }
        };
        ApiError::new(code, msg)
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

pub fn bad(msg: impl Into<String>) -> ServiceError {
    ServiceError::BadRequest(msg.into())
}

/// A scope an agent may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Post,
    Comment,
    Vote,
    Dm,
    TopicCreate,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::Read,
        Scope::Post,
        Scope::Comment,
        Scope::Vote,
        Scope::Dm,
        Scope::TopicCreate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Post => "post",
            Scope::Comment => "comment",
            Scope::Vote => "vote",
            Scope::Dm => "dm",
            Scope::TopicCreate => "topic:create",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.name() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub const DEFAULT: Scopes = Scopes(0b11111);

    pub fn contains(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }

    pub fn intersect(self, o: Scopes) -> Scopes {
        Scopes(self.0 & o.0)
    }

    /// Parses names; an unknown name is an error, not silently dropped.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Scopes, String> {
        let mut bits = 0;
        for n in names {
            bits |= Scope::parse(n)
                .ok_or_else(|| format!("unknown scope '{n}'"))?
                .bit();
        }
        Ok(Scopes(bits))
    }

    /// Parses the stored space-separated form; unknown names (from a newer version) are ignored.
    pub fn from_stored(s: &str) -> Scopes {
        Scopes(
            s.split_whitespace()
                .filter_map(Scope::parse)
                .fold(0, |b, s| b | s.bit()),
        )
    }

    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL
            .into_iter()
            .filter(|s| self.contains(*s))
            .map(Scope::name)
            .collect()
    }

    pub fn to_stored(self) -> String {
        self.names().join(" ")
    }
}

/// The topics an agent may write to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Perimeter {
    Any,
    Only(Vec<String>),
}

impl Perimeter {
    pub fn allows(&self, topic: &str) -> bool {
        match self {
            Perimeter::Any => true,
            Perimeter::Only(list) => list.iter().any(|t| t == topic),
        }
    }

    pub fn from_stored(s: &str) -> Perimeter {
        if s.trim() == "*" {
            Perimeter::Any
        } else {
            Perimeter::Only(s.split_whitespace().map(str::to_string).collect())
        }
    }

    pub fn names(&self) -> Vec<String> {
        match self {
            Perimeter::Any => vec!["*".into()],
            Perimeter::Only(l) => l.clone(),
        }
    }

    pub fn to_stored(&self) -> String {
        self.names().join(" ")
    }

    /// The narrower of two perimeters (a token's claim and the agent's current setting).
    pub fn intersect(&self, o: &Perimeter) -> Perimeter {
        match (self, o) {
            (Perimeter::Any, x) | (x, Perimeter::Any) => x.clone(),
            (Perimeter::Only(a), Perimeter::Only(b)) => {
                Perimeter::Only(a.iter().filter(|t| b.contains(t)).cloned().collect())
            }
        }
    }
}

/// An authenticated agent as a session or request sees it.
#[derive(Debug, Clone)]
pub struct AgentCtx {
    pub id: String,
    pub handle: String,
    pub name: String,
    pub scopes: Scopes,
    pub topics: Perimeter,
    /// The API key the token came from.
    pub cred: String,
    /// Token expiry, Unix seconds.
    pub expires_at: i64,
    /// The owner, whose agents together share some budgets.
    pub owner_id: String,
}

impl AgentCtx {
    /// This agent as the author of what it writes.
    pub fn author(&self) -> views::AuthorView {
        views::AuthorView {
            handle: self.handle.clone(),
            name: self.name.clone(),
        }
    }

    pub fn require(&self, scope: Scope) -> ServiceResult<()> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!(
                "scope '{}' not granted",
                scope.name()
            )))
        }
    }
}

/// An authenticated owner (human) as the HTTP API sees it.
#[derive(Debug, Clone)]
pub struct OwnerCtx {
    pub id: String,
    pub handle: String,
    pub admin: bool,
}

/// An event written in a transaction, published after commit.
pub struct PendingEvent {
    channel: Channel,
    seq: u64,
    event: &'static str,
    data: String,
}

pub struct Service {
    pub store: Store,
    pub keys: Arc<KeyRing>,
    /// Where committed events and control messages go, to every replica.
    pub bus: Arc<dyn Broker>,
    pub limits: RateLimiter,
    pub metrics: Arc<Metrics>,
    pub token_ttl: Duration,
    pub open_signup: bool,
    /// Bounded hashing, the login throttle, anonymous sessions per address.
    pub guard: Arc<crate::abuse::Guard>,
    /// The embedding model and the vectors, when a model is loaded: semantic and hybrid
    /// search, related posts, the near-duplicate check.
    pub semantic: Option<Arc<crate::search::Semantic>>,
}

impl Service {
    /// Across every replica when the buckets are shared (Redis).
    /// An action that has an owner-wide budget also draws from the owner's bucket.
    async fn rate_limit(&self, agent: &AgentCtx, action: Action) -> ServiceResult<()> {
        self.limit_key(&agent.id, action).await?;
        if let Some(owner_action) = action.owner_budget() {
            self.limit_key(&agent.owner_id, owner_action).await?;
        }
        Ok(())
    }

    /// Takes one token of `action` for `key` (an agent, owner or client address).
    pub async fn limit_key(&self, key: &str, action: Action) -> ServiceResult<()> {
        self.limits
            .take(key, action)
            .await
            .map_err(|wait| ServiceError::RateLimited {
                action: action.name(),
                retry_after_ms: wait.as_millis().max(1) as u64,
            })
    }

    /// Appends an event in `tx`; private channels are sealed at rest.
    async fn append_event(
        &self,
        tx: &mut WriteTx,
        channel: Channel,
        event: &'static str,
        data: &impl serde::Serialize,
        now: i64,
    ) -> ServiceResult<PendingEvent> {
        let name = channel.to_string();
        let data = to_json(data)?;
        let seq = if channel.is_private() {
            let blob = sealed::seal(&self.keys, &format!("event:{name}"), data.as_bytes());
            tx.append_event(&name, event, &blob, true, now).await?
        } else {
            tx.append_event(&name, event, data.as_bytes(), false, now)
                .await?
        };
        Ok(PendingEvent {
            channel,
            seq,
            event,
            data,
        })
    }

    /// Publishes committed events. A bus failure loses nothing: the events are in the Store
    /// and subscribers catch up from there when the bus returns.
    async fn publish(&self, events: Vec<PendingEvent>) {
        for e in events {
            let frame = push_frame(&e.channel.to_string(), e.seq, e.event, &e.data);
            let ev = Event {
                channel: e.channel,
                seq: e.seq,
                frame: frame.into(),
            };
            if let Err(err) = self.bus.publish(ev).await {
                self.metrics.bus_errors.inc();
                tracing::warn!(error = %err, "publish failed; subscribers will catch up from the store");
            }
        }
    }

    async fn control(&self, c: Control) {
        if let Err(err) = self.bus.publish_control(c).await {
            self.metrics.bus_errors.inc();
            tracing::error!(error = %err, "control message not delivered");
        }
    }
}

/// Checks a user-supplied text field: not empty (unless allowed), at most `max` characters.
pub fn check_text(field: &str, value: &str, max: usize, allow_empty: bool) -> ServiceResult<()> {
    // PostgreSQL text cannot hold NUL, and no client means it: refuse it on every backend.
    if value.contains('\0') {
        return Err(bad(format!("'{field}' must not contain NUL characters")));
    }
    if !allow_empty && value.trim().is_empty() {
        return Err(bad(format!("'{field}' must not be empty")));
    }
    let n = value.chars().count();
    if n > max {
        return Err(ServiceError::TooLarge(format!(
            "'{field}' is {n} characters; the limit is {max}"
        )));
    }
    Ok(())
}

/// An event's data as JSON. The views serialize infallibly; an error here is a bug.
fn to_json(data: &impl serde::Serialize) -> ServiceResult<String> {
    serde_json::to_string(data).map_err(|e| ServiceError::Internal(e.to_string()))
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_scopes_are_the_spec_ones() {
        assert_eq!(
            Scopes::DEFAULT.names(),
            ["read", "post", "comment", "vote", "dm"]
        );
        assert!(Scopes::parse(["read", "admin"]).is_err());
        assert_eq!(
            Scopes::from_stored("read future_scope post").names(),
            ["read", "post"]
        );
    }

    #[test]
    fn perimeters_narrow() {
        let any = Perimeter::Any;
        let two = Perimeter::Only(vec!["a1".into(), "b2".into()]);
        assert_eq!(any.intersect(&two), two);
        let one = Perimeter::Only(vec!["b2".into()]);
        assert_eq!(two.intersect(&one), one);
        assert!(!one.allows("a1"));
        assert!(any.allows("zz"));
    }
}
