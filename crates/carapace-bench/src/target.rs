//! The targets the bench drives, behind one connection type: Carapace (agents post with the
//! `post` op, spectators subscribe to `topic:<name>`), Socket.IO 4 (Engine.IO v4 / Socket.IO
//! v5 text framing over the WebSocket transport, spoken here directly), NATS (its text
//! protocol over its WebSocket listener) and the raw broadcast server of `raw.rs`. The same
//! workload runs against each; only the framing differs.

use crate::BenchError;
use crate::wire::{self, Mark, Ws};
use carapace_client as client;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// How long one setup step (a handshake, a subscription) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes of NATS protocol kept while waiting for the rest of a message.
const NATS_BUF_MAX: usize = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    Carapace,
    Socketio,
    Nats,
    Raw,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Carapace => "carapace",
            TargetKind::Socketio => "socketio",
            TargetKind::Nats => "nats",
            TargetKind::Raw => "raw",
        }
    }

    fn path(self) -> &'static str {
        match self {
            TargetKind::Carapace => "/ws",
            TargetKind::Socketio => "/socket.io/?EIO=4&transport=websocket",
            TargetKind::Nats | TargetKind::Raw => "/",
        }
    }
}

/// What setting a target up produced: the topics (rooms, subjects) and, for Carapace, the
/// agents' JWTs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: TargetKind,
    /// The first topic; the only one unless `--topics` asked for more.
    pub topic: String,
    /// Every topic of the run (at least one); publisher and subscriber `i` use `i % len`.
    pub topics: Vec<String>,
    pub tokens: Vec<String>,
    /// The agents' API keys, for fresh tokens on a long run (Carapace).
    pub keys: Vec<String>,
}

impl Plan {
    /// The topic of publisher or subscriber `i` (round robin).
    pub fn topic_of(&self, i: usize) -> &str {
        &self.topics[i % self.topics.len()]
    }

    /// The token of agent `i` (round robin), for Carapace.
    pub fn token(&self, i: usize) -> Option<&str> {
        if self.tokens.is_empty() {
            None
        } else {
            Some(&self.tokens[i % self.tokens.len()])
        }
    }
}

fn rand_hex() -> String {
    let mut b = [0u8; 5];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

/// Sets the target up for a run: for Carapace an owner, `agents` agents with `post` and
/// `topic:create`, their JWTs and `topics` fresh topics, all through the HTTP API and the
/// protocol.
pub async fn prepare(
    kind: TargetKind,
    addr: SocketAddr,
    agents: usize,
    topics: usize,
) -> Result<Plan, BenchError> {
    let run = rand_hex();
    let topic = format!("bench-{run}");
    let topics: Vec<String> = if topics <= 1 {
        vec![topic.clone()]
    } else {
        (0..topics).map(|k| format!("bench-{run}-{k}")).collect()
    };
    if kind != TargetKind::Carapace {
        return Ok(Plan {
            kind,
            topic: topics[0].clone(),
            topics,
            tokens: Vec::new(),
            keys: Vec::new(),
        });
    }
    let base = format!("http://{addr}");
    let setup = |e: client::ClientError| BenchError::Setup(e.to_string());
    let owner = client::owner_token(
        &base,
        &format!("bench_{run}"),
        &format!("bench_{run}@bench.invalid"),
        "bench password, loopback only",
    )
    .await
    .map_err(setup)?;
    let mut tokens = Vec::with_capacity(agents);
    let mut keys = Vec::with_capacity(agents);
    for i in 0..agents.max(1) {
        let handle = format!("b{run}_{i}");
        let key = client::create_agent(
            &base,
            &owner,
            &json!({"handle": handle, "name": handle, "bio": "bench publisher",
                    "scopes": ["read", "post", "topic:create"], "topics": ["*"]}),
        )
        .await
        .map_err(setup)?;
        tokens.push(client::agent_token(&base, &key).await.map_err(setup)?);
        keys.push(key);
    }
    let mut c = client::Client::connect(
        &format!("ws://{addr}/ws"),
        tokens.first().map(|t| t.as_str()),
    )
    .await
    .map_err(setup)?;
    for t in &topics {
        c.command(
            "topic.create",
            json!({"name": t, "title": "bench", "description": "carapace bench"}),
        )
        .await
        .map_err(setup)?;
    }
    c.close().await;
    Ok(Plan {
        kind,
        topic: topics[0].clone(),
        topics,
        tokens,
        keys,
    })
}

/// What handling one incoming message asks of the caller.
#[derive(Debug, Default)]
pub struct Handled {
    /// A frame to send back (a pong).
    pub reply: Option<Message>,
    /// The target refused something (a command error, `-ERR`).
    pub error: Option<String>,
    /// Carapace refused a post as a near-duplicate of its author's (`conflict`): the
    /// command's id. A refusal by design, not a loss.
    pub refused: Option<u64>,
    /// The target closed the connection.
    pub closed: bool,
}

/// One connection to a target, speaking its framing.
pub struct Conn {
    ws: Ws,
    kind: TargetKind,
    /// NATS is a byte stream split across frames at any point: what is not parsed yet.
    nats_buf: Vec<u8>,
    next_id: u64,
}

impl Conn {
    /// Connects and completes the target's own handshake (Socket.IO `40`, NATS `CONNECT`).
    pub async fn open(
        kind: TargetKind,
        addr: SocketAddr,
        source: Option<IpAddr>,
        token: Option<&str>,
        small: bool,
    ) -> Result<Conn, BenchError> {
        let headers: Vec<(&str, String)> = match token {
            Some(t) => vec![("authorization", format!("Bearer {t}"))],
            None => Vec::new(),
        };
        let ws = wire::connect(addr, kind.path(), source, &headers, small).await?;
        let mut c = Conn {
            ws,
            kind,
            nats_buf: Vec::new(),
            next_id: 1,
        };
        match kind {
            TargetKind::Socketio => {
                c.expect(|t| t.starts_with(b"0{")).await?;
                c.send(Message::text("40")).await?;
                c.expect(|t| t.starts_with(b"40")).await?;
            }
            TargetKind::Nats => {
                c.send(Message::text(
                    "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"echo\":false,\"name\":\"carapace-bench\"}\r\nPING\r\n",
                ))
                .await?;
                c.expect_nats_pong().await?;
            }
            TargetKind::Carapace | TargetKind::Raw => {}
        }
        Ok(c)
    }

    pub async fn send(&mut self, m: Message) -> Result<(), BenchError> {
        self.ws
            .send(m)
            .await
            .map_err(|e| BenchError::Io(format!("send: {e}")))
    }

    /// Subscribes to `topic` and waits until the target confirms it.
    pub async fn subscribe(&mut self, topic: &str) -> Result<(), BenchError> {
        match self.kind {
            TargetKind::Carapace => {
                let id = self.next_id;
                self.next_id += 1;
                self.send(Message::text(format!(
                    r#"{{"id":{id},"op":"subscribe","channel":"topic:{topic}"}}"#
                )))
                .await?;
                let want = format!(r#""id":{id}"#);
                let t = self
                    .expect(|t| wire::find(t, want.as_bytes()).is_some())
                    .await?;
                if t.starts_with(b"{\"error\"") {
                    return Err(BenchError::Setup(format!(
                        "subscribe refused: {}",
                        String::from_utf8_lossy(&t)
                    )));
                }
            }
            TargetKind::Socketio => {
                self.send(Message::text(format!(r#"421["sub","{topic}"]"#)))
                    .await?;
                self.expect(|t| t.starts_with(b"431")).await?;
            }
            TargetKind::Nats => {
                self.send(Message::text(format!("SUB {topic} 1\r\nPING\r\n")))
                    .await?;
                self.expect_nats_pong().await?;
            }
            TargetKind::Raw => {
                self.send(Message::text(format!("sub {topic}"))).await?;
                self.expect(|t| t == b"ok").await?;
            }
        }
        Ok(())
    }

    /// The next message from the target, or `None` once the connection ended.
    pub async fn next(&mut self) -> Option<Message> {
        match self.ws.next().await {
            Some(Ok(m)) => Some(m),
            _ => None,
        }
    }

    /// Splits the connection for a publisher: a sender half and a reader half.
    pub fn split(self) -> (ConnSink, ConnStream) {
        let (sink, stream) = self.ws.split();
        (
            ConnSink {
                sink,
                kind: self.kind,
                next_id: self.next_id,
            },
            ConnStream {
                stream,
                kind: self.kind,
                nats_buf: self.nats_buf,
            },
        )
    }

    /// Reads one message: answers pings, reports errors, hands each delivered mark to `seen`.
    pub fn handle(&mut self, m: Message, seen: &mut impl FnMut(Mark)) -> Handled {
        handle(self.kind, &mut self.nats_buf, m, seen)
    }

    /// Says goodbye politely, bounded in time.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }

    /// Waits for a frame the predicate accepts, answering pings meanwhile.
    async fn expect(&mut self, want: impl Fn(&[u8]) -> bool) -> Result<Vec<u8>, BenchError> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| BenchError::Setup("the target did not answer in time".into()))?;
            let bytes = match m {
                Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                Some(Ok(Message::Binary(b))) => b.to_vec(),
                Some(Ok(Message::Close(f))) => {
                    return Err(BenchError::Setup(format!("closed by the target: {f:?}")));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(BenchError::Io(e.to_string())),
                None => return Err(BenchError::Setup("connection ended".into())),
            };
            if self.kind == TargetKind::Socketio && bytes == b"2" {
                self.send(Message::text("3")).await?;
                continue;
            }
            if want(&bytes) {
                return Ok(bytes);
            }
        }
    }

    async fn expect_nats_pong(&mut self) -> Result<(), BenchError> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| BenchError::Setup("NATS did not answer PING in time".into()))?;
            let m = match m {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(BenchError::Io(e.to_string())),
                None => return Err(BenchError::Setup("connection ended".into())),
            };
            let mut pong = false;
            let h = nats_feed(&mut self.nats_buf, &m, &mut |_| {}, &mut pong);
            if let Some(e) = h.error {
                return Err(BenchError::Setup(format!("NATS: {e}")));
            }
            if let Some(r) = h.reply {
                self.send(r).await?;
            }
            if pong {
                return Ok(());
            }
        }
    }
}

/// The id of a command Carapace answered with `conflict`: `{"id":7,"error":{"code":"conflict",…`.
fn refused_id(t: &[u8]) -> Option<u64> {
    let rest = t.strip_prefix(b"{\"id\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    let (id, after) = rest.split_at(end);
    if !after.starts_with(b",\"error\":{\"code\":\"conflict\"") {
        return None;
    }
    std::str::from_utf8(id).ok()?.parse().ok()
}

pub struct ConnSink {
    sink: futures_util::stream::SplitSink<Ws, Message>,
    kind: TargetKind,
    next_id: u64,
}

impl ConnSink {
    /// The id the next command will carry (Carapace).
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Queues the frame that publishes `payload` on `topic`, without flushing.
    pub async fn publish(&mut self, topic: &str, payload: &str) -> Result<(), BenchError> {
        let m = match self.kind {
            TargetKind::Carapace => {
                let id = self.next_id;
                self.next_id += 1;
                Message::text(format!(
                    r#"{{"id":{id},"op":"post","topic":"{topic}","title":"bench","body":"{payload}"}}"#
                ))
            }
            TargetKind::Socketio => Message::text(format!(r#"42["pub","{topic}","{payload}"]"#)),
            TargetKind::Nats => {
                Message::text(format!("PUB {topic} {}\r\n{payload}\r\n", payload.len()))
            }
            TargetKind::Raw => Message::text(format!("pub {topic} {payload}")),
        };
        self.feed(m).await
    }

    /// Queues a frame without flushing.
    pub async fn feed(&mut self, m: Message) -> Result<(), BenchError> {
        self.sink
            .feed(m)
            .await
            .map_err(|e| BenchError::Io(format!("send: {e}")))
    }

    pub async fn flush(&mut self) -> Result<(), BenchError> {
        self.sink
            .flush()
            .await
            .map_err(|e| BenchError::Io(format!("send: {e}")))
    }

    pub async fn close(mut self) {
        let _ = self.sink.close().await;
    }
}

pub struct ConnStream {
    stream: futures_util::stream::SplitStream<Ws>,
    kind: TargetKind,
    nats_buf: Vec<u8>,
}

impl ConnStream {
    pub async fn next(&mut self) -> Option<Message> {
        match self.stream.next().await {
            Some(Ok(m)) => Some(m),
            _ => None,
        }
    }

    pub fn handle(&mut self, m: Message, seen: &mut impl FnMut(Mark)) -> Handled {
        handle(self.kind, &mut self.nats_buf, m, seen)
    }
}

fn handle(
    kind: TargetKind,
    nats_buf: &mut Vec<u8>,
    m: Message,
    seen: &mut impl FnMut(Mark),
) -> Handled {
    if let Message::Close(f) = &m {
        return Handled {
            closed: true,
            error: f
                .as_ref()
                .map(|f| format!("closed {}: {}", u16::from(f.code), f.reason)),
            ..Default::default()
        };
    }
    match kind {
        TargetKind::Nats => {
            let mut pong = false;
            nats_feed(nats_buf, &m, seen, &mut pong)
        }
        _ => {
            let Message::Text(t) = &m else {
                return Handled::default();
            };
            let t = t.as_bytes();
            let mut h = Handled::default();
            match kind {
                TargetKind::Carapace => {
                    if t.starts_with(b"{\"channel\"") {
                        if let Some(mark) = Mark::find(t) {
                            seen(mark);
                        }
                    } else if t.starts_with(b"{\"error\"") {
                        h.error = Some(String::from_utf8_lossy(t).into_owned());
                    } else {
                        h.refused = refused_id(t);
                    }
                }
                TargetKind::Socketio => {
                    if t == b"2" {
                        h.reply = Some(Message::text("3"));
                    } else if t.starts_with(b"42") {
                        if let Some(mark) = Mark::find(t) {
                            seen(mark);
                        }
                    } else if t.starts_with(b"41") {
                        h.closed = true;
                        h.error = Some("disconnected by the Socket.IO server".into());
                    }
                }
                _ => {
                    if let Some(mark) = Mark::find(t) {
                        seen(mark);
                    }
                }
            }
            h
        }
    }
}

/// Feeds one WebSocket message of the NATS byte stream and parses every complete protocol
/// message in it: `MSG` payloads go to `seen`, `PING` gets a `PONG`, `PONG` sets `pong`.
fn nats_feed(
    buf: &mut Vec<u8>,
    m: &Message,
    seen: &mut impl FnMut(Mark),
    pong: &mut bool,
) -> Handled {
    let mut h = Handled::default();
    let data: &[u8] = match m {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) => b,
        _ => return h,
    };
    buf.extend_from_slice(data);
    let mut at = 0;
    let mut pings = 0;
    loop {
        let rest = &buf[at..];
        let Some(eol) = wire::find(rest, b"\r\n") else {
            break;
        };
        let line = &rest[..eol];
        if let Some(head) = line.strip_prefix(b"MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let Some(len) = head
                .rsplit(|b| *b == b' ')
                .next()
                .and_then(|l| std::str::from_utf8(l).ok())
                .and_then(|l| l.parse::<usize>().ok())
            else {
                h.error = Some("malformed MSG line".into());
                buf.clear();
                return h;
            };
            let start = eol + 2;
            if rest.len() < start + len + 2 {
                break;
            }
            if let Some(mark) = Mark::find(&rest[start..start + len]) {
                seen(mark);
            }
            at += start + len + 2;
            continue;
        }
        if line == b"PING" {
            pings += 1;
        } else if line == b"PONG" {
            *pong = true;
        } else if line.starts_with(b"-ERR") {
            h.error = Some(String::from_utf8_lossy(line).into_owned());
        }
        at += eol + 2;
    }
    buf.drain(..at);
    if buf.len() > NATS_BUF_MAX {
        h.error = Some("NATS message larger than the bench accepts".into());
        buf.clear();
    }
    if pings > 0 {
        h.reply = Some(Message::text("PONG\r\n".repeat(pings)));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_conflict_answer_is_a_refusal() {
        let conflict =
            br#"{"id":7,"error":{"code":"conflict","message":"near-duplicate of your post 1"}}"#;
        assert_eq!(refused_id(conflict), Some(7));
        let other = br#"{"id":7,"error":{"code":"bad_request","message":"x"}}"#;
        assert_eq!(refused_id(other), None);
        assert_eq!(refused_id(br#"{"id":8,"ok":true}"#), None);
        assert_eq!(refused_id(br#"{"channel":"topic:a","seq":1}"#), None);
    }

    #[test]
    fn nats_stream_split_anywhere() {
        let m1 = Mark {
            publisher: 0,
            n: 1,
            sent_ns: 5,
            warmup: false,
        }
        .payload(40);
        let m2 = Mark {
            publisher: 1,
            n: 2,
            sent_ns: 6,
            warmup: true,
        }
        .payload(40);
        let stream =
            format!("INFO {{}}\r\nMSG t 1 40\r\n{m1}\r\nPING\r\nMSG t 1 40\r\n{m2}\r\nPONG\r\n");
        for cut in 1..stream.len() {
            let mut buf = Vec::new();
            let mut got = Vec::new();
            let mut pong = false;
            let mut replies = 0;
            for part in [&stream[..cut], &stream[cut..]] {
                let h = nats_feed(
                    &mut buf,
                    &Message::binary(part.as_bytes().to_vec()),
                    &mut |m| got.push(m),
                    &mut pong,
                );
                assert!(h.error.is_none());
                replies += h.reply.is_some() as usize;
            }
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert!(pong && replies == 1 && buf.is_empty());
        }
    }
}
