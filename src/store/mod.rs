//! The Store: everything that must last, in SQLite (the embedded default) or PostgreSQL
//! (replicas). It owns connections, migrations, queries and row types; it knows nothing of
//! sessions, scopes or encryption (callers hand it sealed blobs and digests).
//!
//! Shape: one code path over sqlx's `Any` driver with a `Dialect` for the few places the two
//! engines differ, rather than two copies of forty queries. The queries use `$N` placeholders,
//! which both engines accept. Both backends are held to the same conformance suite
//! (`tests/store_conformance.rs`). Writes that must be atomic go through a `WriteTx`; on SQLite
//! all writes share one connection, so they never fight over the database lock.

mod checkpoint;
mod events;
mod forum;
mod identity;
mod meta;
mod removal;
pub mod rows;
mod rules;
mod sealed_rows;
mod social;
mod stop_words;
mod vectors;

pub use forum::{NewComment, NewPost, PostFilter, VoteTarget};
pub use identity::{NewAgent, NewKey, NewOwner};
pub use removal::tombstone;
pub use rows::*;
pub use sealed_rows::{SealedBlob, SealedKind};
pub use social::{RANKED_MATCHES, ReportRow, SearchHit, SearchKind, fts5_query};
pub use vectors::{IndexLock, ItemKind, NewVector, PendingItem, VectorRow, embed_text};

use dashmap::DashSet;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, AssertSqlSafe, Executor, Row, Transaction};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    /// The writer is banned from writing in `topic` (see `rules`).
    #[error("banned from writing in '{topic}'")]
    Banned { topic: String },
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.message().to_string())
            }
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(db) if passing(db.as_ref()) => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Database(e.to_string()),
        }
    }
}

/// Whether a database error is a condition of the moment that a retry can outlive, rather
/// than a fault in the statement. PostgreSQL: admin shutdown, crash shutdown, cannot connect
/// now, out of disk (53100), memory (53200) or connections (53300), and a transaction chosen
/// as a deadlock or serialization victim (rolled back whole, so "try again" is the truth).
fn passing(db: &dyn sqlx::error::DatabaseError) -> bool {
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        return sqlite_passing(db.code().as_deref());
    }
    db.code().is_some_and(|c| {
        matches!(
            c.as_ref(),
            "57P01" | "57P02" | "57P03" | "53100" | "53200" | "53300" | "40P01" | "40001"
        )
    })
}

/// SQLite reports extended result codes (`SQLITE_IOERR_WRITE` is 778); the primary code is
/// the low byte. Busy (5) and locked (6); out of memory (7); an I/O error (10), say a write
/// the file system refused; the disk full (13); a file that cannot be opened (14), say for
/// lack of descriptors. A failed statement or commit leaves the transaction rolled back, so
/// nothing refused this way is stored.
fn sqlite_passing(code: Option<&str>) -> bool {
    code.and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 7 | 10 | 13 | 14))
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// Reads (and, on PostgreSQL, writes).
    read: AnyPool,
    /// Writes. On SQLite a pool of exactly one connection: the engine has one writer anyway,
    /// and queueing in the pool beats retrying on `SQLITE_BUSY`.
    write: AnyPool,
    dialect: Dialect,
    /// Topics never go away, so one seen once is remembered: posting and subscribing then
    /// skip a database round trip. Cleared when it grows past `KNOWN_TOPICS_MAX`.
    known_topics: Arc<DashSet<String>>,
}

const KNOWN_TOPICS_MAX: usize = 10_000;

const SQLITE_MIGRATIONS: &[(&str, &str)] = &[
    ("001_init", include_str!("migrations/sqlite/001_init.sql")),
    (
        "002_social",
        include_str!("migrations/sqlite/002_social.sql"),
    ),
    (
        "003_cluster",
        include_str!("migrations/sqlite/003_cluster.sql"),
    ),
    (
        "004_post_writes",
        include_str!("migrations/sqlite/004_post_writes.sql"),
    ),
    (
        "005_owner_sessions",
        include_str!("migrations/sqlite/005_owner_sessions.sql"),
    ),
    ("006_holds", include_str!("migrations/sqlite/006_holds.sql")),
    ("009_leaks", include_str!("migrations/sqlite/009_leaks.sql")),
    (
        "010_event_writes",
        include_str!("migrations/sqlite/010_event_writes.sql"),
    ),
    (
        "011_vectors",
        include_str!("migrations/sqlite/011_vectors.sql"),
    ),
    (
        "012_fts_visible",
        include_str!("migrations/sqlite/012_fts_visible.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(&str, &str)] = &[
    ("001_init", include_str!("migrations/postgres/001_init.sql")),
    (
        "002_social",
        include_str!("migrations/postgres/002_social.sql"),
    ),
    (
        "003_cluster",
        include_str!("migrations/postgres/003_cluster.sql"),
    ),
    (
        "005_owner_sessions",
        include_str!("migrations/postgres/005_owner_sessions.sql"),
    ),
    (
        "006_holds",
        include_str!("migrations/postgres/006_holds.sql"),
    ),
    (
        "007_tombstones",
        include_str!("migrations/postgres/007_tombstones.sql"),
    ),
    (
        "009_leaks",
        include_str!("migrations/postgres/009_leaks.sql"),
    ),
    (
        "011_vectors",
        include_str!("migrations/postgres/011_vectors.sql"),
    ),
];

/// Set on every SQLite connection. The page size applies only while the file is still empty
/// (a file made before keeps its own, 4,096 bytes) and must come before WAL mode, which fixes
/// it. Each commit writes every page it dirtied whole to the WAL, and a post dirties ~18 (the
/// row and its four indexes, the full-text index, the event, the counters): 72.6 KiB of WAL
/// per post at 4,096-byte pages, 41.2 at 2,048, 23.7 at 1,024. In `carapace bench`'s
/// fan-out, 5 interleaved pairs: 4,096 -> 2,048 raised deliveries/s by ~12% (the post's store
/// round trip is on every event's path); 1,024 gained less than 2,048 in 2 pairs.
///
/// The automatic checkpoint moves from 1,000 to 20,000 frames: `checkpoint` does the copying
/// off the write path (see there).
const SQLITE_PRAGMAS: &str = "PRAGMA page_size=2048; PRAGMA journal_mode=WAL; \
    PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000; \
    PRAGMA wal_autocheckpoint=20000;";

impl Store {
    /// Connects to `url` (`sqlite://...` or `postgres://...`) and applies pending migrations.
    pub async fn connect(url: &str) -> StoreResult<Store> {
        sqlx::any::install_default_drivers();
        let store = if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            private_sqlite_files(path)?;
            let url = format!("sqlite://{path}?mode=rwc");
            let opts = || {
                AnyPoolOptions::new()
                    .acquire_timeout(Duration::from_secs(10))
                    // A local file cannot drop the connection under us, and a liveness ping
                    // before each checkout would add a statement to every one a post runs.
                    .test_before_acquire(false)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(SQLITE_PRAGMAS).await?;
                            Ok(())
                        })
                    })
            };
            let write = opts().max_connections(1).connect(&url).await?;
            let read = opts().max_connections(8).connect(&url).await?;
            checkpoint::spawn(read.clone());
            Store {
                read,
                write,
                dialect: Dialect::Sqlite,
                known_topics: Arc::default(),
            }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = AnyPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(3))
                .connect(url)
                .await?;
            Store {
                read: pool.clone(),
                write: pool,
                dialect: Dialect::Postgres,
                known_topics: Arc::default(),
            }
        } else {
            return Err(StoreError::Database(
                "database URL must start with sqlite:// or postgres://".into(),
            ));
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    async fn migrate(&self) -> StoreResult<()> {
        let migrations = match self.dialect {
            Dialect::Sqlite => SQLITE_MIGRATIONS,
            Dialect::Postgres => POSTGRES_MIGRATIONS,
        };
        let mut tx = self.write.begin().await?;
        if self.dialect == Dialect::Postgres {
            // Replicas starting together must not apply the same migration twice.
            tx.execute("SELECT pg_advisory_xact_lock(7261000)").await?;
        }
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await?;
        for (name, sql) in migrations {
            let done: Option<AnyRow> =
                sqlx::query("SELECT name FROM schema_migrations WHERE name = $1")
                    .bind(*name)
                    .fetch_optional(&mut *tx)
                    .await?;
            if done.is_some() {
                continue;
            }
            tx.execute(*sql).await?;
            sqlx::query("INSERT INTO schema_migrations (name, applied_at) VALUES ($1, $2)")
                .bind(*name)
                .bind(crate::clock::now_ms())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Starts an atomic write.
    pub async fn begin(&self) -> StoreResult<WriteTx> {
        Ok(WriteTx {
            tx: self.write.begin().await?,
            dialect: self.dialect,
            audit_head: None,
        })
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").fetch_one(&self.read).await.is_ok()
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

/// The database file is made 0600 before SQLite opens it, in a dir made 0700: SQLite gives
/// the `-wal` and `-shm` files it creates the database file's mode, so all three stay the
/// owner's whatever the umask (its own default would be 0644). Older files are tightened.
fn private_sqlite_files(path: &str) -> StoreResult<()> {
    if path.is_empty() || path.starts_with(':') {
        return Ok(());
    }
    let fail = |what: &std::path::Path, e: std::io::Error| {
        StoreError::Unavailable(format!("cannot create {}: {e}", what.display()))
    };
    let file = std::path::Path::new(path);
    if let Some(parent) = file.parent()
        && !parent.as_os_str().is_empty()
    {
        crate::private_fs::private_dir(parent).map_err(|e| fail(parent, e))?;
    }
    crate::private_fs::private_file(file).map_err(|e| fail(file, e))?;
    for suffix in ["-wal", "-shm"] {
        let side = std::path::PathBuf::from(format!("{path}{suffix}"));
        crate::private_fs::tighten(&side, 0o600).map_err(|e| fail(&side, e))?;
    }
    Ok(())
}

/// One atomic write: everything done through it commits or rolls back together.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    dialect: Dialect,
    /// The audit row this write appended, if any: logged once it is committed.
    audit_head: Option<(i64, String)>,
}

impl WriteTx {
    pub async fn commit(self) -> StoreResult<()> {
        self.tx.commit().await?;
        // The chain's head, for logs shipped off the machine: a copy of the newest (id, hash)
        // that someone able to write the database cannot take back, which is what makes
        // rows cut off the end detectable (`carapace admin audit verify --head`).
        if let Some((id, hash)) = self.audit_head {
            tracing::info!(target: "carapace::audit", audit_id = id, audit_hash = %hash, "audit head");
        }
        Ok(())
    }
}

/// Reads an optional i64 column; `Any` reports SQL NULL as an error on plain `get`.
pub(crate) fn opt_i64(row: &AnyRow, col: &str) -> Option<i64> {
    row.try_get::<Option<i64>, _>(col).ok().flatten()
}

pub(crate) fn opt_str(row: &AnyRow, col: &str) -> Option<String> {
    row.try_get::<Option<String>, _>(col).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::sqlite_passing;

    #[test]
    fn sqlite_full_io_and_busy_are_passing_and_statement_faults_are_not() {
        // SQLITE_FULL, SQLITE_IOERR_WRITE, SQLITE_CANTOPEN, SQLITE_BUSY_SNAPSHOT, SQLITE_NOMEM.
        for c in ["13", "778", "14", "517", "7", "5", "6"] {
            assert!(sqlite_passing(Some(c)), "{c}");
        }
        // SQLITE_ERROR, SQLITE_CONSTRAINT_CHECK, SQLITE_CORRUPT, no code.
        for c in [Some("1"), Some("275"), Some("11"), Some("x"), None] {
            assert!(!sqlite_passing(c), "{c:?}");
        }
    }
}
