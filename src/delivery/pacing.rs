//! Replica-wide write pacing: how long a session's writer may hold an event back so that it
//! goes out in one write with the events behind it. The gap follows the replica's delivery
//! rate: a lightly loaded replica sends every event at once, a replica fanning out hundreds
//! of thousands of events a second pays one syscall per batch instead of one per frame.
//!
//! Writers on their own threads (see `egress`) already batch by themselves under load, so
//! the gap is capped short: a short gap still saves syscalls, a long one makes publishers
//! that wait for their events (a window of posts in flight) wait longer. On a quiet replica
//! any gap only adds latency, hence none there.

use crate::metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How often the rate is sampled.
const TICK: Duration = Duration::from_millis(100);
/// Below this many deliveries a second, events go out at once.
const QUIET_RATE: f64 = 50_000.0;
/// Each further `QUIET_RATE` of deliveries a second adds this much gap...
const GAP_STEP_US: f64 = 10_000.0;
/// ...up to this.
const MAX_GAP: Duration = Duration::from_millis(10);
/// Weight of the newest sample in the smoothed rate.
const SMOOTHING: f64 = 0.3;

/// The current gap, shared by every writer of the replica.
#[derive(Default)]
pub struct FlushPacer {
    gap_us: AtomicU64,
}

impl FlushPacer {
    /// The longest a writer should wait after its last flush before flushing again.
    pub fn gap(&self) -> Duration {
        Duration::from_micros(self.gap_us.load(Relaxed))
    }

    /// Samples the delivery counter until the task is dropped.
    pub async fn run(self: Arc<Self>, metrics: Arc<Metrics>) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = (Instant::now(), metrics.deliveries.get());
        let mut rate = 0.0;
        loop {
            ticker.tick().await;
            let now = (Instant::now(), metrics.deliveries.get());
            let secs = now.0.duration_since(last.0).as_secs_f64();
            if secs > 0.0 {
                let sample = now.1.saturating_sub(last.1) as f64 / secs;
                rate = SMOOTHING * sample + (1.0 - SMOOTHING) * rate;
                self.gap_us.store(gap_for(rate).as_micros() as u64, Relaxed);
            }
            last = now;
        }
    }
}

/// The gap for a smoothed rate of `rate` deliveries a second.
fn gap_for(rate: f64) -> Duration {
    if rate <= QUIET_RATE {
        return Duration::ZERO;
    }
    let us = (rate - QUIET_RATE) / QUIET_RATE * GAP_STEP_US;
    Duration::from_micros(us as u64).min(MAX_GAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_replicas_send_at_once_and_busy_ones_batch_up_to_the_cap() {
        assert_eq!(gap_for(0.0), Duration::ZERO);
        assert_eq!(gap_for(QUIET_RATE), Duration::ZERO);
        assert_eq!(gap_for(75_000.0), Duration::from_millis(5));
        assert_eq!(gap_for(100_000.0), MAX_GAP);
        assert_eq!(gap_for(10_000_000.0), MAX_GAP);
        assert!(gap_for(60_000.0) < gap_for(70_000.0));
    }
}
