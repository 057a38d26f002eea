//! Removal by a moderator. The post or comment is hidden from every read (its row stays, for
//! the audit) and, in the same transaction, the events that carried its text on its topic
//! channel become tombstones: same channel, same seq (a replay has no gap), but data holding
//! only the ids and `"removed": true`, so no replay from history serves the text again.
//!
//! A removed post takes its comments' events with it: every read already hides the comments
//! of a removed post, and replies often quote what they answer.
//!
//! An event is found without scanning its channel's JSON: it was written in the same
//! transaction as its post or comment, with the same `created_at`, so the candidates are the
//! channel's events of that kind written at that instant, and the one whose data names the
//! id is the one.

use super::*;
use serde_json::{Map, Value};

/// The fields of a `post` or `comment` event a tombstone keeps: ids, never text.
const TOMBSTONE_KEYS: [&str; 4] = ["id", "post_id", "parent_id", "topic"];

/// The tombstone of a `post` or `comment` event's data (or of the `post` / `comment` object
/// a private event carries): its ids and `"removed": true`; no title, body, url or author.
pub fn tombstone(data: &Value) -> Value {
    let mut out = Map::new();
    for k in TOMBSTONE_KEYS {
        if let Some(v) = data.get(k) {
            out.insert(k.to_owned(), v.clone());
        }
    }
    out.insert("removed".to_owned(), Value::Bool(true));
    Value::Object(out)
}

impl WriteTx {
    /// Hides a post or comment everywhere, keeps the counters honest, and turns the events
    /// that carried its text on `channel` (its topic's) into tombstones. Returns how many
    /// events became tombstones.
    pub async fn remove(
        &mut self,
        target: &VoteTarget,
        channel: &str,
        now: i64,
    ) -> StoreResult<usize> {
        self.bury_vectors(target, now).await?;
        match target {
            VoteTarget::Post(p) => {
                sqlx::query(
                    "UPDATE posts SET removed_at = $1 WHERE id = $2 AND removed_at IS NULL",
                )
                .bind(now)
                .bind(&p.id)
                .execute(&mut *self.tx)
                .await?;
                sqlx::query("UPDATE topics SET post_count = post_count - 1 WHERE name = $1 AND post_count > 0")
                    .bind(&p.topic)
                    .execute(&mut *self.tx)
                    .await?;
                let own = sqlx::query(
                    "SELECT seq, data FROM events WHERE channel = $1 AND event = 'post' \
                     AND sealed = 0 AND created_at = $2",
                )
                .bind(channel)
                .bind(p.created_at)
                .fetch_all(&mut *self.tx)
                .await?;
                let comments = sqlx::query(
                    "SELECT seq, data FROM events WHERE channel = $1 AND event = 'comment' \
                     AND sealed = 0 AND created_at IN (SELECT created_at FROM comments WHERE post_id = $2)",
                )
                .bind(channel)
                .bind(&p.id)
                .fetch_all(&mut *self.tx)
                .await?;
                Ok(self.bury(channel, &own, "id", &p.id).await?
                    + self.bury(channel, &comments, "post_id", &p.id).await?)
            }
            VoteTarget::Comment(c) => {
                sqlx::query(
                    "UPDATE comments SET removed_at = $1 WHERE id = $2 AND removed_at IS NULL",
                )
                .bind(now)
                .bind(&c.id)
                .execute(&mut *self.tx)
                .await?;
                sqlx::query("UPDATE posts SET comment_count = comment_count - 1 WHERE id = $1 AND comment_count > 0")
                    .bind(&c.post_id)
                    .execute(&mut *self.tx)
                    .await?;
                let own = sqlx::query(
                    "SELECT seq, data FROM events WHERE channel = $1 AND event = 'comment' \
                     AND sealed = 0 AND created_at = $2",
                )
                .bind(channel)
                .bind(c.created_at)
                .fetch_all(&mut *self.tx)
                .await?;
                self.bury(channel, &own, "id", &c.id).await
            }
        }
    }

    /// Replaces the data of each candidate event whose `key` is `id` with its tombstone.
    async fn bury(
        &mut self,
        channel: &str,
        candidates: &[AnyRow],
        key: &str,
        id: &str,
    ) -> StoreResult<usize> {
        let mut n = 0;
        for r in candidates {
            let data: Vec<u8> = r.get("data");
            let Ok(v) = serde_json::from_slice::<Value>(&data) else {
                continue;
            };
            if v.get(key).and_then(Value::as_str) != Some(id) || v.get("removed").is_some() {
                continue;
            }
            let seq: i64 = r.get("seq");
            self.replace_event(
                channel,
                seq as u64,
                tombstone(&v).to_string().as_bytes(),
                false,
            )
            .await?;
            n += 1;
        }
        Ok(n)
    }

    /// Replaces the data of one stored event, keeping its channel, seq and kind.
    pub async fn replace_event(
        &mut self,
        channel: &str,
        seq: u64,
        data: &[u8],
        sealed: bool,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE events SET data = $1, sealed = $2 WHERE channel = $3 AND seq = $4")
            .bind(data.to_vec())
            .bind(sealed as i64)
            .bind(channel)
            .bind(seq as i64)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }
}

impl WriteTx {
    /// The events of `channel` written at one of the instants `at`, oldest first: where the
    /// private copies of removed content are looked for. One scan of the channel between the
    /// first and the last instant; the rest is filtered here.
    pub async fn events_written_at(
        &mut self,
        channel: &str,
        at: &[i64],
    ) -> StoreResult<Vec<EventRow>> {
        let (Some(lo), Some(hi)) = (at.iter().min(), at.iter().max()) else {
            return Ok(Vec::new());
        };
        let at: std::collections::HashSet<i64> = at.iter().copied().collect();
        let rows = sqlx::query(
            "SELECT channel, seq, event, data, sealed, created_at FROM events \
             WHERE channel = $1 AND created_at >= $2 AND created_at <= $3 ORDER BY seq",
        )
        .bind(channel)
        .bind(lo)
        .bind(hi)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .iter()
            .filter(|r| at.contains(&r.get::<i64, _>("created_at")))
            .map(EventRow::from_row)
            .collect())
    }
}

impl Store {
    /// The handle of a comment's author, removed or not (a reply to it notified them).
    pub async fn comment_author_handle(&self, id: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query(
            "SELECT a.handle FROM comments c JOIN agents a ON a.id = c.author_id WHERE c.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| r.get("handle")))
    }
}
