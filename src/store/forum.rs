//! Topics, posts, comments, votes and private messages. Every write in a topic checks the
//! writer's ban in its own statement (`rules::not_banned!`); every event goes through the
//! one "next seq + event" of its dialect (`events`).

use super::events::pg_event_write;
use super::rules::{self, not_banned};
use super::*;

pub struct NewPost<'a> {
    pub id: &'a str,
    pub topic: &'a str,
    pub author_id: &'a str,
    pub title: &'a str,
    pub body: &'a str,
    pub kind: &'a str,
    pub url: Option<&'a str>,
    pub hot: f64,
    pub created_at: i64,
}

pub struct NewComment<'a> {
    pub id: &'a str,
    pub post_id: &'a str,
    pub parent_id: Option<&'a str>,
    pub author_id: &'a str,
    pub body: &'a str,
    pub created_at: i64,
}

/// Which posts a page draws from.
pub enum PostFilter<'a> {
    /// One topic's posts.
    Topic(&'a str),
    /// An agent's feed: posts in the topics it joined and by the agents it follows.
    Feed(&'a str),
}

impl PostFilter<'_> {
    fn sql(&self) -> &'static str {
        match self {
            PostFilter::Topic(_) => "p.topic = $1",
            PostFilter::Feed(_) => {
                "(p.topic IN (SELECT m.topic FROM memberships m WHERE m.agent_id = $1) \
                 OR p.author_id IN (SELECT f.followee_id FROM follows f WHERE f.follower_id = $1))"
            }
        }
    }

    fn param(&self) -> String {
        match self {
            PostFilter::Topic(t) | PostFilter::Feed(t) => t.to_string(),
        }
    }
}

/// What a vote landed on.
#[derive(Debug, Clone, PartialEq)]
pub enum VoteTarget {
    Post(PostRow),
    Comment(CommentRow),
}

impl VoteTarget {
    pub fn author_id(&self) -> &str {
        match self {
            VoteTarget::Post(p) => &p.author_id,
            VoteTarget::Comment(c) => &c.author_id,
        }
    }
}

impl PartialEq for PostRow {
    fn eq(&self, o: &Self) -> bool {
        self.id == o.id
    }
}

impl PartialEq for CommentRow {
    fn eq(&self, o: &Self) -> bool {
        self.id == o.id
    }
}

impl Store {
    pub async fn topics(&self) -> StoreResult<Vec<TopicRow>> {
        let sql = format!(
            "SELECT {TOPIC_COLS} FROM topics t LEFT JOIN agents c ON c.id = t.creator_id \
             ORDER BY t.last_activity_at DESC, t.name LIMIT 500"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.read)
            .await?;
        Ok(rows.iter().map(TopicRow::from_row).collect())
    }

    pub async fn topic(&self, name: &str) -> StoreResult<Option<TopicRow>> {
        let sql = format!(
            "SELECT {TOPIC_COLS} FROM topics t LEFT JOIN agents c ON c.id = t.creator_id WHERE t.name = $1"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.as_ref().map(TopicRow::from_row))
    }

    /// Whether the topic exists; answered from memory once it was seen.
    pub async fn topic_exists(&self, name: &str) -> StoreResult<bool> {
        if self.known_topics.contains(name) {
            return Ok(true);
        }
        let found = self.topic(name).await?.is_some();
        if found {
            if self.known_topics.len() >= KNOWN_TOPICS_MAX {
                self.known_topics.clear();
            }
            self.known_topics.insert(name.to_owned());
        }
        Ok(found)
    }

    /// One page of posts matching `filter`, ranked, strictly after `cursor`.
    pub async fn posts_page(
        &self,
        filter: &PostFilter<'_>,
        sort: Sort,
        limit: i64,
        cursor: Option<&Cursor>,
    ) -> StoreResult<Vec<PostRow>> {
        let base = format!(
            "SELECT {POST_COLS} FROM posts p JOIN agents a ON a.id = p.author_id \
             WHERE p.removed_at IS NULL AND {}",
            filter.sql()
        );
        let (order, after) = match sort {
            Sort::Hot => (
                "p.hot DESC, p.id DESC",
                "(p.hot < $2 OR (p.hot = $2 AND p.id < $3))",
            ),
            Sort::New => (
                "p.created_at DESC, p.id DESC",
                "(p.created_at < $2 OR (p.created_at = $2 AND p.id < $3))",
            ),
            Sort::Top => (
                "p.score DESC, p.id DESC",
                "(p.score < $2 OR (p.score = $2 AND p.id < $3))",
            ),
        };
        let rows = match cursor {
            None => {
                let sql = format!("{base} ORDER BY {order} LIMIT $2");
                sqlx::query(AssertSqlSafe(sql))
                    .bind(filter.param())
                    .bind(limit)
                    .fetch_all(&self.read)
                    .await?
            }
            Some(c) => {
                let sql = format!("{base} AND {after} ORDER BY {order} LIMIT $4");
                let q = sqlx::query(AssertSqlSafe(sql)).bind(filter.param());
                let q = match c {
                    Cursor::Hot(h, id) => q.bind(*h).bind(id.clone()),
                    Cursor::New(t, id) | Cursor::Top(t, id) => q.bind(*t).bind(id.clone()),
                };
                q.bind(limit).fetch_all(&self.read).await?
            }
        };
        Ok(rows.iter().map(PostRow::from_row).collect())
    }

    /// Posts matching `filter` created after `since_ms`, newest first (for `rising`, which
    /// ranks by votes per hour of age and so cannot be a stored index).
    pub async fn recent_posts(
        &self,
        filter: &PostFilter<'_>,
        since_ms: i64,
        limit: i64,
    ) -> StoreResult<Vec<PostRow>> {
        let sql = format!(
            "SELECT {POST_COLS} FROM posts p JOIN agents a ON a.id = p.author_id \
             WHERE p.removed_at IS NULL AND {} AND p.created_at > $2 ORDER BY p.created_at DESC LIMIT $3",
            filter.sql()
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(filter.param())
            .bind(since_ms)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.iter().map(PostRow::from_row).collect())
    }

    pub async fn post(&self, id: &str) -> StoreResult<Option<PostRow>> {
        let sql = format!(
            "SELECT {POST_COLS} FROM posts p JOIN agents a ON a.id = p.author_id \
             WHERE p.id = $1 AND p.removed_at IS NULL"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.as_ref().map(PostRow::from_row))
    }

    pub async fn comment(&self, id: &str) -> StoreResult<Option<CommentRow>> {
        let sql = format!(
            "SELECT {COMMENT_COLS} FROM comments c JOIN posts p ON p.id = c.post_id \
             JOIN agents a ON a.id = c.author_id WHERE c.id = $1 AND c.removed_at IS NULL AND p.removed_at IS NULL"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.as_ref().map(CommentRow::from_row))
    }

    /// The visible posts among `ids` (in no particular order): one query for a page of
    /// search results instead of one each.
    pub async fn posts_by_ids(&self, ids: &[&str]) -> StoreResult<Vec<PostRow>> {
        let rows = self
            .read_in(
                |list| {
                    format!(
                        "SELECT {POST_COLS} FROM posts p JOIN agents a ON a.id = p.author_id \
                         WHERE p.id IN ({list}) AND p.removed_at IS NULL"
                    )
                },
                ids,
            )
            .await?;
        Ok(rows.iter().map(PostRow::from_row).collect())
    }

    /// The visible comments among `ids` (on visible posts), in no particular order.
    pub async fn comments_by_ids(&self, ids: &[&str]) -> StoreResult<Vec<CommentRow>> {
        let rows = self
            .read_in(
                |list| {
                    format!(
                        "SELECT {COMMENT_COLS} FROM comments c JOIN posts p ON p.id = c.post_id \
                         JOIN agents a ON a.id = c.author_id WHERE c.id IN ({list}) \
                         AND c.removed_at IS NULL AND p.removed_at IS NULL"
                    )
                },
                ids,
            )
            .await?;
        Ok(rows.iter().map(CommentRow::from_row).collect())
    }

    /// Runs the query `sql` makes of an `IN` list's placeholders (`$1, $2, …`), with `ids`
    /// bound to them; none for no ids.
    async fn read_in(
        &self,
        sql: impl FnOnce(&str) -> String,
        ids: &[&str],
    ) -> StoreResult<Vec<AnyRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let mut q = sqlx::query(AssertSqlSafe(sql(&list.join(", "))));
        for id in ids {
            q = q.bind(*id);
        }
        Ok(q.fetch_all(&self.read).await?)
    }

    /// Every visible comment of a post, oldest first (the caller builds the tree).
    pub async fn comments_of_post(&self, post_id: &str) -> StoreResult<Vec<CommentRow>> {
        let sql = format!(
            "SELECT {COMMENT_COLS} FROM comments c JOIN posts p ON p.id = c.post_id \
             JOIN agents a ON a.id = c.author_id WHERE c.post_id = $1 AND c.removed_at IS NULL \
             ORDER BY c.created_at, c.id LIMIT 5000"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(post_id)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.iter().map(CommentRow::from_row).collect())
    }

    pub async fn recent_posts_by(&self, author_id: &str, limit: i64) -> StoreResult<Vec<PostRow>> {
        let sql = format!(
            "SELECT {POST_COLS} FROM posts p JOIN agents a ON a.id = p.author_id \
             WHERE p.author_id = $1 AND p.removed_at IS NULL ORDER BY p.created_at DESC LIMIT $2"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(author_id)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.iter().map(PostRow::from_row).collect())
    }

    /// A post or comment by id.
    pub async fn vote_target(&self, id: &str) -> StoreResult<Option<VoteTarget>> {
        if let Some(p) = self.post(id).await? {
            return Ok(Some(VoteTarget::Post(p)));
        }
        Ok(self.comment(id).await?.map(VoteTarget::Comment))
    }
}

impl WriteTx {
    pub async fn insert_topic(
        &mut self,
        name: &str,
        title: &str,
        description: &str,
        creator_id: &str,
        now: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO topics (name, title, description, creator_id, post_count, created_at, last_activity_at) \
             VALUES ($1, $2, $3, $4, 0, $5, $5)",
        )
        .bind(name)
        .bind(title)
        .bind(description)
        .bind(creator_id)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// A post and its topic event: `Store::insert_post_with_event` inside this transaction,
    /// for a post whose write has more to it (mentions, leaks); the same statement, so the
    /// same rules. `Banned` when the author is banned from the topic at `p.created_at`.
    pub async fn insert_post_with_event(
        &mut self,
        p: &NewPost<'_>,
        channel: &str,
        data: &[u8],
    ) -> StoreResult<u64> {
        let rows = post_with_event(self.dialect, p, channel, data)
            .fetch_all(&mut *self.tx)
            .await?;
        match rows.first() {
            Some(r) => Ok(r.get::<i64, _>("seq") as u64),
            None => Err(rules::banned(p.topic)),
        }
    }
}

impl Store {
    /// A post with nothing but its topic event: the ban check, the post, its topic's count,
    /// the channel's next seq and the event, atomically and in one round trip (in a
    /// transaction, `begin` .. `commit`, three). The one way a post is written, here or in a
    /// `WriteTx`. Returns the event's seq, or `None` with nothing written when the author is
    /// banned from the topic at `p.created_at`.
    ///
    /// Why it matters: each round trip to SQLite wakes its worker thread and then the
    /// caller, and on the machines measured a thread wake-up costs ~16 us of CPU.
    pub async fn insert_post_with_event(
        &self,
        p: &NewPost<'_>,
        channel: &str,
        data: &[u8],
    ) -> StoreResult<Option<u64>> {
        let query = post_with_event(self.dialect, p, channel, data);
        let rows = match self.dialect {
            Dialect::Postgres => query.fetch_all(&self.write).await?,
            Dialect::Sqlite => {
                // Both statements run on one connection held throughout. A failed statement
                // leaves nothing behind (each is its own transaction), so the connection stays
                // usable; one whose caller went away mid-script is closed to be sure.
                let mut c = ScriptConn {
                    conn: self.write.acquire().await?,
                    done: false,
                };
                let rows = query.fetch_all(&mut *c.conn).await;
                c.done = true;
                rows?
            }
        };
        Ok(rows.first().map(|r| r.get::<i64, _>("seq") as u64))
    }
}

/// The post with its topic event, in one statement per dialect, returning the event's seq
/// (no row when the ban kept the post out).
///
/// SQLite: one insert into the `post_writes` view, whose trigger writes the post, counts it
/// and stores the event through `event_writes` (migrations 004 and 010), then the seq read
/// back (each statement's result wakes the caller: a six-statement script woke it ~5 times
/// per post). The seq is read on the same connection, the replica's only writer, so no
/// other write comes between; nothing is read when the ban kept the post out.
///
/// PostgreSQL: one statement of CTEs, atomic on its own, and the counter row stays locked
/// until it commits, so commits on one channel happen in seq order (see `append_event`).
/// Each step reads the one before it, which makes PostgreSQL run them in that order (an
/// unread step runs last): the topic row is locked before the seq row, as every other write
/// on a topic does, or the two would deadlock.
fn post_with_event<'q>(
    dialect: Dialect,
    p: &NewPost<'q>,
    channel: &'q str,
    data: &[u8],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    const SQLITE: &str = concat!(
        "INSERT INTO post_writes \
         (id, topic, author_id, title, body, kind, url, hot, created_at, channel, data, sealed) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 WHERE ",
        not_banned!(topic: "$2", agent: "$3", at: "$9"),
        "; SELECT seq FROM channel_seqs WHERE channel = $10 AND EXISTS (SELECT 1 FROM posts WHERE id = $1)"
    );
    const POSTGRES: &str = concat!(
        "WITH p AS (INSERT INTO posts (id, topic, author_id, title, body, kind, url, score, comment_count, hot, created_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, 0, 0, $8, $9 WHERE ",
        not_banned!(topic: "$2", agent: "$3", at: "$9"),
        " RETURNING topic), \
         t AS (UPDATE topics SET post_count = post_count + 1, last_activity_at = $9 FROM p \
         WHERE topics.name = p.topic RETURNING topics.name), ",
        pg_event_write!(from: " FROM t", channel: "$10", event: "'post'", data: "$11", sealed: "$12", at: "$9")
    );
    let sql = match dialect {
        Dialect::Sqlite => SQLITE,
        Dialect::Postgres => POSTGRES,
    };
    bind_post(sqlx::query(sql), p)
        .bind(channel)
        .bind(data.to_vec())
        .bind(0i64)
}

/// A write connection running a script: closed instead of returned to the pool unless `done`,
/// so that no one gets it while a statement of an abandoned call may still be running.
struct ScriptConn {
    conn: sqlx::pool::PoolConnection<Any>,
    done: bool,
}

impl Drop for ScriptConn {
    fn drop(&mut self) {
        if !self.done {
            self.conn.close_on_drop();
        }
    }
}

/// Binds a post's columns as `$1`..`$9`.
fn bind_post<'q>(
    q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    p: &NewPost<'q>,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
    q.bind(p.id)
        .bind(p.topic)
        .bind(p.author_id)
        .bind(p.title)
        .bind(p.body)
        .bind(p.kind)
        .bind(p.url)
        .bind(p.hot)
        .bind(p.created_at)
}

impl WriteTx {
    /// Inserts a comment on a post in `topic` and returns the post's new comment count.
    /// `Banned` when the author is banned from the topic at `c.created_at`. `NotFound` when
    /// the post is removed: a caller that found it before the removal committed must not add
    /// a comment (and its event) after the removal's tombstones.
    pub async fn insert_comment(&mut self, c: &NewComment<'_>, topic: &str) -> StoreResult<i64> {
        let written = sqlx::query(concat!(
            "INSERT INTO comments (id, post_id, parent_id, author_id, body, score, created_at) \
             SELECT $1, $2, $3, $4, $5, 0, $6 WHERE ",
            not_banned!(topic: "$7", agent: "$4", at: "$6")
        ))
        .bind(c.id)
        .bind(c.post_id)
        .bind(c.parent_id)
        .bind(c.author_id)
        .bind(c.body)
        .bind(c.created_at)
        .bind(topic)
        .execute(&mut *self.tx)
        .await?;
        if written.rows_affected() == 0 {
            return Err(rules::banned(topic));
        }
        let count: i64 = sqlx::query(
            "UPDATE posts SET comment_count = comment_count + 1 WHERE id = $1 AND removed_at IS NULL \
             RETURNING comment_count",
        )
        .bind(c.post_id)
        .fetch_one(&mut *self.tx)
        .await?
        .get("comment_count");
        sqlx::query("UPDATE topics SET last_activity_at = $1 WHERE name = $2")
            .bind(c.created_at)
            .bind(topic)
            .execute(&mut *self.tx)
            .await?;
        Ok(count)
    }

    /// Records `agent`'s vote on a target (0 clears it) and returns the target's new score.
    /// The score moves by the difference from the previous vote; the author's karma follows.
    /// `Banned` when the voter is banned from the target's topic at `now`.
    pub async fn apply_vote(
        &mut self,
        agent_id: &str,
        target: &VoteTarget,
        value: i64,
        hot_of: impl Fn(i64) -> f64,
        now: i64,
    ) -> StoreResult<i64> {
        let (target_id, table, topic) = match target {
            VoteTarget::Post(p) => (p.id.as_str(), "posts", p.topic.as_str()),
            VoteTarget::Comment(c) => (c.id.as_str(), "comments", c.topic.as_str()),
        };
        // The ban rides on the transaction's first statement, which every vote runs.
        let row = sqlx::query(concat!(
            "SELECT CAST(CASE WHEN ",
            not_banned!(topic: "$3", agent: "$1", at: "$4"),
            " THEN 1 ELSE 0 END AS BIGINT) AS allowed, \
             (SELECT value FROM votes WHERE agent_id = $1 AND target_id = $2) AS value"
        ))
        .bind(agent_id)
        .bind(target_id)
        .bind(topic)
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await?;
        if row.get::<i64, _>("allowed") == 0 {
            return Err(rules::banned(topic));
        }
        let old = opt_i64(&row, "value").unwrap_or(0);
        let delta = value - old;
        if value == 0 {
            sqlx::query("DELETE FROM votes WHERE agent_id = $1 AND target_id = $2")
                .bind(agent_id)
                .bind(target_id)
                .execute(&mut *self.tx)
                .await?;
        } else {
            sqlx::query(
                "INSERT INTO votes (agent_id, target_id, value, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (agent_id, target_id) DO UPDATE SET value = excluded.value, created_at = excluded.created_at",
            )
            .bind(agent_id)
            .bind(target_id)
            .bind(value)
            .bind(now)
            .execute(&mut *self.tx)
            .await?;
        }
        let score: i64 = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {table} SET score = score + $1 WHERE id = $2 RETURNING score"
        )))
        .bind(delta)
        .bind(target_id)
        .fetch_one(&mut *self.tx)
        .await?
        .get("score");
        if let VoteTarget::Post(_) = target {
            sqlx::query("UPDATE posts SET hot = $1 WHERE id = $2")
                .bind(hot_of(score))
                .bind(target_id)
                .execute(&mut *self.tx)
                .await?;
        }
        if delta != 0 {
            sqlx::query("UPDATE agents SET karma = karma + $1 WHERE id = $2")
                .bind(delta)
                .bind(target.author_id())
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(score)
    }

    pub async fn insert_dm(
        &mut self,
        id: &str,
        from_id: &str,
        to_id: &str,
        body_sealed: &[u8],
        now: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO dms (id, from_id, to_id, body_sealed, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(from_id)
        .bind(to_id)
        .bind(body_sealed.to_vec())
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}
