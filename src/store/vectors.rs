//! Sentence embeddings of posts and comments, kept for semantic search: one row per item,
//! the int8-quantized vector and its scale (`search::quantize`), written through one path
//! (`put_vectors`). What still lacks a vector is found by an anti-join against `posts` and
//! `comments` walked in id order (ids are UUIDv7, so by creation time, on the primary key).
//! Removal keeps a tombstone row (no vector) so that replicas refreshing their in-memory copy
//! by `indexed_at` drop the item too; the removal itself is written in `removal`.
//!
//! The lock that lets one replica index at a time lives here too: a PostgreSQL session-level
//! advisory lock on a connection of its own (`IndexLock`).

use super::*;
use sqlx::{AnyConnection, Connection};

/// The advisory-lock key of the indexer (the migration lock is 7261000).
const INDEXER_LOCK_KEY: i64 = 7_261_019;

/// The longest text handed to the model: MiniLM reads 256 word pieces at most, so more
/// characters would only cost tokenizer time.
pub const MAX_EMBED_CHARS: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemKind {
    Post,
    Comment,
}

impl ItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Post => "post",
            ItemKind::Comment => "comment",
        }
    }

    fn parse(s: &str) -> ItemKind {
        if s == "comment" {
            ItemKind::Comment
        } else {
            ItemKind::Post
        }
    }
}

/// A vector to store for a committed item.
#[derive(Debug, Clone)]
pub struct NewVector {
    pub item_id: String,
    pub kind: ItemKind,
    pub author_id: String,
    pub model: String,
    pub scale: f32,
    pub data: Vec<i8>,
    /// The item's creation time (the near-duplicate window looks at it).
    pub created_at: i64,
}

/// A stored vector, or the tombstone of a removed item (`removed`, empty `data`).
#[derive(Debug, Clone)]
pub struct VectorRow {
    pub item_id: String,
    pub kind: ItemKind,
    pub author_id: String,
    pub scale: f32,
    pub data: Vec<i8>,
    pub created_at: i64,
    pub indexed_at: i64,
    pub removed: bool,
}

/// A committed, visible item that has no vector under the current model yet.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingItem {
    pub id: String,
    pub kind: ItemKind,
    pub author_id: String,
    /// What is embedded: `title + "\n" + body` for a post, the body for a comment, cut to
    /// `MAX_EMBED_CHARS`.
    pub text: String,
    pub created_at: i64,
}

/// The text embedded for an item.
pub fn embed_text(title: Option<&str>, body: &str) -> String {
    let full = match title {
        Some(t) => format!("{t}\n{body}"),
        None => body.to_string(),
    };
    match full.char_indices().nth(MAX_EMBED_CHARS) {
        Some((cut, _)) => full[..cut].to_string(),
        None => full,
    }
}

fn i8s(b: Vec<u8>) -> Vec<i8> {
    b.into_iter().map(|x| x as i8).collect()
}

fn u8s(v: &[i8]) -> Vec<u8> {
    v.iter().map(|x| *x as u8).collect()
}

impl VectorRow {
    fn from_row(r: &AnyRow) -> VectorRow {
        VectorRow {
            item_id: r.get("item_id"),
            kind: ItemKind::parse(&r.get::<String, _>("kind")),
            author_id: r.get("author_id"),
            scale: r.get::<f64, _>("scale") as f32,
            data: i8s(r.get("data")),
            created_at: r.get("created_at"),
            indexed_at: r.get("indexed_at"),
            removed: r.get::<i64, _>("removed") != 0,
        }
    }
}

const VECTOR_COLS: &str = "item_id, kind, author_id, scale, data, created_at, indexed_at, removed";

/// The anti-join finding `kind`'s visible items without a vector under model `$2`.
fn pending_from(kind: ItemKind) -> &'static str {
    match kind {
        ItemKind::Post => {
            "FROM posts p WHERE p.removed_at IS NULL AND p.id > $1 \
             AND NOT EXISTS (SELECT 1 FROM vectors v WHERE v.item_id = p.id AND v.model = $2)"
        }
        ItemKind::Comment => {
            "FROM comments c JOIN posts p ON p.id = c.post_id \
             WHERE c.removed_at IS NULL AND p.removed_at IS NULL AND c.id > $1 \
             AND NOT EXISTS (SELECT 1 FROM vectors v WHERE v.item_id = c.id AND v.model = $2)"
        }
    }
}

fn item_cols(kind: ItemKind) -> &'static str {
    match kind {
        ItemKind::Post => {
            "p.id AS id, p.author_id AS author_id, p.title AS title, p.body AS body, p.created_at AS created_at"
        }
        ItemKind::Comment => {
            "c.id AS id, c.author_id AS author_id, c.body AS body, c.created_at AS created_at"
        }
    }
}

fn pending_item(kind: ItemKind, r: &AnyRow) -> PendingItem {
    let title = match kind {
        ItemKind::Post => Some(r.get::<String, _>("title")),
        ItemKind::Comment => None,
    };
    PendingItem {
        id: r.get("id"),
        kind,
        author_id: r.get("author_id"),
        text: embed_text(title.as_deref(), &r.get::<String, _>("body")),
        created_at: r.get("created_at"),
    }
}

impl Store {
    /// Stores vectors of committed items, several in one transaction; returns how many were written.
    /// A vector of an item removed meanwhile (or never committed) is not written, nor one
    /// over a tombstone.
    pub async fn put_vectors(&self, rows: &[NewVector], now: i64) -> StoreResult<usize> {
        if rows.is_empty() {
            return Ok(0);
        }
        // One row (the write path's) needs no transaction around its one statement.
        let mut tx = if rows.len() > 1 {
            Some(self.write.begin().await?)
        } else {
            None
        };
        let mut n = 0;
        for v in rows {
            let live = match v.kind {
                ItemKind::Post => {
                    "EXISTS (SELECT 1 FROM posts WHERE id = $1 AND removed_at IS NULL)"
                }
                ItemKind::Comment => {
                    "EXISTS (SELECT 1 FROM comments c JOIN posts p ON p.id = c.post_id \
                     WHERE c.id = $1 AND c.removed_at IS NULL AND p.removed_at IS NULL)"
                }
            };
            let sql = format!(
                "INSERT INTO vectors (item_id, kind, author_id, model, scale, data, created_at, indexed_at, removed) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, 0 WHERE {live} \
                 ON CONFLICT (item_id) DO UPDATE SET model = excluded.model, scale = excluded.scale, \
                 data = excluded.data, indexed_at = excluded.indexed_at WHERE vectors.removed = 0"
            );
            let q = sqlx::query(AssertSqlSafe(sql))
                .bind(&v.item_id)
                .bind(v.kind.as_str())
                .bind(&v.author_id)
                .bind(&v.model)
                .bind(v.scale as f64)
                .bind(u8s(&v.data))
                .bind(v.created_at)
                .bind(now);
            let r = match tx.as_mut() {
                Some(tx) => q.execute(&mut **tx).await?,
                None => q.execute(&self.write).await?,
            };
            n += r.rows_affected() as usize;
        }
        if let Some(tx) = tx {
            tx.commit().await?;
        }
        Ok(n)
    }

    /// Vectors and tombstones of `model` written at or after `after` (`indexed_at`, then
    /// `item_id`), oldest first: how a replica keeps its in-memory copy current.
    pub async fn vectors_since(
        &self,
        model: &str,
        after: (i64, &str),
        limit: i64,
    ) -> StoreResult<Vec<VectorRow>> {
        let sql = format!(
            "SELECT {VECTOR_COLS} FROM vectors WHERE model = $1 \
             AND (indexed_at > $2 OR (indexed_at = $2 AND item_id > $3)) \
             ORDER BY indexed_at, item_id LIMIT $4"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(model)
            .bind(after.0)
            .bind(after.1)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.iter().map(VectorRow::from_row).collect())
    }

    /// An author's newest live vectors of items created at or after `since` (the
    /// near-duplicate check).
    pub async fn recent_vectors_of(
        &self,
        author_id: &str,
        model: &str,
        since: i64,
        limit: i64,
    ) -> StoreResult<Vec<VectorRow>> {
        let sql = format!(
            "SELECT {VECTOR_COLS} FROM vectors WHERE author_id = $1 AND created_at >= $2 \
             AND model = $3 AND removed = 0 ORDER BY created_at DESC LIMIT $4"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(author_id)
            .bind(since)
            .bind(model)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.iter().map(VectorRow::from_row).collect())
    }

    /// Visible items of `kind` with ids above `after` that lack a vector under `model`, in
    /// id (so creation) order.
    pub async fn pending_items(
        &self,
        kind: ItemKind,
        model: &str,
        after: &str,
        limit: i64,
    ) -> StoreResult<Vec<PendingItem>> {
        let sql = format!(
            "SELECT {} {} ORDER BY id LIMIT $3",
            item_cols(kind),
            pending_from(kind)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(after)
            .bind(model)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.iter().map(|r| pending_item(kind, r)).collect())
    }

    /// One item to embed, if it is still visible (a retry of an item that failed).
    pub async fn item_to_embed(
        &self,
        kind: ItemKind,
        id: &str,
    ) -> StoreResult<Option<PendingItem>> {
        let sql = match kind {
            ItemKind::Post => format!(
                "SELECT {} FROM posts p WHERE p.id = $1 AND p.removed_at IS NULL",
                item_cols(kind)
            ),
            ItemKind::Comment => format!(
                "SELECT {} FROM comments c JOIN posts p ON p.id = c.post_id \
                 WHERE c.id = $1 AND c.removed_at IS NULL AND p.removed_at IS NULL",
                item_cols(kind)
            ),
        };
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| pending_item(kind, &r)))
    }

    /// How many visible posts and comments lack a vector under `model`.
    pub async fn pending_count(&self, model: &str) -> StoreResult<i64> {
        let mut total = 0;
        for kind in [ItemKind::Post, ItemKind::Comment] {
            let sql = format!("SELECT COUNT(*) AS n {}", pending_from(kind));
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind("")
                .bind(model)
                .fetch_one(&self.read)
                .await?;
            total += row.get::<i64, _>("n");
        }
        Ok(total)
    }

    /// How many items have a live vector under `model`.
    pub async fn indexed_count(&self, model: &str) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM vectors WHERE model = $1 AND removed = 0")
            .bind(model)
            .fetch_one(&self.read)
            .await?;
        Ok(row.get("n"))
    }

    /// Tries to become the one replica that indexes. PostgreSQL: a session-level advisory
    /// lock on a connection taken out of the pool, held as long as the `IndexLock` lives and
    /// its connection does (a replica that dies releases it with its session). SQLite has
    /// one replica per file: the lock is always granted.
    pub async fn try_index_lock(&self) -> StoreResult<Option<IndexLock>> {
        if self.dialect == Dialect::Sqlite {
            return Ok(Some(IndexLock { conn: None }));
        }
        let mut conn = self.read.acquire().await?.detach();
        let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1) AS got")
            .bind(INDEXER_LOCK_KEY)
            .fetch_one(&mut conn)
            .await?
            .get("got");
        if got {
            Ok(Some(IndexLock { conn: Some(conn) }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }
}

/// The indexer's lock (see `Store::try_index_lock`); dropping it closes its connection,
/// which releases the lock.
pub struct IndexLock {
    conn: Option<AnyConnection>,
}

impl IndexLock {
    /// Whether the lock is still held: its connection still answers.
    pub async fn held(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(c) => sqlx::query("SELECT 1").fetch_one(c).await.is_ok(),
        }
    }
}

impl WriteTx {
    /// Turns the vector of a removed item (and, for a post, its comments' vectors) into
    /// tombstones, in the removal's transaction.
    pub(super) async fn bury_vectors(&mut self, target: &VoteTarget, now: i64) -> StoreResult<()> {
        let sql = match target {
            VoteTarget::Post(_) => {
                "UPDATE vectors SET removed = 1, data = $1, scale = 0, indexed_at = $2 \
                 WHERE item_id = $3 OR item_id IN (SELECT id FROM comments WHERE post_id = $3)"
            }
            VoteTarget::Comment(_) => {
                "UPDATE vectors SET removed = 1, data = $1, scale = 0, indexed_at = $2 \
                 WHERE item_id = $3"
            }
        };
        let id = match target {
            VoteTarget::Post(p) => &p.id,
            VoteTarget::Comment(c) => &c.id,
        };
        sqlx::query(sql)
            .bind(Vec::<u8>::new())
            .bind(now)
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embed_text_joins_title_and_body_and_cuts_long_text() {
        assert_eq!(embed_text(Some("T"), "b"), "T\nb");
        assert_eq!(embed_text(None, "b"), "b");
        let long = "é".repeat(MAX_EMBED_CHARS + 10);
        assert_eq!(embed_text(None, &long).chars().count(), MAX_EMBED_CHARS);
    }

    #[test]
    fn bytes_round_trip_signed() {
        let v: Vec<i8> = vec![-128, -1, 0, 1, 127];
        assert_eq!(i8s(u8s(&v)), v);
    }
}
