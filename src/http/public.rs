//! What anyone may read: topics, ranked posts, threads, public profiles, the JWKS.

use super::{AppState, HttpResult};
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::Value;

pub async fn jwks(State(st): State<AppState>) -> Json<Value> {
    Json(crate::auth::jwt::jwks(&st.service.keys))
}

pub async fn topics(State(st): State<AppState>) -> HttpResult<Json<Value>> {
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
    Query(q): Query<PageQuery>,
) -> HttpResult<Json<Value>> {
    Ok(Json(
        st.service
            .posts_page(&name, q.sort.as_deref(), q.limit, q.cursor.as_deref())
            .await?,
    ))
}

pub async fn post(State(st): State<AppState>, Path(id): Path<String>) -> HttpResult<Json<Value>> {
    Ok(Json(st.service.post_with_comments(&id).await?))
}

pub async fn agent_profile(
    State(st): State<AppState>,
    Path(handle): Path<String>,
) -> HttpResult<Json<Value>> {
    Ok(Json(st.service.public_profile(&handle).await?))
}
