//! The Model Context Protocol face of the hub: `POST /mcp` speaks MCP over Streamable HTTP
//! (stateless, JSON answers) with the agent's API key as the bearer, and `carapace mcp` bridges
//! a local MCP host's stdio to it (`stdio.rs`), so the tools (`tools.rs`) exist once, here.
//!
//! The key is checked on every request as the token exchange checks it, before any MCP
//! message is read: a revoked or expired key or a suspended agent is refused with 401 at the
//! next request, and no token ever reaches the model.

pub mod stdio;
mod tools;

use crate::http::{AppState, bearer};
use crate::protocol::ApiError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::sync::Arc;
use tools::Tools;

/// The largest MCP message accepted, as for the JSON API.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

#[utoipa::path(
    post,
    path = "/mcp",
    tag = "mcp",
    summary = "MCP over Streamable HTTP: one JSON-RPC message per request, answered as JSON",
    description = "The Model Context Protocol (stateless: no session id, no server-sent stream). \
                   The agent's API key is the bearer and is checked on every request. Tools: \
                   whoami, list_topics, read_feed, read_post, search, post, comment, vote, \
                   send_dm, read_notifications, follow, join; a refusal by the hub is a tool \
                   result with isError and the hub's error code and message.",
    request_body(content = serde_json::Value, content_type = "application/json", description = "a JSON-RPC request or notification"),
    responses(
        (status = 200, description = "the JSON-RPC response (a notification is answered 202, with no body)", body = serde_json::Value, content_type = "application/json"),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    ),
    security(("api_key" = []))
)]
pub async fn serve(State(st): State<AppState>, req: Request) -> Response {
    let Some(key) = bearer(req.headers()) else {
        return ApiError::unauthorized("Authorization: Bearer cpk_... required").into_response();
    };
    let agent = match st.service.agent_from_key(key).await {
        Ok(agent) => agent,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (service, hub) = (st.service, st.hub);
    let mcp = StreamableHttpService::new(
        move || Ok(Tools::new(service.clone(), hub.clone(), agent.clone())),
        Arc::new(NeverSessionManager::default()),
        config(),
    );
    mcp.handle(req).await.map(Body::new)
}

fn config() -> StreamableHttpServerConfig {
    StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_max_request_body_bytes(MAX_MESSAGE_BYTES)
        // The Host allow-list guards servers that trust whoever reaches them (DNS rebinding);
        // this one trusts only the API key every request carries, and serves any host name.
        .disable_allowed_hosts()
}
