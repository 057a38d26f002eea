//! A bare RESP2 connection to one Redis node, for the two things on a Redis Cluster that this
//! bus owns itself rather than leave to the redis crate's cluster client: one sharded pub/sub
//! connection per shard master (so a lost subscription is always noticed, see `shards`), and
//! topology questions put to one node at a time (see `slots`).

use super::{COMMAND_TIMEOUT, CONNECT_TIMEOUT};
use std::future::Future;
use std::pin::Pin;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::timeout;

/// A bulk string larger than this is refused (Redis's own limit is 512 MB; no frame of ours
/// comes near this).
const MAX_BULK: usize = 64 << 20;
/// An array longer than this is refused (CLUSTER SLOTS of a large cluster stays far below).
const MAX_ARRAY: usize = 1 << 20;

/// One RESP2 value, as read from a node.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The value as text (simple and bulk strings), for replies like `ssubscribe`.
    pub(super) fn text(&self) -> Option<&str> {
        match self {
            Resp::Simple(s) => Some(s),
            Resp::Bulk(Some(b)) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// Credentials from the URL, sent with AUTH on every connection the bus opens itself.
#[derive(Clone, Default)]
pub(super) struct Auth {
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
}

/// Reads one value; not cancel-safe (a value half read is lost), so a reader owns its half.
pub(super) fn read_value<'a>(
    r: &'a mut BufReader<OwnedReadHalf>,
) -> Pin<Box<dyn Future<Output = Result<Resp, String>> + Send + 'a>> {
    Box::pin(async move {
        let mut line = Vec::new();
        let n = r
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed".into());
        }
        if !line.ends_with(b"\r\n") || line.len() < 3 {
            return Err("malformed reply".into());
        }
        let body = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        let len = |s: &str| s.parse::<i64>().map_err(|_| "malformed length".to_string());
        match line[0] {
            b'+' => Ok(Resp::Simple(body)),
            b'-' => Ok(Resp::Error(body)),
            b':' => Ok(Resp::Int(len(&body)?)),
            b'$' => {
                let n = len(&body)?;
                if n < 0 {
                    return Ok(Resp::Bulk(None));
                }
                let n = n as usize;
                if n > MAX_BULK {
                    return Err("bulk reply too large".into());
                }
                let mut buf = vec![0u8; n + 2];
                r.read_exact(&mut buf)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                buf.truncate(n);
                Ok(Resp::Bulk(Some(buf)))
            }
            b'*' => {
                let n = len(&body)?;
                if n < 0 {
                    return Ok(Resp::Array(None));
                }
                let n = n as usize;
                if n > MAX_ARRAY {
                    return Err("array reply too large".into());
                }
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(read_value(r).await?);
                }
                Ok(Resp::Array(Some(items)))
            }
            _ => Err("unknown reply type".into()),
        }
    })
}

/// One connection to one node, `host:port`. Errors name the node, never the credentials.
pub(super) struct Node {
    pub(super) addr: String,
    pub(super) read: BufReader<OwnedReadHalf>,
    pub(super) write: OwnedWriteHalf,
}

impl Node {
    /// Connects and authenticates, each under its timeout.
    pub(super) async fn connect(addr: &str, auth: &Auth) -> Result<Node, String> {
        let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("{addr}: connect timed out"))?
            .map_err(|e| format!("{addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let mut node = Node {
            addr: addr.to_string(),
            read: BufReader::new(read),
            write,
        };
        if let Some(password) = &auth.password {
            let mut cmd = redis::cmd("AUTH");
            if let Some(user) = &auth.username {
                cmd.arg(user);
            }
            cmd.arg(password);
            match node.call(&cmd).await? {
                Resp::Simple(_) => {}
                // The server's text says what was wrong without repeating what was sent.
                Resp::Error(e) => return Err(format!("{addr}: authentication refused: {e}")),
                _ => return Err(format!("{addr}: unexpected reply to AUTH")),
            }
        }
        Ok(node)
    }

    /// Writes one command without waiting for its reply.
    pub(super) async fn send(&mut self, cmd: &redis::Cmd) -> Result<(), String> {
        send(&mut self.write, &self.addr, cmd).await
    }

    /// Sends a command and reads its reply, under the command timeout.
    pub(super) async fn call(&mut self, cmd: &redis::Cmd) -> Result<Resp, String> {
        self.send(cmd).await?;
        timeout(COMMAND_TIMEOUT, read_value(&mut self.read))
            .await
            .map_err(|_| format!("{}: command timed out", self.addr))?
            .map_err(|e| format!("{}: {e}", self.addr))
    }
}

/// Writes one command on a write half, under the command timeout.
pub(super) async fn send(
    write: &mut OwnedWriteHalf,
    addr: &str,
    cmd: &redis::Cmd,
) -> Result<(), String> {
    timeout(COMMAND_TIMEOUT, write.write_all(&cmd.get_packed_command()))
        .await
        .map_err(|_| format!("{addr}: write timed out"))?
        .map_err(|e| format!("{addr}: write: {e}"))
}
