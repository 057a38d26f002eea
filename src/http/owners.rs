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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignupBody {
    handle: String,
    email: String,
    password: String,
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    email: String,
    password: String,
}

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

/// Ends every owner token this owner holds, the one presented included.
pub async fn sign_out(State(st): State<AppState>, Owner(o): Owner) -> HttpResult<StatusCode> {
    st.service.sign_out(&o).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn my_agents(State(st): State<AppState>, Owner(o): Owner) -> HttpResult<Json<AgentList>> {
    let hub = st.hub.clone();
    Ok(Json(
        st.service
            .owner_agents(&o, &move |id| hub.live_sessions(id))
            .await?,
    ))
}
