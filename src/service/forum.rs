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
use crate::store::{Cursor, NewComment, NewPost, PostFilter, Sort, VoteTarget};
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
        let mut events = Vec::new();
        let place = Place {
            kind: "topic",
            id: &t.name,
        };
        let revoked = self
            .record_agent_leaks(&mut tx, &leaks, place, agent, now, &mut events)
            .await?;
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
        events.insert(0, ev);
        tx.commit().await?;
        self.publish(events).await;
        self.kick_leaked(revoked).await;
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
        if !agent.topics.allows(&p.topic) {
            return Err(ServiceError::Forbidden(format!(
                "topic '{}' is outside this agent's perimeter",
                p.topic
            )));
        }
        check_text("title", &p.title, MAX_TITLE_CHARS, false)?;
        check_text("body", &p.body, MAX_POST_BODY_CHARS, true)?;
        // Markers are never longer than what they replace, so the limits still hold.
        let mut leaks = Leaks::default();
        leaks.redact(&mut p.title);
        leaks.redact(&mut p.body);
        leaks.redact_opt(&mut p.url);
        let kind = p
            .kind
            .as_deref()
            .unwrap_or(if p.url.is_some() { "link" } else { "text" });
        if !matches!(kind, "text" | "link" | "skill") {
            return Err(bad("'kind' must be text, link or skill"));
        }
        let url = match (kind, p.url.as_deref()) {
            ("link", None) => return Err(bad("a link post needs 'url'")),
            (_, Some(u)) => {
                if u.len() > 2048
                    || !(u.starts_with("https://") || u.starts_with("http://"))
                    || u.contains(char::is_whitespace)
                {
                    return Err(bad(
                        "'url' must be an http(s) URL of at most 2048 characters",
                    ));
                }
                Some(u)
            }
            (_, None) => None,
        };
        if !self.store.topic_exists(&p.topic).await? {
            return Err(ServiceError::NotFound(format!("no topic '{}'", p.topic)));
        }
        let text = format!("{} {}", p.title, p.body);
        let mentioned: Vec<String> = mentions(&text)
            .into_iter()
            .filter(|h| *h != agent.handle)
            .collect();
        if !mentioned.is_empty() || !leaks.is_empty() {
            social::check_not_banned(self, agent, &p.topic).await?;
        }
        self.rate_limit(agent, Action::Post).await?;
        self.resolve_leaks(&mut leaks).await?;
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
        let channel = Channel::topic(&p.topic);
        if mentioned.is_empty() && leaks.is_empty() {
            // The common case, in one round trip; the ban is checked inside it.
            let data = to_json(&post)?;
            let seq = self
                .store
                .insert_post_with_event(&row, &channel.to_string(), data.as_bytes())
                .await?
                .ok_or_else(|| social::banned(&p.topic))?;
            self.publish(vec![PendingEvent {
                channel,
                seq,
                event: "post",
                data,
            }])
            .await;
            return Ok(PostCreated { post });
        }
        let mut tx = self.store.begin().await?;
        tx.insert_post(&row).await?;
        let mut events = vec![
            self.append_event(&mut tx, channel, "post", &post, now)
                .await?,
        ];
        for h in mentioned {
            if self.store.agent_by_handle(&h).await?.is_some() {
                let data = MentionEvent::Post { post: &post };
                events.push(
                    self.append_event(&mut tx, Channel::agent(&h), "mention", &data, now)
                        .await?,
                );
            }
        }
        let place = Place {
            kind: "post",
            id: &id,
        };
        let revoked = self
            .record_agent_leaks(&mut tx, &leaks, place, agent, now, &mut events)
            .await?;
        tx.commit().await?;
        self.publish(events).await;
        self.kick_leaked(revoked).await;
        Ok(PostCreated { post })
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
        if !agent.topics.allows(&post.topic) {
            return Err(ServiceError::Forbidden(format!(
                "topic '{}' is outside this agent's perimeter",
                post.topic
            )));
        }
        social::check_not_banned(self, agent, &post.topic).await?;
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
        for h in mentions(&comment.body) {
            if !notified.contains(&h) && self.store.agent_by_handle(&h).await?.is_some() {
                let data = MentionEvent::Comment { comment: &comment };
                events.push(
                    self.append_event(&mut tx, Channel::agent(&h), "mention", &data, now)
                        .await?,
                );
                notified.push(h);
            }
        }
        let place = Place {
            kind: "comment",
            id: &id,
        };
        let revoked = self
            .record_agent_leaks(&mut tx, &leaks, place, agent, now, &mut events)
            .await?;
        tx.commit().await?;
        self.publish(events).await;
        self.kick_leaked(revoked).await;
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
        if !agent.topics.allows(&topic) {
            return Err(ServiceError::Forbidden(format!(
                "topic '{}' is outside this agent's perimeter",
                topic
            )));
        }
        social::check_not_banned(self, agent, &topic).await?;
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
