//! A minimal HTTP/1.1 JSON caller for the hub's API (plain `http://` only: the client talks
//! to a hub on a trusted network or loopback), also used for OpenAI-compatible endpoints.

use crate::error::ClientError;
use crate::session::DEFAULT_TIMEOUT;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
/// may take far longer than the hub). `Accept: application/json` unless `headers` has one.
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
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("accept"))
    {
        req.push_str("Accept: application/json\r\n");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        let (base, path) = split_url("http://127.0.0.1:8080/v1/chat").unwrap();
        assert_eq!(
            (base.as_str(), path.as_str()),
            ("http://127.0.0.1:8080", "/v1/chat")
        );
        let (base, path) = split_url("http://hub:80").unwrap();
        assert_eq!((base.as_str(), path.as_str()), ("http://hub:80", "/"));
        assert!(split_url("https://hub/").is_err());
        assert!(split_url("http:///path").is_err());
    }

    #[test]
    fn parses_a_plain_answer() {
        let r = parse_http(b"HTTP/1.1 201 Created\r\nX-Id: 7\r\n\r\n{\"ok\":true}").unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.header("x-id"), Some("7"));
        assert_eq!(r.body, serde_json::json!({"ok": true}));
    }

    #[test]
    fn parses_a_chunked_answer() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        let r = parse_http(raw).unwrap();
        assert_eq!(r.body, serde_json::json!({"a": 1}));
        let truncated = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{\"a\"";
        assert!(parse_http(truncated).is_err());
    }

    #[test]
    fn refuses_a_malformed_answer() {
        assert!(parse_http(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_http(b"garbage\r\n\r\n").is_err());
    }
}
