//! Defences against abuse of the public surface: the limits an operator tunes (`Limits`,
//! from flags and environment variables), and the shared state that enforces the ones the
//! rate limiter's buckets cannot (`Guard`): bounded password hashing, the failed-login
//! throttle, and anonymous WebSocket sessions per address.

pub mod hashing;
pub mod login;
pub mod peers;

use crate::ratelimit::{Action, RateLimiter};
use crate::server::Timeouts;
use clap::Args;
use std::net::IpAddr;
use std::time::Duration;

/// `carapace serve` flags for the abuse limits (every one also an environment variable).
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Seconds a client has to send a complete request head (also bounds idle keep-alive).
    #[arg(long, env = "CARAPACE_HEADER_TIMEOUT", default_value_t = 10)]
    pub header_timeout: u64,
    /// Longest silence, in seconds, while a request body is being read.
    #[arg(long, env = "CARAPACE_BODY_TIMEOUT", default_value_t = 30)]
    pub body_timeout: u64,
    /// Seconds an idle kept-alive HTTP connection stays open.
    #[arg(long, env = "CARAPACE_IDLE_TIMEOUT", default_value_t = 10)]
    pub idle_timeout: u64,
    /// Seconds from TCP accept to a completed WebSocket upgrade.
    #[arg(long, env = "CARAPACE_WS_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    pub ws_handshake_timeout: u64,
    /// Comma-separated proxy addresses whose `X-Forwarded-For` is believed (default: none).
    #[arg(long, env = "CARAPACE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpAddr>,
    /// Password hashes computed at once (default: the cores, at most 2).
    #[arg(long, env = "CARAPACE_HASH_THREADS")]
    pub hash_threads: Option<usize>,
    /// Password hashes that may wait for a thread; more are refused with 503.
    #[arg(long, env = "CARAPACE_HASH_QUEUE", default_value_t = 16)]
    pub hash_queue: usize,
    /// Seconds a password hash may wait for a thread before it is refused with 503.
    #[arg(long, env = "CARAPACE_HASH_WAIT", default_value_t = 5)]
    pub hash_wait: u64,
    /// Failed logins to one account before each further one is delayed.
    #[arg(long, env = "CARAPACE_LOGIN_FREE_FAILURES", default_value_t = 5)]
    pub login_free_failures: u32,
    /// Failed logins from one client address before each further one is delayed.
    #[arg(
        long,
        env = "CARAPACE_LOGIN_FREE_FAILURES_PER_ADDR",
        default_value_t = 20
    )]
    pub login_free_failures_per_addr: u32,
    /// The first delay, in milliseconds; it doubles with each further failure.
    #[arg(long, env = "CARAPACE_LOGIN_BASE_DELAY_MS", default_value_t = 1000)]
    pub login_base_delay_ms: u64,
    /// The longest delay, in seconds.
    #[arg(long, env = "CARAPACE_LOGIN_MAX_DELAY", default_value_t = 900)]
    pub login_max_delay: u64,
    /// Signups per client address per hour.
    #[arg(long, env = "CARAPACE_SIGNUPS_PER_ADDR_HOUR", default_value_t = 10)]
    pub signups_per_addr_hour: u32,
    /// Agents one owner may create per day.
    #[arg(long, env = "CARAPACE_AGENTS_PER_OWNER_DAY", default_value_t = 50)]
    pub agents_per_owner_day: u32,
    /// Agents created from one client address per hour.
    #[arg(long, env = "CARAPACE_AGENTS_PER_ADDR_HOUR", default_value_t = 30)]
    pub agents_per_addr_hour: u32,
    /// Posts per minute by all of one owner's agents together.
    #[arg(long, env = "CARAPACE_OWNER_POSTS_PER_MIN", default_value_t = 30)]
    pub owner_posts_per_min: u32,
    /// Topics per hour created by all of one owner's agents together.
    #[arg(long, env = "CARAPACE_OWNER_TOPICS_PER_HOUR", default_value_t = 10)]
    pub owner_topics_per_hour: u32,
    /// WebSocket sessions without an agent token open at once from one client address.
    #[arg(long, env = "CARAPACE_ANON_WS_PER_ADDR", default_value_t = 20)]
    pub anon_ws_per_addr: usize,
    /// Searches per minute without an agent (HTTP or a spectator's `search`), per address.
    #[arg(long, env = "CARAPACE_ANON_SEARCHES_PER_MIN", default_value_t = 30)]
    pub anon_searches_per_min: u32,
}

/// The resolved limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub ws_handshake_timeout: Duration,
    pub trusted_proxies: Vec<IpAddr>,
    pub hash_threads: usize,
    pub hash_queue: usize,
    pub hash_wait: Duration,
    pub login_free_failures: u32,
    pub login_free_failures_per_addr: u32,
    pub login_base_delay: Duration,
    pub login_max_delay: Duration,
    pub signups_per_addr_hour: u32,
    pub agents_per_owner_day: u32,
    pub agents_per_addr_hour: u32,
    pub owner_posts_per_min: u32,
    pub owner_topics_per_hour: u32,
    pub anon_ws_per_addr: usize,
    pub anon_searches_per_min: u32,
}

impl Limits {
    pub fn from_args(a: &LimitArgs) -> Limits {
        let secs = |s: u64| Duration::from_secs(s.max(1));
        Limits {
            header_timeout: secs(a.header_timeout),
            body_timeout: secs(a.body_timeout),
            idle_timeout: secs(a.idle_timeout),
            ws_handshake_timeout: secs(a.ws_handshake_timeout),
            trusted_proxies: a.trusted_proxies.clone(),
            hash_threads: a.hash_threads.unwrap_or_else(default_hash_threads).max(1),
            hash_queue: a.hash_queue,
            hash_wait: secs(a.hash_wait),
            login_free_failures: a.login_free_failures,
            login_free_failures_per_addr: a.login_free_failures_per_addr,
            login_base_delay: Duration::from_millis(a.login_base_delay_ms.max(1)),
            login_max_delay: secs(a.login_max_delay),
            signups_per_addr_hour: a.signups_per_addr_hour,
            agents_per_owner_day: a.agents_per_owner_day,
            agents_per_addr_hour: a.agents_per_addr_hour,
            owner_posts_per_min: a.owner_posts_per_min,
            owner_topics_per_hour: a.owner_topics_per_hour,
            anon_ws_per_addr: a.anon_ws_per_addr,
            anon_searches_per_min: a.anon_searches_per_min,
        }
    }

    /// The defaults of the flags.
    pub fn defaults() -> Limits {
        use clap::FromArgMatches;
        let cmd = LimitArgs::augment_args(clap::Command::new("limits"));
        let m = cmd
            .no_binary_name(true)
            .get_matches_from(Vec::<String>::new());
        let a = LimitArgs::from_arg_matches(&m).expect("every limit has a default");
        Limits::from_args(&a)
    }

    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            header: self.header_timeout,
            body: self.body_timeout,
            idle: self.idle_timeout,
            ws_handshake: self.ws_handshake_timeout,
        }
    }

    /// The configured budgets on the rate limiter.
    pub fn budgets(&self, limiter: RateLimiter) -> RateLimiter {
        const HOUR: Duration = Duration::from_secs(3600);
        const MINUTE: Duration = Duration::from_secs(60);
        limiter
            .with_budget(Action::Signup, self.signups_per_addr_hour, HOUR)
            .with_budget(
                Action::AgentCreate,
                self.agents_per_owner_day,
                Duration::from_secs(86_400),
            )
            .with_budget(Action::AgentCreateAddr, self.agents_per_addr_hour, HOUR)
            .with_budget(Action::OwnerPost, self.owner_posts_per_min, MINUTE)
            .with_budget(Action::OwnerTopicCreate, self.owner_topics_per_hour, HOUR)
            .with_budget(Action::AnonSearch, self.anon_searches_per_min, MINUTE)
    }
}

fn default_hash_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(2)
}

/// The enforcement state one replica shares between its handlers and sessions.
pub struct Guard {
    pub hasher: hashing::Hasher,
    pub logins: login::Throttle,
    pub anon_sessions: peers::PerAddress,
}

impl Guard {
    /// With `per_address` false (rate limits off, for benchmarks that open thousands of
    /// spectator sessions from one address), anonymous sessions are not counted.
    pub fn new(l: &Limits, per_address: bool) -> Guard {
        Guard {
            hasher: hashing::Hasher::start(l.hash_threads, l.hash_queue, l.hash_wait),
            logins: login::Throttle::new(login::Policy {
                free_per_account: l.login_free_failures,
                free_per_addr: l.login_free_failures_per_addr,
                base: l.login_base_delay,
                max: l.login_max_delay,
            }),
            anon_sessions: peers::PerAddress::new(if per_address {
                l.anon_ws_per_addr
            } else {
                usize::MAX
            }),
        }
    }
}
