//! Gives the heap back to the system after a wave of sessions has gone. glibc's allocator
//! keeps what was freed in its arenas for reuse: after ten thousand slow consumers are cut,
//! the hub's resident memory would stay at that wave's high-water mark until the next wave
//! reused it. `malloc_trim` returns the free pages of every arena. It walks the arenas under
//! their locks, so it runs only when the session count fell well below its recent peak, at
//! most once per `CHECK`, on a blocking thread. Elsewhere than glibc this does nothing.

use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;

/// How often the session count is looked at.
const CHECK: Duration = Duration::from_secs(2);

/// Sessions that must have ended since the peak for a trim to be worth its pause.
const WAVE: i64 = 256;

/// Runs until aborted with the replica's other housekeeping tasks.
pub async fn trim_after_waves(metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut peak = 0i64;
    loop {
        tick.tick().await;
        let now = metrics.sessions.get();
        peak = peak.max(now);
        if peak - now >= WAVE {
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            tracing::debug!(
                from = peak,
                to = now,
                released,
                "sessions ended in a wave: heap trimmed"
            );
            peak = now;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim takes a padding size and touches only the allocator's own state,
    // under its own locks; any thread may call it at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}
