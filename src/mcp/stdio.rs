//! `carapace mcp`: MCP over stdio for a local agent host, bridged to a hub's `/mcp`. Each
//! newline-delimited JSON-RPC message from the host is posted to the hub with the agent's API
//! key; the hub's answer goes back as one line. The tools live in the hub alone, so the
//! bridge needs no knowledge of them. Messages are forwarded one at a time, in order.

use carapace_client::{ClientError, HttpReply, request, split_url};
use serde_json::{Value, json};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// How long one tool call may take at the hub before the host is told it failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// JSON-RPC's code for an error of the server's own (the hub refused, or was unreachable).
const SERVER_ERROR: i64 = -32000;
const PARSE_ERROR: i64 = -32700;

#[derive(Debug, Error)]
pub enum BridgeError {
    #[error("the hub address: {0}")]
    Hub(#[from] ClientError),
    #[error("stdio: {0}")]
    Io(#[from] std::io::Error),
}

/// The hub's `/mcp` endpoint and the key that authenticates every message.
pub struct Bridge {
    base: String,
    path: String,
    key: String,
    /// The protocol version the host negotiated, sent with each later request as Streamable
    /// HTTP asks.
    protocol_version: Option<String>,
}

impl Bridge {
    /// `hub` is `http://host:port` (a trailing path is kept: a hub behind a prefix).
    pub fn new(hub: &str, key: &str) -> Result<Bridge, BridgeError> {
        let (base, prefix) = split_url(hub.trim_end_matches('/'))?;
        let path = format!("{}/mcp", prefix.trim_end_matches('/'));
        Ok(Bridge {
            base,
            path,
            key: key.trim().to_string(),
            protocol_version: None,
        })
    }

    /// Forwards every message on `input` until it ends; answers go to `output`.
    pub async fn run(
        mut self,
        input: impl AsyncBufRead + Unpin,
        mut output: impl AsyncWrite + Unpin,
    ) -> Result<(), BridgeError> {
        let mut lines = input.lines();
        while let Some(line) = lines.next_line().await? {
            if line.trim().is_empty() {
                continue;
            }
            let answer = match serde_json::from_str::<Value>(&line) {
                Ok(message) => self.forward(&message).await,
                Err(e) => Some(error(Value::Null, PARSE_ERROR, &format!("not JSON: {e}"))),
            };
            if let Some(answer) = answer {
                let mut text = answer.to_string();
                text.push('\n');
                output.write_all(text.as_bytes()).await?;
                output.flush().await?;
            }
        }
        Ok(())
    }

    /// One message to the hub; the line to send back, if the message expects one.
    async fn forward(&mut self, message: &Value) -> Option<Value> {
        let id = message.get("id").cloned();
        let auth = format!("Bearer {}", self.key);
        let mut headers = vec![
            ("Authorization", auth.as_str()),
            ("Accept", "application/json, text/event-stream"),
        ];
        if let Some(v) = &self.protocol_version {
            headers.push(("MCP-Protocol-Version", v.as_str()));
        }
        let reply = request(
            &self.base,
            "POST",
            &self.path,
            &headers,
            Some(message),
            CALL_TIMEOUT,
        )
        .await;
        let answer = match reply {
            Ok(r) if r.status == 200 && r.body.get("jsonrpc").is_some() => r.body,
            Ok(r) if r.status == 202 => return None,
            Ok(r) => refusal(id.clone()?, &r),
            Err(e) => error(id.clone()?, SERVER_ERROR, &format!("hub unreachable: {e}")),
        };
        if message.get("method").and_then(Value::as_str) == Some("initialize")
            && let Some(v) = answer["result"]["protocolVersion"].as_str()
        {
            self.protocol_version = Some(v.to_string());
        }
        // A notification gets no answer, whatever the hub said.
        id.map(|_| answer)
    }
}

/// A refusal by the hub as a JSON-RPC error: the hub's own JSON-RPC error when it sent one
/// (a malformed message), else its API error (`unauthorized: invalid, expired or revoked API
/// key`), else the status.
fn refusal(id: Value, r: &HttpReply) -> Value {
    if r.body.get("jsonrpc").is_some() {
        return r.body.clone();
    }
    let hub = &r.body["error"];
    let message = match (hub["code"].as_str(), hub["message"].as_str()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        _ => format!("the hub answered HTTP {}", r.status),
    };
    error(id, SERVER_ERROR, &message)
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}
