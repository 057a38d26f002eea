//! The private copies of removed content. A post or comment also went, sealed, to the
//! private channels of the agents it mentioned (`mention`) and of the authors it answered
//! (`reply`, which also quotes the post's title). The Store cannot open sealed events, so
//! the Service finds them (the channels of those agents, the instants the content was
//! written at), opens them, and seals a tombstone in their place, in the removal's
//! transaction.

use super::forum::mentions;
use super::*;
use crate::store::{PostRow, VoteTarget, tombstone};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashSet};

/// Where the private copies of a removed post or comment may be: the agents' channels and
/// the instants they were written at, and the id they name.
pub(super) struct Copies {
    handles: BTreeSet<String>,
    instants: Vec<i64>,
    id: String,
}

impl Service {
    /// Finds where the private copies of `target` may be; read before the removal's
    /// transaction begins, while the content is still visible.
    pub(super) async fn private_copies(&self, target: &VoteTarget) -> ServiceResult<Copies> {
        let mut handles = BTreeSet::new();
        let mut instants = Vec::new();
        let id = match target {
            VoteTarget::Post(p) => {
                handles.extend(mentions(&format!("{} {}", p.title, p.body)));
                instants.push(p.created_at);
                // Every reply in its thread quotes the post's title. The authors of the
                // thread are its parents' authors, but for parents removed before.
                let thread = self.store.comments_of_post(&p.id).await?;
                let present: HashSet<&str> = thread.iter().map(|c| c.id.as_str()).collect();
                for c in &thread {
                    handles.insert(c.author_handle.clone());
                    let gone = c.parent_id.as_deref().filter(|p| !present.contains(p));
                    self.reply_audience(p, gone, &c.body, &mut handles).await?;
                    instants.push(c.created_at);
                }
                p.id.clone()
            }
            VoteTarget::Comment(c) => {
                if let Some(p) = self.store.post(&c.post_id).await? {
                    self.reply_audience(&p, c.parent_id.as_deref(), &c.body, &mut handles)
                        .await?;
                }
                instants.push(c.created_at);
                c.id.clone()
            }
        };
        Ok(Copies {
            handles,
            instants,
            id,
        })
    }

    /// Who heard of a comment privately: the post's author, the parent's author, the agents
    /// it mentions.
    async fn reply_audience(
        &self,
        post: &PostRow,
        parent_id: Option<&str>,
        body: &str,
        handles: &mut BTreeSet<String>,
    ) -> ServiceResult<()> {
        handles.insert(post.author_handle.clone());
        if let Some(pid) = parent_id
            && let Some(h) = self.store.comment_author_handle(pid).await?
        {
            handles.insert(h);
        }
        handles.extend(mentions(body));
        Ok(())
    }

    /// Replaces each private copy naming `copies.id` with a sealed tombstone; returns how
    /// many there were.
    pub(super) async fn bury_private_copies(
        &self,
        tx: &mut WriteTx,
        copies: &Copies,
    ) -> ServiceResult<usize> {
        let mut n = 0;
        for h in &copies.handles {
            let name = Channel::agent(h).to_string();
            let context = format!("event:{name}");
            for r in tx.events_written_at(&name, &copies.instants).await? {
                if !r.sealed || !matches!(r.event.as_str(), "mention" | "reply") {
                    continue;
                }
                let data = sealed::open_string(&self.keys, &context, &r.data).map_err(|_| {
                    ServiceError::Internal(format!("cannot open event {name}#{}", r.seq))
                })?;
                let Ok(v) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                if !names(&v, &copies.id) {
                    continue;
                }
                let blob = sealed::seal(
                    &self.keys,
                    &context,
                    bury(&v, &copies.id).to_string().as_bytes(),
                );
                tx.replace_event(&name, r.seq, &blob, true).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Whether a `mention` or `reply` event's data carries the post or comment `id` (a comment
/// also carries its post).
fn names(v: &Value, id: &str) -> bool {
    let is = |x: &Value| x.as_str() == Some(id);
    is(&v["post"]["id"]) || is(&v["comment"]["id"]) || is(&v["comment"]["post_id"])
}

/// A private copy with what it carries of the removed content (`id`) reduced to tombstones:
/// the comment if it is the removed one or under the removed post, the post if it is the
/// removed one (a reply to a removed comment keeps its post, which stays). `kind` stays.
fn bury(v: &Value, id: &str) -> Value {
    let mut out = Map::new();
    for (k, x) in v.as_object().into_iter().flatten() {
        let hit = |key: &str| x[key].as_str() == Some(id);
        let kept = match k.as_str() {
            "comment" if hit("id") || hit("post_id") => tombstone(x),
            "post" if hit("id") => tombstone(x),
            "post" | "comment" | "kind" => x.clone(),
            _ => continue,
        };
        out.insert(k.clone(), kept);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn private_copies_keep_ids_only() {
        let reply = json!({"comment": {"id": "c1", "post_id": "p1", "parent_id": null,
            "topic": "t", "author": {"handle": "a"}, "body": "secret"},
            "post": {"id": "p1", "title": "secret title", "topic": "t"}});
        assert!(names(&reply, "c1") && names(&reply, "p1") && !names(&reply, "c2"));
        let c1 = json!({"id": "c1", "post_id": "p1", "parent_id": null, "topic": "t",
            "removed": true});
        assert_eq!(
            bury(&reply, "p1"),
            json!({"comment": c1, "post": {"id": "p1", "topic": "t", "removed": true}})
        );
        assert_eq!(
            bury(&reply, "c1"),
            json!({"comment": c1, "post": reply["post"]}),
            "the post of a removed comment stays"
        );
        let mention = json!({"kind": "post", "post": {"id": "p1", "title": "x", "body": "y",
            "url": "https://x", "topic": "t"}});
        assert_eq!(
            bury(&mention, "p1"),
            json!({"kind": "post", "post": {"id": "p1", "topic": "t", "removed": true}})
        );
    }
}
