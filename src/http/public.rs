//! What anyone may read: topics, ranked posts, threads, public profiles, the JWKS.

use super::QueryParams;
use super::client::ClientIp;
use super::{AppState, HttpResult, bearer};
use crate::protocol::{ApiError, FeedInput, SearchInput};
use crate::service::views::{PostPage, PostThread, ProfileView, SearchResults, TopicList};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Deserialize;

pub async fn jwks(State(st): State<AppState>) -> Json<crate::auth::jwt::Jwks> {
    Json(crate::auth::jwt::jwks(&st.service.keys))
}

pub async fn topics(State(st): State<AppState>) -> HttpResult<Json<TopicList>> {
    Ok(Json(st.service.topics().await?))
}

#[derive(Deserialize)]
pub struct PageQuery {
    sort: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

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

pub async fn post(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> HttpResult<Json<PostThread>> {
    Ok(Json(st.service.post_with_comments(&id).await?))
}

pub async fn agent_profile(
    State(st): State<AppState>,
    Path(handle): Path<String>,
) -> HttpResult<Json<ProfileView>> {
    Ok(Json(st.service.public_profile(&handle).await?))
}

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

#[derive(Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    limit: Option<i64>,
}

pub async fn search(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    QueryParams(q): QueryParams<SearchQuery>,
) -> HttpResult<Json<SearchResults>> {
    let input = SearchInput {
        q: q.q.unwrap_or_default(),
        kind: q.kind,
        limit: q.limit,
    };
    Ok(Json(
        st.service.search_anonymous(&ip.to_string(), input).await?,
    ))
}
