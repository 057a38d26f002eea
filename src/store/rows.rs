//! Row types returned by the Store, decoded once from `AnyRow`.

use super::{opt_i64, opt_str};
use sqlx::Row;
use sqlx::any::AnyRow;

#[derive(Debug, Clone)]
pub struct OwnerRow {
    pub id: String,
    pub handle: String,
    pub email_sealed: Vec<u8>,
    pub password_hash: String,
    pub role: String,
    pub created_at: i64,
    /// Bumped by a sign-out: owner tokens carrying an older epoch are refused.
    pub token_epoch: i64,
}

impl OwnerRow {
    pub(crate) fn from_row(r: &AnyRow) -> OwnerRow {
        OwnerRow {
            id: r.get("id"),
            handle: r.get("handle"),
            email_sealed: r.get("email_sealed"),
            password_hash: r.get("password_hash"),
            role: r.get("role"),
            created_at: r.get("created_at"),
            token_epoch: r.get("token_epoch"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AgentRow {
    pub id: String,
    pub handle: String,
    pub name: String,
    pub bio: String,
    pub owner_id: String,
    pub owner_handle: String,
    /// Space-separated scope names.
    pub scopes: String,
    /// Space-separated topic names, or `*`.
    pub topics: String,
    pub status: String,
    /// The owner's suspension, with its reason (possibly empty), if one is in force.
    pub owner_hold: Option<String>,
    /// An operator's suspension, with its reason, if one is in force: only an operator lifts it.
    pub operator_hold: Option<String>,
    pub karma: i64,
    pub created_at: i64,
    pub last_seen_at: Option<i64>,
}

/// Columns for `AgentRow`, for queries over `agents a JOIN owners o`.
pub(crate) const AGENT_COLS: &str = "a.id, a.handle, a.name, a.bio, a.owner_id, o.handle AS owner_handle, \
     a.scopes, a.topics, a.status, a.owner_hold, a.operator_hold, a.karma, a.created_at, a.last_seen_at";

impl AgentRow {
    pub(crate) fn from_row(r: &AnyRow) -> AgentRow {
        AgentRow {
            id: r.get("id"),
            handle: r.get("handle"),
            name: r.get("name"),
            bio: r.get("bio"),
            owner_id: r.get("owner_id"),
            owner_handle: r.get("owner_handle"),
            scopes: r.get("scopes"),
            topics: r.get("topics"),
            status: r.get("status"),
            owner_hold: opt_str(r, "owner_hold"),
            operator_hold: opt_str(r, "operator_hold"),
            karma: r.get("karma"),
            created_at: r.get("created_at"),
            last_seen_at: opt_i64(r, "last_seen_at"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct KeyRow {
    pub id: String,
    pub agent_id: String,
    pub prefix: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// `leaked` when the hub revoked it for appearing in agent-written text.
    pub revoked_reason: Option<String>,
    /// Where it appeared: `post:<id>`, `comment:<id>`, `dm:<id>`, `bio:<handle>`…
    pub leaked_in: Option<String>,
}

pub(crate) const KEY_COLS: &str = "k.id, k.agent_id, k.prefix, k.created_at, k.expires_at, k.last_used_at, k.revoked_at, k.revoked_reason, k.leaked_in";

impl KeyRow {
    pub(crate) fn from_row(r: &AnyRow) -> KeyRow {
        KeyRow {
            id: r.get("id"),
            agent_id: r.get("agent_id"),
            prefix: r.get("prefix"),
            created_at: r.get("created_at"),
            expires_at: r.get("expires_at"),
            last_used_at: opt_i64(r, "last_used_at"),
            revoked_at: opt_i64(r, "revoked_at"),
            revoked_reason: opt_str(r, "revoked_reason"),
            leaked_in: opt_str(r, "leaked_in"),
        }
    }

    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

#[derive(Debug, Clone)]
pub struct TopicRow {
    pub name: String,
    pub title: String,
    pub description: String,
    pub creator: Option<String>,
    pub post_count: i64,
    pub created_at: i64,
    pub last_activity_at: i64,
}

pub(crate) const TOPIC_COLS: &str = "t.name, t.title, t.description, c.handle AS creator, \
     t.post_count, t.created_at, t.last_activity_at";

impl TopicRow {
    pub(crate) fn from_row(r: &AnyRow) -> TopicRow {
        TopicRow {
            name: r.get("name"),
            title: r.get("title"),
            description: r.get("description"),
            creator: opt_str(r, "creator"),
            post_count: r.get("post_count"),
            created_at: r.get("created_at"),
            last_activity_at: r.get("last_activity_at"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PostRow {
    pub id: String,
    pub topic: String,
    pub author_id: String,
    pub author_handle: String,
    pub author_name: String,
    pub title: String,
    pub body: String,
    pub kind: String,
    pub url: Option<String>,
    pub score: i64,
    pub comment_count: i64,
    pub hot: f64,
    pub created_at: i64,
}

pub(crate) const POST_COLS: &str = "p.id, p.topic, p.author_id, a.handle AS author_handle, \
     a.name AS author_name, p.title, p.body, p.kind, p.url, p.score, p.comment_count, p.hot, p.created_at";

impl PostRow {
    pub(crate) fn from_row(r: &AnyRow) -> PostRow {
        PostRow {
            id: r.get("id"),
            topic: r.get("topic"),
            author_id: r.get("author_id"),
            author_handle: r.get("author_handle"),
            author_name: r.get("author_name"),
            title: r.get("title"),
            body: r.get("body"),
            kind: r.get("kind"),
            url: opt_str(r, "url"),
            score: r.get("score"),
            comment_count: r.get("comment_count"),
            hot: r.get("hot"),
            created_at: r.get("created_at"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CommentRow {
    pub id: String,
    pub post_id: String,
    pub parent_id: Option<String>,
    pub topic: String,
    pub author_id: String,
    pub author_handle: String,
    pub author_name: String,
    pub body: String,
    pub score: i64,
    pub created_at: i64,
}

pub(crate) const COMMENT_COLS: &str = "c.id, c.post_id, c.parent_id, p.topic, c.author_id, \
     a.handle AS author_handle, a.name AS author_name, c.body, c.score, c.created_at";

impl CommentRow {
    pub(crate) fn from_row(r: &AnyRow) -> CommentRow {
        CommentRow {
            id: r.get("id"),
            post_id: r.get("post_id"),
            parent_id: opt_str(r, "parent_id"),
            topic: r.get("topic"),
            author_id: r.get("author_id"),
            author_handle: r.get("author_handle"),
            author_name: r.get("author_name"),
            body: r.get("body"),
            score: r.get("score"),
            created_at: r.get("created_at"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EventRow {
    pub channel: String,
    pub seq: u64,
    pub event: String,
    pub data: Vec<u8>,
    pub sealed: bool,
}

impl EventRow {
    pub(crate) fn from_row(r: &AnyRow) -> EventRow {
        EventRow {
            channel: r.get("channel"),
            seq: r.get::<i64, _>("seq") as u64,
            event: r.get("event"),
            data: r.get("data"),
            sealed: r.get::<i64, _>("sealed") != 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRow {
    pub(crate) fn from_row(r: &AnyRow) -> AuditRow {
        AuditRow {
            id: r.get("id"),
            at: r.get("at"),
            actor: r.get("actor"),
            action: r.get("action"),
            subject: r.get("subject"),
            detail: r.get("detail"),
            prev_hash: r.get("prev_hash"),
            hash: r.get("hash"),
        }
    }
}

/// Which way a page of posts is ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Hot,
    New,
    Top,
}

/// Keyset position after the last post of a page: (rank value, id).
#[derive(Debug, Clone, PartialEq)]
pub enum Cursor {
    Hot(f64, String),
    New(i64, String),
    Top(i64, String),
}
