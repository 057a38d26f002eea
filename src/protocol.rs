//! The wire: commands a client sends over `/ws`, the replies and pushes the hub sends back,
//! error codes and close codes (SPEC sections 4 and 5). Parsing happens here, at the edge;
//! everything past this module works with checked types. It owns no behaviour.

use serde::Deserialize;
use serde_json::Value;
use std::fmt::{self, Write as _};
use std::sync::Arc;

// The limits and name rules live in `carapace-wire`, shared with the client crates.
pub use carapace_wire::{
    MAX_COMMENT_BODY_CHARS, MAX_DM_BODY_CHARS, MAX_FRAME_BYTES, MAX_POST_BODY_CHARS,
    MAX_SUBSCRIPTIONS, MAX_TITLE_CHARS, truncate, valid_handle, valid_topic_name,
};

/// The error codes of SPEC section 5, shared by WebSocket replies and HTTP bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_ms: Option<u64>,
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

    /// The `{"code", "message", "retry_after_ms"?}` object used in both transports.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({"code": self.code.as_str(), "message": self.message});
        if let Some(ms) = self.retry_after_ms {
            v["retry_after_ms"] = ms.into();
        }
        v
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
            CloseCode::Draining => 1012,
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
            CloseCode::Draining | CloseCode::TokenExpired | CloseCode::TooSlow
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

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
pub struct FeedInput {
    #[serde(default)]
    pub sort: Option<String>,
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SearchInput {
    pub q: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommentInput {
    pub post_id: String,
    #[serde(default)]
    pub parent_id: Option<String>,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

fn parse_op(op: &str, fields: Value) -> Result<Command, ApiError> {
    if !OPS.contains(&op) {
        return Err(ApiError::bad_request(format!(
            "unknown op '{}'",
            truncate(op, 32)
        )));
    }
    #[derive(Deserialize)]
    struct TokenArgs {
        token: String,
    }
    #[derive(Deserialize)]
    struct SubArgs {
        channel: String,
        #[serde(default)]
        since: Option<u64>,
    }
    #[derive(Deserialize)]
    struct ChanArgs {
        channel: String,
    }
    #[derive(Deserialize)]
    struct VoteArgs {
        target: String,
        value: i8,
    }
    #[derive(Deserialize)]
    struct DmArgs {
        to: String,
        body: String,
    }
    fn de<T: serde::de::DeserializeOwned>(op: &str, v: Value) -> Result<T, ApiError> {
        serde_json::from_value(v).map_err(|e| {
            ApiError::bad_request(format!(
                "invalid '{op}' command: {}",
                truncate(&e.to_string(), 120)
            ))
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
            let a: SubArgs = de(op, fields)?;
            Command::Subscribe {
                channel: Channel::parse(&a.channel)?,
                since: a.since,
            }
        }
        "unsubscribe" => Command::Unsubscribe {
            channel: Channel::parse(&de::<ChanArgs>(op, fields)?.channel)?,
        },
        "presence" => Command::Presence {
            channel: Channel::parse(&de::<ChanArgs>(op, fields)?.channel)?,
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
        "follow" | "unfollow" => {
            #[derive(Deserialize)]
            struct A {
                handle: String,
            }
            Command::Follow {
                handle: de::<A>(op, fields)?.handle,
                on: op == "follow",
            }
        }
        "join" | "leave" => {
            #[derive(Deserialize)]
            struct A {
                topic: String,
            }
            Command::Join {
                topic: de::<A>(op, fields)?.topic,
                on: op == "join",
            }
        }
        "feed" => Command::Feed(de(op, fields)?),
        "search" => Command::Search(de(op, fields)?),
        "remove" | "report" => {
            #[derive(Deserialize)]
            struct A {
                target: String,
                #[serde(default)]
                reason: String,
            }
            let a: A = de(op, fields)?;
            if op == "remove" {
                Command::Remove {
                    target: a.target,
                    reason: a.reason,
                }
            } else {
                Command::Report {
                    target: a.target,
                    reason: a.reason,
                }
            }
        }
        "ban" => {
            #[derive(Deserialize)]
            struct A {
                topic: String,
                handle: String,
                #[serde(default)]
                until: Option<String>,
            }
            let a: A = de(op, fields)?;
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
pub fn reply_ok(id: &RequestId, result: &Value) -> String {
    serde_json::json!({"id": id, "result": result}).to_string()
}

/// `{"id": .., "error": {..}}`
pub fn reply_err(id: &RequestId, error: &ApiError) -> String {
    serde_json::json!({"id": id, "error": error.to_json()}).to_string()
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
