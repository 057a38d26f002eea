//! Operational endpoints: liveness, readiness (database, bus, draining) and metrics.

use super::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(st): State<AppState>) -> (StatusCode, String) {
    let draining = *st.draining.borrow();
    if draining {
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

pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(&st.config.replica_id),
    )
}
