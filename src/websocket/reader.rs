//! The client's side of the socket: masked frames in, whole messages out, every rule of
//! RFC 6455 that a server must enforce checked before a payload is kept.

use super::MAX_CONTROL_PAYLOAD;
use bytes::{Buf, Bytes, BytesMut};
use std::io::{self, Cursor};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// A whole message from the client. Pongs are consumed here: the hub never pings.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Text(Utf8Bytes),
    Binary(Bytes),
    Ping(Bytes),
    /// The client's close frame (section 5.5.1); the session answers and ends.
    Close,
}

#[derive(Debug, Error)]
pub enum ReadError {
    /// A frame or a fragmented message over the limit: close 1009.
    #[error("frame or message over {0} bytes")]
    TooLarge(usize),
    /// Framing the protocol forbids: close 1002.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// A text message that is not UTF-8: close 1007.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A message being reassembled from fragments.
struct Partial {
    text: bool,
    payload: BytesMut,
}

pub struct FrameReader {
    io: Box<dyn AsyncRead + Send + Unpin>,
    buf: BytesMut,
    max: usize,
    read_size: usize,
    partial: Option<Partial>,
}

impl FrameReader {
    /// `max` bounds a frame and a whole message; `read_size` is how much is asked of the
    /// socket at a time. Public for the fuzz target, which reads from a byte slice.
    pub fn new(io: Box<dyn AsyncRead + Send + Unpin>, max: usize, read_size: usize) -> FrameReader {
        FrameReader {
            io,
            buf: BytesMut::new(),
            max,
            read_size,
            partial: None,
        }
    }

    /// The next message; `None` when the client closed the connection without a close frame.
    pub async fn next(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            match self.parse()? {
                Parsed::Message(m) => return Ok(Some(m)),
                Parsed::Consumed => continue,
                Parsed::NeedMore(n) => {
                    // A large frame grows the buffer only while it is read: idle sessions
                    // are most sessions, and each keeps its buffer.
                    if self.buf.is_empty() && self.buf.capacity() > 4 * self.read_size {
                        self.buf = BytesMut::new();
                    }
                    self.buf.reserve(n.max(self.read_size));
                    if self.io.read_buf(&mut self.buf).await? == 0 {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Takes one frame off the buffer if it is all there.
    fn parse(&mut self) -> Result<Parsed, ReadError> {
        let mut cursor = Cursor::new(&self.buf[..]);
        let header =
            FrameHeader::parse(&mut cursor).map_err(|_| ReadError::Protocol("reserved opcode"))?;
        let Some((header, len)) = header else {
            return Ok(Parsed::NeedMore(2));
        };
        let at = cursor.position() as usize;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(ReadError::Protocol(
                "reserved bits set, no extension was agreed",
            ));
        }
        let Some(mask) = header.mask else {
            return Err(ReadError::Protocol("client frames must be masked"));
        };
        let control = matches!(header.opcode, OpCode::Control(_));
        if control && (!header.is_final || len > MAX_CONTROL_PAYLOAD as u64) {
            return Err(ReadError::Protocol(
                "control frames are short and unfragmented",
            ));
        }
        let held = self.partial.as_ref().map_or(0, |p| p.payload.len());
        if len > (self.max - held) as u64 {
            return Err(ReadError::TooLarge(self.max));
        }
        let len = len as usize;
        if self.buf.len() < at + len {
            return Ok(Parsed::NeedMore(at + len - self.buf.len()));
        }
        self.buf.advance(at);
        let mut payload = self.buf.split_to(len);
        unmask(&mut payload, mask);
        self.message(header.opcode, header.is_final, payload)
    }

    /// What one complete, unmasked frame means.
    fn message(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: BytesMut,
    ) -> Result<Parsed, ReadError> {
        let (text, payload) = match opcode {
            OpCode::Control(Control::Ping) => {
                return Ok(Parsed::Message(Incoming::Ping(payload.freeze())));
            }
            OpCode::Control(Control::Pong) => return Ok(Parsed::Consumed),
            OpCode::Control(_) => return Ok(Parsed::Message(Incoming::Close)),
            OpCode::Data(Data::Continue) => {
                let Some(p) = self.partial.as_mut() else {
                    return Err(ReadError::Protocol("continuation with no message begun"));
                };
                p.payload.extend_from_slice(&payload);
                if !fin {
                    return Ok(Parsed::Consumed);
                }
                let p = self.partial.take().expect("checked above");
                (p.text, p.payload)
            }
            OpCode::Data(d) => {
                if self.partial.is_some() {
                    return Err(ReadError::Protocol("new message before the last one ended"));
                }
                let text = matches!(d, Data::Text);
                if !fin {
                    self.partial = Some(Partial { text, payload });
                    return Ok(Parsed::Consumed);
                }
                (text, payload)
            }
        };
        let payload = payload.freeze();
        Ok(Parsed::Message(if text {
            Incoming::Text(Utf8Bytes::try_from(payload).map_err(|_| ReadError::InvalidUtf8)?)
        } else {
            Incoming::Binary(payload)
        }))
    }
}

enum Parsed {
    Message(Incoming),
    /// A fragment or a pong: nothing to hand over yet.
    Consumed,
    /// At least this many more bytes are needed.
    NeedMore(usize),
}

/// Section 5.3: byte `i` of the payload is XORed with byte `i % 4` of the key.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: FIN as given, masked with `MASK`.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&MASK);
        let mut p = payload.to_vec();
        unmask(&mut p, MASK);
        out.extend_from_slice(&p);
        out
    }

    /// A reader over `bytes` sent one byte at a time, the worst split a socket can make.
    async fn reader(bytes: Vec<u8>, max: usize) -> FrameReader {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            for b in bytes {
                if client.write_all(&[b]).await.is_err() {
                    return;
                }
            }
        });
        FrameReader::new(Box::new(server), max, 1024)
    }

    #[tokio::test]
    async fn messages_arrive_whole_across_fragments_pings_and_split_reads() {
        let mut bytes = frame(true, 0x1, br#"{"op":"ping"}"#);
        bytes.extend(frame(false, 0x1, "héllo ".as_bytes()));
        bytes.extend(frame(true, 0x9, b"are you there"));
        bytes.extend(frame(true, 0xA, b"unsolicited pong"));
        bytes.extend(frame(true, 0x0, b"world"));
        bytes.extend(frame(true, 0x2, &[0, 159, 146, 150]));
        bytes.extend(frame(true, 0x1, &vec![b'z'; 70_000]));
        bytes.extend(frame(true, 0x8, &1000u16.to_be_bytes()));
        let mut r = reader(bytes, 1 << 20).await;
        let text = |s: &str| Incoming::Text(Utf8Bytes::from(s.to_string()));
        assert_eq!(r.next().await.unwrap(), Some(text(r#"{"op":"ping"}"#)));
        assert_eq!(
            r.next().await.unwrap(),
            Some(Incoming::Ping(Bytes::from_static(b"are you there")))
        );
        assert_eq!(r.next().await.unwrap(), Some(text("héllo world")));
        assert_eq!(
            r.next().await.unwrap(),
            Some(Incoming::Binary(Bytes::from_static(&[0, 159, 146, 150])))
        );
        assert_eq!(r.next().await.unwrap(), Some(text(&"z".repeat(70_000))));
        assert_eq!(r.next().await.unwrap(), Some(Incoming::Close));
        assert_eq!(r.next().await.unwrap(), None);
        // The 70,000-byte frame's buffer was not kept.
        assert!(r.buf.capacity() <= 4 * 1024, "{}", r.buf.capacity());
    }

    #[tokio::test]
    async fn oversize_frames_and_messages_are_refused_before_their_payload_is_read() {
        // Only the header is sent: the refusal cannot have waited for 2^40 bytes.
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        huge.extend_from_slice(&MASK);
        assert!(matches!(
            reader(huge, 1024).await.next().await,
            Err(ReadError::TooLarge(1024))
        ));
        let mut pieces = frame(false, 0x1, &[b'a'; 600]);
        pieces.extend(frame(true, 0x0, &[b'a'; 600]));
        assert!(matches!(
            reader(pieces, 1024).await.next().await,
            Err(ReadError::TooLarge(1024))
        ));
    }

    #[tokio::test]
    async fn framing_the_protocol_forbids_is_refused() {
        let unmasked = vec![0x81, 0x02, b'h', b'i'];
        let mut rsv = frame(true, 0x1, b"hi");
        rsv[0] |= 0x40;
        let mut long_ping = frame(true, 0x9, &[0; 126]);
        long_ping.truncate(8);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", unmasked),
            ("reserved bit", rsv),
            ("reserved opcode", frame(true, 0x3, b"")),
            ("fragmented ping", frame(false, 0x9, b"")),
            ("long ping", long_ping),
            ("stray continuation", frame(true, 0x0, b"x")),
            (
                "interleaved message",
                [frame(false, 0x1, b"a"), frame(true, 0x1, b"b")].concat(),
            ),
        ];
        for (name, bytes) in cases {
            let got = reader(bytes, 1024).await.next().await;
            assert!(
                matches!(got, Err(ReadError::Protocol(_))),
                "{name}: {got:?}"
            );
        }
        let bad_utf8 = frame(true, 0x1, &[0xff, 0xfe]);
        assert!(matches!(
            reader(bad_utf8, 1024).await.next().await,
            Err(ReadError::InvalidUtf8)
        ));
    }
}
