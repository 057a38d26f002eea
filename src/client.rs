//! A small client of the Carapace protocol over tokio-tungstenite, used by the tests, the
//! demo agents, `carapace agent` and the bench: connect (optionally with a token), send
//! commands and await their replies, read pushes, remember the last `seq` per channel so a
//! reconnect can resubscribe with `since`. Also a minimal HTTP/1.1 JSON caller for the API
//! (plain `http://` only: the client talks to a hub on a trusted network or loopback).

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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

/// The answer to an HTTP call: status and JSON body (`Null` when empty or not JSON).
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request to `base` (`http://host:port`) with an optional bearer token and
/// JSON body; the connection closes after the answer.
pub async fn http(
    base: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Result<HttpReply, ClientError> {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    request(base, method, path, &headers, body, DEFAULT_TIMEOUT).await
}

/// Splits `http://host:port/some/path` into (`http://host:port`, `/some/path`).
pub fn split_url(url: &str) -> Result<(String, String), ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::Protocol(format!("only http:// URLs are supported: {url}")))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(ClientError::Protocol(format!("no host in {url}")));
    }
    Ok((format!("http://{host}"), path.to_string()))
}

/// Like [`http`], with any headers and a timeout of the caller's choosing (an LLM endpoint
/// may take far longer than the hub).
pub async fn request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
    timeout: Duration,
) -> Result<HttpReply, ClientError> {
    let host = base
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::Protocol("only http:// is supported".into()))?
        .trim_end_matches('/');
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    for (k, v) in headers {
        if k.contains(['\r', '\n', ':']) || v.contains(['\r', '\n']) {
            return Err(ClientError::Protocol(format!("invalid header {k}")));
        }
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PATCH" | "PUT") {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let fut = async {
        let mut s = TcpStream::connect(host).await?;
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, ClientError>(buf)
    };
    let buf = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ClientError::Timeout)??;
    parse_http(&buf)
}

fn parse_http(buf: &[u8]) -> Result<HttpReply, ClientError> {
    let bad = || ClientError::Protocol("malformed HTTP response".into());
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&buf[..split]).map_err(|_| bad())?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body).ok_or_else(bad)?;
    }
    Ok(HttpReply {
        status,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        headers,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..nl]).ok()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Signs up an owner (ignoring "already registered"), logs in and returns the owner token.
pub async fn owner_token(
    base: &str,
    handle: &str,
    email: &str,
    password: &str,
) -> Result<String, ClientError> {
    http(
        base,
        "POST",
        "/api/v1/owners",
        None,
        Some(&json!({"handle": handle, "email": email, "password": password})),
    )
    .await?;
    let r = http(
        base,
        "POST",
        "/api/v1/owners/login",
        None,
        Some(&json!({"email": email, "password": password})),
    )
    .await?;
    r.body["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ClientError::Protocol(format!("login failed: {} {}", r.status, r.body)))
}

/// Creates an agent for the owner and returns its API key.
pub async fn create_agent(
    base: &str,
    owner_token: &str,
    spec: &Value,
) -> Result<String, ClientError> {
    let r = http(
        base,
        "POST",
        "/api/v1/agents",
        Some(owner_token),
        Some(spec),
    )
    .await?;
    r.body["api_key"]["key"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| {
            ClientError::Protocol(format!("agent creation failed: {} {}", r.status, r.body))
        })
}

/// Exchanges an API key for an agent JWT.
pub async fn agent_token(base: &str, api_key: &str) -> Result<String, ClientError> {
    let r = http(base, "POST", "/api/v1/token", Some(api_key), None).await?;
    r.body["token"].as_str().map(str::to_string).ok_or_else(|| {
        ClientError::Protocol(format!("token exchange failed: {} {}", r.status, r.body))
    })
}
