//! The per-channel event log: sequence numbers assigned inside the writing transaction (so
//! a rolled-back write leaves no hole) and the history replayed to `subscribe` with `since`.

use super::*;

impl WriteTx {
    /// Appends one event to `channel` and returns its sequence number. The counter row stays
    /// locked until commit, so commits on one channel happen in `seq` order on every backend.
    pub async fn append_event(
        &mut self,
        channel: &str,
        event: &str,
        data: &[u8],
        sealed: bool,
        now: i64,
    ) -> StoreResult<u64> {
        // One round trip: the counter bump and the row that uses it.
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "INSERT INTO channel_seqs (channel, seq) VALUES ($1, 1) \
                 ON CONFLICT (channel) DO UPDATE SET seq = channel_seqs.seq + 1; \
                 INSERT INTO events (channel, seq, event, data, sealed, created_at) \
                 SELECT $1, seq, $2, $3, $4, $5 FROM channel_seqs WHERE channel = $1 RETURNING seq"
            }
            Dialect::Postgres => {
                "WITH s AS (INSERT INTO channel_seqs (channel, seq) VALUES ($1, 1) \
                 ON CONFLICT (channel) DO UPDATE SET seq = channel_seqs.seq + 1 RETURNING seq) \
                 INSERT INTO events (channel, seq, event, data, sealed, created_at) \
                 SELECT $1, s.seq, $2, $3, $4, $5 FROM s RETURNING seq"
            }
        };
        // `fetch_one` stops after the first statement on SQLite; the row comes from the last.
        let rows = sqlx::query(sql)
            .bind(channel)
            .bind(event)
            .bind(data.to_vec())
            .bind(sealed as i64)
            .bind(now)
            .fetch_all(&mut *self.tx)
            .await?;
        let seq: i64 = rows.first().ok_or(StoreError::NotFound)?.get("seq");
        Ok(seq as u64)
    }
}

impl Store {
    /// Events of `channel` with seq > `since`, oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        channel: &str,
        since: u64,
        limit: i64,
    ) -> StoreResult<Vec<EventRow>> {
        let rows = sqlx::query(
            "SELECT channel, seq, event, data, sealed FROM events WHERE channel = $1 AND seq > $2 \
             ORDER BY seq LIMIT $3",
        )
        .bind(channel)
        .bind(since as i64)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.iter().map(EventRow::from_row).collect())
    }

    /// The channel's last assigned seq (0 if none).
    pub async fn last_seq(&self, channel: &str) -> StoreResult<u64> {
        let row = sqlx::query("SELECT seq FROM channel_seqs WHERE channel = $1")
            .bind(channel)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| r.get::<i64, _>("seq") as u64).unwrap_or(0))
    }

    /// The oldest seq still kept for the channel, if any.
    pub async fn first_seq(&self, channel: &str) -> StoreResult<Option<u64>> {
        let row = sqlx::query("SELECT MIN(seq) AS s FROM events WHERE channel = $1")
            .bind(channel)
            .fetch_one(&self.read)
            .await?;
        Ok(opt_i64(&row, "s").map(|s| s as u64))
    }

    /// Drops history that is both beyond the last `keep` events of its channel and older
    /// than `cutoff_ms`; returns how many rows went.
    pub async fn prune_events(&self, keep: i64, cutoff_ms: i64) -> StoreResult<u64> {
        let r = sqlx::query(
            "DELETE FROM events WHERE created_at < $1 AND seq <= \
             (SELECT s.seq FROM channel_seqs s WHERE s.channel = events.channel) - $2",
        )
        .bind(cutoff_ms)
        .bind(keep)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected())
    }
}
