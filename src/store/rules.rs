//! The write rules that depend on what the database holds, checked by the Store inside the
//! write's own statement (atomic with it, so a ban committed before the statement runs
//! refuses the write on every backend): an agent banned from a topic writes nothing there,
//! whether a post (with or without mentions), a comment or a vote. Rules that depend only on
//! the request (scopes, perimeter, text limits, rate limits) are the Service's.

use super::*;

/// The SQL condition "the agent may write in the topic at that time": no ban of it there
/// that has not run out. Each argument is SQL text (a placeholder or a column); spliced at
/// compile time into every statement that writes in a topic, on both dialects.
#[rustfmt::skip]
macro_rules! not_banned {
    (topic: $topic:literal, agent: $agent:literal, at: $at:literal) => {
        concat!(
            "NOT EXISTS (SELECT 1 FROM bans WHERE topic = ", $topic, " AND agent_id = ", $agent,
            " AND (until_at IS NULL OR until_at > ", $at, "))"
        )
    };
}
pub(super) use not_banned;

/// A write the rules refused.
pub(super) fn banned(topic: &str) -> StoreError {
    StoreError::Banned {
        topic: topic.to_owned(),
    }
}
