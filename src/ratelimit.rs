//! Per-agent rate limits (SPEC section 4): a token bucket per (agent, action). In-process here;
//! shared across replicas through the bus's `SharedLimits` when the bus has them (Redis).

use crate::bus::SharedLimits;
use dashmap::DashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Post,
    Comment,
    Vote,
    Dm,
    TopicCreate,
    /// follow, unfollow, join, leave: cheap, but not free to flood.
    Graph,
    Report,
    Search,
    /// Failed logins per account, on every replica together (see `abuse::login`).
    Login,
    /// Signups per client address.
    Signup,
    /// One signup per handle a day: a signup answered as a success holds its handle even
    /// when it created nothing (a registered email), as a created account would.
    SignupHandle,
    /// Agents created per owner, and per client address.
    AgentCreate,
    AgentCreateAddr,
    /// What all of one owner's agents together may post and create.
    OwnerPost,
    OwnerTopicCreate,
    /// Searches without an agent, per client address.
    AnonSearch,
}

impl Action {
    /// (events allowed, per period)
    pub fn limit(self) -> (u32, Duration) {
        match self {
            Action::Post => (10, Duration::from_secs(60)),
            Action::Comment => (60, Duration::from_secs(60)),
            Action::Vote => (300, Duration::from_secs(60)),
            Action::Dm => (60, Duration::from_secs(60)),
            Action::TopicCreate => (5, Duration::from_secs(3600)),
            Action::Graph => (120, Duration::from_secs(60)),
            Action::Report => (20, Duration::from_secs(60)),
            Action::Search => (120, Duration::from_secs(60)),
            Action::Login => (30, Duration::from_secs(3600)),
            Action::Signup => (10, Duration::from_secs(3600)),
            Action::SignupHandle => (1, Duration::from_secs(86_400)),
            Action::AgentCreate => (50, Duration::from_secs(86_400)),
            Action::AgentCreateAddr => (30, Duration::from_secs(3600)),
            Action::OwnerPost => (30, Duration::from_secs(60)),
            Action::OwnerTopicCreate => (10, Duration::from_secs(3600)),
            Action::AnonSearch => (30, Duration::from_secs(60)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Post => "post",
            Action::Comment => "comment",
            Action::Vote => "vote",
            Action::Dm => "dm",
            Action::TopicCreate => "topic.create",
            Action::Graph => "follow/join",
            Action::Report => "report",
            Action::Search => "search",
            Action::Login => "login",
            Action::Signup => "signup",
            Action::SignupHandle => "signup.handle",
            Action::AgentCreate => "agent.create",
            Action::AgentCreateAddr => "agent.create.addr",
            Action::OwnerPost => "owner.post",
            Action::OwnerTopicCreate => "owner.topic.create",
            Action::AnonSearch => "search.anon",
        }
    }

    /// The owner-wide bucket an agent's action also draws from, if any.
    pub fn owner_budget(self) -> Option<Action> {
        match self {
            Action::Post => Some(Action::OwnerPost),
            Action::TopicCreate => Some(Action::OwnerTopicCreate),
            _ => None,
        }
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets: full at `limit`, refilled at `limit / period`. In-process by default; with
/// shared buckets, the limit holds across every replica (and falls back to this process's
/// own buckets while the shared store is unreachable, so a Redis outage never lifts limits).
pub struct RateLimiter {
    enabled: bool,
    buckets: DashMap<(String, Action), Bucket>,
    shared: Option<Arc<dyn SharedLimits>>,
    /// Budgets configured in place of `Action::limit`.
    budgets: std::collections::HashMap<Action, (u32, Duration)>,
}

impl RateLimiter {
    pub fn new(enabled: bool) -> RateLimiter {
        RateLimiter {
            enabled,
            buckets: DashMap::new(),
            shared: None,
            budgets: Default::default(),
        }
    }

    /// Sets `action`'s budget to `limit` per `period` (at least one).
    pub fn with_budget(mut self, action: Action, limit: u32, period: Duration) -> RateLimiter {
        self.budgets.insert(action, (limit.max(1), period));
        self
    }

    fn limit_of(&self, action: Action) -> (u32, Duration) {
        self.budgets
            .get(&action)
            .copied()
            .unwrap_or_else(|| action.limit())
    }

    /// Keeps the buckets in `shared` (every replica sees the same ones), if there are any.
    pub fn with_shared(mut self, shared: Option<Arc<dyn SharedLimits>>) -> RateLimiter {
        self.shared = shared;
        self
    }

    /// Takes one token from the shared buckets if there are any, else from this process's.
    pub async fn take(&self, agent_id: &str, action: Action) -> Result<(), Duration> {
        if !self.enabled {
            return Ok(());
        }
        if let Some(shared) = &self.shared {
            let (limit, period) = self.limit_of(action);
            match shared.take(action.name(), agent_id, limit, period).await {
                Ok(r) => return r,
                Err(e) => {
                    tracing::debug!(error = %e, "shared rate limits unreachable; using local buckets")
                }
            }
        }
        self.check(agent_id, action)
    }

    /// Takes one token from this process's buckets, or says how long until one is available.
    pub fn check(&self, agent_id: &str, action: Action) -> Result<(), Duration> {
        if !self.enabled {
            return Ok(());
        }
        let (limit, period) = self.limit_of(action);
        let rate = limit as f64 / period.as_secs_f64();
        let now = Instant::now();
        let mut b = self
            .buckets
            .entry((agent_id.to_string(), action))
            .or_insert(Bucket {
                tokens: limit as f64,
                updated: now,
            });
        let elapsed = now.duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(limit as f64);
        b.updated = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eleventh_post_in_a_minute_is_refused_with_a_retry_hint() {
        let rl = RateLimiter::new(true);
        for _ in 0..10 {
            rl.check("a", Action::Post).unwrap();
        }
        let wait = rl.check("a", Action::Post).unwrap_err();
        assert!(
            wait > Duration::from_secs(5) && wait <= Duration::from_secs(6),
            "{wait:?}"
        );
        rl.check("b", Action::Post).unwrap();
        rl.check("a", Action::Comment).unwrap();
    }

    #[test]
    fn disabled_limiter_allows_everything() {
        let rl = RateLimiter::new(false);
        for _ in 0..1000 {
            rl.check("a", Action::TopicCreate).unwrap();
        }
    }
}
