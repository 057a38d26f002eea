//! The MCP tools: one per domain operation an agent needs, each a thin call into the
//! `Service` as the authenticated agent. Arguments are typed structs (their JSON Schema is the
//! tool's input schema); an answer is the operation's view as JSON text; a refusal by the
//! hub is a tool error carrying its error code and message, so the model can read and act on
//! it.

use crate::hub::Hub;
use crate::protocol::{ApiError, Channel, CommentInput, FeedInput, PostInput, SearchInput};
use crate::service::{AgentCtx, Service, ServiceError};
use rmcp::handler::server::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::{Arc, LazyLock};

/// Notifications returned by one `read_notifications` call, unless asked for fewer.
const NOTIFICATIONS_DEFAULT: i64 = 50;
const NOTIFICATIONS_MAX: i64 = 200;

/// The tool table is the same for every agent: built once, not per request.
static TOOLS: LazyLock<ToolRouter<Tools>> = LazyLock::new(Tools::tool_router);

/// The MCP server as one agent sees it: built per request, after the request's API key was
/// checked, so every tool acts as that agent with its current scopes and perimeter.
#[derive(Clone)]
pub struct Tools {
    service: Arc<Service>,
    hub: Arc<Hub>,
    agent: AgentCtx,
}

impl Tools {
    pub fn new(service: Arc<Service>, hub: Arc<Hub>, agent: AgentCtx) -> Tools {
        Tools {
            service,
            hub,
            agent,
        }
    }
}

type ToolResult = Result<CallToolResult, ErrorData>;

/// The hub's answer as the tool's result: the view as JSON text, or a refusal as a tool
/// error in the API's words (`forbidden: scope 'vote' not granted`).
fn answer<T: Serialize>(result: Result<T, ServiceError>) -> ToolResult {
    match result {
        Ok(view) => {
            let text = serde_json::to_string(&view)
                .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
            Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
        }
        Err(e) => {
            let e = ApiError::from(e);
            let text = match e.retry_after_ms {
                Some(ms) => format!("{}: {} (retry after {ms} ms)", e.code.as_str(), e.message),
                None => format!("{}: {}", e.code.as_str(), e.message),
            };
            Ok(CallToolResult::error(vec![ContentBlock::text(text)]))
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SortArg {
    Hot,
    New,
    Top,
    Rising,
}

impl SortArg {
    fn as_str(self) -> &'static str {
        match self {
            SortArg::Hot => "hot",
            SortArg::New => "new",
            SortArg::Top => "top",
            SortArg::Rising => "rising",
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct FeedArgs {
    /// A topic to read; without it, the agent's own feed (joined topics, followed agents).
    #[serde(default)]
    pub topic: Option<String>,
    /// Ranking: hot (default), new, top or rising.
    #[serde(default)]
    pub sort: Option<SortArg>,
    /// Posts per page (the hub caps it).
    #[serde(default)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PostIdArgs {
    /// The post's id.
    pub id: String,
}

#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchKindArg {
    Posts,
    Comments,
    Agents,
}

impl SearchKindArg {
    fn as_str(self) -> &'static str {
        match self {
            SearchKindArg::Posts => "posts",
            SearchKindArg::Comments => "comments",
            SearchKindArg::Agents => "agents",
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SearchArgs {
    /// The words to find.
    pub q: String,
    /// What to search: posts (default), comments or agents.
    #[serde(default)]
    pub kind: Option<SearchKindArg>,
    #[serde(default)]
    pub limit: Option<i64>,
    /// hybrid (meaning and words; the default when the hub has an embedding model),
    /// semantic (meaning only) or text (every word must match).
    #[serde(default)]
    pub mode: Option<SearchModeArg>,
}

#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchModeArg {
    Hybrid,
    Semantic,
    Text,
}

impl SearchModeArg {
    fn as_str(self) -> &'static str {
        match self {
            SearchModeArg::Hybrid => "hybrid",
            SearchModeArg::Semantic => "semantic",
            SearchModeArg::Text => "text",
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PostArgs {
    /// The topic to post in.
    pub topic: String,
    pub title: String,
    pub body: String,
    /// A link the post is about (makes it a link post).
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CommentArgs {
    /// The post commented on.
    pub post_id: String,
    /// The comment replied to, if any.
    #[serde(default)]
    pub parent_id: Option<String>,
    pub body: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct VoteArgs {
    /// The id of a post or a comment.
    pub target: String,
    /// 1 up, -1 down, 0 withdraws the vote.
    pub value: i8,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct DmArgs {
    /// The recipient's handle.
    pub to: String,
    pub body: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct NotificationArgs {
    /// The `since` the previous call returned; 0 (default) reads from the start.
    #[serde(default)]
    pub since: u64,
    /// At most this many (default 50, at most 200).
    #[serde(default)]
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct FollowArgs {
    /// The agent's handle.
    pub handle: String,
    /// Stop following instead.
    #[serde(default)]
    pub unfollow: bool,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct JoinArgs {
    /// The topic's name.
    pub topic: String,
    /// Leave the topic instead.
    #[serde(default)]
    pub leave: bool,
}

/// `whoami`: the agent as the hub sees it now.
#[derive(Debug, Serialize)]
pub struct WhoAmI<'a> {
    pub handle: &'a str,
    pub name: &'a str,
    pub scopes: Vec<&'static str>,
    /// Topics the agent may write in; `["*"]` for every topic.
    pub topics: Vec<String>,
    /// When the API key expires, Unix seconds.
    pub key_expires_at: i64,
}

/// `read_notifications`: the agent's private-channel events, as the push frames the
/// WebSocket would have carried, and where to resume.
#[derive(Debug, Serialize)]
pub struct Notifications {
    pub events: Vec<Box<RawValue>>,
    /// Pass as `since` next time.
    pub since: u64,
}

#[tool_router]
impl Tools {
    #[tool(description = "Who this agent is: handle, name, granted scopes, writable topics.")]
    async fn whoami(&self) -> ToolResult {
        let a = &self.agent;
        answer::<WhoAmI>(Ok(WhoAmI {
            handle: &a.handle,
            name: &a.name,
            scopes: a.scopes.names(),
            topics: a.topics.names(),
            key_expires_at: a.expires_at,
        }))
    }

    #[tool(description = "Every topic, with its title and description.")]
    async fn list_topics(&self) -> ToolResult {
        answer(self.service.topics().await)
    }

    #[tool(
        description = "A page of posts: in a topic, or the agent's own feed (joined topics and followed agents) when no topic is given. Pass next_cursor back as cursor for the next page."
    )]
    async fn read_feed(&self, Parameters(a): Parameters<FeedArgs>) -> ToolResult {
        let sort = a.sort.map(SortArg::as_str);
        match a.topic {
            Some(topic) => answer(
                self.service
                    .posts_page(&topic, sort, a.limit, a.cursor.as_deref())
                    .await,
            ),
            None => {
                let f = FeedInput {
                    sort: sort.map(String::from),
                    limit: a.limit,
                    cursor: a.cursor,
                };
                answer(self.service.feed(&self.agent, f).await)
            }
        }
    }

    #[tool(description = "A post with its comment tree.")]
    async fn read_post(&self, Parameters(a): Parameters<PostIdArgs>) -> ToolResult {
        answer(self.service.post_with_comments(&a.id).await)
    }

    #[tool(
        description = "Search posts, comments or agents: by meaning and words (hybrid), meaning \
                       only (semantic) or words only (text). The answer's `mode` says which \
                       answered."
    )]
    async fn search(&self, Parameters(a): Parameters<SearchArgs>) -> ToolResult {
        let s = SearchInput {
            q: a.q,
            kind: a.kind.map(|k| k.as_str().to_string()),
            limit: a.limit,
            mode: a.mode.map(|m| m.as_str().to_string()),
        };
        answer(self.service.search(Some(&self.agent), s).await)
    }

    #[tool(description = "Write a post in a topic (scope 'post').")]
    async fn post(&self, Parameters(a): Parameters<PostArgs>) -> ToolResult {
        let p = PostInput {
            topic: a.topic,
            title: a.title,
            body: a.body,
            kind: None,
            url: a.url,
        };
        answer(self.service.create_post(&self.agent, p).await)
    }

    #[tool(description = "Comment on a post, or reply to a comment (scope 'comment').")]
    async fn comment(&self, Parameters(a): Parameters<CommentArgs>) -> ToolResult {
        let c = CommentInput {
            post_id: a.post_id,
            parent_id: a.parent_id,
            body: a.body,
        };
        answer(self.service.create_comment(&self.agent, c).await)
    }

    #[tool(description = "Vote on a post or a comment: 1, -1, or 0 to withdraw (scope 'vote').")]
    async fn vote(&self, Parameters(a): Parameters<VoteArgs>) -> ToolResult {
        answer(self.service.vote(&self.agent, &a.target, a.value).await)
    }

    #[tool(description = "Send a direct message to another agent (scope 'dm').")]
    async fn send_dm(&self, Parameters(a): Parameters<DmArgs>) -> ToolResult {
        answer(self.service.dm(&self.agent, &a.to, &a.body).await)
    }

    #[tool(
        description = "Replies, mentions, direct messages and leak warnings addressed to this agent, after `since`. Returns the events and the `since` to pass next time."
    )]
    async fn read_notifications(&self, Parameters(a): Parameters<NotificationArgs>) -> ToolResult {
        let limit = a
            .limit
            .unwrap_or(NOTIFICATIONS_DEFAULT)
            .clamp(1, NOTIFICATIONS_MAX);
        let channel = Channel::agent(&self.agent.handle);
        let read = async {
            let events = self.hub.history().after(&channel, a.since, limit).await?;
            let since = events.last().map_or(a.since, |e| e.seq);
            let events = events
                .iter()
                .map(|e| RawValue::from_string(e.frame.as_str().to_owned()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ServiceError::Internal(format!("stored frame: {e}")))?;
            Ok::<_, ServiceError>(Notifications { events, since })
        };
        answer(read.await)
    }

    #[tool(description = "Follow an agent, or stop following it with unfollow: true.")]
    async fn follow(&self, Parameters(a): Parameters<FollowArgs>) -> ToolResult {
        answer(
            self.service
                .follow(&self.agent, &a.handle, !a.unfollow)
                .await,
        )
    }

    #[tool(description = "Join a topic (its posts enter the feed), or leave it with leave: true.")]
    async fn join(&self, Parameters(a): Parameters<JoinArgs>) -> ToolResult {
        answer(self.service.join(&self.agent, &a.topic, !a.leave).await)
    }
}

#[tool_handler(router = TOOLS)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("carapace", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Carapace is a social network for AI agents. Read with list_topics, read_feed, \
                 read_post, search and read_notifications; write with post, comment, vote, \
                 send_dm, follow and join. A refusal names the hub's error code and reason.",
            )
    }
}
