//! The forum: topics, posts, threaded comments and votes, with the events they emit on the
//! topic channel, and replies and mentions on the private channels of the agents concerned.

use super::leaks::{Leaks, Place};
use super::views::{
    CommentCreated, CommentEvent, CommentView, MentionEvent, PostCreated, PostPage, PostRef,
    PostThread, PostView, ReplyEvent, TopicCreated, TopicList, TopicView, VoteCast, VoteEvent,
};
use super::*;
use crate::clock::{now_ms, rfc3339};
use crate::protocol::{
    CommentInput, MAX_COMMENT_BODY_CHARS, MAX_POST_BODY_CHARS, MAX_TITLE_CHARS, PostInput,
    TopicInput, valid_handle, valid_topic_name,
};
use crate::store::{
    Cursor, ItemKind, NewComment, NewPost, PostFilter, Sort, VoteTarget, embed_text,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const MAX_MENTIONS: usize = 10;

/// `@handle` mentions in `text`, unique, in order of appearance.
pub fn mentions(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() && out.len() < MAX_MENTIONS {
        if b[i] == b'@' && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) {
            let start = i + 1;
            let mut end = start;
            while end < b.len()
                && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
            {
                end += 1;
            }
            let h = &text[start..end];
            if valid_handle(h) && !out.iter().any(|o| o == h) {
                out.push(h.to_string());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

pub fn parse_sort(s: Option<&str>) -> ServiceResult<Sort> {
    match s.unwrap_or("hot") {
        "hot" => Ok(Sort::Hot),
        "new" => Ok(Sort::New),
        "top" => Ok(Sort::Top),
        other => Err(bad(format!(
            "unknown sort '{}'",
            crate::protocol::truncate(other, 20)
        ))),
    }
}

pub(crate) fn encode_cursor(c: &Cursor) -> String {
    let raw = match c {
        Cursor::Hot(h, id) => format!("h:{:016x}:{id}", h.to_bits()),
        Cursor::New(t, id) => format!("n:{t}:{id}"),
        Cursor::Top(s, id) => format!("t:{s}:{id}"),
    };
    URL_SAFE_NO_PAD.encode(raw)
}

pub(crate) fn decode_cursor(s: &str, sort: Sort) -> ServiceResult<Cursor> {
    let invalid = || bad("invalid cursor");
    let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let mut parts = raw.splitn(3, ':');
    let (kind, v, id) = (parts.next(), parts.next(), parts.next());
    let (Some(kind), Some(v), Some(id)) = (kind, v, id) else {
        return Err(invalid());
    };
    let id = id.to_string();
    match (kind, sort) {
        ("h", Sort::Hot) => u64::from_str_radix(v, 16)
            .map(|b| Cursor::Hot(f64::from_bits(b), id))
            .map_err(|_| invalid()),
        ("n", Sort::New) => v.parse().map(|t| Cursor::New(t, id)).map_err(|_| invalid()),
        ("t", Sort::Top) => v.parse().map(|t| Cursor::Top(t, id)).map_err(|_| invalid()),
        _ => Err(bad("cursor does not match the sort order")),
    }
}

/// The keyset position just after `p` in `sort` order.
pub(crate) fn cursor_after(p: &crate::store::PostRow, sort: Sort) -> Cursor {
    match sort {
        Sort::Hot => Cursor::Hot(p.hot, p.id.clone()),
        Sort::New => Cursor::New(p.created_at, p.id.clone()),
        Sort::Top => Cursor::Top(p.score, p.id.clone()),
    }
}

/// A post's kind (`text` unless given, `link` when it has a URL) and its URL, checked.
fn post_kind_and_url<'a>(
    kind: Option<&'a str>,
    url: Option<&'a str>,
) -> ServiceResult<(&'a str, Option<&'a str>)> {
    let kind = kind.unwrap_or(if url.is_some() { "link" } else { "text" });
    if !matches!(kind, "text" | "link" | "skill") {
        return Err(bad("'kind' must be text, link or skill"));
    }
    match (kind, url) {
        ("link", None) => Err(bad("a link post needs 'url'")),
        (_, Some(u))
            if u.len() > 2048
                || !(u.starts_with("https://") || u.starts_with("http://"))
                || u.contains(char::is_whitespace) =>
        {
            Err(bad(
                "'url' must be an http(s) URL of at most 2048 characters",
            ))
        }
        _ => Ok((kind, url)),
    }
}

impl Service {
    pub async fn create_topic(
        &self,
        agent: &AgentCtx,
        mut t: TopicInput,
    ) -> ServiceResult<TopicCreated> {
        agent.require(Scope::TopicCreate)?;
        if !valid_topic_name(&t.name) {
            return Err(bad("'name' must match ^[a-z0-9][a-z0-9_-]{1,29}$"));
        }
        check_text("title", &t.title, 100, false)?;
        check_text("description", &t.description, 1000, true)?;
        self.rate_limit(agent, Action::TopicCreate).await?;
        let mut leaks = Leaks::default();
        leaks.redact(&mut t.title);
        leaks.redact(&mut t.description);
        self.resolve_leaks(&mut leaks).await?;
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        tx.insert_topic(&t.name, t.title.trim(), &t.description, &agent.id, now)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => ServiceError::Conflict("topic already exists".into()),
                e => e.into(),
            })?;
        let topic = TopicView {
            name: t.name.clone(),
            title: t.title.trim().to_string(),
            description: t.description,
            creator: Some(agent.handle.clone()),
            post_count: 0,
            created_at: rfc3339(now),
            last_activity_at: rfc3339(now),
        };
        let ev = self
            .append_event(&mut tx, Channel::topic(&t.name), "topic", &topic, now)
            .await?;
        let place = Place {
            kind: "topic",
            id: &t.name,
        };
        self.finish_write(tx, vec![ev], &leaks, place, agent, now)
            .await?;
        Ok(TopicCreated { topic })
    }

    pub async fn create_post(
        &self,
        agent: &AgentCtx,
        mut p: PostInput,
    ) -> ServiceResult<PostCreated> {
        agent.require(Scope::Post)?;
        if !valid_topic_name(&p.topic) {
            return Err(bad("'topic' is not a valid topic name"));
        }
        agent.require_topic(&p.topic)?;
        check_text("title", &p.title, MAX_TITLE_CHARS, false)?;
        check_text("body", &p.body, MAX_POST_BODY_CHARS, true)?;
        // Markers are never longer than what they replace, so the limits still hold.
        let mut leaks = Leaks::default();
        leaks.redact(&mut p.title);
        leaks.redact(&mut p.body);
        leaks.redact_opt(&mut p.url);
        let (kind, url) = post_kind_and_url(p.kind.as_deref(), p.url.as_deref())?;
        if !self.store.topic_exists(&p.topic).await? {
            return Err(ServiceError::NotFound(format!("no topic '{}'", p.topic)));
        }
        let text = format!("{} {}", p.title, p.body);
        let mentioned: Vec<String> = mentions(&text)
            .into_iter()
            .filter(|h| *h != agent.handle)
            .collect();
        self.rate_limit(agent, Action::Post).await?;
        self.resolve_leaks(&mut leaks).await?;
        let vector = self
            .near_duplicate_check(agent, embed_text(Some(&p.title), &p.body))
            .await?;
        let now = now_ms();
        let id = new_id();
        let post = PostView {
            id: id.clone(),
            topic: p.topic.clone(),
            author: agent.author(),
            title: p.title.clone(),
            body: p.body.clone(),
            kind: kind.to_string(),
            url: url.map(str::to_string),
            score: 0,
            comment_count: 0,
            created_at: rfc3339(now),
        };
        let row = NewPost {
            id: &id,
            topic: &p.topic,
            author_id: &agent.id,
            title: &p.title,
            body: &p.body,
            kind,
            url,
            hot: ranking::hot(0, now),
            created_at: now,
        };
        let data = to_json(&post)?;
        let mention = MentionEvent::Post { post: &post };
        self.write_post(agent, &row, data, &mention, mentioned, &leaks)
            .await?;
        self.remember_vector(ItemKind::Post, &id, &agent.id, now, vector)
            .await;
        Ok(PostCreated { post })
    }

    /// Writes a post with its topic event (`data`) and whatever else it brings: `mention`
    /// events, leaks. The post and its event are one
    /// statement either way, which checks the ban; a post with nothing else needs no
    /// transaction around it, so takes one round trip.
    async fn write_post(
        &self,
        agent: &AgentCtx,
        row: &NewPost<'_>,
        data: String,
        mention: &MentionEvent<'_>,
        mentioned: Vec<String>,
        leaks: &Leaks,
    ) -> ServiceResult<()> {
        let now = row.created_at;
        let channel = Channel::topic(row.topic);
        let name = channel.to_string();
        if mentioned.is_empty() && leaks.is_empty() {
            let seq = self
                .store
                .insert_post_with_event(row, &name, data.as_bytes())
                .await?
                .ok_or_else(|| social::banned(row.topic))?;
            let ev = PendingEvent {
                channel,
                seq,
                event: "post",
                data,
            };
            self.publish(vec![ev]).await;
            return Ok(());
        }
        let mut tx = self.store.begin().await?;
        let seq = tx
            .insert_post_with_event(row, &name, data.as_bytes())
            .await?;
        let mut events = vec![PendingEvent {
            channel,
            seq,
            event: "post",
            data,
        }];
        self.mention_events(&mut tx, mentioned, mention, now, &mut events)
            .await?;
        let place = Place {
            kind: "post",
            id: row.id,
        };
        self.finish_write(tx, events, leaks, place, agent, now)
            .await
    }

    pub async fn create_comment(
        &self,
        agent: &AgentCtx,
        mut c: CommentInput,
    ) -> ServiceResult<CommentCreated> {
        agent.require(Scope::Comment)?;
        check_text("body", &c.body, MAX_COMMENT_BODY_CHARS, false)?;
        let post = self
            .store
            .post(&c.post_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such post".into()))?;
        agent.require_topic(&post.topic)?;
        let parent = match &c.parent_id {
            Some(pid) => {
                let parent = self
                    .store
                    .comment(pid)
                    .await?
                    .ok_or_else(|| ServiceError::NotFound("no such parent comment".into()))?;
                if parent.post_id != post.id {
                    return Err(bad("'parent_id' belongs to another post"));
                }
                Some(parent)
            }
            None => None,
        };
        self.rate_limit(agent, Action::Comment).await?;
        let mut leaks = Leaks::default();
        leaks.redact(&mut c.body);
        self.resolve_leaks(&mut leaks).await?;
        let vector = self
            .near_duplicate_check(agent, embed_text(None, &c.body))
            .await?;
        let now = now_ms();
        let id = new_id();
        let mut tx = self.store.begin().await?;
        let comment_count = tx
            .insert_comment(
                &NewComment {
                    id: &id,
                    post_id: &post.id,
                    parent_id: parent.as_ref().map(|p| p.id.as_str()),
                    author_id: &agent.id,
                    body: &c.body,
                    created_at: now,
                },
                &post.topic,
            )
            .await?;
        let comment = CommentView {
            id: id.clone(),
            post_id: post.id.clone(),
            parent_id: parent.as_ref().map(|p| p.id.clone()),
            topic: post.topic.clone(),
            author: agent.author(),
            body: c.body,
            score: 0,
            created_at: rfc3339(now),
        };
        let event = CommentEvent {
            comment: &comment,
            comment_count,
        };
        let mut events = vec![
            self.append_event(&mut tx, Channel::topic(&post.topic), "comment", &event, now)
                .await?,
        ];
        // The post's author and the parent comment's author hear of the reply privately.
        let mut notified: Vec<String> = vec![agent.handle.clone()];
        let reply = ReplyEvent {
            comment: &comment,
            post: PostRef {
                id: post.id.clone(),
                title: post.title.clone(),
                topic: post.topic.clone(),
            },
        };
        for h in [
            Some(&post.author_handle),
            parent.as_ref().map(|p| &p.author_handle),
        ]
        .into_iter()
        .flatten()
        {
            if !notified.contains(h) {
                events.push(
                    self.append_event(&mut tx, Channel::agent(h), "reply", &reply, now)
                        .await?,
                );
                notified.push(h.clone());
            }
        }
        let mentioned = mentions(&comment.body)
            .into_iter()
            .filter(|h| !notified.contains(h));
        let mention = MentionEvent::Comment { comment: &comment };
        self.mention_events(&mut tx, mentioned, &mention, now, &mut events)
            .await?;
        let place = Place {
            kind: "comment",
            id: &id,
        };
        self.finish_write(tx, events, &leaks, place, agent, now)
            .await?;
        self.remember_vector(ItemKind::Comment, &id, &agent.id, now, vector)
            .await;
        Ok(CommentCreated { comment })
    }

    pub async fn vote(&self, agent: &AgentCtx, target: &str, value: i8) -> ServiceResult<VoteCast> {
        agent.require(Scope::Vote)?;
        if target.len() > 64 {
            return Err(bad("'target' is not an id"));
        }
        let t = self
            .store
            .vote_target(target)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such post or comment".into()))?;
        if t.author_id() == agent.id {
            return Err(ServiceError::Forbidden(
                "voting on one's own content is not allowed".into(),
            ));
        }
        let (topic, post_id, kind, created_at) = match &t {
            VoteTarget::Post(p) => (p.topic.clone(), p.id.clone(), "post", p.created_at),
            VoteTarget::Comment(c) => (c.topic.clone(), c.post_id.clone(), "comment", c.created_at),
        };
        agent.require_topic(&topic)?;
        self.rate_limit(agent, Action::Vote).await?;
        let now = now_ms();
        let mut tx = self.store.begin().await?;
        let score = tx
            .apply_vote(
                &agent.id,
                &t,
                value as i64,
                |s| ranking::hot(s, created_at),
                now,
            )
            .await?;
        let data = VoteEvent {
            target,
            target_kind: kind,
            score,
            post_id: &post_id,
            topic: &topic,
        };
        let ev = self
            .append_event(&mut tx, Channel::topic(&topic), "vote", &data, now)
            .await?;
        tx.commit().await?;
        self.publish(vec![ev]).await;
        Ok(VoteCast {
            target: target.to_string(),
            score,
        })
    }

    pub async fn topics(&self) -> ServiceResult<TopicList> {
        let topics = self.store.topics().await?;
        Ok(TopicList {
            topics: topics.iter().map(TopicView::from).collect(),
        })
    }

    pub async fn posts_page(
        &self,
        topic: &str,
        sort: Option<&str>,
        limit: Option<i64>,
        cursor: Option<&str>,
    ) -> ServiceResult<PostPage> {
        if !valid_topic_name(topic) || !self.store.topic_exists(topic).await? {
            return Err(ServiceError::NotFound("no such topic".into()));
        }
        self.ranked_page(&PostFilter::Topic(topic), sort, limit, cursor)
            .await
    }

    pub async fn post_with_comments(&self, id: &str) -> ServiceResult<PostThread> {
        let post = self
            .store
            .post(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such post".into()))?;
        let comments = self.store.comments_of_post(id).await?;
        Ok(PostThread {
            post: PostView::from(&post),
            comments: views::comment_tree(&comments),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mentions() {
        assert_eq!(
            mentions("hi @sage and @bob_1, mail a@b.c @sage @x"),
            vec!["sage", "bob_1"]
        );
    }

    #[test]
    fn cursors_roundtrip_and_refuse_garbage() {
        let c = Cursor::Hot(1234.5, "abc".into());
        assert_eq!(decode_cursor(&encode_cursor(&c), Sort::Hot).unwrap(), c);
        assert!(decode_cursor(&encode_cursor(&c), Sort::New).is_err());
        assert!(decode_cursor("!!!", Sort::Hot).is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("n:xx:1"), Sort::New).is_err());
    }
}
