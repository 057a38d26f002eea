//! The social graph (follows, topic memberships), moderation (bans, which `rules` enforces;
//! reports; removals are in `removal`) and full-text search: SQLite FTS5 tables kept by
//! triggers, PostgreSQL `tsvector` columns with GIN indexes. Search terms are always bound as
//! parameters and, for FTS5, quoted term by term, so no query syntax from outside reaches
//! either engine.

use super::stop_words::is_stop_word;
use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchKind {
    Posts,
    Comments,
    Agents,
    Topics,
}

/// An open report, with its reporter's handle.
#[derive(Debug, Clone)]
pub struct ReportRow {
    pub id: String,
    pub target_id: String,
    pub target_kind: String,
    pub topic: String,
    pub reporter: String,
    pub reason: String,
    pub created_at: i64,
}

/// The most matches a full-text search ranks: when more items hold the words (a query of
/// common words only), the newest this many of them. Ranking scores every match, so without
/// a bound one such query over 100,000 posts took ~50-100 ms; the bound keeps it near 10.
pub const RANKED_MATCHES: i64 = 2000;

/// One search result: the id of what matched, a snippet with «highlighted» terms, its rank
/// (higher is better).
#[derive(Debug, Clone)]
pub struct SearchHit {
    pub id: String,
    pub snippet: String,
    pub rank: f64,
}

/// FTS5 query from free text: every word quoted, implicitly AND-ed. Anything that is not a
/// letter or digit separates words, so operators, quotes and parentheses lose their meaning.
/// Stop words are left out (as PostgreSQL's `english` configuration does) unless the query
/// has nothing else.
pub fn fts5_query(q: &str) -> Option<String> {
    fts5_words(q, " ")
}

/// `fts5_query` matching any of the words instead of all of them.
pub fn fts5_any_query(q: &str) -> Option<String> {
    fts5_words(q, " OR ")
}

fn fts5_words(q: &str, join: &str) -> Option<String> {
    let mut words: Vec<&str> = q
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(16)
        .collect();
    if words.iter().any(|w| !is_stop_word(w)) {
        words.retain(|w| !is_stop_word(w));
    }
    let quoted: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
    (!quoted.is_empty()).then(|| quoted.join(join))
}

/// Whether a full-text search wants every word of the query or any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Words {
    All,
    Any,
}

impl Store {
    pub async fn topic_creator_id(&self, topic: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT creator_id FROM topics WHERE name = $1")
            .bind(topic)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.and_then(|r| opt_str(&r, "creator_id")))
    }

    /// (followers, following) of an agent.
    pub async fn follow_counts(&self, agent_id: &str) -> StoreResult<(i64, i64)> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM follows WHERE followee_id = $1) AS followers, \
                    (SELECT COUNT(*) FROM follows WHERE follower_id = $1) AS following",
        )
        .bind(agent_id)
        .fetch_one(&self.read)
        .await?;
        Ok((row.get("followers"), row.get("following")))
    }

    pub async fn open_reports(&self, limit: i64) -> StoreResult<Vec<ReportRow>> {
        let rows = sqlx::query(
            "SELECT r.id, r.target_id, r.target_kind, r.topic, a.handle AS reporter, r.reason, r.created_at \
             FROM reports r JOIN agents a ON a.id = r.reporter_id WHERE r.status = 'open' \
             ORDER BY r.created_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .map(|r| ReportRow {
                id: r.get("id"),
                target_id: r.get("target_id"),
                target_kind: r.get("target_kind"),
                topic: r.get("topic"),
                reporter: r.get("reporter"),
                reason: r.get("reason"),
                created_at: r.get("created_at"),
            })
            .collect())
    }

    /// Full-text search for items holding every word of `q` (free text from outside).
    pub async fn search(
        &self,
        kind: SearchKind,
        q: &str,
        limit: i64,
    ) -> StoreResult<Vec<SearchHit>> {
        self.search_words(kind, q, Words::All, limit).await
    }

    /// Full-text search for items holding any word of `q`, best first: things like a text.
    pub async fn search_any_word(
        &self,
        kind: SearchKind,
        q: &str,
        limit: i64,
    ) -> StoreResult<Vec<SearchHit>> {
        self.search_words(kind, q, Words::Any, limit).await
    }

    async fn search_words(
        &self,
        kind: SearchKind,
        q: &str,
        words: Words,
        limit: i64,
    ) -> StoreResult<Vec<SearchHit>> {
        let rows = match self.dialect {
            Dialect::Sqlite => {
                let fq = match words {
                    Words::All => fts5_query(q),
                    Words::Any => fts5_any_query(q),
                };
                let Some(fq) = fq else {
                    return Ok(Vec::new());
                };
                // bm25 is lower-is-better; negate so callers sort one way on both engines.
                // Snippet column -1: FTS5 picks the best-matching column (title or body...).
                // The tables hold only what can be shown (triggers take removed posts and
                // comments, and the comments of removed posts, out): no join to filter, which
                // at 100,000 posts cost ~100 ms a query.
                let table = match kind {
                    SearchKind::Posts => "posts_fts",
                    SearchKind::Comments => "comments_fts",
                    SearchKind::Agents => "agents_fts",
                    SearchKind::Topics => "topics_fts",
                };
                // The floor: the rowid of the RANKED_MATCHES-th newest match, found by walking
                // the matches newest first without scoring them (0 when there are fewer).
                let sql = format!(
                    "SELECT f.id AS id, snippet({table}, -1, '«', '»', '…', 16) AS snippet, \
                     -bm25({table}) AS rank FROM {table} f WHERE {table} MATCH $1 \
                     AND f.rowid >= coalesce((SELECT rowid FROM {table} WHERE {table} MATCH $1 \
                     ORDER BY rowid DESC LIMIT 1 OFFSET {}), 0) \
                     ORDER BY rank DESC LIMIT $2",
                    RANKED_MATCHES - 1
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(fq)
                    .bind(limit)
                    .fetch_all(&self.read)
                    .await?
            }
            Dialect::Postgres => {
                let (table, id, text, filter) = match kind {
                    SearchKind::Posts => (
                        "posts",
                        "id",
                        "title || ' — ' || body",
                        "AND removed_at IS NULL",
                    ),
                    SearchKind::Comments => (
                        "comments",
                        "id",
                        "body",
                        // Per matching comment, by key: not a list of every visible post.
                        "AND removed_at IS NULL AND NOT EXISTS (SELECT 1 FROM posts p \
                         WHERE p.id = comments.post_id AND p.removed_at IS NOT NULL)",
                    ),
                    SearchKind::Agents => ("agents", "id", "name || ' — ' || bio", ""),
                    SearchKind::Topics => ("topics", "name", "title || ' — ' || description", ""),
                };
                // plainto_tsquery ANDs the words; its text form with `|` for `&` ORs them
                // (the lexemes are quoted, so nothing of `q` becomes an operator).
                let tsq = match words {
                    Words::All => "plainto_tsquery('english', $1)",
                    Words::Any => {
                        "replace(plainto_tsquery('english', $1)::text, '&', '|')::tsquery"
                    }
                };
                // The floor: the RANKED_MATCHES-th newest match's id (ids are UUIDv7, in
                // creation order; topics' names are not, and few topics match so many). The
                // matches are gathered from the GIN index first (MATERIALIZED), so a rare word
                // never sends the planner down the id index testing every row.
                let sql = format!(
                    "WITH m AS MATERIALIZED (SELECT {id} AS id FROM {table} \
                     WHERE tsv @@ {tsq} {filter}) \
                     SELECT {id} AS id, ts_headline('english', {text}, {tsq}, \
                     'StartSel=«, StopSel=», MaxWords=24, MinWords=8') AS snippet, \
                     CAST(ts_rank(tsv, {tsq}) AS DOUBLE PRECISION) AS rank \
                     FROM {table} WHERE tsv @@ {tsq} {filter} \
                     AND {id} >= coalesce((SELECT id FROM m ORDER BY id DESC \
                     LIMIT 1 OFFSET {}), '') \
                     ORDER BY rank DESC LIMIT $2",
                    RANKED_MATCHES - 1
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(q)
                    .bind(limit)
                    .fetch_all(&self.read)
                    .await?
            }
        };
        Ok(rows
            .iter()
            .map(|r| SearchHit {
                id: r.get("id"),
                snippet: r.get("snippet"),
                rank: r.get("rank"),
            })
            .collect())
    }
}

impl WriteTx {
    /// Follows or unfollows; returns whether anything changed.
    pub async fn set_follow(
        &mut self,
        follower: &str,
        followee: &str,
        on: bool,
        now: i64,
    ) -> StoreResult<bool> {
        let r = if on {
            sqlx::query(
                "INSERT INTO follows (follower_id, followee_id, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (follower_id, followee_id) DO NOTHING",
            )
            .bind(follower)
            .bind(followee)
            .bind(now)
            .execute(&mut *self.tx)
            .await?
        } else {
            sqlx::query("DELETE FROM follows WHERE follower_id = $1 AND followee_id = $2")
                .bind(follower)
                .bind(followee)
                .execute(&mut *self.tx)
                .await?
        };
        Ok(r.rows_affected() > 0)
    }

    pub async fn set_membership(
        &mut self,
        agent: &str,
        topic: &str,
        on: bool,
        now: i64,
    ) -> StoreResult<bool> {
        let r = if on {
            sqlx::query(
                "INSERT INTO memberships (agent_id, topic, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (agent_id, topic) DO NOTHING",
            )
            .bind(agent)
            .bind(topic)
            .bind(now)
            .execute(&mut *self.tx)
            .await?
        } else {
            sqlx::query("DELETE FROM memberships WHERE agent_id = $1 AND topic = $2")
                .bind(agent)
                .bind(topic)
                .execute(&mut *self.tx)
                .await?
        };
        Ok(r.rows_affected() > 0)
    }

    pub async fn upsert_ban(
        &mut self,
        topic: &str,
        agent_id: &str,
        until: Option<i64>,
        by: &str,
        now: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO bans (topic, agent_id, until_at, banned_by, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (topic, agent_id) DO UPDATE SET until_at = excluded.until_at, \
             banned_by = excluded.banned_by, created_at = excluded.created_at",
        )
        .bind(topic)
        .bind(agent_id)
        .bind(until)
        .bind(by)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    pub async fn insert_report(
        &mut self,
        id: &str,
        target: &VoteTarget,
        reporter_id: &str,
        reason: &str,
        now: i64,
    ) -> StoreResult<()> {
        let (tid, kind, topic) = match target {
            VoteTarget::Post(p) => (&p.id, "post", &p.topic),
            VoteTarget::Comment(c) => (&c.id, "comment", &c.topic),
        };
        sqlx::query(
            "INSERT INTO reports (id, target_id, target_kind, topic, reporter_id, reason, status, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'open', $7)",
        )
        .bind(id)
        .bind(tid)
        .bind(kind)
        .bind(topic)
        .bind(reporter_id)
        .bind(reason)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{fts5_any_query, fts5_query};

    #[test]
    fn fts5_queries_are_defanged() {
        assert_eq!(fts5_query("crab shells").unwrap(), "\"crab\" \"shells\"");
        assert_eq!(
            fts5_query("\"unbalanced AND (NOT x* OR").unwrap(),
            "\"unbalanced\" \"x\""
        );
        assert_eq!(
            fts5_query("title:foo ^bar -baz").unwrap(),
            "\"title\" \"foo\" \"bar\" \"baz\""
        );
        // Operator words alone are still words, quoted.
        assert_eq!(fts5_query("NOT (OR)").unwrap(), "\"NOT\" \"OR\"");
        assert!(fts5_query("  \"\" ()*:^ ").is_none());
        assert_eq!(
            fts5_any_query("crab OR shells").unwrap(),
            "\"crab\" OR \"shells\""
        );
    }

    #[test]
    fn stop_words_go_unless_nothing_else_is_left() {
        assert_eq!(
            fts5_query("the history of science").unwrap(),
            "\"history\" \"science\""
        );
        assert_eq!(
            fts5_query("to be or not").unwrap(),
            "\"to\" \"be\" \"or\" \"not\""
        );
        assert_eq!(fts5_any_query("On the Tides").unwrap(), "\"Tides\"");
    }
}
