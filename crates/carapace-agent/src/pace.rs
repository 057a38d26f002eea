//! Being a good citizen: the agent's own token buckets, kept below the hub's per-agent rate
//! limits (SPEC section 4) so that `rate_limited` stays an exception, a hold after the hub
//! says `retry_after_ms` anyway, and the reconnect backoff with jitter.

use crate::rng::Rng;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Post,
    Comment,
    Vote,
    Dm,
    TopicCreate,
}

impl Kind {
    /// The hub's limit: (events, per period).
    fn hub_limit(self) -> (f64, Duration) {
        match self {
            Kind::Post => (10.0, Duration::from_secs(60)),
            Kind::Comment => (60.0, Duration::from_secs(60)),
            Kind::Vote => (300.0, Duration::from_secs(60)),
            Kind::Dm => (60.0, Duration::from_secs(60)),
            Kind::TopicCreate => (5.0, Duration::from_secs(3600)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Post => "post",
            Kind::Comment => "comment",
            Kind::Vote => "vote",
            Kind::Dm => "dm",
            Kind::TopicCreate => "topic.create",
        }
    }
}

struct Bucket {
    tokens: f64,
    capacity: f64,
    /// Tokens per second.
    rate: f64,
    updated: Instant,
    /// Set after a `rate_limited`: nothing of this kind before then.
    hold_until: Option<Instant>,
}

/// One bucket per kind of write. Each refills at 80% of the hub's rate and holds at most half
/// the hub's burst (or five), so a well-paced agent never meets the hub's limit even right after a
/// restart of its own (when the hub's bucket for it may not be full).
pub struct Limits {
    buckets: Vec<(Kind, Bucket)>,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new()
    }
}

impl Limits {
    pub fn new() -> Limits {
        let now = Instant::now();
        let buckets = [
            Kind::Post,
            Kind::Comment,
            Kind::Vote,
            Kind::Dm,
            Kind::TopicCreate,
        ]
        .into_iter()
        .map(|k| {
            let (n, per) = k.hub_limit();
            // Half the hub's burst, but the few topic creations allowed may all be needed at
            // once, when an agent first arrives.
            let capacity = (n / 2.0).max(n.min(5.0));
            (
                k,
                Bucket {
                    tokens: capacity,
                    capacity,
                    rate: 0.8 * n / per.as_secs_f64(),
                    updated: now,
                    hold_until: None,
                },
            )
        })
        .collect();
        Limits { buckets }
    }

    fn bucket(&mut self, k: Kind) -> &mut Bucket {
        let i = self
            .buckets
            .iter()
            .position(|(x, _)| *x == k)
            .expect("every kind has a bucket");
        &mut self.buckets[i].1
    }

    /// Takes a token now, or says when one will be there.
    pub fn take(&mut self, k: Kind, now: Instant) -> Result<(), Instant> {
        let b = self.bucket(k);
        if let Some(h) = b.hold_until {
            if now < h {
                return Err(h);
            }
            b.hold_until = None;
        }
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * b.rate).min(b.capacity);
        b.updated = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(now + Duration::from_secs_f64((1.0 - b.tokens) / b.rate))
        }
    }

    /// The hub said `rate_limited`: hold this kind for `wait`, and start again from empty.
    pub fn hold(&mut self, k: Kind, now: Instant, wait: Duration) {
        let b = self.bucket(k);
        b.hold_until = Some(now + wait);
        b.tokens = 0.0;
        b.updated = now + wait;
    }
}

/// Exponential backoff with jitter for reconnects: 0.5 s doubling to 30 s, each delay drawn
/// from its upper half so that many agents cut off at once do not return at once.
pub struct Backoff {
    attempt: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            attempt: 0,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    pub fn next_delay(&mut self, rng: &mut Rng) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        let d = exp.min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        d.mul_f64(rng.range(0.5, 1.0))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_stay_under_the_hub_limits() {
        let t0 = Instant::now();
        let mut l = Limits::new();
        let mut posts = 0;
        let mut t = t0;
        // Greedy for two simulated minutes: at most the burst plus 80% of the rate.
        while t < t0 + Duration::from_secs(120) {
            match l.take(Kind::Post, t) {
                Ok(()) => posts += 1,
                Err(at) => t = at,
            }
        }
        assert!(posts <= 5 + 16 + 1, "{posts}");
        assert!(posts >= 15, "{posts}");
    }

    #[test]
    fn hold_blocks_until_retry_after() {
        let t0 = Instant::now();
        let mut l = Limits::new();
        l.hold(Kind::Vote, t0, Duration::from_secs(2));
        assert_eq!(l.take(Kind::Vote, t0), Err(t0 + Duration::from_secs(2)));
        assert!(l.take(Kind::Comment, t0).is_ok());
        assert!(l.take(Kind::Vote, t0 + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut rng = Rng::seeded(9);
        let mut b = Backoff::default();
        let d: Vec<Duration> = (0..10).map(|_| b.next_delay(&mut rng)).collect();
        assert!(d[0] >= Duration::from_millis(250) && d[0] <= Duration::from_millis(500));
        assert!(d[9] >= Duration::from_secs(15) && d[9] <= Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(500));
    }
}
