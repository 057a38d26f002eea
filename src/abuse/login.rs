//! The failed-login throttle: after a few free failures for one account, or from one client
//! address, each further attempt must wait a delay that doubles with every failure up to a
//! cap. It is checked before the password is hashed, so a throttled attempt costs nothing,
//! and keyed by the email's blind index whether or not an account has that email, so it
//! says nothing about which emails are registered. In-process: across replicas the
//! per-account `login` bucket of the shared rate limiter caps the failures together, and a
//! replica that finds it dry holds the account here.

use dashmap::DashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub free_per_account: u32,
    pub free_per_addr: u32,
    pub base: Duration,
    pub max: Duration,
}

struct Failures {
    count: u32,
    /// No attempt before this.
    until: Instant,
    last: Instant,
}

/// Entries beyond this many are pruned of those whose delay has run out long ago.
const MAX_ENTRIES: usize = 100_000;

pub struct Throttle {
    policy: Policy,
    entries: DashMap<String, Failures>,
}

impl Throttle {
    pub fn new(policy: Policy) -> Throttle {
        Throttle {
            policy,
            entries: DashMap::new(),
        }
    }

    /// How long the caller must still wait, if an attempt on `account` from `addr` is not
    /// allowed now.
    pub fn check(&self, account: &str, addr: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let wait = [acct_key(account), addr_key(addr)]
            .iter()
            .filter_map(|k| self.entries.get(k).map(|f| f.until))
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max();
        match wait {
            Some(w) => Err(w),
            None => Ok(()),
        }
    }

    /// Counts a failed attempt against both keys.
    pub fn failed(&self, account: &str, addr: &str) {
        let now = Instant::now();
        if self.entries.len() > MAX_ENTRIES {
            let stale = self.policy.max * 2;
            self.entries
                .retain(|_, f| f.until > now || now.duration_since(f.last) < stale);
        }
        self.bump(acct_key(account), self.policy.free_per_account, now);
        self.bump(addr_key(addr), self.policy.free_per_addr, now);
    }

    /// Holds `account` for `wait` whatever its own count: the replicas together have seen
    /// too many failures for it (the shared `login` bucket ran dry).
    pub fn hold(&self, account: &str, wait: Duration) {
        let now = Instant::now();
        let mut f = self.entries.entry(acct_key(account)).or_insert(Failures {
            count: 0,
            until: now,
            last: now,
        });
        f.until = f.until.max(now + wait);
        f.last = now;
    }

    /// A correct password: the account's count starts over (the address's does not, or one
    /// account of the attacker's own would clear the address for guessing others).
    pub fn succeeded(&self, account: &str) {
        self.entries.remove(&acct_key(account));
    }

    fn bump(&self, key: String, free: u32, now: Instant) {
        let p = self.policy;
        let mut f = self.entries.entry(key).or_insert(Failures {
            count: 0,
            until: now,
            last: now,
        });
        // A long quiet spell forgives old failures.
        if now.duration_since(f.last) > p.max * 2 {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count > free {
            let doublings = (f.count - free - 1).min(30);
            let delay = p.base.saturating_mul(1u32 << doublings).min(p.max);
            f.until = now + delay;
        }
    }
}

fn acct_key(account: &str) -> String {
    format!("a:{account}")
}

fn addr_key(addr: &str) -> String {
    format!("p:{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> Throttle {
        Throttle::new(Policy {
            free_per_account: 2,
            free_per_addr: 4,
            base: Duration::from_secs(1),
            max: Duration::from_secs(5),
        })
    }

    #[test]
    fn delays_double_after_the_free_failures_up_to_the_cap() {
        let t = throttle();
        let mut seen = Vec::new();
        for i in 0..6 {
            t.failed("acct", &format!("10.0.0.{i}"));
            seen.push(
                t.check("acct", "10.9.9.9")
                    .err()
                    .map(|d| d.as_secs_f64().round()),
            );
        }
        assert_eq!(
            seen,
            [None, None, Some(1.0), Some(2.0), Some(4.0), Some(5.0)]
        );
        t.succeeded("acct");
        assert!(t.check("acct", "10.9.9.9").is_ok());
    }

    #[test]
    fn a_hold_from_the_shared_count_refuses_the_account_until_it_ends() {
        let t = throttle();
        assert!(t.check("acct", "10.0.0.1").is_ok());
        t.hold("acct", Duration::from_secs(600));
        let wait = t.check("acct", "10.0.0.2").unwrap_err();
        assert!(wait > Duration::from_secs(590), "{wait:?}");
        assert!(t.check("other", "10.0.0.1").is_ok());
        t.hold("acct", Duration::from_millis(1));
        assert!(
            t.check("acct", "10.0.0.2").is_err(),
            "a shorter hold keeps the longer"
        );
    }

    #[test]
    fn one_address_is_throttled_across_accounts() {
        let t = throttle();
        for i in 0..5 {
            t.failed(&format!("acct{i}"), "10.0.0.1");
        }
        assert!(t.check("fresh", "10.0.0.1").is_err());
        assert!(t.check("fresh", "10.0.0.2").is_ok());
    }
}
