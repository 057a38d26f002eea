//! Watches the bus and says when it has been lost for too long. A replica whose bus is down
//! no longer hears the other replicas: its sessions get only what it publishes itself until
//! the bus comes back and the Hub resyncs. A short outage (a Redis restart) is best hidden
//! from them; a long one, typically this replica cut off from Redis while the others still
//! reach it, is not: after `grace` of a lost bus the flag this task owns turns true, sessions
//! close with 1012 and new ones are refused, so clients move through the balancer (which
//! has already taken this replica out: `/readyz` follows the bus) to a replica that hears
//! everything. The flag turns false again as soon as the bus is back.

use crate::bus::Broker;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often the bus's health is read: a flag in memory, so cheap; this bounds how late
/// after the grace the sessions are told.
const POLL: Duration = Duration::from_millis(100);

/// Runs until the replica stops (the task is aborted), keeping `lost` up to date.
pub async fn run(bus: Arc<dyn Broker>, grace: Duration, lost: watch::Sender<bool>) {
    let mut down_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if bus.healthy().await {
            down_since = None;
            if lost.send_replace(false) {
                tracing::info!("bus back: accepting sessions again");
            }
            continue;
        }
        let since = *down_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= grace && !lost.send_replace(true) {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "bus down for longer than the grace: closing sessions with 1012 and refusing \
                 new ones until it is back"
            );
        }
    }
}
