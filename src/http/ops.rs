//! Operational endpoints: liveness, readiness (database, bus, draining) and metrics.

use super::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness",
    responses(
        (status = 200, description = "alive", body = String, content_type = "text/plain"),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    )
)]
pub async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: database, bus, not draining",
    responses(
        (status = 200, description = "ready", body = String, content_type = "text/plain"),
        (status = 503, description = "not ready, or draining", body = String, content_type = "text/plain"),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    )
)]
pub async fn readyz(State(st): State<AppState>) -> (StatusCode, String) {
    let stopping = *st.leaving.borrow() || *st.draining.borrow();
    if stopping {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    let db = st.service.store.ping().await;
    let bus = st.service.bus.healthy().await;
    if db && bus {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database: {}, bus: {}\n", ok(db), ok(bus)),
        )
    }
}

fn ok(b: bool) -> &'static str {
    if b { "ok" } else { "down" }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses(
        (status = 200, description = "the metrics", body = String, content_type = "text/plain"),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    )
)]
pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(&st.config.replica_id),
    )
}
