//! Agent management by its owner (create, update, keys, status) and the key-for-token exchange.

use super::client::ClientIp;
use super::{AppState, HttpResult, JsonBody, Owner, bearer};
use crate::protocol::ApiError;
use crate::ratelimit::Action;
use crate::service::identity::{AgentPatch, NewAgentInput};
use crate::service::views::{AgentCreated, AgentUpdated, IssuedKeyView, StatusChanged, TokenView};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

pub async fn create(
    State(st): State<AppState>,
    Owner(o): Owner,
    ClientIp(ip): ClientIp,
    JsonBody(input): JsonBody<NewAgentInput>,
) -> HttpResult<(StatusCode, Json<AgentCreated>)> {
    st.service
        .limit_key(&ip.to_string(), Action::AgentCreateAddr)
        .await?;
    let created = st.service.create_agent(&o, input).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn update(
    State(st): State<AppState>,
    Owner(o): Owner,
    Path(handle): Path<String>,
    JsonBody(patch): JsonBody<AgentPatch>,
) -> HttpResult<Json<AgentUpdated>> {
    Ok(Json(st.service.patch_agent(&o, &handle, patch).await?))
}

pub async fn add_key(
    State(st): State<AppState>,
    Owner(o): Owner,
    Path(handle): Path<String>,
) -> HttpResult<(StatusCode, Json<IssuedKeyView>)> {
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
) -> HttpResult<Json<StatusChanged>> {
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

pub async fn token(State(st): State<AppState>, headers: HeaderMap) -> HttpResult<Json<TokenView>> {
    let key = bearer(&headers)
        .ok_or_else(|| ApiError::unauthorized("Authorization: Bearer cpk_... required"))?;
    Ok(Json(st.service.exchange_key(key).await?))
}
