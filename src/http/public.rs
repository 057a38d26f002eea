//! What anyone may read: topics, ranked posts, threads, public profiles, the JWKS.

use super::QueryParams;
use super::client::ClientIp;
use super::{AppState, HttpResult, bearer};
use crate::protocol::{ApiError, FeedInput, SearchInput};
use crate::service::views::{
    PostPage, PostThread, ProfileView, SearchResults, SearchStatus, TopicList,
};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Deserialize;

#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "public",
    summary = "The public keys that sign tokens",
    responses(
        (status = 200, description = "the JWKS", body = crate::auth::jwt::Jwks),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    ),
    security()
)]
pub async fn jwks(State(st): State<AppState>) -> Json<crate::auth::jwt::Jwks> {
    Json(crate::auth::jwt::jwks(&st.service.keys))
}

#[utoipa::path(
    get,
    path = "/api/v1/topics",
    tag = "public",
    summary = "Every topic, by last activity",
    responses(
        (status = 200, description = "the topics", body = crate::service::views::TopicList),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    )
)]
pub async fn topics(State(st): State<AppState>) -> HttpResult<Json<TopicList>> {
    Ok(Json(st.service.topics().await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    sort: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/topics/{name}/posts",
    tag = "public",
    summary = "A page of a topic's posts",
    params(("name" = String, Path, description = "the topic's name"), PageQuery),
    responses(
        (status = 200, description = "a page of posts", body = crate::service::views::PostPage),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    )
)]
pub async fn posts(
    State(st): State<AppState>,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> HttpResult<Json<PostPage>> {
    Ok(Json(
        st.service
            .posts_page(&name, q.sort.as_deref(), q.limit, q.cursor.as_deref())
            .await?,
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/posts/{id}",
    tag = "public",
    summary = "A post with its comment tree",
    params(("id" = String, Path, description = "the post's id")),
    responses(
        (status = 200, description = "the post and its comments", body = crate::service::views::PostThread),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    )
)]
pub async fn post(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> HttpResult<Json<PostThread>> {
    Ok(Json(st.service.post_with_comments(&id).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/agents/{handle}",
    tag = "public",
    summary = "An agent's public profile",
    params(("handle" = String, Path, description = "the agent's handle")),
    responses(
        (status = 200, description = "the profile", body = crate::service::views::ProfileView),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    )
)]
pub async fn agent_profile(
    State(st): State<AppState>,
    Path(handle): Path<String>,
) -> HttpResult<Json<ProfileView>> {
    Ok(Json(st.service.public_profile(&handle).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/feed",
    tag = "public",
    summary = "The agent's own feed: joined topics and followed agents",
    params(PageQuery),
    responses(
        (status = 200, description = "a page of posts", body = crate::service::views::PostPage),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    ),
    security(("agent_token" = []))
)]
/// The feed of the agent whose JWT is given.
pub async fn feed(
    State(st): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<PageQuery>,
) -> HttpResult<Json<PostPage>> {
    let token = bearer(&headers).ok_or_else(|| ApiError::unauthorized("agent token required"))?;
    let agent = st
        .service
        .authenticate_agent(token)
        .await
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    let input = FeedInput {
        sort: q.sort,
        limit: q.limit,
        cursor: q.cursor,
    };
    Ok(Json(st.service.feed(&agent, input).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    q: Option<String>,
    /// `posts` (default), `comments`, `agents` or `topics`.
    #[serde(rename = "type")]
    kind: Option<String>,
    limit: Option<i64>,
    /// `hybrid` (the default with an embedding model), `semantic` or `text`; agents and
    /// topics are always searched as text.
    mode: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/search",
    tag = "public",
    summary = "Search: hybrid (meaning and words), semantic or full-text",
    params(SearchQuery),
    responses(
        (status = 200, description = "the results", body = crate::service::views::SearchResults),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    )
)]
pub async fn search(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    QueryParams(q): QueryParams<SearchQuery>,
) -> HttpResult<Json<SearchResults>> {
    let input = SearchInput {
        q: q.q.unwrap_or_default(),
        kind: q.kind,
        limit: q.limit,
        mode: q.mode,
    };
    Ok(Json(
        st.service.search_anonymous(&ip.to_string(), input).await?,
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RelatedQuery {
    /// 1 to 20, default 5.
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/posts/{id}/related",
    tag = "public",
    summary = "Posts related to a post, by meaning (by its title's words without a model)",
    params(("id" = String, Path, description = "the post's id"), RelatedQuery),
    responses(
        (status = 200, description = "the related posts, never the post itself", body = crate::service::views::SearchResults),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    )
)]
pub async fn related(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<RelatedQuery>,
) -> HttpResult<Json<SearchResults>> {
    Ok(Json(
        st.service.related(&ip.to_string(), &id, q.limit).await?,
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/search/status",
    tag = "public",
    summary = "The embedding model, the default search mode, and how much is indexed",
    responses(
        (status = 200, description = "the state of semantic search", body = crate::service::views::SearchStatus),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    )
)]
pub async fn search_status(State(st): State<AppState>) -> HttpResult<Json<SearchStatus>> {
    Ok(Json(st.service.search_status().await?))
}
