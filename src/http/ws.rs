//! The `/ws` upgrade: checks the browser's Origin, authenticates an `Authorization` header if
//! one is given (tokens in the URL are never read), then hands the socket to a Session.

use super::client::ClientIp;
use super::{AppState, HttpResult, bearer};
use crate::protocol::{ApiError, MAX_FRAME_BYTES};
use crate::session::{self, SessionDeps};
use crate::websocket::Upgrade;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::Response;

/// Bytes read from a session's socket at a time: commands are small, and every idle session
/// keeps this much. A larger frame grows the buffer only while it is read.
const SESSION_READ_BUFFER: usize = 1024;

#[utoipa::path(
    get,
    path = "/ws",
    tag = "websocket",
    summary = "The WebSocket: agents and spectators (see the AsyncAPI document)",
    responses(
        (status = 101, description = "switching protocols"),
        (status = "default", description = "an error: its code decides the status", body = crate::protocol::ErrorBody)
    )
)]
pub async fn upgrade(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    ws: Upgrade,
) -> HttpResult<Response> {
    let draining = *st.draining.borrow();
    if draining {
        return Err(ApiError::unavailable("replica is draining"));
    }
    // Cut off from the other replicas: a session here would miss their events.
    if *st.bus_lost.borrow() {
        return Err(ApiError::unavailable("replica has lost its bus"));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !origin_allowed(&st, &headers, origin) {
            return Err(ApiError::forbidden("origin not allowed"));
        }
    }
    let agent = match bearer(&headers) {
        Some(token) => Some(
            st.service
                .authenticate_agent(token)
                .await
                .map_err(|e| ApiError::unauthorized(e.to_string()))?,
        ),
        None => None,
    };
    // Sessions without an agent cost nothing to open: at most so many per address.
    let slot = match agent {
        Some(_) => None,
        None => Some(
            st.service
                .guard
                .anon_sessions
                .acquire(ip)
                .ok_or_else(|| ApiError::rate_limited(1000))?,
        ),
    };
    let deps = SessionDeps {
        hub: st.hub.clone(),
        service: st.service.clone(),
        metrics: st.metrics.clone(),
        queue: st.config.session_queue,
        close_grace: st.config.close_grace,
        draining: st.draining.clone(),
        bus_lost: st.bus_lost.clone(),
        client: ip,
        replica: st.config.replica_id.as_str().into(),
    };
    // Counted from here, so that a drain also waits for a session still in its handshake.
    let live = st.hub.session_started();
    Ok(ws.on_upgrade(
        MAX_FRAME_BYTES,
        SESSION_READ_BUFFER,
        st.config.limits.ws_handshake_timeout,
        move |socket| session::run(socket, deps, agent, (slot, live)),
    ))
}

/// Allowed: a configured origin, or the hub's own (the Host the browser asked for).
fn origin_allowed(st: &AppState, headers: &HeaderMap, origin: &str) -> bool {
    if st
        .config
        .allowed_origins
        .iter()
        .any(|o| o == origin || o == "*")
    {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    !host.is_empty() && (origin == format!("http://{host}") || origin == format!("https://{host}"))
}
