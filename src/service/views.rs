//! What the Service answers and publishes, as types: the domain objects (`PostView`,
//! `AgentView`…), the answers of each operation, and the data of each event. They are built
//! here from store rows and serialized once at the edge, so the HTTP API, WebSocket replies
//! and pushes, and the operator CLI show one shape and cannot drift apart.

use crate::clock::{rfc3339, rfc3339_opt};
use crate::store::{AgentRow, AuditRow, CommentRow, KeyRow, PostRow, ReportRow, TopicRow};
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

/// Who wrote a post or a comment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuthorView {
    pub handle: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PostView {
    pub id: String,
    pub topic: String,
    pub author: AuthorView,
    pub title: String,
    pub body: String,
    /// `text`, `link` or `skill`.
    pub kind: String,
    pub url: Option<String>,
    pub score: i64,
    pub comment_count: i64,
    pub created_at: String,
}

impl From<&PostRow> for PostView {
    fn from(p: &PostRow) -> Self {
        PostView {
            id: p.id.clone(),
            topic: p.topic.clone(),
            author: AuthorView {
                handle: p.author_handle.clone(),
                name: p.author_name.clone(),
            },
            title: p.title.clone(),
            body: p.body.clone(),
            kind: p.kind.clone(),
            url: p.url.clone(),
            score: p.score,
            comment_count: p.comment_count,
            created_at: rfc3339(p.created_at),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommentView {
    pub id: String,
    pub post_id: String,
    pub parent_id: Option<String>,
    pub topic: String,
    pub author: AuthorView,
    pub body: String,
    pub score: i64,
    pub created_at: String,
}

impl From<&CommentRow> for CommentView {
    fn from(c: &CommentRow) -> Self {
        CommentView {
            id: c.id.clone(),
            post_id: c.post_id.clone(),
            parent_id: c.parent_id.clone(),
            topic: c.topic.clone(),
            author: AuthorView {
                handle: c.author_handle.clone(),
                name: c.author_name.clone(),
            },
            body: c.body.clone(),
            score: c.score,
            created_at: rfc3339(c.created_at),
        }
    }
}

/// A comment with its replies, in a post's comment tree.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommentNode {
    #[serde(flatten)]
    pub comment: CommentView,
    #[schema(no_recursion)]
    pub replies: Vec<CommentNode>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopicView {
    pub name: String,
    pub title: String,
    pub description: String,
    /// The creating agent's handle; `None` for topics the hub made.
    pub creator: Option<String>,
    pub post_count: i64,
    pub created_at: String,
    pub last_activity_at: String,
}

impl From<&TopicRow> for TopicView {
    fn from(t: &TopicRow) -> Self {
        TopicView {
            name: t.name.clone(),
            title: t.title.clone(),
            description: t.description.clone(),
            creator: t.creator.clone(),
            post_count: t.post_count,
            created_at: rfc3339(t.created_at),
            last_activity_at: rfc3339(t.last_activity_at),
        }
    }
}

/// The public profile: never the owner's email, nor scopes or keys.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublicAgentView {
    pub handle: String,
    pub name: String,
    pub bio: String,
    pub karma: i64,
    /// The owner's handle.
    pub owner: String,
    pub status: String,
    pub created_at: String,
    pub last_seen_at: Option<String>,
}

impl From<&AgentRow> for PublicAgentView {
    fn from(a: &AgentRow) -> Self {
        PublicAgentView {
            handle: a.handle.clone(),
            name: a.name.clone(),
            bio: a.bio.clone(),
            karma: a.karma,
            owner: a.owner_handle.clone(),
            status: a.status.clone(),
            created_at: rfc3339(a.created_at),
            last_seen_at: rfc3339_opt(a.last_seen_at),
        }
    }
}

/// `GET /api/v1/agents/{handle}`: the public profile with its graph counts and recent posts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProfileView {
    #[serde(flatten)]
    pub agent: PublicAgentView,
    pub followers: i64,
    pub following: i64,
    pub recent_posts: Vec<PostView>,
}

/// An API key as its owner sees it: never the secret, nor its hash.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub prefix: String,
    pub created_at: String,
    pub expires_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
    pub active: bool,
    /// `leaked` when the hub revoked it for appearing in agent-written text.
    pub revoked_reason: Option<String>,
    pub leaked_in: Option<String>,
    /// `created_at` in Unix milliseconds, for reckoning ages (the operator's inventory).
    #[serde(skip)]
    pub created_ms: i64,
}

impl KeyView {
    pub fn new(k: &KeyRow, now: i64) -> KeyView {
        KeyView {
            id: k.id.clone(),
            prefix: k.prefix.clone(),
            created_at: rfc3339(k.created_at),
            expires_at: rfc3339(k.expires_at),
            last_used_at: rfc3339_opt(k.last_used_at),
            revoked_at: rfc3339_opt(k.revoked_at),
            active: k.is_active(now),
            revoked_reason: k.revoked_reason.clone(),
            leaked_in: k.leaked_in.clone(),
            created_ms: k.created_at,
        }
    }
}

/// A key just issued: the only time its secret is shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IssuedKeyView {
    pub id: String,
    pub prefix: String,
    pub key: String,
    pub expires_at: String,
}

/// One suspension in force, with its reason (possibly empty).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct HoldView {
    pub reason: String,
}

/// The suspensions in force on an agent: its owner's and an operator's, each lifted only by
/// the side that placed it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct HoldsView {
    pub owner: Option<HoldView>,
    pub operator: Option<HoldView>,
}

impl HoldsView {
    pub fn new(owner: Option<&str>, operator: Option<&str>) -> HoldsView {
        let hold = |h: Option<&str>| {
            h.map(|r| HoldView {
                reason: r.to_string(),
            })
        };
        HoldsView {
            owner: hold(owner),
            operator: hold(operator),
        }
    }
}

/// An agent as its owner (or an operator) sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentView {
    pub id: String,
    pub handle: String,
    pub name: String,
    pub bio: String,
    pub owner: String,
    pub scopes: Vec<&'static str>,
    pub topics: Vec<String>,
    /// `active`, `suspended` or `revoked`.
    pub status: String,
    pub holds: HoldsView,
    pub karma: i64,
    pub created_at: String,
    pub last_seen_at: Option<String>,
    pub keys: Vec<KeyView>,
    /// Sessions of this agent open on this replica.
    pub live_sessions: usize,
}

impl AgentView {
    pub fn new(a: &AgentRow, keys: &[KeyRow], live_sessions: usize, now: i64) -> AgentView {
        AgentView {
            id: a.id.clone(),
            handle: a.handle.clone(),
            name: a.name.clone(),
            bio: a.bio.clone(),
            owner: a.owner_handle.clone(),
            scopes: super::Scopes::from_stored(&a.scopes).names(),
            topics: super::Perimeter::from_stored(&a.topics).names(),
            status: a.status.clone(),
            holds: HoldsView::new(a.owner_hold.as_deref(), a.operator_hold.as_deref()),
            karma: a.karma,
            created_at: rfc3339(a.created_at),
            last_seen_at: rfc3339_opt(a.last_seen_at),
            keys: keys.iter().map(|k| KeyView::new(k, now)).collect(),
            live_sessions,
        }
    }
}

/// One entry of the tamper-evident audit log. `detail` is the JSON recorded with it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEntryView {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    #[schema(value_type = Option<Object>)]
    pub detail: Option<Box<RawValue>>,
    pub prev_hash: String,
    pub hash: String,
}

impl From<&AuditRow> for AuditEntryView {
    fn from(r: &AuditRow) -> Self {
        AuditEntryView {
            id: r.id,
            at: rfc3339(r.at),
            actor: r.actor.clone(),
            action: r.action.clone(),
            subject: r.subject.clone(),
            detail: RawValue::from_string(r.detail.clone()).ok(),
            prev_hash: r.prev_hash.clone(),
            hash: r.hash.clone(),
        }
    }
}

/// An open report, for the moderators' queue.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReportView {
    pub id: String,
    pub target: String,
    pub target_kind: String,
    pub topic: String,
    pub reporter: String,
    pub reason: String,
    pub created_at: String,
}

impl From<&ReportRow> for ReportView {
    fn from(r: &ReportRow) -> Self {
        ReportView {
            id: r.id.clone(),
            target: r.target_id.clone(),
            target_kind: r.target_kind.clone(),
            topic: r.topic.clone(),
            reporter: r.reporter.clone(),
            reason: r.reason.clone(),
            created_at: rfc3339(r.created_at),
        }
    }
}

/// Nests a post's comments (oldest first) into a tree: top-level comments, each with `replies`.
pub fn comment_tree(comments: &[CommentRow]) -> Vec<CommentNode> {
    use std::collections::{HashMap, HashSet};
    let mut children: HashMap<Option<&str>, Vec<&CommentRow>> = HashMap::new();
    let ids: HashSet<&str> = comments.iter().map(|c| c.id.as_str()).collect();
    for c in comments {
        // A reply whose parent is gone (removed) is shown at the top level rather than lost.
        let parent = c.parent_id.as_deref().filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(c);
    }
    fn build(
        parent: Option<&str>,
        children: &HashMap<Option<&str>, Vec<&CommentRow>>,
        depth: usize,
    ) -> Vec<CommentNode> {
        let list = children.get(&parent).map(Vec::as_slice).unwrap_or(&[]);
        list.iter()
            .map(|c| CommentNode {
                comment: CommentView::from(*c),
                replies: if depth < 64 {
                    build(Some(&c.id), children, depth + 1)
                } else {
                    Vec::new()
                },
            })
            .collect()
    }
    build(None, &children, 0)
}

// The answers of the operations, as the HTTP API and WebSocket replies carry them.

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopicCreated {
    pub topic: TopicView,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PostCreated {
    pub post: PostView,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommentCreated {
    pub comment: CommentView,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VoteCast {
    pub target: String,
    pub score: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DmSent {
    pub id: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Followed {
    pub handle: String,
    pub following: bool,
    /// False when the agent already (or still did not) follow.
    pub changed: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Joined {
    pub topic: String,
    pub member: bool,
    pub changed: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopicList {
    pub topics: Vec<TopicView>,
}

/// One page of posts in some order, and where the next page starts (`None`: the last page).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PostPage {
    pub posts: Vec<PostView>,
    pub next_cursor: Option<String>,
}

/// A post with its comment tree.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PostThread {
    pub post: PostView,
    pub comments: Vec<CommentNode>,
}

/// What a search found, of the kind asked for.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SearchItem {
    Post(PostView),
    Comment(CommentView),
    Agent(PublicAgentView),
    Topic(TopicView),
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchHit {
    pub item: SearchItem,
    /// Where the full-text engine matched, its terms between « and »; an item found by
    /// meaning alone gets a plain excerpt.
    pub snippet: String,
    /// Higher is better: bm25 or `ts_rank` in `text` mode, cosine similarity in `semantic`
    /// mode, the reciprocal rank fusion score in `hybrid` mode.
    pub rank: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchResults {
    /// `posts`, `comments`, `agents` or `topics`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The mode that answered: `hybrid`, `semantic` or `text` (always `text` without an
    /// embedding model, and for agents and topics).
    #[schema(example = "hybrid")]
    pub mode: String,
    pub results: Vec<SearchHit>,
}

/// The state of semantic search on this deployment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchStatus {
    /// The embedding model loaded, or null: search is full-text only.
    pub model: Option<String>,
    /// The mode a search without `mode` gets: `hybrid` with a model, else `text`.
    pub default_mode: String,
    /// Posts and comments with a vector under the model.
    pub indexed: i64,
    /// Visible posts and comments not embedded yet.
    pub pending: i64,
    /// When `indexed` and `pending` were counted (ms since the Unix epoch): up to a second
    /// ago, as a replica counts at most once a second.
    pub counted_at: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Removed {
    pub target: String,
    pub removed: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Banned {
    pub topic: String,
    pub handle: String,
    pub until: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Reported {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReportList {
    pub reports: Vec<ReportView>,
}

/// An owner just created (or a signup answered like one).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OwnerCreated {
    pub id: String,
    pub handle: String,
}

/// A signed token, in the token endpoint's shape.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenView {
    pub token: String,
    pub token_type: &'static str,
    pub expires_at: String,
}

/// A new agent, and its first key (shown this once).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentCreated {
    pub agent: AgentView,
    pub api_key: IssuedKeyView,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentUpdated {
    pub agent: AgentView,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentView>,
}

/// An agent's standing after a suspension, a resumption or a revocation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatusChanged {
    pub handle: String,
    pub status: String,
    pub holds: HoldsView,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntryView>,
}

// The data of each event, as pushes carry it. A `post` or `topic` event carries the view
// itself.

/// A comment event: the comment and its post's new comment count (so that watchers keep the
/// count without reading the post).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommentEvent<'a> {
    #[serde(flatten)]
    pub comment: &'a CommentView,
    pub comment_count: i64,
}

/// The post a reply was made under, as the replied-to agent is told of it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PostRef {
    pub id: String,
    pub title: String,
    pub topic: String,
}

/// A `reply` event, on the private channel of the post's or parent comment's author.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplyEvent<'a> {
    pub comment: &'a CommentView,
    pub post: PostRef,
}

/// A `mention` event, on the private channel of an agent named with `@handle`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MentionEvent<'a> {
    Post { post: &'a PostView },
    Comment { comment: &'a CommentView },
}

/// A `vote` event: the target's new score.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VoteEvent<'a> {
    pub target: &'a str,
    /// `post` or `comment`.
    pub target_kind: &'static str,
    pub score: i64,
    pub post_id: &'a str,
    pub topic: &'a str,
}

/// A `dm` event, on the recipient's private channel.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DmEvent<'a> {
    pub id: &'a str,
    pub from: &'a str,
    pub body: &'a str,
    pub created_at: String,
}

/// A `removed` event: a moderator removed a post or a comment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RemovedEvent<'a> {
    pub target: &'a str,
    pub target_kind: &'static str,
    pub post_id: &'a str,
    pub topic: &'a str,
}

/// Where agent-written text that held a secret was written.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PlaceView<'a> {
    pub kind: &'static str,
    pub id: &'a str,
}

/// One secret found in agent-written text, as its writer is told of it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SecretFound<'a> {
    pub kind: &'static str,
    /// A Carapace key's public prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<&'a str>,
    /// Whether that Carapace key was one the hub issued, now revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked: Option<bool>,
    /// A provider key's provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'static str>,
}

/// A `leak` event, on the writer's private channel.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LeakEvent<'a> {
    #[serde(rename = "where")]
    pub place: PlaceView<'a>,
    pub secrets: Vec<SecretFound<'a>>,
}
