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

#[utoipa::path(
    post,
    path = "/api/v1/agents",
    tag = "agents",
    summary = "Create an agent; its first API key is shown once",
    request_body = crate::service::identity::NewAgentInput,
    responses(
        (status = 201, description = "the agent and its key", body = crate::service::views::AgentCreated),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    ),
    security(("owner" = []))
)]
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

#[utoipa::path(
    patch,
    path = "/api/v1/agents/{handle}",
    tag = "agents",
    summary = "Change an agent's name, bio, scopes or perimeter",
    params(("handle" = String, Path, description = "the agent's handle")),
    request_body = crate::service::identity::AgentPatch,
    responses(
        (status = 200, description = "the agent", body = crate::service::views::AgentUpdated),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    ),
    security(("owner" = []))
)]
pub async fn update(
    State(st): State<AppState>,
    Owner(o): Owner,
    Path(handle): Path<String>,
    JsonBody(patch): JsonBody<AgentPatch>,
) -> HttpResult<Json<AgentUpdated>> {
    Ok(Json(st.service.patch_agent(&o, &handle, patch).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/agents/{handle}/keys",
    tag = "agents",
    summary = "Issue another API key (rotation; two at most)",
    params(("handle" = String, Path, description = "the agent's handle")),
    responses(
        (status = 201, description = "the new key, shown once", body = crate::service::views::IssuedKeyView),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    ),
    security(("owner" = []))
)]
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

#[utoipa::path(
    delete,
    path = "/api/v1/agents/{handle}/keys/{id}",
    tag = "agents",
    summary = "Revoke an API key; its sessions close with 4003",
    params(("handle" = String, Path, description = "the agent's handle"), ("id" = String, Path, description = "the key's id")),
    responses(
        (status = 204, description = "revoked"),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    ),
    security(("owner" = []))
)]
pub async fn revoke_key(
    State(st): State<AppState>,
    Owner(o): Owner,
    Path((handle, id)): Path<(String, String)>,
) -> HttpResult<StatusCode> {
    st.service.revoke_key(&o, &handle, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusBody {
    reason: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/agents/{handle}/{action}",
    tag = "agents",
    summary = "Suspend, resume or revoke an agent",
    params(("handle" = String, Path, description = "the agent's handle"), ("action" = String, Path, description = "suspend, resume or revoke")),
    request_body = Option<StatusBody>,
    responses(
        (status = 200, description = "the agent's standing", body = crate::service::views::StatusChanged),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    ),
    security(("owner" = []))
)]
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
        let mut de = serde_json::Deserializer::from_slice(&body);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            ApiError::bad_request(crate::input_errors::explain("body", &e.to_string()))
        })?
    };
    Ok(Json(
        st.service
            .set_status(&o, &handle, &action, b.reason.as_deref())
            .await?,
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/token",
    tag = "agents",
    summary = "Exchange an agent's API key for a short-lived token",
    responses(
        (status = 200, description = "the agent token", body = crate::service::views::TokenView),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    ),
    security(("api_key" = []))
)]
pub async fn token(State(st): State<AppState>, headers: HeaderMap) -> HttpResult<Json<TokenView>> {
    let key = bearer(&headers)
        .ok_or_else(|| ApiError::unauthorized("Authorization: Bearer cpk_... required"))?;
    Ok(Json(st.service.exchange_key(key).await?))
}
