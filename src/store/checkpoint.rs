//! SQLite's WAL checkpoints, on a task of their own instead of inside a commit.
//!
//! Left to itself, SQLite checkpoints in the commit that takes the WAL past 1,000 frames:
//! under a busy fan-out that was one post in ~50 (several a second), each waiting while the
//! pages were copied into the database file and both files were synced. Here a task runs a
//! PASSIVE checkpoint (it never waits for the writer or readers) every `INTERVAL` on a read
//! connection, so the copying and syncing happen beside the writer.
//!
//! What is left inline: a WAL only starts over from its beginning when a write finds it fully
//! copied, which under steady writes it never is (posts land while the checkpoint runs). So
//! the WAL grows to the automatic checkpoint's threshold, 20,000 frames (~40 MiB at 2 KiB
//! pages, `SQLITE_PRAGMAS`), where one commit checkpoints what the task has not copied yet,
//! little by then, and the WAL starts over. On a quiet replica the task's checkpoint copies
//! everything and the next write starts the WAL over.

use sqlx::AnyPool;
use std::time::Duration;

/// How often the WAL is copied back into the database file. The copy syncs the WAL first, so
/// this is also about how long a commit stays unsynced, i.e. what a power loss can take
/// (`synchronous=NORMAL`).
pub const INTERVAL: Duration = Duration::from_millis(500);

/// Checkpoints the database behind `pool` every `INTERVAL` until the pool is closed.
pub fn spawn(pool: AnyPool) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Failures in a row: a full disk fails every checkpoint until space returns, and one
        // line per streak says so without a warning every `INTERVAL`.
        let mut failing = 0u64;
        loop {
            tick.tick().await;
            if pool.is_closed() {
                break;
            }
            match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_all(&pool)
                .await
            {
                Ok(_) if failing > 0 => {
                    tracing::info!(failed = failing, "WAL checkpoints succeed again");
                    failing = 0;
                }
                Ok(_) => {}
                Err(_) if pool.is_closed() => break,
                Err(e) => {
                    if failing == 0 {
                        tracing::warn!(error = %e, "WAL checkpoint failed; retrying every 500 ms");
                    }
                    failing += 1;
                }
            }
        }
    });
}
