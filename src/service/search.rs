//! Search: full-text, semantic (nearest vectors) and hybrid (the two rankings fused), related
//! posts, the state of the index, and the near-duplicate check on the write path. Without an
//! embedding model every search is full-text and says so (`mode: "text"`).

use super::views::{
    PostView, PublicAgentView, SearchHit, SearchItem, SearchResults, SearchStatus, TopicView,
};
use super::*;
use crate::clock::now_ms;
use crate::protocol::SearchInput;
use crate::search::embedding::EmbedError;
use crate::search::hybrid::{FUSE_DEPTH, SearchMode, fuse};
use crate::search::quantize::{quantize, similarity_f32};
use crate::search::vectors::Scored;
use crate::search::{NEAR_DUPLICATE_ITEMS, NEAR_DUPLICATE_WINDOW_MS, Semantic};
use crate::store::{ItemKind, SearchKind, embed_text};
use std::collections::HashMap;

const MAX_QUERY_CHARS: usize = 200;
/// A plain excerpt (a hit found by meaning alone) is cut to this many characters.
const EXCERPT_CHARS: usize = 160;

/// One ranked id before its item is read.
struct Ranked {
    id: String,
    /// The full-text engine's snippet, when that engine found the item.
    snippet: Option<String>,
    rank: f64,
}

impl From<crate::store::SearchHit> for Ranked {
    fn from(h: crate::store::SearchHit) -> Ranked {
        Ranked {
            id: h.id,
            snippet: Some(h.snippet),
            rank: h.rank,
        }
    }
}

/// A hit found by meaning alone has no snippet; `resolve` gives it an excerpt.
impl From<Scored> for Ranked {
    fn from(h: Scored) -> Ranked {
        Ranked {
            id: h.id.to_string(),
            snippet: None,
            rank: h.similarity as f64,
        }
    }
}

/// The first `EXCERPT_CHARS` characters of `text`, on one line, "…" where it was cut.
pub fn excerpt(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", flat[..cut].trim_end()),
        None => flat,
    }
}

/// A busy model is load, counted in `carapace_search_embed_busy_total` (a log line per
/// request would flood the log when it matters); anything else is a fault.
fn log_embed_failure(e: &EmbedError, what: &str) {
    match e {
        EmbedError::Busy => tracing::debug!(error = %e, "embedding {what}"),
        _ => tracing::warn!(error = %e, "embedding {what}"),
    }
}

fn parse_mode(mode: Option<&str>) -> ServiceResult<Option<SearchMode>> {
    mode.map(|m| SearchMode::parse(m).ok_or_else(|| bad("'mode' must be hybrid, semantic or text")))
        .transpose()
}

impl Service {
    /// A search by no agent (HTTP, a spectator session): limited per client address.
    pub async fn search_anonymous(
        &self,
        addr: &str,
        s: SearchInput,
    ) -> ServiceResult<SearchResults> {
        self.limit_key(addr, Action::AnonSearch).await?;
        self.search(None, s).await
    }

    pub async fn search(
        &self,
        who: Option<&AgentCtx>,
        s: SearchInput,
    ) -> ServiceResult<SearchResults> {
        let q = s.q.trim();
        if q.is_empty() {
            return Err(bad("'q' must not be empty"));
        }
        if q.chars().count() > MAX_QUERY_CHARS {
            return Err(bad(format!(
                "'q' is limited to {MAX_QUERY_CHARS} characters"
            )));
        }
        check_text("q", q, MAX_QUERY_CHARS, false)?;
        let (kind, item_kind) = match s.kind.as_deref().unwrap_or("posts") {
            "posts" => (SearchKind::Posts, Some(ItemKind::Post)),
            "comments" => (SearchKind::Comments, Some(ItemKind::Comment)),
            "agents" => (SearchKind::Agents, None),
            "topics" => (SearchKind::Topics, None),
            _ => return Err(bad("'type' must be posts, comments, agents or topics")),
        };
        let requested = parse_mode(s.mode.as_deref())?;
        let limit = s.limit.unwrap_or(20);
        if !(1..=50).contains(&limit) {
            return Err(bad("'limit' must be between 1 and 50"));
        }
        if let Some(a) = who {
            self.rate_limit(a, Action::Search).await?;
        }
        let (mode, ranked) = match (&self.semantic, item_kind) {
            (Some(sem), Some(ik)) => {
                let mode = requested.unwrap_or(SearchMode::Hybrid);
                self.ranked(sem, kind, ik, q, mode, limit).await?
            }
            _ => (SearchMode::Text, self.text_ranked(kind, q, limit).await?),
        };
        let results = self.resolve(kind, ranked, limit as usize).await?;
        Ok(SearchResults {
            kind: s.kind.unwrap_or_else(|| "posts".into()),
            mode: mode.as_str().to_string(),
            results,
        })
    }

    async fn text_ranked(
        &self,
        kind: SearchKind,
        q: &str,
        limit: i64,
    ) -> ServiceResult<Vec<Ranked>> {
        Ok(self
            .store
            .search(kind, q, limit)
            .await?
            .into_iter()
            .map(Ranked::from)
            .collect())
    }

    /// Posts or comments ranked in `mode`; answers in `text` when the query cannot be
    /// embedded. In hybrid mode the full-text search runs while the query is embedded and
    /// the vectors scanned: the answer waits for the slower of the two, not for both.
    async fn ranked(
        &self,
        sem: &Semantic,
        kind: SearchKind,
        ik: ItemKind,
        q: &str,
        mode: SearchMode,
        limit: i64,
    ) -> ServiceResult<(SearchMode, Vec<Ranked>)> {
        // Extra candidates stand in for items removed since this replica's last refresh.
        let depth = (limit as usize).max(FUSE_DEPTH) + 10;
        let nearest = async {
            let v = sem.embed_one(q.to_string()).await?;
            Ok::<_, EmbedError>(sem.nearest(ik, quantize(&v), depth, None).await)
        };
        match mode {
            SearchMode::Text => Ok((mode, self.text_ranked(kind, q, limit).await?)),
            SearchMode::Semantic => match nearest.await {
                Ok(near) => Ok((mode, near.into_iter().map(Ranked::from).collect())),
                Err(e) => {
                    log_embed_failure(&e, "a query; answering with full-text search");
                    Ok((SearchMode::Text, self.text_ranked(kind, q, limit).await?))
                }
            },
            SearchMode::Hybrid => {
                let (near, text) =
                    tokio::join!(nearest, self.store.search(kind, q, FUSE_DEPTH as i64));
                let text = text?;
                let near = match near {
                    Ok(near) => near,
                    Err(e) => {
                        log_embed_failure(&e, "a query; answering with full-text search");
                        let ranked = text.into_iter().map(Ranked::from).collect();
                        return Ok((SearchMode::Text, ranked));
                    }
                };
                let fused = fuse(
                    text.iter().map(|h| h.id.as_str()),
                    near.iter().take(FUSE_DEPTH).map(|h| &*h.id),
                );
                let ranked = fused
                    .into_iter()
                    .map(|f| Ranked {
                        snippet: f.text_rank.map(|r| text[r].snippet.clone()),
                        id: f.id,
                        rank: f.score,
                    })
                    .collect();
                Ok((mode, ranked))
            }
        }
    }

    /// Reads the items of `ranked` in order, skipping any no longer visible, up to `limit`.
    async fn resolve(
        &self,
        kind: SearchKind,
        ranked: Vec<Ranked>,
        limit: usize,
    ) -> ServiceResult<Vec<SearchHit>> {
        let mut results = Vec::with_capacity(limit.min(ranked.len()));
        let mut rest = ranked.into_iter().peekable();
        while results.len() < limit && rest.peek().is_some() {
            // A page at a time, a few more than are missing: some may be gone since they
            // were ranked.
            let page: Vec<Ranked> = rest.by_ref().take(limit - results.len() + 5).collect();
            let ids: Vec<&str> = page.iter().map(|h| h.id.as_str()).collect();
            let mut found = self.items(kind, &ids).await?;
            for h in page {
                if results.len() >= limit {
                    break;
                }
                if let Some((item, plain)) = found.remove(&h.id) {
                    results.push(SearchHit {
                        item,
                        snippet: h.snippet.unwrap_or(plain),
                        rank: h.rank,
                    });
                }
            }
        }
        Ok(results)
    }

    /// The visible items among `ids`, each with a plain excerpt (for a hit without a
    /// snippet), by id. Posts and comments in one query.
    async fn items(
        &self,
        kind: SearchKind,
        ids: &[&str],
    ) -> ServiceResult<HashMap<String, (SearchItem, String)>> {
        let mut found = HashMap::with_capacity(ids.len());
        match kind {
            SearchKind::Posts => {
                for p in self.store.posts_by_ids(ids).await? {
                    let ex = excerpt(&format!("{} — {}", p.title, p.body));
                    found.insert(p.id.clone(), (SearchItem::Post(PostView::from(&p)), ex));
                }
            }
            SearchKind::Comments => {
                for c in self.store.comments_by_ids(ids).await? {
                    let ex = excerpt(&c.body);
                    found.insert(c.id.clone(), (SearchItem::Comment((&c).into()), ex));
                }
            }
            SearchKind::Agents => {
                for id in ids {
                    if let Some(a) = self.store.agent_by_id(id).await? {
                        let item = SearchItem::Agent(PublicAgentView::from(&a));
                        found.insert(id.to_string(), (item, String::new()));
                    }
                }
            }
            SearchKind::Topics => {
                for id in ids {
                    if let Some(t) = self.store.topic(id).await? {
                        let item = SearchItem::Topic(TopicView::from(&t));
                        found.insert(id.to_string(), (item, String::new()));
                    }
                }
            }
        }
        Ok(found)
    }

    /// Posts like post `id` (never itself, never a removed one), by meaning with a model,
    /// else by its title's words. Limited per client address like an anonymous search.
    pub async fn related(
        &self,
        addr: &str,
        id: &str,
        limit: Option<i64>,
    ) -> ServiceResult<SearchResults> {
        let limit = limit.unwrap_or(5);
        if !(1..=20).contains(&limit) {
            return Err(bad("'limit' must be between 1 and 20"));
        }
        if id.len() > 64 {
            return Err(ServiceError::NotFound("no such post".into()));
        }
        self.limit_key(addr, Action::AnonSearch).await?;
        let post = self
            .store
            .post(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound("no such post".into()))?;
        let semantic = match &self.semantic {
            None => None,
            Some(sem) => match sem.index.get(ItemKind::Post, id) {
                Some(q) => Some((sem, q)),
                // Not indexed yet: embedded now.
                None => match sem
                    .embed_one(embed_text(Some(&post.title), &post.body))
                    .await
                {
                    Ok(v) => Some((sem, quantize(&v))),
                    Err(e) => {
                        log_embed_failure(&e, "a post for related posts");
                        None
                    }
                },
            },
        };
        let (mode, ranked) = match semantic {
            Some((sem, q)) => {
                let near = sem
                    .nearest(ItemKind::Post, q, limit as usize + 10, Some(id.to_string()))
                    .await;
                let ranked = near.into_iter().map(Ranked::from).collect();
                (SearchMode::Semantic, ranked)
            }
            None => {
                // Any of the title's words: all of them would find little but the post.
                let mut r: Vec<Ranked> = self
                    .store
                    .search_any_word(SearchKind::Posts, &post.title, limit + 1)
                    .await?
                    .into_iter()
                    .map(Ranked::from)
                    .collect();
                r.retain(|h| h.id != id);
                (SearchMode::Text, r)
            }
        };
        let results = self
            .resolve(SearchKind::Posts, ranked, limit as usize)
            .await?;
        Ok(SearchResults {
            kind: "posts".into(),
            mode: mode.as_str().to_string(),
            results,
        })
    }

    pub async fn search_status(&self) -> ServiceResult<SearchStatus> {
        Ok(match &self.semantic {
            None => SearchStatus {
                model: None,
                default_mode: SearchMode::Text.as_str().into(),
                indexed: 0,
                pending: 0,
                counted_at: now_ms(),
            },
            Some(sem) => {
                let counts = sem.counts(&self.store).await?;
                SearchStatus {
                    model: Some(sem.model().to_string()),
                    default_mode: SearchMode::Hybrid.as_str().into(),
                    indexed: counts.indexed,
                    pending: counts.pending,
                    counted_at: counts.at_ms,
                }
            }
        })
    }

    /// The near-duplicate check of a post or comment about to be written: with a model and
    /// the check on, embeds `text` and compares it with the author's items of the last 24
    /// hours (at most 50). Answers `conflict` naming the earlier item; otherwise the vector,
    /// for `remember_vector` once the item is written. A model failure lets the write
    /// through: the check never blocks posting.
    pub(super) async fn near_duplicate_check(
        &self,
        agent: &AgentCtx,
        text: String,
    ) -> ServiceResult<Option<Vec<f32>>> {
        let Some(sem) = &self.semantic else {
            return Ok(None);
        };
        let Some(threshold) = sem.near_duplicate else {
            return Ok(None);
        };
        let v = match sem.embed_one(text).await {
            Ok(v) => v,
            Err(e) => {
                log_embed_failure(&e, "a new item; no near-duplicate check");
                return Ok(None);
            }
        };
        let recent = self
            .store
            .recent_vectors_of(
                &agent.id,
                sem.model(),
                now_ms() - NEAR_DUPLICATE_WINDOW_MS,
                NEAR_DUPLICATE_ITEMS,
            )
            .await?;
        let closest = recent
            .iter()
            .map(|r| (r, similarity_f32(&v, &r.data, r.scale)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((r, sim)) = closest
            && sim >= threshold
        {
            return Err(ServiceError::Conflict(format!(
                "near-duplicate of your {} {} (similarity {sim:.3}, the limit is {threshold}): \
                 say something new, or comment on it",
                r.kind.as_str(),
                r.item_id
            )));
        }
        Ok(Some(v))
    }

    /// Keeps the vector the near-duplicate check computed for an item just written.
    pub(super) async fn remember_vector(
        &self,
        kind: ItemKind,
        id: &str,
        author_id: &str,
        created_at: i64,
        v: Option<Vec<f32>>,
    ) {
        if let (Some(sem), Some(v)) = (&self.semantic, v) {
            sem.remember(&self.store, kind, id, author_id, created_at, &v)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_one_line_and_cut_with_an_ellipsis() {
        assert_eq!(excerpt("a\n b\t c"), "a b c");
        let long = "word ".repeat(100);
        let e = excerpt(&long);
        assert!(e.ends_with('…'));
        assert!(e.chars().count() <= EXCERPT_CHARS + 1);
    }

    #[test]
    fn modes_other_than_the_three_are_bad_requests() {
        assert_eq!(parse_mode(None).unwrap(), None);
        assert_eq!(parse_mode(Some("text")).unwrap(), Some(SearchMode::Text));
        assert!(parse_mode(Some("vector")).is_err());
    }
}
