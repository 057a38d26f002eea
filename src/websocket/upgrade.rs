//! The HTTP/1.1 upgrade (RFC 6455 section 4.2): the request's checks, the 101 answer, and the
//! connection handed over as a reader and a writer that run on their own tasks.

use super::{FrameReader, FrameWriter};
use crate::protocol::ApiError;
use crate::server::{Conn, ResetOnDrop, handshake_left};
use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::Response;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A checked upgrade request, answered by `on_upgrade`.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    /// The connection it came on (absent only outside the hub's own server).
    conn: Option<Conn>,
}

/// The upgraded connection, as halves for the session's reader and writer tasks.
pub struct Socket {
    pub reader: FrameReader,
    pub writer: FrameWriter,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let bad = |why: &str| ApiError::bad_request(why.to_string());
        if parts.version != Version::HTTP_11 || parts.method != Method::GET {
            return Err(bad("a WebSocket upgrade is an HTTP/1.1 GET"));
        }
        let h = &parts.headers;
        if !has_token(h, header::CONNECTION, "upgrade")
            || !has_token(h, header::UPGRADE, "websocket")
        {
            return Err(bad("expected Connection: upgrade and Upgrade: websocket"));
        }
        if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
            return Err(bad("Sec-WebSocket-Version must be 13"));
        }
        let key = h
            .get(header::SEC_WEBSOCKET_KEY)
            .filter(|k| !k.is_empty())
            .cloned()
            .ok_or_else(|| bad("Sec-WebSocket-Key is missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| bad("this connection cannot be upgraded"))?;
        let conn = parts.extensions.get::<Conn>().cloned();
        Ok(Upgrade {
            key,
            on_upgrade,
            conn,
        })
    }
}

impl Upgrade {
    /// The 101 answer; once the client has it, `session` runs with the connection. Frames
    /// and messages over `max` bytes are refused; the socket is read `read_size` bytes at a
    /// time. An upgrade not complete within `handshake` of the TCP accept is dropped.
    pub fn on_upgrade<F, Fut>(
        self,
        max: usize,
        read_size: usize,
        handshake: Duration,
        session: F,
    ) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let left = handshake_left(self.conn.as_ref(), handshake);
        let conn = self.conn;
        // The request's span, for a handshake that fails after the 101; dropped once it is done.
        let request = tracing::Span::current();
        tokio::spawn(async move {
            let upgraded = match tokio::time::timeout(left, self.on_upgrade).await {
                Ok(Ok(upgraded)) => upgraded,
                Ok(Err(e)) => {
                    tracing::debug!(parent: &request, error = %e, "websocket upgrade did not complete");
                    return;
                }
                Err(_) => {
                    tracing::debug!(parent: &request, "websocket handshake timed out");
                    return;
                }
            };
            drop(request);
            // From here the session's own rules (pings, token expiry) keep it honest.
            let reset = conn.map(|c| {
                c.upgraded();
                c.reset_on_drop()
            });
            // The session gets a task of its own: this one's state (the closure's captures,
            // the handshake's timer) is freed now instead of staying beside the session for
            // as long as it lives.
            tokio::spawn(session(Socket::new(upgraded, max, read_size, reset)));
        });
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(self.key.as_bytes())) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        resp
    }
}

impl Socket {
    fn new(upgraded: Upgraded, max: usize, read_size: usize, reset: Option<ResetOnDrop>) -> Socket {
        // `axum::serve` hands hyper its connection wrapped in a type of its own, so the
        // upgraded connection cannot be taken back as a bare `TcpStream` and split without a
        // lock; tokio's split locks only for the length of one read or write call, and the
        // reader and writer rarely contend. Bytes read past the request come first through
        // `Upgraded`.
        let (r, w) = tokio::io::split(TokioIo::new(upgraded));
        Socket {
            reader: FrameReader::new(Box::new(r), max, read_size),
            writer: FrameWriter::new(Box::new(w)).with_reset(reset),
        }
    }
}

/// Whether the comma-separated header `name` lists `token`, in any case.
fn has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_upgrade_tokens_match_in_any_case_and_position() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        assert!(has_token(&h, header::UPGRADE, "websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrades"));
        assert!(!has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, header::SEC_WEBSOCKET_KEY, "x"));
    }
}
