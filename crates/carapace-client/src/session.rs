//! One WebSocket session with a hub: connect (optionally with a token), send commands and
//! await their replies, read pushes, remember the last `seq` per channel so that a reconnect
//! can resubscribe with `since`.

use crate::error::ClientError;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One event pushed by the hub.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub channel: String,
    pub seq: u64,
    pub event: String,
    pub data: Value,
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    pushes: VecDeque<Push>,
    /// Last seq seen per channel, for resuming with `since`.
    pub last_seq: HashMap<String, u64>,
    /// The close frame, once the hub closed the connection.
    pub closed: Option<(Option<u16>, String)>,
}

/// How long `command` waits for its reply, and `http` for its answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// Connects to `ws_url` (e.g. `ws://127.0.0.1:8080/ws`), with `Authorization: Bearer` when
    /// a token is given.
    pub async fn connect(ws_url: &str, token: Option<&str>) -> Result<Client, ClientError> {
        let mut req = ws_url.into_client_request()?;
        if let Some(t) = token {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| ClientError::Protocol("token is not a valid header value".into()))?;
            req.headers_mut().insert("authorization", v);
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Client {
            ws,
            next_id: 1,
            pushes: VecDeque::new(),
            last_seq: HashMap::new(),
            closed: None,
        })
    }

    /// Sends a raw text frame (tests use it for hostile input).
    pub async fn send_raw(&mut self, text: impl Into<String>) -> Result<(), ClientError> {
        self.ws.send(Message::text(text.into())).await?;
        Ok(())
    }

    /// Sends `{"id", "op", ...fields}` and waits for its reply; pushes read meanwhile are kept.
    pub async fn command(&mut self, op: &str, fields: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = match fields {
            Value::Object(m) => m,
            Value::Null => serde_json::Map::new(),
            _ => return Err(ClientError::Protocol("fields must be an object".into())),
        };
        frame.insert("id".into(), id.into());
        frame.insert("op".into(), op.into());
        self.ws
            .send(Message::text(Value::Object(frame).to_string()))
            .await?;
        self.await_reply(&Value::from(id), DEFAULT_TIMEOUT).await
    }

    /// Waits for the reply with this id.
    pub async fn await_reply(
        &mut self,
        id: &Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.read_frame(deadline).await?;
            if v.get("id") == Some(id) && (v.get("result").is_some() || v.get("error").is_some()) {
                return reply_result(v);
            }
            self.keep_push(v);
        }
    }

    fn keep_push(&mut self, v: Value) {
        if let Some(p) = parse_push(&v) {
            self.pushes.push_back(p);
        }
    }

    /// The next frame as JSON, or the close.
    async fn read_frame(&mut self, deadline: tokio::time::Instant) -> Result<Value, ClientError> {
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(ClientError::Timeout),
                Ok(None) => return Err(self.closed_error()),
                Ok(Some(Err(e))) => {
                    if self.closed.is_some() {
                        return Err(self.closed_error());
                    }
                    return Err(e.into());
                }
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    return serde_json::from_str(t.as_str())
                        .map_err(|e| ClientError::Protocol(format!("bad JSON from hub: {e}")));
                }
                Message::Close(frame) => {
                    self.closed = Some(close_parts(frame));
                    return Err(self.closed_error());
                }
                _ => {}
            }
        }
    }

    fn closed_error(&self) -> ClientError {
        match &self.closed {
            Some((code, reason)) => ClientError::Closed {
                code: *code,
                reason: reason.clone(),
            },
            None => ClientError::Closed {
                code: None,
                reason: "connection ended without a close frame".into(),
            },
        }
    }

    /// Whether the connection is still open, without waiting and without taking anything:
    /// a push that was waiting is kept for `next_push`.
    pub async fn is_open(&mut self) -> bool {
        if self.closed.is_some() {
            return false;
        }
        match self.read_frame(tokio::time::Instant::now()).await {
            Ok(v) => {
                self.keep_push(v);
                true
            }
            Err(ClientError::Timeout) => true,
            Err(_) => false,
        }
    }

    /// The next push, waiting up to `timeout`.
    pub async fn next_push(&mut self, timeout: Duration) -> Result<Push, ClientError> {
        if let Some(p) = self.pushes.pop_front() {
            self.note(&p);
            return Ok(p);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.read_frame(deadline).await?;
            if let Some(p) = parse_push(&v) {
                self.note(&p);
                return Ok(p);
            }
        }
    }

    /// Collects pushes until `n` have arrived or `timeout` passes.
    pub async fn pushes(&mut self, n: usize, timeout: Duration) -> Vec<Push> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::with_capacity(n.min(1024));
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_push(left).await {
                Ok(p) => out.push(p),
                Err(_) => break,
            }
        }
        out
    }

    fn note(&mut self, p: &Push) {
        let e = self.last_seq.entry(p.channel.clone()).or_insert(0);
        *e = (*e).max(p.seq);
    }

    /// Subscribes; with `since`, the missed events follow as pushes. Without it, the reply's
    /// `seq` (the channel's last event) is remembered as seen, so that a resubscription after
    /// a disconnect recovers what was published meanwhile even if no push arrived before.
    pub async fn subscribe(
        &mut self,
        channel: &str,
        since: Option<u64>,
    ) -> Result<Value, ClientError> {
        let mut f = json!({"channel": channel});
        if let Some(s) = since {
            f["since"] = s.into();
        }
        let r = self.command("subscribe", f).await?;
        if since.is_none()
            && let Some(seq) = r.get("seq").and_then(Value::as_u64)
        {
            let e = self.last_seq.entry(channel.to_string()).or_insert(0);
            *e = (*e).max(seq);
        }
        Ok(r)
    }

    /// Waits for the hub to close the connection and returns the close code.
    pub async fn closed_with(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.read_frame(deadline).await {
                Ok(v) => self.keep_push(v),
                Err(ClientError::Closed { code, .. }) => return code,
                Err(_) => return self.closed.as_ref().and_then(|c| c.0),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

fn close_parts(frame: Option<CloseFrame>) -> (Option<u16>, String) {
    match frame {
        Some(f) => (Some(f.code.into()), f.reason.to_string()),
        None => (None, String::new()),
    }
}

fn reply_result(v: Value) -> Result<Value, ClientError> {
    if let Some(e) = v.get("error") {
        return Err(ClientError::Api {
            code: e["code"].as_str().unwrap_or("").to_string(),
            message: e["message"].as_str().unwrap_or("").to_string(),
            retry_after_ms: e["retry_after_ms"].as_u64(),
        });
    }
    Ok(v["result"].clone())
}

fn parse_push(v: &Value) -> Option<Push> {
    Some(Push {
        channel: v.get("channel")?.as_str()?.to_string(),
        seq: v.get("seq")?.as_u64()?,
        event: v.get("event")?.as_str()?.to_string(),
        data: v.get("data")?.clone(),
    })
}
