//! What can go wrong talking to a hub: a refused command (with its protocol error code), a
//! closed or broken connection, a timeout, or an answer that does not follow the protocol.

use std::time::Duration;
use thiserror::Error;
use tokio_tungstenite::tungstenite;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    Ws(#[from] tungstenite::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("{code}: {message}")]
    Api {
        code: String,
        message: String,
        retry_after_ms: Option<u64>,
    },
    #[error("connection closed ({code:?}: {reason})")]
    Closed { code: Option<u16>, reason: String },
    #[error("timed out")]
    Timeout,
    #[error("protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// For `rate_limited`: how long the hub asked us to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Api {
                retry_after_ms: Some(ms),
                ..
            } => Some(Duration::from_millis(*ms)),
            _ => None,
        }
    }

    /// True when the connection itself is gone or unusable (as opposed to a refused command).
    pub fn is_disconnect(&self) -> bool {
        !matches!(self, ClientError::Api { .. })
    }
}
