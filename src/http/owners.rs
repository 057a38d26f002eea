//! Owner signup, login, sign-out and the owner's access review.

use super::client::ClientIp;
use super::{AppState, HttpResult, JsonBody, Owner};
use crate::protocol::ApiError;
use crate::ratelimit::Action;
use crate::service::views::{AgentList, OwnerCreated, TokenView};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupBody {
    handle: String,
    email: String,
    password: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/owners",
    tag = "owners",
    summary = "Sign up as an owner (open signup)",
    request_body = SignupBody,
    responses(
        (status = 201, description = "created (also for an email already registered: nothing is then created)", body = crate::service::views::OwnerCreated),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    )
)]
pub async fn signup(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(b): JsonBody<SignupBody>,
) -> HttpResult<(StatusCode, Json<OwnerCreated>)> {
    if !st.config.open_signup {
        return Err(ApiError::forbidden("signup is closed; ask an operator"));
    }
    st.service
        .limit_key(&ip.to_string(), Action::Signup)
        .await?;
    let v = st
        .service
        .signup(&b.handle, &b.email, &b.password, false, "anonymous")
        .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    email: String,
    password: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/owners/login",
    tag = "owners",
    summary = "Log in: an owner token, valid one hour",
    request_body = LoginBody,
    responses(
        (status = 200, description = "the owner token", body = crate::service::views::TokenView),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    )
)]
pub async fn login(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(b): JsonBody<LoginBody>,
) -> HttpResult<Json<TokenView>> {
    Ok(Json(
        st.service
            .login(&b.email, &b.password, &ip.to_string())
            .await?,
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/owners/logout",
    tag = "owners",
    summary = "End every owner token of this owner",
    responses(
        (status = 204, description = "signed out"),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    ),
    security(("owner" = []))
)]
/// Ends every owner token this owner holds, the one presented included.
pub async fn sign_out(State(st): State<AppState>, Owner(o): Owner) -> HttpResult<StatusCode> {
    st.service.sign_out(&o).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/owners/me/agents",
    tag = "owners",
    summary = "The access review: the owner's agents, keys and live sessions",
    responses(
        (status = 200, description = "the owner's agents", body = crate::service::views::AgentList),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    ),
    security(("owner" = []))
)]
pub async fn my_agents(State(st): State<AppState>, Owner(o): Owner) -> HttpResult<Json<AgentList>> {
    let hub = st.hub.clone();
    Ok(Json(
        st.service
            .owner_agents(&o, &move |id| hub.live_sessions(id))
            .await?,
    ))
}
