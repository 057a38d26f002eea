//! One `request` span per HTTP request (method, matched route, client address, then status
//! and latency), and its one line: `request refused` for every answer of 400 or more, with
//! the API's error code and its reason, at the level `telemetry::refusal_level` gives it;
//! other answers at debug. Never the query string (it can carry a token) nor a body.
//! `/healthz`, `/readyz` and `/metrics` get a debug span: probes must not flood the logs.

use super::client::client_ip;
use crate::protocol::{ApiError, ErrorCode};
use crate::telemetry::{event_at, refusal_level, scrub};
use axum::extract::{ConnectInfo, MatchedPath};
use axum::http::{Request, Response};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::Span;
use tracing::field::Empty;

/// Routes probed often enough that their spans stay at debug.
const PROBES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Longest unmatched path kept in a span (a 404's path is the client's to choose).
const MAX_UNMATCHED: usize = 64;

/// Why a response refused its request, put beside it by `ApiError::into_response` for the
/// line that logs it.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: ErrorCode,
    pub reason: String,
}

impl From<&ApiError> for Refusal {
    fn from(e: &ApiError) -> Self {
        Refusal {
            code: e.code,
            reason: e.message.clone(),
        }
    }
}

pub type Layer =
    TraceLayer<SharedClassifier<ServerErrorsAsFailures>, RequestSpan, (), Outcome, (), (), ()>;

/// The layer for the router; `trusted` are the proxies whose `X-Forwarded-For` is believed.
pub fn layer(trusted: Arc<[IpAddr]>) -> Layer {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan { trusted })
        .on_request(())
        .on_response(Outcome)
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
}

#[derive(Clone)]
pub struct RequestSpan {
    trusted: Arc<[IpAddr]>,
}

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, req: &Request<B>) -> Span {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let remote = client_ip(peer, req.headers(), &self.trusted);
        let method = req.method().as_str();
        match req
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str)
        {
            Some(route) if PROBES.contains(&route) => tracing::debug_span!(
                "request", method, route, %remote, status = Empty, latency_ms = Empty
            ),
            Some(route) => tracing::info_span!(
                "request", method, route, %remote, status = Empty, latency_ms = Empty
            ),
            None => {
                let path = unmatched(req.uri().path());
                tracing::info_span!(
                    "request", method, route = %path, %remote, status = Empty, latency_ms = Empty
                )
            }
        }
    }
}

/// A path no route matched, cut short and rid of anything shaped like a secret.
fn unmatched(path: &str) -> String {
    let clean = scrub(path);
    crate::protocol::truncate(&clean, MAX_UNMATCHED).to_string()
}

#[derive(Clone)]
pub struct Outcome;

impl<B> OnResponse<B> for Outcome {
    fn on_response(self, resp: &Response<B>, latency: Duration, span: &Span) {
        let status = resp.status().as_u16();
        span.record("status", status);
        span.record("latency_ms", latency.as_micros() as f64 / 1000.0);
        if status < 400 {
            tracing::debug!("request done");
            return;
        }
        let (code, reason) = match resp.extensions().get::<Refusal>() {
            Some(r) => (r.code, scrub(&r.reason)),
            None => (code_for_status(status), "".into()),
        };
        event_at!(
            refusal_level(code),
            error = code.as_str(),
            reason = %reason,
            "request refused"
        );
    }
}

/// The error code of a refusal that did not come from an `ApiError` (axum's own answers).
fn code_for_status(status: u16) -> ErrorCode {
    match status {
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        409 => ErrorCode::Conflict,
        413 => ErrorCode::TooLarge,
        429 => ErrorCode::RateLimited,
        503 => ErrorCode::Unavailable,
        500..=599 => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    }
}
