//! The subscriber link on a Redis Cluster: sharded pub/sub (`SSUBSCRIBE`), one connection per
//! shard master that serves a channel this replica wants, all run by one task.
//!
//! The redis crate's cluster client (1.8) can subscribe to sharded channels (RESP3 pushes) and
//! resubscribes after a reconnect or a slot-map refresh, but fire-and-forget: the outcome of
//! a resubscription is not reported, a lost node shows only as a `Disconnection` push among
//! the messages, and a slot moved under a live connection waits for the next map refresh.
//! There is no moment at which its caller knows it hears every channel again, which
//! `/readyz` and the Hub's catch-up (`on_resync`) need. So this link is owned here. It learns the slot map (`slots::discover`), connects to the masters it needs, and
//! treats anything that could have lost a message as the end of the link: a connection that
//! drops or stays silent past a ping, an error reply (MOVED, CROSSSLOT, ...), a sharded
//! channel the server unsubscribed us from (its slot moved), a slot map that changed, a
//! cluster that stops reporting `cluster_state:ok`. The supervisor (`link::supervise`) then
//! reports the bus unhealthy, rebuilds the link from a fresh map, and calls `on_resync`.
//! Publishing and every other command go through the crate's cluster connection, which
//! follows MOVED/ASK and refreshes its map by itself.

use super::link::{SUBSCRIBE_WAIT, SubOp};
use super::resp::{self, Auth, Node, Resp, read_value};
use super::slots::{self, DiscoverError, Topology};
use super::{COMMAND_TIMEOUT, CONNECT_TIMEOUT, Shared, lock, stopped};
use crate::bus::BusHandler;
use redis::cluster_async::ClusterConnection;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// A shard connection that has not been heard from for this long (it is pinged every
/// `PING_EVERY`) counts as lost.
const SILENT_MAX: Duration = Duration::from_secs(3);

/// The Redis Cluster side of a replica: where to find the cluster, and the cluster
/// connection for commands once the cluster has been reached.
pub(super) struct ClusterSide {
    pub(super) auth: Auth,
    /// Seed nodes first, then every node the last discovery named.
    known: Mutex<Vec<String>>,
    commands: Mutex<Option<ClusterConnection>>,
}

impl ClusterSide {
    pub(super) fn new(seeds: Vec<String>, auth: Auth) -> ClusterSide {
        ClusterSide {
            auth,
            known: Mutex::new(seeds),
            commands: Mutex::new(None),
        }
    }

    /// The command connection, once the cluster has answered.
    pub(super) fn commands(&self) -> Option<ClusterConnection> {
        lock(&self.commands).clone()
    }

    /// Discovers the slot map from any node known so far, and remembers the nodes it names.
    async fn discover(&self) -> Result<Topology, DiscoverError> {
        let candidates = lock(&self.known).clone();
        let (topology, answered) = slots::discover(&candidates, &self.auth).await?;
        let mut known = lock(&self.known);
        // Ask the node that answered first next time: a dead seed costs a timeout per ask.
        known.retain(|n| *n != answered);
        known.insert(0, answered);
        for n in &topology.nodes {
            if !known.contains(n) {
                known.push(n.clone());
            }
        }
        Ok(topology)
    }

    /// Asks the known nodes for the slot map once (start-up check).
    pub(super) async fn probe(&self) -> Result<(), DiscoverError> {
        self.discover().await.map(drop)
    }

    /// Opens the cluster command connection the first time the cluster is reachable; it
    /// then follows the cluster by itself (MOVED/ASK, map refreshes, reconnects).
    async fn ensure_commands(&self) -> Result<(), String> {
        if lock(&self.commands).is_some() {
            return Ok(());
        }
        let nodes: Vec<String> = lock(&self.known)
            .iter()
            .map(|n| format!("redis://{n}"))
            .collect();
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(COMMAND_TIMEOUT)
            .retries(3);
        if let Some(u) = &self.auth.username {
            builder = builder.username(u);
        }
        if let Some(p) = &self.auth.password {
            builder = builder.password(p);
        }
        // Errors of the crate can quote the nodes' URLs; they hold no password (it is
        // passed apart), but say only the kind anyway.
        let client = builder
            .build()
            .map_err(|e| format!("cluster client: {:?}", e.kind()))?;
        let conn = timeout(CONNECT_TIMEOUT * 2, client.get_async_connection())
            .await
            .map_err(|_| "cluster connection timed out".to_string())?
            .map_err(|e| format!("cluster connection: {:?}", e.kind()))?;
        *lock(&self.commands) = Some(conn);
        Ok(())
    }
}

/// One shard master's subscriber connection: its write half here, its read half in a task
/// that forwards every reply to the link.
struct Shard {
    id: usize,
    addr: String,
    write: OwnedWriteHalf,
    reader: JoinHandle<()>,
    last_heard: Instant,
}

/// What a shard connection's reader hands the link.
type Frame = (usize, Result<Resp, String>);

/// The live link: its map, its shard connections, and what it waits for.
struct Link<'a> {
    auth: &'a Auth,
    topology: Topology,
    shards: HashMap<String, Shard>,
    addrs: HashMap<usize, String>,
    next_id: usize,
    frames: mpsc::UnboundedSender<Frame>,
    /// Channels sent SSUBSCRIBE, not yet confirmed: per channel, one entry per SSUBSCRIBE
    /// sent (a node confirms them in order), with who waits for it.
    confirming: HashMap<String, VecDeque<Option<oneshot::Sender<()>>>>,
    /// Channels sent SUNSUBSCRIBE, not yet confirmed: their confirmation is ours, any other
    /// `sunsubscribe` comes from the server and means a slot moved away.
    leaving: HashMap<String, usize>,
}

impl Drop for Link<'_> {
    fn drop(&mut self) {
        for s in self.shards.values() {
            s.reader.abort();
        }
    }
}

impl Link<'_> {
    /// Sends SSUBSCRIBE for `channel` to the master of its slot, connecting if needed.
    async fn subscribe(
        &mut self,
        channel: String,
        done: Option<oneshot::Sender<()>>,
    ) -> Result<(), String> {
        let shard = self.shard_for(&channel).await?;
        resp::send(
            &mut shard.write,
            &shard.addr,
            &redis::cmd("SSUBSCRIBE").arg(&channel).to_owned(),
        )
        .await?;
        self.confirming.entry(channel).or_default().push_back(done);
        Ok(())
    }

    async fn unsubscribe(&mut self, channel: String) -> Result<(), String> {
        let Some(owner) = self.topology.owner(slots::slot(channel.as_bytes())) else {
            return Ok(());
        };
        let Some(shard) = self.shards.get_mut(owner) else {
            return Ok(());
        };
        resp::send(
            &mut shard.write,
            owner,
            &redis::cmd("SUNSUBSCRIBE").arg(&channel).to_owned(),
        )
        .await?;
        *self.leaving.entry(channel).or_default() += 1;
        Ok(())
    }

    /// The connection to the master of `channel`'s slot, opened on first use.
    async fn shard_for(&mut self, channel: &str) -> Result<&mut Shard, String> {
        let owner = self
            .topology
            .owner(slots::slot(channel.as_bytes()))
            .ok_or("a slot has no master")?
            .to_string();
        if !self.shards.contains_key(&owner) {
            let node = Node::connect(&owner, self.auth).await?;
            let id = self.next_id;
            self.next_id += 1;
            let frames = self.frames.clone();
            let mut read = node.read;
            let reader = tokio::spawn(async move {
                loop {
                    let r = read_value(&mut read).await;
                    let end = r.is_err();
                    if frames.send((id, r)).is_err() || end {
                        return;
                    }
                }
            });
            self.addrs.insert(id, owner.clone());
            self.shards.insert(
                owner.clone(),
                Shard {
                    id,
                    addr: owner.clone(),
                    write: node.write,
                    reader,
                    last_heard: Instant::now(),
                },
            );
        }
        Ok(self.shards.get_mut(&owner).expect("just inserted"))
    }

    /// Handles one reply from a shard; `Err` for anything that may have lost a message.
    fn on_frame(
        &mut self,
        shared: &Shared,
        handler: &dyn BusHandler,
        frame: Frame,
    ) -> Result<(), String> {
        let (id, reply) = frame;
        // A shard dropped as idle carries nothing wanted: what it still said does not matter.
        let Some(addr) = self.addrs.get(&id).cloned() else {
            return Ok(());
        };
        let reply = reply.map_err(|e| format!("{addr}: {e}"))?;
        if let Some(s) = self.shards.get_mut(&addr) {
            s.last_heard = Instant::now();
        }
        let parts = match reply {
            Resp::Array(Some(parts)) => parts,
            Resp::Error(e) => return Err(format!("{addr}: {e}")),
            _ => return Err(format!("{addr}: unexpected reply")),
        };
        let kind = parts.first().and_then(Resp::text).unwrap_or("");
        let channel = parts.get(1).and_then(Resp::text).unwrap_or("").to_string();
        match kind {
            "smessage" => match parts.get(2) {
                Some(Resp::Bulk(Some(payload))) => shared.receive(handler, payload),
                _ => return Err(format!("{addr}: malformed smessage")),
            },
            "ssubscribe" => {
                if let Some(waiting) = self.confirming.get_mut(&channel) {
                    if let Some(Some(done)) = waiting.pop_front() {
                        let _ = done.send(());
                    }
                    if waiting.is_empty() {
                        self.confirming.remove(&channel);
                    }
                }
            }
            "sunsubscribe" => match self.leaving.get_mut(&channel) {
                Some(n) => {
                    *n -= 1;
                    if *n == 0 {
                        self.leaving.remove(&channel);
                    }
                }
                None => {
                    return Err(format!(
                        "{addr}: the server dropped a sharded channel (its slot moved)"
                    ));
                }
            },
            "pong" => {}
            _ => return Err(format!("{addr}: unexpected reply {kind:?}")),
        }
        Ok(())
    }

    /// Pings every shard, after checking that each answered recently.
    async fn ping(&mut self) -> Result<(), String> {
        for (addr, s) in &mut self.shards {
            if s.last_heard.elapsed() > SILENT_MAX {
                return Err(format!("{addr}: no reply to ping"));
            }
            resp::send(&mut s.write, addr, &redis::cmd("PING").to_owned()).await?;
        }
        Ok(())
    }

    /// Drops a shard connection that no longer carries a wanted channel.
    fn forget_idle(&mut self, wanted: &HashSet<String>) {
        let busy: HashSet<&str> = wanted
            .iter()
            .filter_map(|c| self.topology.owner(slots::slot(c.as_bytes())))
            .collect();
        let idle: Vec<String> = self
            .shards
            .keys()
            .filter(|a| !busy.contains(a.as_str()))
            .cloned()
            .collect();
        for a in idle {
            if self
                .leaving
                .keys()
                .any(|c| self.topology.owner(slots::slot(c.as_bytes())) == Some(a.as_str()))
            {
                continue;
            }
            if let Some(s) = self.shards.remove(&a) {
                s.reader.abort();
                self.addrs.remove(&s.id);
            }
        }
    }
}

impl Shared {
    /// Runs one cluster link until something may have been lost (`Err`) or the bus stops.
    pub(super) async fn run_shard_link(
        &self,
        cluster: &ClusterSide,
        handler: &dyn BusHandler,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let topology = cluster.discover().await.map_err(|e| e.to_string())?;
        cluster.ensure_commands().await?;
        let (frames_tx, mut frames) = mpsc::unbounded_channel();
        let mut link = Link {
            auth: &cluster.auth,
            topology,
            shards: HashMap::new(),
            addrs: HashMap::new(),
            next_id: 0,
            frames: frames_tx,
            confirming: HashMap::new(),
            leaving: HashMap::new(),
        };
        let (tx, mut ops) = mpsc::channel(super::link::OPS_QUEUE);
        let channels: Vec<String> = {
            let mut w = lock(&self.wanted);
            w.link = Some(tx);
            w.counts.keys().cloned().collect()
        };
        // From here on every change of `wanted` also arrives as an op.
        let mut wanted: HashSet<String> = channels.iter().cloned().collect();
        wanted.insert(self.names.control());
        for c in &wanted {
            link.subscribe(c.clone(), None).await?;
        }
        // Healthy only once every shard confirmed every channel.
        let deadline = tokio::time::Instant::now() + SUBSCRIBE_WAIT;
        while !link.confirming.is_empty() {
            match tokio::time::timeout_at(deadline, frames.recv()).await {
                Ok(Some(f)) => link.on_frame(self, handler, f)?,
                Ok(None) => return Err("shard readers gone".into()),
                Err(_) => return Err("shards did not confirm the subscriptions".into()),
            }
        }
        tracing::info!(
            channels = wanted.len(),
            shards = link.shards.len(),
            "redis cluster bus connected"
        );
        let (mut ping, mut sweep) = self.came_up(handler).await;
        loop {
            tokio::select! {
                _ = stopped(stop) => return Ok(()),
                f = frames.recv() => match f {
                    Some(f) => link.on_frame(self, handler, f)?,
                    None => return Err("shard readers gone".into()),
                },
                op = ops.recv() => match op {
                    Some(SubOp::Subscribe(name, done) | SubOp::PSubscribe(name, done)) => {
                        wanted.insert(name.clone());
                        link.subscribe(name, Some(done)).await?;
                    }
                    Some(SubOp::Unsubscribe(name) | SubOp::PUnsubscribe(name)) => {
                        wanted.remove(&name);
                        link.unsubscribe(name).await?;
                        link.forget_idle(&wanted);
                    }
                    None => return Err("subscription queue overflowed; rebuilding".into()),
                },
                _ = sweep.tick() => handler.on_sweep(),
                _ = ping.tick() => {
                    // What arrived while this task was busy counts as heard.
                    while let Ok(f) = frames.try_recv() {
                        link.on_frame(self, handler, f)?;
                    }
                    link.ping().await?;
                    link.forget_idle(&wanted);
                    // A changed map may have moved a channel this link hears; rebuilding
                    // from the new map (and resyncing) is simpler than tracking each move,
                    // and maps change rarely.
                    let now = cluster.discover().await.map_err(|e| e.to_string())?;
                    if !now.same_slots(&link.topology) {
                        return Err("the cluster's slot map changed".into());
                    }
                    if !lock(&self.pending).is_empty() {
                        self.flush_pending().await;
                    }
                }
            }
        }
    }
}
