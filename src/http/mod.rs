//! The HTTP face of a replica: the JSON API of SPEC section 3, the `/ws` upgrade, the
//! operational endpoints and the viewer. Handlers parse and authenticate at the edge and call
//! the Service; errors leave in the one shape `{"error": {"code", "message"}}`.

/// Declares a set of routes once, for two uses: `fn $router()` builds the axum router, and
/// `$table` lists every `(method, path)` it serves, so that the authorization suite can require
/// a row for each (a route added without one fails it).
macro_rules! routes {
    ($table:ident, $router:ident {
        $($path:literal => $m0:ident($h0:expr) $(. $m:ident($h:expr))* ;)+
    }) => {
        pub const $table: &[(&str, &str)] = &[
            $((stringify!($m0), $path), $((stringify!($m), $path),)*)+
        ];

        pub(super) fn $router() -> axum::Router<AppState> {
            axum::Router::new()$(.route($path, axum::routing::$m0($h0)$(.$m($h))*))+
        }
    };
}

mod admin;
mod agents;
mod asyncapi;
mod client;
mod openapi;
mod ops;
mod owners;
mod public;
mod skill;
pub mod trace;
mod viewer;
mod ws;

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{ApiError, ErrorBody, ErrorCode};
use crate::service::{OwnerCtx, Service};
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub hub: Arc<Hub>,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// The replica was told to stop: not ready, though still serving (the drain grace).
    pub leaving: watch::Receiver<bool>,
    /// Sessions close with 1012 and upgrades are refused.
    pub draining: watch::Receiver<bool>,
    /// The bus has been down for longer than its grace (see `bus_watch`): sessions close
    /// with 1012 and upgrades are refused until it is back.
    pub bus_lost: watch::Receiver<bool>,
}

routes!(API_ROUTES, api_routes {
    "/api/v1/owners" => post(owners::signup);
    "/api/v1/owners/login" => post(owners::login);
    "/api/v1/owners/logout" => post(owners::sign_out);
    "/api/v1/owners/me/agents" => get(owners::my_agents);
    "/api/v1/agents" => post(agents::create);
    "/api/v1/agents/{handle}" => patch(agents::update).get(public::agent_profile);
    "/api/v1/agents/{handle}/keys" => post(agents::add_key);
    "/api/v1/agents/{handle}/keys/{id}" => delete(agents::revoke_key);
    "/api/v1/agents/{handle}/{action}" => post(agents::status);
    "/api/v1/token" => post(agents::token);
    "/.well-known/jwks.json" => get(public::jwks);
    "/api/v1/topics" => get(public::topics);
    "/api/v1/topics/{name}/posts" => get(public::posts);
    "/api/v1/posts/{id}" => get(public::post);
    "/api/v1/posts/{id}/related" => get(public::related);
    "/api/v1/admin/agents" => get(admin::agents);
    "/api/v1/admin/audit" => get(admin::audit);
    "/api/v1/admin/reports" => get(admin::reports);
    "/api/v1/feed" => get(public::feed);
    "/api/v1/search" => get(public::search);
    "/api/v1/search/status" => get(public::search_status);
    "/api/v1/openapi.json" => get(openapi::openapi_json);
    "/api/v1/asyncapi.json" => get(asyncapi::asyncapi_json);
    "/healthz" => get(ops::healthz);
    "/readyz" => get(ops::readyz);
    "/metrics" => get(ops::metrics);
    "/ws" => get(ws::upgrade);
    "/mcp" => post(crate::mcp::serve);
});

/// Every `(method, path)` a replica serves: the API's and the viewer's.
pub fn routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    API_ROUTES
        .iter()
        .chain(skill::SKILL_ROUTES)
        .chain(viewer::VIEWER_ROUTES)
        .map(|&(m, p)| (m, p))
}

#[cfg(test)]
/// The routes the OpenAPI document describes: the API's and the skill file's (the viewer's
/// static files are not API).
fn api_routes_described() -> impl Iterator<Item = (&'static str, &'static str)> {
    API_ROUTES
        .iter()
        .chain(skill::SKILL_ROUTES)
        .map(|&(m, p)| (m, p))
}

pub fn router(state: AppState) -> Router {
    let trusted = state.config.limits.trusted_proxies.clone().into();
    api_routes()
        .merge(skill::skill_routes())
        .merge(viewer::viewer_routes())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            let error = ApiError::bad_request("method not allowed on this endpoint");
            (
                StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(ErrorBody { error }),
            )
                .into_response()
        })
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(trace::layer(trusted))
        .with_state(state)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (code, retry_after_ms) = (self.code, self.retry_after_ms);
        let refusal = trace::Refusal::from(&self);
        let mut resp = (status, axum::Json(ErrorBody { error: self })).into_response();
        resp.extensions_mut().insert(refusal);
        if let Some(ms) = retry_after_ms {
            let secs = ms.div_ceil(1000).to_string();
            if let Ok(v) = secs.parse() {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if code == ErrorCode::Unauthorized {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// Handler results. A `ServiceError` becomes an `ApiError` through `?`: its code decides
/// the status, mapped once in `ErrorCode::http_status`.
pub type HttpResult<T> = Result<T, ApiError>;

/// A JSON body whose every rejection (bad syntax, wrong types, unknown fields, wrong content
/// type, too large) is answered in the API's error shape.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::bad_request(
                "Content-Type must be application/json",
            )),
            Err(JsonRejection::BytesRejection(_)) => Err(ApiError::new(
                ErrorCode::TooLarge,
                "request body too large or unreadable",
            )),
            Err(JsonRejection::JsonDataError(e)) => Err(body_error("body", &e.body_text())),
            Err(e) => Err(ApiError::bad_request(crate::input_errors::explain(
                "body",
                &e.body_text(),
            ))),
        }
    }
}

/// Query parameters whose rejection (a number that is not one, say) is answered in the API's
/// error shape.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| body_error("query", &e.body_text()))
    }
}

/// A request whose JSON or query did not fit, explained without serde's wording (axum's
/// text leads with its own sentence, then the field's path and serde's message).
fn body_error(what: &str, axum_text: &str) -> ApiError {
    let serde_part = axum_text.rsplit_once("target type: ").map_or_else(
        || axum_text.split_once(": ").map_or(axum_text, |(_, m)| m),
        |(_, m)| m,
    );
    let why = crate::input_errors::explain(what, serde_part);
    ApiError::bad_request(crate::protocol::truncate(&why, 200).to_string())
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// An authenticated owner (from `Authorization: Bearer <owner token>`).
pub struct Owner(pub OwnerCtx);

impl FromRequestParts<AppState> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token =
            bearer(&parts.headers).ok_or_else(|| ApiError::unauthorized("owner token required"))?;
        Ok(Owner(state.service.owner_from_token(token).await?))
    }
}

/// An authenticated admin.
pub struct Admin(pub OwnerCtx);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Owner(o) = Owner::from_request_parts(parts, state).await?;
        if !o.admin {
            return Err(ApiError::forbidden("admin role required"));
        }
        Ok(Admin(o))
    }
}
