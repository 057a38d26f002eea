//! Where things live on a Redis Cluster: a name's hash slot (CRC16 of the name, or of its
//! `{hash tag}`, modulo 16384) and which master serves each slot, asked of the cluster's
//! nodes one at a time (`CLUSTER INFO` for its state, `CLUSTER SLOTS` for the map).

use super::resp::{Auth, Node, Resp};

pub(super) const SLOTS: u32 = 16384;

/// The slot of a key or sharded channel: only the part inside the first non-empty `{...}`
/// counts when there is one, so names sharing a tag share a slot.
pub(super) fn slot(name: &[u8]) -> u16 {
    let tagged = name.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &name[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    // CRC16/XMODEM, the checksum Redis Cluster hashes names with.
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(name)) % SLOTS as u16
}

/// Which master serves which slots, and every node the cluster named.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Topology {
    /// (first slot, last slot, master `host:port`), sorted by first slot.
    ranges: Vec<(u16, u16, String)>,
    /// Masters and replicas, for the next discovery to ask.
    pub(super) nodes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum DiscoverError {
    /// A node answered that it is not part of a cluster: a configuration error, not a fault.
    #[error(
        "{0} is not a Redis Cluster node (cluster support disabled); use redis:// for a single Redis"
    )]
    NotCluster(String),
    #[error("no cluster node usable: {0}")]
    Unusable(String),
}

impl Topology {
    /// The master serving `slot`.
    pub(super) fn owner(&self, slot: u16) -> Option<&str> {
        let i = self.ranges.partition_point(|(first, _, _)| *first <= slot);
        let (first, last, addr) = self.ranges.get(i.checked_sub(1)?)?;
        (*first <= slot && slot <= *last).then_some(addr.as_str())
    }

    /// Reads a `CLUSTER SLOTS` reply; `asked` is the node it came from, whose host stands in
    /// for nodes that do not announce one.
    fn parse(reply: &Resp, asked: &str) -> Result<Topology, String> {
        let bad = || format!("{asked}: unexpected CLUSTER SLOTS reply");
        let Resp::Array(Some(entries)) = reply else {
            return Err(bad());
        };
        let asked_host = asked.rsplit_once(':').map(|(h, _)| h).unwrap_or(asked);
        let endpoint = |node: &Resp| -> Option<String> {
            let Resp::Array(Some(parts)) = node else {
                return None;
            };
            let host = parts.first()?.text()?;
            let Resp::Int(port) = parts.get(1)? else {
                return None;
            };
            let host = if host.is_empty() || host == "?" {
                asked_host
            } else {
                host
            };
            Some(if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            })
        };
        let (mut ranges, mut nodes) = (Vec::new(), Vec::new());
        for entry in entries {
            let Resp::Array(Some(parts)) = entry else {
                return Err(bad());
            };
            let (Some(Resp::Int(first)), Some(Resp::Int(last))) = (parts.first(), parts.get(1))
            else {
                return Err(bad());
            };
            let master = parts.get(2).and_then(endpoint).ok_or_else(bad)?;
            if !(0..SLOTS as i64).contains(first) || !(*first..SLOTS as i64).contains(last) {
                return Err(bad());
            }
            ranges.push((*first as u16, *last as u16, master.clone()));
            nodes.push(master);
            nodes.extend(parts.iter().skip(3).filter_map(endpoint));
        }
        ranges.sort();
        nodes.sort();
        nodes.dedup();
        Ok(Topology { ranges, nodes })
    }

    /// Whether both maps put every slot on the same master (the node lists may differ).
    pub(super) fn same_slots(&self, other: &Topology) -> bool {
        self.ranges == other.ranges
    }

    /// Whether every slot has a master (otherwise some channel would have nowhere to live).
    fn covers_all(&self) -> bool {
        let mut next: u32 = 0;
        for (first, last, _) in &self.ranges {
            if *first as u32 > next {
                return false;
            }
            next = next.max(*last as u32 + 1);
        }
        next == SLOTS
    }
}

/// Asks `candidates` in turn until one reports `cluster_state:ok` and a map covering every
/// slot. A node that says it is no cluster ends the search: that will not change by retrying.
/// Returns the map and the node that answered.
pub(super) async fn discover(
    candidates: &[String],
    auth: &Auth,
) -> Result<(Topology, String), DiscoverError> {
    let mut last = String::from("no node to ask");
    for addr in candidates {
        match ask(addr, auth).await {
            Ok(t) => return Ok((t, addr.clone())),
            Err(Asked::NotCluster) => return Err(DiscoverError::NotCluster(addr.clone())),
            Err(Asked::Failed(e)) => last = e,
        }
    }
    Err(DiscoverError::Unusable(last))
}

enum Asked {
    NotCluster,
    Failed(String),
}

async fn ask(addr: &str, auth: &Auth) -> Result<Topology, Asked> {
    let mut node = Node::connect(addr, auth).await.map_err(Asked::Failed)?;
    let info = node
        .call(&redis::cmd("CLUSTER").arg("INFO").to_owned())
        .await
        .map_err(Asked::Failed)?;
    match &info {
        Resp::Error(e) if e.contains("cluster support disabled") => return Err(Asked::NotCluster),
        Resp::Error(e) => return Err(Asked::Failed(format!("{addr}: {e}"))),
        _ => {}
    }
    let state = info
        .text()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.trim().strip_prefix("cluster_state:"))
        })
        .unwrap_or("unknown");
    if state != "ok" {
        return Err(Asked::Failed(format!("{addr}: cluster_state:{state}")));
    }
    let reply = node
        .call(&redis::cmd("CLUSTER").arg("SLOTS").to_owned())
        .await
        .map_err(Asked::Failed)?;
    let topology = Topology::parse(&reply, addr).map_err(Asked::Failed)?;
    if !topology.covers_all() {
        return Err(Asked::Failed(format!("{addr}: some slots have no master")));
    }
    Ok(topology)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"carapace:{c1}:control"), slot(b"c1"));
    }

    fn bulk(s: &str) -> Resp {
        Resp::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn cluster_slots_reply_gives_owners_and_nodes() {
        let node = |h: &str, p: i64| Resp::Array(Some(vec![bulk(h), Resp::Int(p), bulk("id")]));
        let reply = Resp::Array(Some(vec![
            Resp::Array(Some(vec![
                Resp::Int(8192),
                Resp::Int(16383),
                node("", 7001),
                node("10.0.0.2", 7004),
            ])),
            Resp::Array(Some(vec![
                Resp::Int(0),
                Resp::Int(8191),
                node("10.0.0.1", 7000),
            ])),
        ]));
        let t = Topology::parse(&reply, "10.0.0.9:7000").unwrap();
        assert!(t.covers_all());
        assert_eq!(t.owner(0), Some("10.0.0.1:7000"));
        assert_eq!(t.owner(8191), Some("10.0.0.1:7000"));
        assert_eq!(t.owner(8192), Some("10.0.0.9:7001"));
        assert_eq!(t.owner(16383), Some("10.0.0.9:7001"));
        assert_eq!(t.nodes.len(), 3);
        let half = Topology {
            ranges: vec![(0, 8191, "a:1".into())],
            nodes: vec![],
        };
        assert!(!half.covers_all());
        assert_eq!(half.owner(9000), None);
    }
}
