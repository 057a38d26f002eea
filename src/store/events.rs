//! The per-channel event log: sequence numbers assigned inside the writing transaction (so
//! a rolled-back write leaves no hole) and the history replayed to `subscribe` with `since`.

use super::*;

/// PostgreSQL's one place for "next seq, then the event": the CTE `s` that bumps (or starts)
/// the channel's counter, and the insert of the event under the new seq, returning it. Each
/// argument is SQL text (a placeholder or a literal); `from` is the clause the counter's row
/// is selected from, so a statement can make the bump depend on its earlier steps (and run
/// after them). Spliced at compile time, so the statements stay `&'static str`.
/// SQLite's counterpart is the `event_writes` view (migration 010_event_writes).
#[rustfmt::skip]
macro_rules! pg_event_write {
    (from: $from:literal, channel: $ch:literal, event: $ev:literal, data: $data:literal,
     sealed: $sealed:literal, at: $at:literal) => {
        concat!(
            "s AS (INSERT INTO channel_seqs (channel, seq) SELECT ", $ch, ", 1", $from,
            " ON CONFLICT (channel) DO UPDATE SET seq = channel_seqs.seq + 1 RETURNING seq) ",
            "INSERT INTO events (channel, seq, event, data, sealed, created_at) ",
            "SELECT ", $ch, ", s.seq, ", $ev, ", ", $data, ", ", $sealed, ", ", $at, " FROM s RETURNING seq"
        )
    };
}
pub(super) use pg_event_write;

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
        const SQLITE: &str = "INSERT INTO event_writes (channel, event, data, sealed, created_at) \
             VALUES ($1, $2, $3, $4, $5); \
             SELECT seq FROM channel_seqs WHERE channel = $1";
        const POSTGRES: &str = concat!(
            "WITH ",
            pg_event_write!(from: "", channel: "$1", event: "$2", data: "$3", sealed: "$4", at: "$5")
        );
        let sql = match self.dialect {
            Dialect::Sqlite => SQLITE,
            Dialect::Postgres => POSTGRES,
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
