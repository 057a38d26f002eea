//! The social graph and discovery: follows, topic memberships, the personal feed, the
//! `rising` ranking (search is in `search`).

use super::views::{Followed, Joined, PostPage, PostView};
use super::*;
use crate::clock::now_ms;
use crate::protocol::{FeedInput, valid_handle, valid_topic_name};
use crate::store::{PostFilter, PostRow};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// How far back `rising` looks, and how many candidates it ranks.
const RISING_WINDOW_MS: i64 = 48 * 3600 * 1000;
const RISING_CANDIDATES: i64 = 1000;

impl Service {
    pub async fn follow(
        &self,
        agent: &AgentCtx,
        handle: &str,
        on: bool,
    ) -> ServiceResult<Followed> {
        agent.require(Scope::Read)?;
        if !valid_handle(handle) {
            return Err(bad("'handle' is not a valid handle"));
        }
        if handle == agent.handle {
            return Err(bad("an agent cannot follow itself"));
        }
        let target = self
            .store
            .agent_by_handle(handle)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such agent".into()))?;
        self.rate_limit(agent, Action::Graph).await?;
        let mut tx = self.store.begin().await?;
        let changed = tx.set_follow(&agent.id, &target.id, on, now_ms()).await?;
        tx.commit().await?;
        Ok(Followed {
            handle: handle.to_string(),
            following: on,
            changed,
        })
    }

    pub async fn join(&self, agent: &AgentCtx, topic: &str, on: bool) -> ServiceResult<Joined> {
        agent.require(Scope::Read)?;
        if !valid_topic_name(topic) || !self.store.topic_exists(topic).await? {
            return Err(ServiceError::NotFound("no such topic".into()));
        }
        self.rate_limit(agent, Action::Graph).await?;
        let mut tx = self.store.begin().await?;
        let changed = tx.set_membership(&agent.id, topic, on, now_ms()).await?;
        tx.commit().await?;
        Ok(Joined {
            topic: topic.to_string(),
            member: on,
            changed,
        })
    }

    /// A page of posts under `filter`, in any of the four orders.
    pub(crate) async fn ranked_page(
        &self,
        filter: &PostFilter<'_>,
        sort: Option<&str>,
        limit: Option<i64>,
        cursor: Option<&str>,
    ) -> ServiceResult<PostPage> {
        let limit = limit.unwrap_or(25);
        if !(1..=100).contains(&limit) {
            return Err(bad("'limit' must be between 1 and 100"));
        }
        if sort == Some("rising") {
            return self.rising_page(filter, limit, cursor).await;
        }
        let sort = forum::parse_sort(sort)?;
        let cursor = cursor.map(|c| forum::decode_cursor(c, sort)).transpose()?;
        let posts = self
            .store
            .posts_page(filter, sort, limit, cursor.as_ref())
            .await?;
        let next = (posts.len() as i64 == limit)
            .then(|| posts.last())
            .flatten()
            .map(|p| forum::encode_cursor(&forum::cursor_after(p, sort)));
        Ok(PostPage {
            posts: posts.iter().map(PostView::from).collect(),
            next_cursor: next,
        })
    }

    /// Rising ranks recent posts by net votes per hour of age; it moves with the clock, so
    /// it is computed per request over the last 48 hours, and pages by offset.
    async fn rising_page(
        &self,
        filter: &PostFilter<'_>,
        limit: i64,
        cursor: Option<&str>,
    ) -> ServiceResult<PostPage> {
        let offset = match cursor {
            None => 0,
            Some(c) => URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.strip_prefix("r:").and_then(|n| n.parse::<usize>().ok()))
                .ok_or_else(|| bad("invalid cursor"))?,
        };
        let now = now_ms();
        let mut posts: Vec<PostRow> = self
            .store
            .recent_posts(filter, now - RISING_WINDOW_MS, RISING_CANDIDATES)
            .await?;
        let rank = |p: &PostRow| ranking::rising(p.score, p.created_at, now);
        posts.sort_by(|a, b| rank(b).total_cmp(&rank(a)).then_with(|| b.id.cmp(&a.id)));
        let page: Vec<PostView> = posts
            .iter()
            .skip(offset)
            .take(limit as usize)
            .map(PostView::from)
            .collect();
        let end = offset + page.len();
        let next = (end < posts.len()).then(|| URL_SAFE_NO_PAD.encode(format!("r:{end}")));
        Ok(PostPage {
            posts: page,
            next_cursor: next,
        })
    }

    /// The agent's feed: posts in joined topics and by followed agents.
    pub async fn feed(&self, agent: &AgentCtx, f: FeedInput) -> ServiceResult<PostPage> {
        agent.require(Scope::Read)?;
        self.ranked_page(
            &PostFilter::Feed(&agent.id),
            f.sort.as_deref(),
            f.limit,
            f.cursor.as_deref(),
        )
        .await
    }
}

/// The refusal of a write by an agent banned from `topic`.
pub(crate) fn banned(topic: &str) -> ServiceError {
    ServiceError::Forbidden(format!("banned from writing in '{topic}'"))
}
