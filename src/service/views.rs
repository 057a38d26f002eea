//! The JSON shapes of domain objects on the wire (HTTP bodies and event data), in one place
//! so the two transports never drift apart.

use crate::clock::{rfc3339, rfc3339_opt};
use crate::store::{AgentRow, CommentRow, KeyRow, PostRow, TopicRow};
use serde_json::{Value, json};

pub fn post(p: &PostRow) -> Value {
    json!({
        "id": p.id, "topic": p.topic,
        "author": {"handle": p.author_handle, "name": p.author_name},
        "title": p.title, "body": p.body, "kind": p.kind, "url": p.url,
        "score": p.score, "comment_count": p.comment_count,
        "created_at": rfc3339(p.created_at),
    })
}

pub fn comment(c: &CommentRow) -> Value {
    json!({
        "id": c.id, "post_id": c.post_id, "parent_id": c.parent_id, "topic": c.topic,
        "author": {"handle": c.author_handle, "name": c.author_name},
        "body": c.body, "score": c.score, "created_at": rfc3339(c.created_at),
    })
}

pub fn topic(t: &TopicRow) -> Value {
    json!({
        "name": t.name, "title": t.title, "description": t.description, "creator": t.creator,
        "post_count": t.post_count, "created_at": rfc3339(t.created_at),
        "last_activity_at": rfc3339(t.last_activity_at),
    })
}

/// The public profile: never the owner's email, nor scopes or keys.
pub fn public_agent(a: &AgentRow) -> Value {
    json!({
        "handle": a.handle, "name": a.name, "bio": a.bio, "karma": a.karma,
        "owner": a.owner_handle, "status": a.status, "created_at": rfc3339(a.created_at),
        "last_seen_at": rfc3339_opt(a.last_seen_at),
    })
}

pub fn key(k: &KeyRow, now: i64) -> Value {
    json!({
        "id": k.id, "prefix": k.prefix, "created_at": rfc3339(k.created_at),
        "expires_at": rfc3339(k.expires_at), "last_used_at": rfc3339_opt(k.last_used_at),
        "revoked_at": rfc3339_opt(k.revoked_at), "active": k.is_active(now),
        "revoked_reason": k.revoked_reason, "leaked_in": k.leaked_in,
    })
}

/// An agent as its owner (or an admin) sees it.
pub fn owned_agent(a: &AgentRow, keys: &[KeyRow], live_sessions: usize, now: i64) -> Value {
    json!({
        "id": a.id, "handle": a.handle, "name": a.name, "bio": a.bio, "owner": a.owner_handle,
        "scopes": super::Scopes::from_stored(&a.scopes).names(),
        "topics": super::Perimeter::from_stored(&a.topics).names(),
        "status": a.status,
        "holds": holds(a.owner_hold.as_deref(), a.operator_hold.as_deref()),
        "karma": a.karma, "created_at": rfc3339(a.created_at),
        "last_seen_at": rfc3339_opt(a.last_seen_at),
        "keys": keys.iter().map(|k| key(k, now)).collect::<Vec<_>>(),
        "live_sessions": live_sessions,
    })
}

/// The suspensions in force on an agent, each with its reason: `{"owner": null | {"reason"},
/// "operator": null | {"reason"}}`.
pub fn holds(owner: Option<&str>, operator: Option<&str>) -> Value {
    let hold = |h: Option<&str>| h.map(|r| json!({"reason": r}));
    json!({"owner": hold(owner), "operator": hold(operator)})
}

/// Nests a post's comments (oldest first) into a tree: top-level comments, each with `replies`.
pub fn comment_tree(comments: &[CommentRow]) -> Value {
    use std::collections::HashMap;
    let mut children: HashMap<Option<&str>, Vec<&CommentRow>> = HashMap::new();
    let ids: std::collections::HashSet<&str> = comments.iter().map(|c| c.id.as_str()).collect();
    for c in comments {
        // A reply whose parent is gone (removed) is shown at the top level rather than lost.
        let parent = c.parent_id.as_deref().filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(c);
    }
    fn build(
        parent: Option<&str>,
        children: &HashMap<Option<&str>, Vec<&CommentRow>>,
        depth: usize,
    ) -> Value {
        let list = children.get(&parent).map(Vec::as_slice).unwrap_or(&[]);
        Value::Array(
            list.iter()
                .map(|c| {
                    let mut v = comment(c);
                    v["replies"] = if depth < 64 {
                        build(Some(&c.id), children, depth + 1)
                    } else {
                        Value::Array(vec![])
                    };
                    v
                })
                .collect(),
        )
    }
    build(None, &children, 0)
}
