//! Gives the heap back to the system. glibc's allocator keeps what was freed in its arenas
//! for reuse, which holds a hub's resident memory at its high-water marks:
//! - after a wave of sessions has gone (ten thousand slow consumers cut), `malloc_trim`
//!   returns the free pages of every arena. It walks the arenas under their locks, so it runs
//!   only when the session count fell well below its recent peak, at most once per `CHECK`,
//!   on a blocking thread;
//! - large blocks (a password hash's 19 MiB) are mapped for themselves and unmapped when
//!   freed (`return_large_blocks`). By default glibc raises its mapping threshold to the size
//!   of the last such block freed, so the next hash's buffer came from an arena and stayed
//!   there: each hashing thread left a replica 19 MiB larger for good.
//!
//! Elsewhere than glibc this does nothing.

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

/// Blocks at least this large are mapped for themselves: far above what a session or a
/// frame allocates, below a password hash's buffer.
const LARGE_BLOCK: i32 = 1 << 20;

/// Fixes glibc's mapping threshold at `LARGE_BLOCK` (which also stops its raising), once,
/// before the replica's work starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn return_large_blocks() {
    // SAFETY: mallopt only sets a parameter of the allocator, under its own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE_BLOCK);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn return_large_blocks() {}

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
