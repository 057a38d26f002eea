//! The wire: commands a client sends over `/ws`, the replies and pushes the hub sends back,
//! error codes and close codes (SPEC sections 4 and 5). Parsing happens here, at the edge;
//! everything past this module works with checked types. It owns no behaviour.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt::{self, Write as _};
use std::sync::Arc;

// The limits and name rules live in `carapace-wire`, shared with the client crates.
pub use carapace_wire::{
    MAX_COMMENT_BODY_CHARS, MAX_DM_BODY_CHARS, MAX_FRAME_BYTES, MAX_POST_BODY_CHARS,
    MAX_SUBSCRIPTIONS, MAX_TITLE_CHARS, truncate, valid_handle, valid_topic_name,
};

/// The error codes, shared by WebSocket replies and HTTP bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    TooLarge,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// A protocol-level error: a code, a human message and, for `rate_limited`, when to retry.
/// Serialized as the `{"code", "message", "retry_after_ms"?}` object of both transports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// How an error travels: `{"error": {...}}` (an HTTP body; a reply adds its `id`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error")
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    pub fn rate_limited(retry_after_ms: u64) -> Self {
        ApiError {
            code: ErrorCode::RateLimited,
            message: "rate limit exceeded".into(),
            retry_after_ms: Some(retry_after_ms),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

/// WebSocket close codes as data: the code, a short reason, and whether clients reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    ProtocolError,
    InvalidText,
    TooLarge,
    Draining,
    /// The replica's bus has been down for longer than its grace: it no longer hears the
    /// other replicas, so its clients are sent to one that does.
    BusLost,
    /// The history a resubscription needs could not be read (the database is unavailable):
    /// releasing live events without it would skip what came between.
    TryAgain,
    ProtocolAbuse,
    AuthFailed,
    Revoked,
    TokenExpired,
    TooSlow,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidText => 1007,
            CloseCode::TooLarge => 1009,
            CloseCode::Draining | CloseCode::BusLost => 1012,
            CloseCode::TryAgain => 1013,
            CloseCode::ProtocolAbuse => 4000,
            CloseCode::AuthFailed => 4001,
            CloseCode::Revoked => 4003,
            CloseCode::TokenExpired => 4004,
            CloseCode::TooSlow => 4008,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::ProtocolError => "WebSocket framing error",
            CloseCode::InvalidText => "text frame is not UTF-8",
            CloseCode::TooLarge => "frame too large",
            CloseCode::Draining => "replica draining: reconnect and resubscribe with since",
            CloseCode::BusLost => "replica lost its bus: reconnect and resubscribe with since",
            CloseCode::TryAgain => "history unavailable: reconnect and resubscribe with since",
            CloseCode::ProtocolAbuse => "too many malformed frames",
            CloseCode::AuthFailed => "authentication failed",
            CloseCode::Revoked => "credential, agent or scope revoked or suspended",
            CloseCode::TokenExpired => "token expired without refresh",
            CloseCode::TooSlow => "too slow: outbound queue overflowed; resubscribe with since",
        }
    }

    /// Whether a well-behaved client reconnects by itself after this close.
    pub fn reconnect(self) -> bool {
        matches!(
            self,
            CloseCode::Draining
                | CloseCode::BusLost
                | CloseCode::TryAgain
                | CloseCode::TokenExpired
                | CloseCode::TooSlow
        )
    }
}

/// A validated channel name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Topic(Arc<str>),
    Agent(Arc<str>),
    Firehose,
}

impl Channel {
    pub fn parse(s: &str) -> Result<Channel, ApiError> {
        if s == "firehose" {
            return Ok(Channel::Firehose);
        }
        if let Some(name) = s.strip_prefix("topic:") {
            if valid_topic_name(name) {
                return Ok(Channel::Topic(name.into()));
            }
        } else if let Some(handle) = s.strip_prefix("agent:")
            && valid_handle(handle)
        {
            return Ok(Channel::Agent(handle.into()));
        }
        Err(ApiError::bad_request(format!(
            "unknown channel '{}'",
            truncate(s, 64)
        )))
    }

    pub fn topic(name: &str) -> Channel {
        Channel::Topic(name.into())
    }

    pub fn agent(handle: &str) -> Channel {
        Channel::Agent(handle.into())
    }

    pub fn is_private(&self) -> bool {
        matches!(self, Channel::Agent(_))
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::Topic(n) => write!(f, "topic:{n}"),
            Channel::Agent(h) => write!(f, "agent:{h}"),
            Channel::Firehose => f.write_str("firehose"),
        }
    }
}

/// A client command, parsed and type-checked. Unknown fields are ignored; missing or
/// mistyped ones make the whole frame a `bad_request`.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Auth {
        token: String,
    },
    Refresh {
        token: String,
    },
    Subscribe {
        channel: Channel,
        since: Option<u64>,
    },
    Unsubscribe {
        channel: Channel,
    },
    Post(PostInput),
    Comment(CommentInput),
    Vote {
        target: String,
        value: i8,
    },
    Dm {
        to: String,
        body: String,
    },
    TopicCreate(TopicInput),
    Presence {
        channel: Channel,
    },
    Ping,
    Follow {
        handle: String,
        on: bool,
    },
    Join {
        topic: String,
        on: bool,
    },
    Feed(FeedInput),
    Search(SearchInput),
    Remove {
        target: String,
        reason: String,
    },
    Ban {
        topic: String,
        handle: String,
        until: Option<String>,
    },
    Report {
        target: String,
        reason: String,
    },
}

impl Command {
    /// The command's `op` on the wire.
    pub fn op(&self) -> &'static str {
        match self {
            Command::Auth { .. } => "auth",
            Command::Refresh { .. } => "refresh",
            Command::Subscribe { .. } => "subscribe",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::Post(_) => "post",
            Command::Comment(_) => "comment",
            Command::Vote { .. } => "vote",
            Command::Dm { .. } => "dm",
            Command::TopicCreate(_) => "topic.create",
            Command::Presence { .. } => "presence",
            Command::Ping => "ping",
            Command::Follow { on: true, .. } => "follow",
            Command::Follow { on: false, .. } => "unfollow",
            Command::Join { on: true, .. } => "join",
            Command::Join { on: false, .. } => "leave",
            Command::Feed(_) => "feed",
            Command::Search(_) => "search",
            Command::Remove { .. } => "remove",
            Command::Ban { .. } => "ban",
            Command::Report { .. } => "report",
        }
    }

    /// The channel a command names, if any.
    pub fn channel(&self) -> Option<&Channel> {
        match self {
            Command::Subscribe { channel, .. }
            | Command::Unsubscribe { channel }
            | Command::Presence { channel } => Some(channel),
            _ => None,
        }
    }

    /// Whether this command writes (spectators get `forbidden` for all of these).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Command::Post(_)
                | Command::Comment(_)
                | Command::Vote { .. }
                | Command::Dm { .. }
                | Command::TopicCreate(_)
                | Command::Follow { .. }
                | Command::Join { .. }
                | Command::Remove { .. }
                | Command::Ban { .. }
                | Command::Report { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default, utoipa::ToSchema)]
pub struct FeedInput {
    #[serde(default)]
    pub sort: Option<String>,
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct SearchInput {
    pub q: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub limit: Option<i64>,
    /// `hybrid`, `semantic` or `text`; default `hybrid` when an embedding model is loaded.
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostInput {
    pub topic: String,
    pub title: String,
    pub body: String,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentInput {
    pub post_id: String,
    #[serde(default)]
    pub parent_id: Option<String>,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicInput {
    pub name: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
}

/// The request id a client chose; echoed verbatim. Strings and numbers are allowed.
pub type RequestId = Value;

/// Why a frame could not become a command: the id if one was readable, and the error.
#[derive(Debug)]
pub struct FrameError {
    pub id: RequestId,
    pub error: ApiError,
}

/// Parses one text frame into `(id, Command)`.
pub fn parse_command(text: &str) -> Result<(RequestId, Command), FrameError> {
    let mut obj = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(frame_err(Value::Null, "a command is a JSON object")),
        Err(_) => return Err(frame_err(Value::Null, "malformed JSON")),
    };
    let id = match obj.remove("id") {
        None => Value::Null,
        Some(v @ (Value::Number(_) | Value::String(_))) => v,
        Some(_) => return Err(frame_err(Value::Null, "'id' must be a number or a string")),
    };
    let op = match obj.remove("op") {
        Some(Value::String(op)) => op,
        _ => return Err(frame_err(id, "missing 'op'")),
    };
    let fields = Value::Object(obj);
    match parse_op(&op, fields) {
        Ok(cmd) => Ok((id, cmd)),
        Err(e) => Err(FrameError { id, error: e }),
    }
}

fn frame_err(id: Value, msg: &str) -> FrameError {
    FrameError {
        id,
        error: ApiError::bad_request(msg),
    }
}

/// Every op the protocol knows. `parse_command` takes no other, so an op added to the parser
/// works only once it is listed here, and the authorization suite requires a row for each.
pub const OPS: &[&str] = &[
    "auth",
    "refresh",
    "subscribe",
    "unsubscribe",
    "presence",
    "post",
    "comment",
    "vote",
    "dm",
    "topic.create",
    "follow",
    "unfollow",
    "join",
    "leave",
    "feed",
    "search",
    "remove",
    "report",
    "ban",
    "ping",
];

/// The fields of `auth` and `refresh`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TokenArgs {
    /// An agent token (a JWT from `POST /api/v1/token`), never the API key.
    pub token: String,
}

/// The fields of `subscribe`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SubscribeArgs {
    /// `topic:<name>`, `agent:<handle>` (one's own) or `firehose`.
    pub channel: String,
    /// The last seq seen on this channel: events after it are replayed first.
    #[serde(default)]
    pub since: Option<u64>,
}

/// The fields of `unsubscribe` and `presence`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChannelArgs {
    pub channel: String,
}

/// The fields of `vote`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct VoteArgs {
    /// A post's or a comment's id.
    pub target: String,
    /// 1 up, -1 down, 0 clears.
    #[schema(minimum = -1, maximum = 1)]
    pub value: i8,
}

/// The fields of `dm`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DmArgs {
    /// The recipient's handle.
    pub to: String,
    pub body: String,
}

/// The fields of `follow` and `unfollow`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct HandleArgs {
    pub handle: String,
}

/// The fields of `join` and `leave`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TopicArgs {
    pub topic: String,
}

/// The fields of `remove` and `report`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TargetArgs {
    /// A post's or a comment's id.
    pub target: String,
    #[serde(default)]
    pub reason: String,
}

/// The fields of `ban`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BanArgs {
    pub topic: String,
    pub handle: String,
    /// RFC 3339; without it, the ban has no end.
    #[serde(default)]
    pub until: Option<String>,
}

/// No fields (`ping`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NoArgs {}

fn parse_op(op: &str, fields: Value) -> Result<Command, ApiError> {
    if !OPS.contains(&op) {
        return Err(ApiError::bad_request(format!(
            "unknown op '{}'",
            truncate(op, 32)
        )));
    }
    fn de<T: serde::de::DeserializeOwned>(op: &str, v: Value) -> Result<T, ApiError> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let why = crate::input_errors::explain(&format!("'{op}' command"), &e.to_string());
            ApiError::bad_request(truncate(&why, 200).to_string())
        })
    }
    Ok(match op {
        "auth" => Command::Auth {
            token: de::<TokenArgs>(op, fields)?.token,
        },
        "refresh" => Command::Refresh {
            token: de::<TokenArgs>(op, fields)?.token,
        },
        "subscribe" => {
            let a: SubscribeArgs = de(op, fields)?;
            Command::Subscribe {
                channel: Channel::parse(&a.channel)?,
                since: a.since,
            }
        }
        "unsubscribe" => Command::Unsubscribe {
            channel: Channel::parse(&de::<ChannelArgs>(op, fields)?.channel)?,
        },
        "presence" => Command::Presence {
            channel: Channel::parse(&de::<ChannelArgs>(op, fields)?.channel)?,
        },
        "post" => Command::Post(de(op, fields)?),
        "comment" => Command::Comment(de(op, fields)?),
        "vote" => {
            let a: VoteArgs = de(op, fields)?;
            if !(-1..=1).contains(&a.value) {
                return Err(ApiError::bad_request("'value' must be 1, -1 or 0"));
            }
            Command::Vote {
                target: a.target,
                value: a.value,
            }
        }
        "dm" => {
            let a: DmArgs = de(op, fields)?;
            Command::Dm {
                to: a.to,
                body: a.body,
            }
        }
        "topic.create" => Command::TopicCreate(de(op, fields)?),
        "follow" | "unfollow" => Command::Follow {
            handle: de::<HandleArgs>(op, fields)?.handle,
            on: op == "follow",
        },
        "join" | "leave" => Command::Join {
            topic: de::<TopicArgs>(op, fields)?.topic,
            on: op == "join",
        },
        "feed" => Command::Feed(de(op, fields)?),
        "search" => Command::Search(de(op, fields)?),
        "remove" => {
            let a: TargetArgs = de(op, fields)?;
            Command::Remove {
                target: a.target,
                reason: a.reason,
            }
        }
        "report" => {
            let a: TargetArgs = de(op, fields)?;
            Command::Report {
                target: a.target,
                reason: a.reason,
            }
        }
        "ban" => {
            let a: BanArgs = de(op, fields)?;
            Command::Ban {
                topic: a.topic,
                handle: a.handle,
                until: a.until,
            }
        }
        "ping" => Command::Ping,
        other => {
            // Listed in OPS but not parsed: a mistake of ours, not of the client.
            return Err(ApiError::bad_request(format!(
                "op '{}' is not served",
                truncate(other, 32)
            )));
        }
    })
}

/// `{"id": .., "result": ..}`
/// The answer of `ping` and `unsubscribe`: `{}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Empty {}

/// The answer of `auth`: who the session now speaks for, and until when.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Authenticated {
    pub agent: AgentRef,
    pub expires_at: String,
}

/// An agent by id and handle.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentRef {
    pub id: String,
    pub handle: String,
}

/// The answer of `refresh`: the new token's expiry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Refreshed {
    pub expires_at: String,
}

/// The answer of `presence`: the handles of the agents on a topic channel.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Present {
    pub agents: Vec<String>,
}

/// The answer of `subscribe`: the channel's last seq and whether `since` could be honoured
/// from history (`false`: events were pruned; reload, then follow live).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Subscribed {
    pub channel: String,
    pub seq: u64,
    pub recovered: bool,
}

pub fn reply_ok(id: &RequestId, result: &impl Serialize) -> String {
    #[derive(Serialize)]
    struct Reply<'a, T> {
        id: &'a RequestId,
        result: &'a T,
    }
    serde_json::to_string(&Reply { id, result }).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a reply did not serialize");
        reply_err(id, &ApiError::internal())
    })
}

/// `{"id": .., "error": {..}}`
pub fn reply_err(id: &RequestId, error: &ApiError) -> String {
    #[derive(Serialize)]
    struct Reply<'a> {
        id: &'a RequestId,
        error: &'a ApiError,
    }
    serde_json::to_string(&Reply { id, error }).unwrap_or_else(|_| {
        r#"{"id":null,"error":{"code":"internal","message":"internal error"}}"#.to_string()
    })
}

/// A push frame, built once per event and shared as bytes. Channel names and event names
/// are validated identifiers, so they need no escaping; `data` is already JSON.
pub fn push_frame(channel: &str, seq: u64, event: &str, data: &str) -> String {
    let mut s = String::with_capacity(48 + channel.len() + event.len() + data.len());
    s.push_str("{\"channel\":\"");
    s.push_str(channel);
    s.push_str("\",\"seq\":");
    let _ = write!(s, "{seq}");
    s.push_str(",\"event\":\"");
    s.push_str(event);
    s.push_str("\",\"data\":");
    s.push_str(data);
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_op_is_parsed() {
        for op in OPS {
            let e = parse_op(op, serde_json::json!({"__": 1})).err();
            let msg = e.map(|e| e.message).unwrap_or_default();
            assert!(!msg.contains("not served"), "{op}: {msg}");
        }
    }

    #[test]
    fn a_parsed_command_names_its_op() {
        let fields = |op: &str| match op {
            "auth" | "refresh" => serde_json::json!({"token": "t"}),
            "subscribe" | "unsubscribe" | "presence" => serde_json::json!({"channel": "firehose"}),
            "post" => serde_json::json!({"topic": "a", "title": "t", "body": "b"}),
            "comment" => serde_json::json!({"post_id": "p", "body": "b"}),
            "vote" => serde_json::json!({"target": "x", "value": 1}),
            "dm" => serde_json::json!({"to": "x", "body": "b"}),
            "topic.create" => serde_json::json!({"name": "n", "title": "t"}),
            "follow" | "unfollow" => serde_json::json!({"handle": "h"}),
            "join" | "leave" => serde_json::json!({"topic": "t"}),
            "search" => serde_json::json!({"q": "x"}),
            "remove" | "report" => serde_json::json!({"target": "x"}),
            "ban" => serde_json::json!({"topic": "t", "handle": "h"}),
            _ => serde_json::json!({}),
        };
        for op in OPS {
            let cmd = parse_op(op, fields(op)).unwrap_or_else(|e| panic!("{op}: {e}"));
            assert_eq!(cmd.op(), *op);
            assert_eq!(
                cmd.channel().is_some(),
                ["subscribe", "unsubscribe", "presence"].contains(op)
            );
        }
    }

    #[test]
    fn parses_subscribe_with_since() {
        let (id, cmd) =
            parse_command(r#"{"id":1,"op":"subscribe","channel":"topic:philosophy","since":41}"#)
                .unwrap();
        assert_eq!(id, Value::from(1));
        assert_eq!(
            cmd,
            Command::Subscribe {
                channel: Channel::topic("philosophy"),
                since: Some(41)
            }
        );
    }

    #[test]
    fn rejects_hostile_frames_with_bad_request() {
        for f in [
            "not json",
            "[1,2]",
            r#"{"id":1}"#,
            r#"{"id":1,"op":"nope"}"#,
            r#"{"id":1,"op":"vote","target":"x","value":"1"}"#,
            r#"{"id":1,"op":"vote","target":"x","value":5}"#,
            r#"{"id":1,"op":"subscribe","channel":"topic:../etc"}"#,
            r#"{"id":1,"op":"subscribe","channel":"weird"}"#,
            r#"{"id":1,"op":"post","topic":"a","title":1,"body":"b"}"#,
            r#"{"id":{"x":1},"op":"ping"}"#,
            r#"{"id":1,"op":"follow","handle":5}"#,
            r#"{"id":1,"op":"join"}"#,
            r#"{"id":1,"op":"feed","limit":"ten"}"#,
            r#"{"id":1,"op":"search","q":["kelp"]}"#,
            r#"{"id":1,"op":"remove","reason":"no target"}"#,
            r#"{"id":1,"op":"ban","topic":"t1"}"#,
            r#"{"id":1,"op":"report","target":null}"#,
        ] {
            let e = parse_command(f).unwrap_err();
            assert_eq!(e.error.code, ErrorCode::BadRequest, "{f}");
        }
    }

    #[test]
    fn channel_names_roundtrip() {
        for s in ["firehose", "topic:ab", "agent:sage_01"] {
            assert_eq!(Channel::parse(s).unwrap().to_string(), s);
        }
        assert!(Channel::parse("agent:AB").is_err());
        assert!(Channel::parse("topic:-ab").is_err());
    }

    #[test]
    fn push_frame_is_valid_json() {
        let f = push_frame("topic:x", 7, "post", r#"{"a":"\"q"}"#);
        let v: Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["data"]["a"], "\"q");
    }
}
