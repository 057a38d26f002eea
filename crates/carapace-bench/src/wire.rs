//! What the bench puts on the wire and reads back: the one clock, the marker that every
//! published payload carries (publisher, number, send time), and opening a WebSocket over
//! loopback from a chosen source address.

use crate::BenchError;
use std::net::{IpAddr, SocketAddr};
use std::sync::{LazyLock, OnceLock};
use std::time::Instant;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Ws = WebSocketStream<TcpStream>;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on the bench's one monotonic clock: publishers and subscribers live in the
/// same process, so a delivery's latency is `now_ns() - sent_ns` with no clock skew.
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The marker at the start of every payload: `~b:<publisher>:<n>:<sent_ns>:<warmup>~`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub publisher: u32,
    pub n: u32,
    pub sent_ns: u64,
    pub warmup: bool,
}

const TAG: &[u8] = b"~b:";

impl Mark {
    /// The payload: the marker padded with `x` to `size` bytes. Only characters that JSON,
    /// Socket.IO and NATS carry verbatim, so the marker can be found without parsing.
    pub fn payload(&self, size: usize) -> String {
        self.payload_with(size, "")
    }

    /// The payload: the marker, then `filler` (the caller's: characters carried verbatim),
    /// then `x` up to `size` bytes. A filler makes each post different.
    pub fn payload_with(&self, size: usize, filler: &str) -> String {
        let mut s = format!(
            "~b:{}:{}:{}:{}~",
            self.publisher, self.n, self.sent_ns, self.warmup as u8
        );
        if !filler.is_empty() && s.len() < size {
            s.push(' ');
            let room = size.saturating_sub(s.len()).min(filler.len());
            // Fillers are ASCII, so any byte is a character boundary.
            s.push_str(&filler[..room]);
        }
        if s.len() < size {
            s.extend(std::iter::repeat_n('x', size - s.len()));
        }
        s
    }

    /// Finds the first marker in `frame`.
    pub fn find(frame: &[u8]) -> Option<Mark> {
        static FINDER: LazyLock<memchr::memmem::Finder<'static>> =
            LazyLock::new(|| memchr::memmem::Finder::new(TAG));
        let at = FINDER.find(frame)?;
        let mut fields = [0u64; 4];
        let mut i = at + TAG.len();
        for (k, f) in fields.iter_mut().enumerate() {
            let start = i;
            while i < frame.len() && frame[i].is_ascii_digit() {
                *f = f.checked_mul(10)?.checked_add(u64::from(frame[i] - b'0'))?;
                i += 1;
            }
            let sep = if k == 3 { b'~' } else { b':' };
            if i == start || frame.get(i) != Some(&sep) {
                return None;
            }
            i += 1;
        }
        Some(Mark {
            publisher: u32::try_from(fields[0]).ok()?,
            n: u32::try_from(fields[1]).ok()?,
            sent_ns: fields[2],
            warmup: fields[3] != 0,
        })
    }
}

/// Position of `needle` in `hay`. SIMD-accelerated: the bench scans every delivered frame,
/// and a byte-at-a-time scan for the marker cost ~7% of the bench's CPU with Carapace's
/// frames, where the marker sits ~150 bytes in.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Opens `ws://addr{path}` from `source` (port chosen by the kernel), with extra headers.
/// Small buffers for the idle sessions of the `connections` scenario, larger ones for the
/// busy subscribers of `fanout`.
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    source: Option<IpAddr>,
    headers: &[(&str, String)],
    small: bool,
) -> Result<Ws, BenchError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| BenchError::Connect(addr, e.to_string()))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| BenchError::Connect(addr, format!("bind {ip}: {e}")))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| BenchError::Connect(addr, e.to_string()))?;
    stream
        .set_nodelay(true)
        .map_err(|e| BenchError::Connect(addr, e.to_string()))?;
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .map_err(|e| BenchError::Connect(addr, e.to_string()))?;
    for (k, v) in headers {
        let bad = || BenchError::Connect(addr, format!("bad header {k}"));
        let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad())?;
        let value = http::HeaderValue::from_str(v).map_err(|_| bad())?;
        req.headers_mut().insert(name, value);
    }
    // tungstenite zero-fills the whole buffer before each read: big enough for a batch of
    // frames, small enough that the memset stays cheap.
    let buf = if small { 4 * 1024 } else { 16 * 1024 };
    let config = WebSocketConfig::default()
        .read_buffer_size(buf)
        .max_message_size(Some(16 << 20));
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
        .await
        .map_err(|e| BenchError::Connect(addr, e.to_string()))?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_inside_frames() {
        let m = Mark {
            publisher: 3,
            n: 41,
            sent_ns: 123_456_789,
            warmup: false,
        };
        let p = m.payload(200);
        assert_eq!(p.len(), 200);
        let frame =
            format!(r#"{{"channel":"topic:b","seq":1,"data":{{"title":"~x","body":"{p}"}}}}"#);
        assert_eq!(Mark::find(frame.as_bytes()), Some(m));
        assert_eq!(Mark::find(b"~b:1:2:3~"), None);
        assert_eq!(Mark::find(b"~b:1:2:x:0~"), None);
    }
}
