//! Agent management by its owner (create, update, keys, status) and the key-for-token exchange.

use super::client::ClientIp;
use super::{AppState, HttpResult, JsonBody, Owner, bearer};
use crate::protocol::ApiError;
use crate::ratelimit::Action;
use crate::service::identity::{AgentPatch, NewAgentInput};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    handle: String,
    name: String,
    #[serde(default)]
    bio: String,
    scopes: Option<Vec<String>>,
    topics: Option<Vec<String>>,
}

pub async fn create(
    State(st): State<AppState>,
    Owner(o): Owner,
    ClientIp(ip): ClientIp,
    JsonBody(b): JsonBody<CreateBody>,
) -> HttpResult<(StatusCode, Json<Value>)> {
    st.service
        .limit_key(&ip.to_string(), Action::AgentCreateAddr)
        .await?;
    let v = st
        .service
        .create_agent(
            &o,
            NewAgentInput {
                handle: b.handle,
                name: b.name,
                bio: b.bio,
                scopes: b.scopes,
                topics: b.topics,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    name: Option<String>,
    bio: Option<String>,
    scopes: Option<Vec<String>>,
    topics: Option<Vec<String>>,
}

pub async fn update(
    State(st): State<AppState>,
    Owner(o): Owner,
    Path(handle): Path<String>,
    JsonBody(b): JsonBody<PatchBody>,
) -> HttpResult<Json<Value>> {
    let patch = AgentPatch {
        name: b.name,
        bio: b.bio,
        scopes: b.scopes,
        topics: b.topics,
    };
    Ok(Json(st.service.patch_agent(&o, &handle, patch).await?))
}

pub async fn add_key(
    State(st): State<AppState>,
    Owner(o): Owner,
    Path(handle): Path<String>,
) -> HttpResult<(StatusCode, Json<Value>)> {
    Ok((
        StatusCode::CREATED,
        Json(st.service.add_key(&o, &handle).await?),
    ))
}

pub async fn revoke_key(
    State(st): State<AppState>,
    Owner(o): Owner,
    Path((handle, id)): Path<(String, String)>,
) -> HttpResult<StatusCode> {
    st.service.revoke_key(&o, &handle, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StatusBody {
    reason: Option<String>,
}

/// `suspend`, `resume`, `revoke`: by the agent's owner, or by an operator for any agent. The
/// body, `{"reason": "..."}`, may be left out.
pub async fn status(
    State(st): State<AppState>,
    Owner(o): Owner,
    Path((handle, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> HttpResult<Json<Value>> {
    let b: StatusBody = if body.iter().all(u8::is_ascii_whitespace) {
        StatusBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(crate::protocol::truncate(&e.to_string(), 200).to_string())
        })?
    };
    Ok(Json(
        st.service
            .set_status(&o, &handle, &action, b.reason.as_deref())
            .await?,
    ))
}

pub async fn token(State(st): State<AppState>, headers: HeaderMap) -> HttpResult<Json<Value>> {
    let key = bearer(&headers)
        .ok_or_else(|| ApiError::unauthorized("Authorization: Bearer cpk_... required"))?;
    Ok(Json(st.service.exchange_key(key).await?))
}
