//! Presence shared by every replica: each replica writes its own agents to one sorted set per
//! topic in Redis (scored by expiry, refreshed by a heartbeat), and reads every replica's.

use super::{Shared, command, lock, stopped};
use crate::bus::Presence;
use crate::protocol::Channel;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Presence entries live this long unless their replica refreshes them.
const PRESENCE_TTL: Duration = Duration::from_secs(30);
const PRESENCE_HEARTBEAT: Duration = Duration::from_secs(10);

/// Agents of this replica present on topics, and what Redis still has to learn.
#[derive(Default)]
pub(super) struct Members {
    /// presence key → handle → local sessions.
    members: HashMap<String, HashMap<String, usize>>,
    /// Joined since the last flush.
    joined: HashSet<(String, String)>,
    /// Left (no local session any more) since the last flush.
    left: HashSet<(String, String)>,
}

/// The Hub's handle on shared presence.
pub struct RedisPresence {
    shared: Arc<Shared>,
}

impl RedisPresence {
    pub(super) fn new(shared: Arc<Shared>) -> RedisPresence {
        RedisPresence { shared }
    }
}

#[async_trait::async_trait]
impl Presence for RedisPresence {
    fn join(&self, channel: &Channel, handle: &str) {
        let key = self.shared.names.presence(channel);
        let mut p = lock(&self.shared.presence);
        let n = p
            .members
            .entry(key.clone())
            .or_default()
            .entry(handle.to_string())
            .or_insert(0);
        *n += 1;
        if *n == 1 {
            let entry = (key, handle.to_string());
            p.left.remove(&entry);
            p.joined.insert(entry);
            drop(p);
            self.shared.presence_wake.notify_one();
        }
    }

    fn leave(&self, channel: &Channel, handle: &str) {
        let key = self.shared.names.presence(channel);
        let mut p = lock(&self.shared.presence);
        let Some(hs) = p.members.get_mut(&key) else {
            return;
        };
        let Some(n) = hs.get_mut(handle) else { return };
        *n -= 1;
        if *n > 0 {
            return;
        }
        hs.remove(handle);
        if hs.is_empty() {
            p.members.remove(&key);
        }
        let entry = (key, handle.to_string());
        p.joined.remove(&entry);
        p.left.insert(entry);
        drop(p);
        self.shared.presence_wake.notify_one();
    }

    async fn members(&self, channel: &Channel) -> Option<Vec<String>> {
        let key = self.shared.names.presence(channel);
        let now = crate::clock::now_ms();
        let mut pipe = redis::pipe();
        pipe.zrembyscore(&key, "-inf", now).ignore();
        pipe.zrangebyscore(&key, now, "+inf");
        let mut conn = self.shared.commands()?;
        let (members,): (Vec<String>,) = command(pipe.query_async(&mut conn)).await.ok()?;
        let mut handles: Vec<String> = members
            .iter()
            .filter_map(|m| m.rsplit_once('|').map(|(_, h)| h.to_string()))
            .collect();
        // What this replica knows itself counts even before the presence task wrote it.
        {
            let p = lock(&self.shared.presence);
            if let Some(hs) = p.members.get(&key) {
                handles.extend(hs.keys().cloned());
            }
        }
        handles.sort();
        handles.dedup();
        Some(handles)
    }
}

impl Shared {
    /// Removes this replica's entries from Redis (shutdown); the TTL would clear them
    /// anyway, but later.
    pub(super) async fn clear_presence(&self) {
        let members: Vec<(String, String)> = {
            let p = lock(&self.presence);
            p.members
                .iter()
                .flat_map(|(k, hs)| hs.keys().map(move |h| (k.clone(), h.clone())))
                .collect()
        };
        if members.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (key, handle) in members {
            pipe.zrem(key, format!("{}|{handle}", self.origin)).ignore();
        }
        let _ = self
            .with_commands(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await;
    }
}

/// Writes this replica's presence to Redis: joins and leaves as they happen, and every
/// member again on each heartbeat, so a replica that dies stops counting after the TTL.
pub(super) async fn presence_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut beat = tokio::time::interval(PRESENCE_HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let full = tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = beat.tick() => true,
            _ = shared.presence_wake.notified() => false,
        };
        let (joined, left) = {
            let mut p = lock(&shared.presence);
            let joined: Vec<(String, String)> = if full {
                p.joined.clear();
                p.members
                    .iter()
                    .flat_map(|(k, hs)| hs.keys().map(move |h| (k.clone(), h.clone())))
                    .collect()
            } else {
                p.joined.drain().collect()
            };
            (joined, p.left.drain().collect::<Vec<_>>())
        };
        if joined.is_empty() && left.is_empty() {
            continue;
        }
        let expiry = crate::clock::now_ms() + PRESENCE_TTL.as_millis() as i64;
        let mut pipe = redis::pipe();
        for (key, handle) in &joined {
            let member = format!("{}|{handle}", shared.origin);
            pipe.zadd(key, member, expiry).ignore();
            pipe.pexpire(key, 2 * PRESENCE_TTL.as_millis() as i64)
                .ignore();
        }
        for (key, handle) in &left {
            pipe.zrem(key, format!("{}|{handle}", shared.origin))
                .ignore();
        }
        let written = shared
            .with_commands(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await;
        if written.is_err() {
            // Try again at the next beat; what is still local then is written in full.
            let mut p = lock(&shared.presence);
            for l in left {
                if !p.members.get(&l.0).is_some_and(|m| m.contains_key(&l.1)) {
                    p.left.insert(l);
                }
            }
        }
    }
}
