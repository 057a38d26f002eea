//! The Redis bus: how replicas sharing one Redis hear each other. It owns the Redis side of
//! a replica and hands it out as the bus's three seams: the broker (`RedisBroker`, which
//! publishes and runs the pub/sub link, and `RedisSubscriptions`, what the link listens to:
//! one Redis channel per Carapace channel, subscribed only while a local session wants it,
//! a pattern for the firehose, a control channel), presence (`RedisPresence`) and the shared
//! rate-limit buckets (`RedisLimits`). It does not order events or remember them: the Hub
//! orders, the Store remembers.
//!
//! Names: everything lives under `carapace:<cluster id>:` (the id is kept in the database, so
//! every replica of one deployment agrees on it and two deployments on one Redis never hear
//! each other): `ch:<channel>` (e.g. `ch:topic:philosophy`), `control`, `presence:<channel>`,
//! `rl:<action>:<agent id>`.
//!
//! On a Redis Cluster (`redis+cluster://` seed nodes, `target`) events go by sharded pub/sub,
//! each channel on the shard of its slot, and the subscriber side is `shards` (one connection
//! per shard master, rebuilt on any sign of loss) instead of `link`'s single connection.
//! Sharded pub/sub has no patterns, so a topic event is also published on its topic's
//! firehose bucket (`firehose:<n>`, one of 64), and the firehose is a subscription to every
//! bucket. Names used together in one command (presence keys, pipelined) and the control
//! channel carry the hash tag `{<cluster id>}`, so they share a slot:
//! `carapace:{<id>}:control`, `carapace:{<id>}:presence:<channel>`; event channels, firehose
//! buckets and rate-limit keys keep their names and spread over the shards.
//!
//! Faults: one supervisor task owns the subscriber connection. When it drops, the bus reports
//! unhealthy, reconnects with exponential backoff and jitter, subscribes to everything wanted,
//! then calls `on_resync` so the Hub catches up from the Store: nothing published meanwhile is
//! lost, it is in the Store. Publishes made while Redis is unreachable are kept in a bounded
//! queue of pending publishes and sent when it answers again, so replicas that stayed
//! connected still hear them. Every `SWEEP_EVERY` the Hub also catches up from the Store, for
//! the one loss nothing else reveals: a replica that died between its commit and its publish,
//! on a quiet channel.

mod broker;
mod limits;
mod link;
mod presence;
mod resp;
mod shards;
mod slots;
mod target;
mod wire;

pub use broker::RedisBroker;
pub use limits::RedisLimits;
pub use link::RedisSubscriptions;
pub use presence::RedisPresence;

use super::{BusHandler, Presence, SharedLimits, Subscriptions};
use crate::metrics::Metrics;
use crate::protocol::Channel;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::timeout;

/// Connecting (TCP and handshake) may take this long before it counts as a failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Any one Redis command may take this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RedisBusError {
    #[error("invalid Redis URL: {0}")]
    Url(String),
    #[error("{0}")]
    NotCluster(String),
}

/// Key and channel names under the deployment's prefix. On a Redis Cluster (`tagged` is the
/// prefix with the cluster id as hash tag, `carapace:{<id>}:`) the names that meet in one
/// command (presence keys, pipelined together) and the control channel share that tag,
/// hence one slot; event channels, firehose buckets and rate-limit keys are used one at a
/// time and keep untagged names, so they spread over the shards.
struct Names {
    prefix: String,
    /// `Some` on a Redis Cluster.
    tagged: Option<String>,
}

impl Names {
    fn new(cluster_id: &str, cluster: bool) -> Names {
        Names {
            prefix: format!("carapace:{cluster_id}:"),
            tagged: cluster.then(|| format!("carapace:{{{cluster_id}}}:")),
        }
    }
    /// The prefix of names that must share one slot on a cluster.
    fn together(&self) -> &str {
        self.tagged.as_deref().unwrap_or(&self.prefix)
    }
    /// What to subscribe to for `c`, each with whether it is a pattern. A single Redis gives
    /// the firehose a pattern over every topic channel; sharded pub/sub has no patterns, so
    /// on a cluster the firehose is every one of the firehose buckets.
    fn subscriptions(&self, c: &Channel) -> Vec<(String, bool)> {
        match (c, &self.tagged) {
            (Channel::Firehose, None) => vec![(format!("{}ch:topic:*", self.prefix), true)],
            (Channel::Firehose, Some(_)) => (0..FIREHOSE_BUCKETS)
                .map(|b| (self.firehose_bucket(b), false))
                .collect(),
            (c, _) => vec![(self.channel(c), false)],
        }
    }
    /// The channel an event of `c` (never the firehose) is published on.
    fn channel(&self, c: &Channel) -> String {
        format!("{}ch:{c}", self.prefix)
    }
    /// On a cluster, the firehose channel that also carries `topic`'s events: one of
    /// `FIREHOSE_BUCKETS`, untagged so that the buckets, like the topics, spread over the
    /// shards (one firehose channel would carry every topic event on one shard).
    fn firehose_of(&self, topic: &str) -> String {
        self.firehose_bucket(firehose_bucket(topic))
    }
    fn firehose_bucket(&self, bucket: u32) -> String {
        format!("{}firehose:{bucket}", self.prefix)
    }
    fn control(&self) -> String {
        format!("{}control", self.together())
    }
    fn presence(&self, c: &Channel) -> String {
        format!("{}presence:{c}", self.together())
    }
    fn rate(&self, action: &str, agent_id: &str) -> String {
        format!("{}rl:{action}:{agent_id}", self.prefix)
    }
}

/// How many channels the firehose is split into on a Redis Cluster. Part of the wire
/// format: every replica of a deployment must agree on it and on `firehose_bucket`.
const FIREHOSE_BUCKETS: u32 = 64;

/// The firehose bucket of a topic: FNV-1a of its name, stable across processes and builds.
fn firehose_bucket(topic: &str) -> u32 {
    let h = topic.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    h % FIREHOSE_BUCKETS
}

/// Where commands go: one Redis, or a Redis Cluster.
enum Mode {
    Single {
        client: redis::Client,
        /// Commands (publish, presence, rate limits); reconnects by itself.
        conn: ConnectionManager,
    },
    Cluster(shards::ClusterSide),
}

/// A connection for one command, whichever the mode.
#[derive(Clone)]
enum Commands {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Commands {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Commands::Single(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Commands::Single(c) => c.req_packed_commands(cmd, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis side of one replica, shared by its seams and background tasks. None of it
/// points to the Hub: the handler lives in the broker and its link task only.
struct Shared {
    mode: Mode,
    names: Names,
    /// This process, on the wire: replica id plus a random tag, so two processes
    /// misconfigured with one replica id still hear each other.
    origin: String,
    wanted: Mutex<link::Wanted>,
    up: AtomicBool,
    /// Publishes made while Redis was unreachable, oldest first.
    pending: Mutex<VecDeque<(String, Vec<u8>)>>,
    presence: Mutex<presence::Members>,
    presence_wake: Notify,
    metrics: Arc<Metrics>,
}

impl Shared {
    /// A connection for commands; `None` on a cluster not reached yet.
    fn commands(&self) -> Option<Commands> {
        match &self.mode {
            Mode::Single { conn, .. } => Some(Commands::Single(conn.clone())),
            Mode::Cluster(c) => c.commands().map(Commands::Cluster),
        }
    }

    /// Runs a command-ish future on the command connection, under the command timeout.
    async fn with_commands<T, F>(&self, f: impl FnOnce(Commands) -> F) -> Result<T, String>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.commands().ok_or("redis cluster not reached yet")?;
        command(f(conn)).await
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain data; carry on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves once the bus is told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs a Redis command under the command timeout.
async fn command<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match timeout(COMMAND_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("command timed out".into()),
    }
}

/// A replica's Redis side, opened but not yet listening: the Hub takes its subscriptions
/// and presence, the rate limiter its buckets, then `start` hands the broker its handler.
pub struct RedisBus {
    shared: Arc<Shared>,
}

impl RedisBus {
    /// Prepares the connection; it does not wait for Redis (a replica starts, serves what it
    /// can and reports unready until Redis answers).
    pub fn open(
        url: &str,
        cluster_id: &str,
        replica_id: &str,
        metrics: Arc<Metrics>,
    ) -> Result<RedisBus, RedisBusError> {
        // The error text of a bad URL could echo a password: say only what kind it was.
        let (mode, cluster) = match target::Target::parse(url).map_err(RedisBusError::Url)? {
            target::Target::Cluster { seeds, auth } => {
                (Mode::Cluster(shards::ClusterSide::new(seeds, auth)), true)
            }
            target::Target::Single(info) => {
                // TCP_NODELAY: publishes are small writes sent as they happen, and Nagle
                // would hold one back until the reply to the one before it comes in.
                let info =
                    info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
                let client = redis::Client::open(info)
                    .map_err(|e| RedisBusError::Url(format!("{:?}", e.kind())))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(BACKOFF_MAX);
                let conn = client
                    .get_connection_manager_lazy(config)
                    .map_err(|e| RedisBusError::Url(format!("{:?}", e.kind())))?;
                (Mode::Single { client, conn }, false)
            }
        };
        let mut tag = [0u8; 4];
        let _ = getrandom::fill(&mut tag);
        let origin = format!(
            "{}/{}",
            replica_id.replace(['\n', '|'], "_"),
            hex::encode(tag)
        );
        Ok(RedisBus {
            shared: Arc::new(Shared {
                mode,
                names: Names::new(cluster_id, cluster),
                origin,
                wanted: Mutex::new(link::Wanted::default()),
                up: AtomicBool::new(false),
                pending: Mutex::new(VecDeque::new()),
                presence: Mutex::new(presence::Members::default()),
                presence_wake: Notify::new(),
                metrics,
            }),
        })
    }

    /// On a Redis Cluster, asks the seed nodes once whether they are a cluster: a node that
    /// says it is not is a configuration error, reported now rather than as a replica that
    /// never gets ready. Unreachable seeds are not an error here (the replica starts and
    /// reports not ready until the cluster answers). Nothing to check on a single Redis.
    pub async fn check(&self) -> Result<(), RedisBusError> {
        let Mode::Cluster(c) = &self.shared.mode else {
            return Ok(());
        };
        match c.probe().await {
            Err(e @ slots::DiscoverError::NotCluster(_)) => {
                Err(RedisBusError::NotCluster(e.to_string()))
            }
            Err(e) => {
                tracing::warn!(error = %e, "redis cluster not usable yet; starting not ready");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// What this replica listens to (for the Hub).
    pub fn subscriptions(&self) -> Arc<dyn Subscriptions> {
        Arc::new(RedisSubscriptions::new(self.shared.clone()))
    }

    /// Presence shared by every replica (for the Hub).
    pub fn presence(&self) -> Arc<dyn Presence> {
        Arc::new(RedisPresence::new(self.shared.clone()))
    }

    /// Rate-limit buckets shared by every replica.
    pub fn limits(&self) -> Arc<dyn SharedLimits> {
        Arc::new(RedisLimits::new(self.shared.clone()))
    }

    /// Starts the link and presence tasks, delivering to `handler`; the broker owns them.
    pub fn start(self, handler: Arc<dyn BusHandler>) -> Arc<RedisBroker> {
        RedisBroker::start(self.shared, handler)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_live_under_the_cluster_prefix() {
        let n = Names::new("c1", false);
        assert_eq!(
            n.channel(&Channel::topic("rust")),
            "carapace:c1:ch:topic:rust"
        );
        assert_eq!(
            n.channel(&Channel::agent("sage")),
            "carapace:c1:ch:agent:sage"
        );
        assert_eq!(
            n.subscriptions(&Channel::Firehose),
            vec![("carapace:c1:ch:topic:*".to_string(), true)]
        );
        assert_eq!(n.control(), "carapace:c1:control");
        assert_eq!(
            n.presence(&Channel::topic("rust")),
            "carapace:c1:presence:topic:rust"
        );
        assert_eq!(n.rate("post", "a1"), "carapace:c1:rl:post:a1");
    }

    #[test]
    fn cluster_names_share_a_slot_where_commands_meet() {
        let n = Names::new("c1", true);
        let tag = slots::slot(b"c1");
        for name in [
            n.control(),
            n.presence(&Channel::topic("rust")),
            n.presence(&Channel::topic("go")),
        ] {
            assert_eq!(slots::slot(name.as_bytes()), tag, "{name}");
        }
        // The firehose is every bucket; a topic's bucket is one of them, and the buckets
        // spread over the shards like the topics.
        let firehose = n.subscriptions(&Channel::Firehose);
        assert_eq!(firehose.len(), FIREHOSE_BUCKETS as usize);
        assert!(firehose.iter().all(|(_, pattern)| !pattern));
        assert!(firehose.contains(&(n.firehose_of("rust"), false)));
        let masters = [0..5461u16, 5461..10923, 10923..16384];
        for shard in masters {
            let on = firehose
                .iter()
                .filter(|(name, _)| shard.contains(&slots::slot(name.as_bytes())))
                .count();
            assert!(on >= 12, "{on} of 64 buckets on slots {shard:?}");
        }
        assert_eq!(firehose_bucket("rust"), firehose_bucket("rust"));
        let buckets: std::collections::HashSet<u32> = (0..200)
            .map(|i| firehose_bucket(&format!("t{i}")))
            .collect();
        assert!(buckets.len() > 48, "topics spread over the buckets");
        // Event channels spread over the shards.
        let spread: std::collections::HashSet<u16> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|t| slots::slot(n.channel(&Channel::topic(t)).as_bytes()))
            .collect();
        assert!(spread.len() > 3);
    }
}
