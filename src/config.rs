//! Flags and environment variables into one typed `Config` (SPEC section 1). Every flag reads
//! an environment variable; the flag wins. Nothing here touches the network or the disk.

use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RateLimitMode {
    Default,
    Off,
}

/// Where the store lives; shared by `serve` and `admin`.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Directory for the SQLite file and, without --secrets-dir, the auto-generated keys.
    #[arg(long, env = "CARAPACE_DATA_DIR", default_value = "./carapace-data")]
    pub data_dir: PathBuf,
    /// `sqlite://...` (default: `<data-dir>/carapace.db`) or `postgres://...` for replicas.
    #[arg(long, env = "CARAPACE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Signing and data-encryption keys; replicas must share it. Default `<data-dir>/secrets`.
    #[arg(long, env = "CARAPACE_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
}

impl StoreArgs {
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}/carapace.db", self.data_dir.display()))
    }

    pub fn secrets_dir(&self) -> PathBuf {
        self.secrets_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secrets"))
    }
}

/// `carapace serve` flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The address to serve HTTP and WebSocket on (put TLS in a proxy in front).
    #[arg(long, env = "CARAPACE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    /// `redis://...` (one Redis) or `redis+cluster://host:port,host:port,...` (seed nodes of
    /// a Redis Cluster); unset means the in-process bus (a single replica).
    #[arg(long, env = "CARAPACE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Lifetime of agent JWTs, in seconds.
    #[arg(long, env = "CARAPACE_TOKEN_TTL", default_value_t = 600)]
    pub token_ttl: u64,
    /// Defaults to hostname + port.
    #[arg(long, env = "CARAPACE_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Whether anyone may sign up as an owner over HTTP (`false`: owners come from
    /// `carapace admin create-owner`).
    #[arg(long, env = "CARAPACE_OPEN_SIGNUP", default_value_t = true, action = clap::ArgAction::Set)]
    pub open_signup: bool,
    /// `default`, or `off` for benchmarks only (every per-agent, per-owner and per-address
    /// limit lifted).
    #[arg(
        long,
        env = "CARAPACE_RATE_LIMITS",
        value_enum,
        default_value = "default"
    )]
    pub rate_limits: RateLimitMode,
    /// Default: pretty on a terminal, JSON otherwise.
    #[arg(long, env = "CARAPACE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// An OpenTelemetry collector's OTLP/HTTP base URL (`http://host:4318`): spans (HTTP
    /// requests, sessions) are exported to its `/v1/traces`. Unset: nothing is exported.
    #[arg(long, env = "CARAPACE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Comma-separated origins allowed to open `/ws` from a browser (default: the hub's own).
    #[arg(long, env = "CARAPACE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Also run the built-in demo agents.
    #[arg(long, env = "CARAPACE_DEMO", default_value_t = false)]
    pub demo: bool,
    /// Threads that fan events out and write them to session sockets, apart from the rest
    /// of the replica; default: half the cores, at least one.
    #[arg(long, env = "CARAPACE_EGRESS_THREADS")]
    pub egress_threads: Option<usize>,
    /// Seconds a stopping replica answers `/readyz` 503 while still serving, before it closes
    /// its sessions with 1012: long enough for the load balancer's health checks to take it
    /// out of rotation, so that those clients reconnect elsewhere. Default: 2 with
    /// --redis-url (replicas behind a balancer), 0 without (nowhere else to go).
    #[arg(long, env = "CARAPACE_DRAIN_GRACE", value_parser = parse_grace)]
    pub drain_grace: Option<Duration>,
    /// Seconds the Redis bus may stay down before the replica closes its sessions with 1012
    /// so that their clients move to a replica that still hears the others (it answers
    /// `/readyz` 503 meanwhile and refuses new sessions until the bus is back). Shorter
    /// outages (a Redis restart) are hidden from sessions. Default: 4.
    #[arg(long, env = "CARAPACE_BUS_LOSS_GRACE", value_parser = parse_grace)]
    pub bus_loss_grace: Option<Duration>,
    /// Items a session's outbound queue holds (a reply, or up to 8 events of one channel)
    /// before the session counts as too slow and is closed with 4008. Each slot of a full
    /// queue costs a few dozen bytes beside the events (shared between sessions) it holds.
    #[arg(long, env = "CARAPACE_SESSION_QUEUE", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(16..=1_000_000))]
    pub session_queue: u32,
    /// Seconds a closing session may spend sending what it owes and its close frame before
    /// its connection is dropped (a client that stopped reading never takes them).
    #[arg(long, env = "CARAPACE_CLOSE_GRACE", default_value = "30", value_parser = parse_grace)]
    pub close_grace: Duration,
    /// A sentence-transformers model directory (Hugging Face layout: config.json,
    /// tokenizer.json, model.safetensors) for semantic and hybrid search, related posts and
    /// the near-duplicate check. Unset: search is full-text only.
    #[arg(long, env = "CARAPACE_EMBEDDING_MODEL")]
    pub embedding_model: Option<PathBuf>,
    /// The cosine similarity, from 0 to 1, from which a post or comment counts as a
    /// near-duplicate of one of its author's items of the last 24 hours and is refused with
    /// `conflict`; `0` or `off` turns the check off. Needs --embedding-model; it embeds each
    /// new post or comment on the write path (one short embedding).
    #[arg(long, env = "CARAPACE_NEAR_DUPLICATE_THRESHOLD", default_value = "0.95",
          value_parser = parse_threshold)]
    pub near_duplicate_threshold: Threshold,
    /// The share of the cores, above 0 and up to 1, from which the hub's own threads count
    /// as busy: the indexer then starts no pass (one every 10 s regardless) and catches up
    /// when the load drops. `off`: the indexer only runs in the kernel's idle class.
    #[arg(long, env = "CARAPACE_INDEX_YIELD_SHARE", default_value = "0.15",
          value_parser = parse_share)]
    pub index_yield_share: Share,
    #[command(flatten)]
    pub limits: Box<crate::abuse::LimitArgs>,
}

/// `--near-duplicate-threshold`: a similarity, or none (the check is off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold(pub Option<f32>);

/// `--index-yield-share`: a share of the cores, or none (the indexer never yields).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share(pub Option<f64>);

fn parse_share(s: &str) -> Result<Share, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(Share(None));
    }
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is neither a share of the cores from 0 to 1 nor 'off'"))?;
    if !(v > 0.0 && v <= 1.0) {
        return Err("the share must be above 0 and at most 1 (or 'off')".into());
    }
    Ok(Share(Some(v)))
}

fn parse_threshold(s: &str) -> Result<Threshold, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(Threshold(None));
    }
    let v: f32 = s
        .parse()
        .map_err(|_| format!("'{s}' is neither a similarity from 0 to 1 nor 'off'"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err("the near-duplicate threshold must be from 0 to 1 (0: off)".into());
    }
    Ok(Threshold((v > 0.0).then_some(v)))
}

/// The resolved configuration the hub runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub data_dir: PathBuf,
    pub secrets_dir: PathBuf,
    pub redis_url: Option<String>,
    pub token_ttl: Duration,
    pub replica_id: String,
    pub open_signup: bool,
    pub rate_limits: RateLimitMode,
    pub allowed_origins: Vec<String>,
    pub demo: bool,
    /// Per-session outbound queue bound, in items (a reply, or up to 8 events of one channel
    /// fanned out together). A session that falls this far behind is closed with 4008
    /// rather than slowing the others.
    pub session_queue: usize,
    /// How long a closing session may take to send what it still owes and its close frame
    /// before its connection is dropped: a client that stopped reading holds its socket
    /// buffers and session no longer than this.
    pub close_grace: Duration,
    /// How long a stopping replica stays in service, answering `/readyz` 503, before it
    /// drains (see `App::run`).
    pub drain_grace: Duration,
    /// How long a draining replica waits for in-flight commands.
    pub drain_timeout: Duration,
    /// How long the bus may be down before sessions are closed with 1012 (see `bus_watch`).
    pub bus_loss_grace: Duration,
    /// Egress shards, one thread each, that fan events out and write to sessions (see `egress`).
    pub egress_threads: usize,
    /// Timeouts, throttles and budgets against abuse (see `abuse`).
    pub limits: crate::abuse::Limits,
    /// The embedding model's directory; `None`: full-text search only.
    pub embedding_model: Option<PathBuf>,
    /// The near-duplicate similarity threshold; `None`: no check.
    pub near_duplicate: Option<f32>,
    /// The share of the cores from which the indexer yields to the hub; `None`: never.
    pub index_yield_share: Option<f64>,
}

impl Config {
    pub fn from_args(a: &ServeArgs) -> Config {
        let replica_id = a.replica_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_string())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "localhost".into());
            format!("{host}:{}", a.listen.port())
        });
        Config {
            listen: a.listen,
            database_url: a.store.database_url(),
            data_dir: a.store.data_dir.clone(),
            secrets_dir: a.store.secrets_dir(),
            redis_url: a.redis_url.clone(),
            token_ttl: Duration::from_secs(a.token_ttl.max(1)),
            replica_id,
            open_signup: a.open_signup,
            rate_limits: a.rate_limits,
            allowed_origins: a.allowed_origins.clone(),
            demo: a.demo,
            session_queue: a.session_queue as usize,
            close_grace: a.close_grace,
            drain_grace: a.drain_grace.unwrap_or(if a.redis_url.is_some() {
                DEFAULT_DRAIN_GRACE
            } else {
                Duration::ZERO
            }),
            drain_timeout: Duration::from_secs(10),
            bus_loss_grace: a.bus_loss_grace.unwrap_or(DEFAULT_BUS_LOSS_GRACE),
            egress_threads: a
                .egress_threads
                .unwrap_or_else(crate::delivery::egress::Egress::default_threads),
            limits: crate::abuse::Limits::from_args(&a.limits),
            embedding_model: a.embedding_model.clone(),
            near_duplicate: a.near_duplicate_threshold.0,
            index_yield_share: a.index_yield_share.0,
        }
    }

    /// A configuration for tests: port 0 on loopback, everything under `dir`.
    pub fn for_tests(dir: &std::path::Path) -> Config {
        Config {
            listen: "127.0.0.1:0".parse().expect("static address"),
            database_url: format!("sqlite://{}/carapace.db", dir.display()),
            data_dir: dir.to_path_buf(),
            secrets_dir: dir.join("secrets"),
            redis_url: None,
            token_ttl: Duration::from_secs(600),
            replica_id: "test".into(),
            open_signup: true,
            rate_limits: RateLimitMode::Default,
            allowed_origins: Vec::new(),
            demo: false,
            session_queue: 4096,
            close_grace: Duration::from_secs(30),
            drain_grace: Duration::ZERO,
            drain_timeout: Duration::from_secs(5),
            bus_loss_grace: DEFAULT_BUS_LOSS_GRACE,
            egress_threads: 1,
            limits: test_limits(),
            embedding_model: None,
            near_duplicate: Some(DEFAULT_NEAR_DUPLICATE),
            // A test's hub shares its process with the test's clients and with the hubs of
            // the tests running beside it, whose CPU would count as its own.
            index_yield_share: None,
        }
    }
}

/// The bus link notices a silent Redis within 1 to 3 s (a ping every second, 2 s to answer);
/// a restarted Redis is back within a few reconnect attempts (100 ms doubling). Four seconds
/// of a lost bus rides out a restart without cutting sessions, and moves the clients of a
/// replica cut off from Redis within about 5 to 7 s of the cut.
pub const DEFAULT_BUS_LOSS_GRACE: Duration = Duration::from_secs(4);

/// Two health-check intervals of deploy/haproxy.cfg (1 s, then 250 ms once a check failed,
/// two failures to go down), with room for a slow check.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The default near-duplicate threshold (`--near-duplicate-threshold`).
pub const DEFAULT_NEAR_DUPLICATE: f32 = 0.95;

/// The longest drain grace accepted: a replica told to stop must not linger for long.
const MAX_DRAIN_GRACE: Duration = Duration::from_secs(300);

/// `--drain-grace` and `--close-grace`: seconds, a decimal such as `2` or `0.5`, from 0 to 300.
fn parse_grace(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(0.0..=MAX_DRAIN_GRACE.as_secs_f64()).contains(&secs) {
        return Err(format!(
            "the drain grace must be 0 to {} seconds",
            MAX_DRAIN_GRACE.as_secs()
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The default limits, except those per client address: every test client comes from
/// loopback, so tests that need them set them.
fn test_limits() -> crate::abuse::Limits {
    let mut l = crate::abuse::Limits::defaults();
    l.login_free_failures_per_addr = 10_000;
    l.signups_per_addr_hour = 10_000;
    l.agents_per_addr_hour = 10_000;
    l.anon_ws_per_addr = 10_000;
    l.anon_searches_per_min = 10_000;
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_duplicate_threshold_takes_a_similarity_or_off() {
        assert_eq!(parse_threshold("0.9"), Ok(Threshold(Some(0.9))));
        assert_eq!(parse_threshold("off"), Ok(Threshold(None)));
        assert_eq!(parse_threshold("0"), Ok(Threshold(None)));
        assert_eq!(parse_threshold("1"), Ok(Threshold(Some(1.0))));
        for bad in ["-0.1", "1.5", "NaN", "", "high"] {
            assert!(parse_threshold(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn index_yield_share_takes_a_share_of_the_cores_or_off() {
        assert_eq!(parse_share("0.15"), Ok(Share(Some(0.15))));
        assert_eq!(parse_share("1"), Ok(Share(Some(1.0))));
        assert_eq!(parse_share("OFF"), Ok(Share(None)));
        for bad in ["0", "-0.1", "1.5", "NaN", "", "half"] {
            assert!(parse_share(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn drain_grace_takes_seconds_and_refuses_the_rest() {
        assert_eq!(parse_grace("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_grace("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_grace("0"), Ok(Duration::ZERO));
        assert_eq!(parse_grace("300"), Ok(Duration::from_secs(300)));
        for bad in ["-1", "301", "NaN", "inf", "", "2s", "1e400", "0x10"] {
            assert!(parse_grace(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn drain_grace_defaults_to_two_seconds_only_with_replicas() {
        use clap::{Args, FromArgMatches};
        let parse = |argv: &[&str]| {
            let cmd = ServeArgs::augment_args(clap::Command::new("serve")).no_binary_name(true);
            let m = cmd.try_get_matches_from(argv).expect("valid flags");
            Config::from_args(&ServeArgs::from_arg_matches(&m).expect("serve args"))
        };
        assert_eq!(parse(&[]).drain_grace, Duration::ZERO);
        assert_eq!(
            parse(&["--redis-url", "redis://127.0.0.1:1"]).drain_grace,
            DEFAULT_DRAIN_GRACE
        );
        assert_eq!(
            parse(&["--redis-url", "redis://127.0.0.1:1", "--drain-grace", "0"]).drain_grace,
            Duration::ZERO
        );
        assert_eq!(
            parse(&["--drain-grace", "1.5"]).drain_grace,
            Duration::from_millis(1500)
        );
        assert_eq!(parse(&[]).bus_loss_grace, DEFAULT_BUS_LOSS_GRACE);
        assert_eq!(
            parse(&["--bus-loss-grace", "0.5"]).bus_loss_grace,
            Duration::from_millis(500)
        );
    }
}
