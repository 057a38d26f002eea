//! The session's side of the socket that the hub writes to: frames are encoded into one
//! buffer and leave in one write.

use super::{MAX_CONTROL_PAYLOAD, OP_CLOSE, OP_PONG, OP_TEXT};
use crate::protocol::CloseCode;
use crate::server::ResetOnDrop;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// How often a closing connection's send queue is looked at while it drains.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// A buffer larger than this after a write is given back: a burst of large frames should
/// not stay resident in an idle session.
const RETAINED_CAPACITY: usize = 16 * 1024;

/// Unmasked, unfragmented frames (a server never masks), buffered until `flush`.
pub struct FrameWriter {
    io: Box<dyn AsyncWrite + Send + Unpin>,
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken: a flush dropped part-way resumes here.
    sent: usize,
    frames: usize,
    /// The connection's reset-on-close switch (absent where no TCP connection is under it).
    reset: Option<ResetOnDrop>,
}

impl FrameWriter {
    pub(super) fn new(io: Box<dyn AsyncWrite + Send + Unpin>) -> FrameWriter {
        FrameWriter {
            io,
            buf: Vec::new(),
            sent: 0,
            frames: 0,
            reset: None,
        }
    }

    pub(super) fn with_reset(mut self, reset: Option<ResetOnDrop>) -> FrameWriter {
        self.reset = reset;
        self
    }

    /// Ends the connection with a reset once it is dropped: the client did not take what
    /// it was sent within the close grace (see `ResetOnDrop`).
    pub fn reset_on_drop(&self) {
        if let Some(r) = &self.reset {
            r.arm();
        }
    }

    /// Waits, at most `within`, until the kernel holds nothing more for the client (the close
    /// frame and what came before it taken and acknowledged); whether it did. A connection
    /// the hub cannot look into counts as drained.
    pub fn drained(&self, within: Duration) -> impl Future<Output = bool> + Send + 'static {
        let reset = self.reset.clone();
        async move {
            let Some(r) = reset else { return true };
            let deadline = tokio::time::Instant::now() + within;
            loop {
                match r.unsent() {
                    Some(0) | None => return true,
                    Some(_) if tokio::time::Instant::now() >= deadline => return false,
                    Some(_) => tokio::time::sleep(DRAIN_POLL).await,
                }
            }
        }
    }

    /// Queues a text frame.
    pub fn text(&mut self, text: &str) {
        self.frame(OP_TEXT, text.as_bytes());
    }

    /// Queues the answer to a ping.
    pub fn pong(&mut self, payload: &[u8]) {
        let n = payload.len().min(MAX_CONTROL_PAYLOAD);
        self.frame(OP_PONG, &payload[..n]);
    }

    /// Queues a close frame: with a code and its reason, or empty (section 5.5.1).
    pub fn close(&mut self, code: Option<CloseCode>) {
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let len = match code {
            Some(c) => {
                payload[..2].copy_from_slice(&c.code().to_be_bytes());
                let reason = truncate(c.reason(), MAX_CONTROL_PAYLOAD - 2);
                payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
                2 + reason.len()
            }
            None => 0,
        };
        self.frame(OP_CLOSE, &payload[..len]);
    }

    /// Frames queued since the last flush.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Bytes queued and not written yet.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Writes what is queued. Cancel safe: dropped part-way, the next flush (or `shutdown`)
    /// goes on from the first byte the socket did not take, so frames stay whole.
    pub async fn flush(&mut self) -> io::Result<()> {
        while self.sent < self.buf.len() {
            match self.io.write(&self.buf[self.sent..]).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => self.sent += n,
            }
        }
        self.buf.clear();
        self.sent = 0;
        self.frames = 0;
        if self.buf.capacity() > RETAINED_CAPACITY {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Flushes, then ends the write side of the connection (TCP FIN).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.io.shutdown().await
    }

    fn frame(&mut self, opcode: u8, payload: &[u8]) {
        encode(&mut self.buf, opcode, payload);
        self.frames += 1;
    }
}

/// Appends one final, unmasked frame (section 5.2).
fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let len = payload.len();
    out.reserve(10 + len);
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

    /// Parses `bytes` back with tungstenite's header parser: (opcode, payload) per frame.
    fn parse(bytes: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
        let mut c = Cursor::new(bytes);
        let mut frames = Vec::new();
        while (c.position() as usize) < bytes.len() {
            let (h, len) = FrameHeader::parse(&mut c).unwrap().unwrap();
            assert!(h.is_final && h.mask.is_none() && !h.rsv1 && !h.rsv2 && !h.rsv3);
            let at = c.position() as usize;
            frames.push((h.opcode, bytes[at..at + len as usize].to_vec()));
            c.set_position((at + len as usize) as u64);
        }
        frames
    }

    #[test]
    fn frames_of_every_length_class_parse_back() {
        let mut out = Vec::new();
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            encode(&mut out, OP_TEXT, &vec![b'a'; len]);
        }
        let lens: Vec<usize> = parse(&out).iter().map(|(_, p)| p.len()).collect();
        assert_eq!(lens, [0, 1, 125, 126, 127, 65_535, 65_536, 70_000]);
    }

    #[test]
    fn close_frames_carry_the_code_and_a_reason_that_fits() {
        let (mut w, _) = writer();
        w.close(Some(CloseCode::TooSlow));
        w.close(None);
        w.pong(&[7u8; 300]);
        let frames = parse(&w.buf);
        assert_eq!(frames[0].0, OpCode::Control(Control::Close));
        assert_eq!(&frames[0].1[..2], &4008u16.to_be_bytes());
        assert_eq!(&frames[0].1[2..], CloseCode::TooSlow.reason().as_bytes());
        assert!(frames[0].1.len() <= MAX_CONTROL_PAYLOAD);
        assert!(frames[1].1.is_empty());
        assert_eq!(frames[2].0, OpCode::Control(Control::Pong));
        assert_eq!(frames[2].1.len(), MAX_CONTROL_PAYLOAD);
        assert_eq!(truncate("ééé", 5), "éé");
    }

    #[tokio::test]
    async fn flush_writes_everything_queued_in_order_and_forgets_big_buffers() {
        let (mut w, mut peer) = writer();
        w.text("one");
        w.text(&"x".repeat(40_000));
        assert_eq!(w.frames(), 2);
        w.flush().await.unwrap();
        assert_eq!((w.frames(), w.pending(), w.buf.capacity()), (0, 0, 0));
        w.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut peer, &mut got)
            .await
            .unwrap();
        let frames = parse(&got);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], (OpCode::Data(Data::Text), b"one".to_vec()));
        assert_eq!(frames[1].1.len(), 40_000);
    }

    #[tokio::test]
    async fn a_flush_cut_short_resumes_where_the_socket_stopped() {
        let (a, mut peer) = tokio::io::duplex(100);
        let mut w = FrameWriter::new(Box::new(a));
        w.text(&"y".repeat(1_000));
        // The peer does not read: the flush stalls after 100 bytes and is abandoned.
        let cut = tokio::time::timeout(std::time::Duration::from_millis(50), w.flush()).await;
        assert!(cut.is_err());
        assert_eq!(w.pending(), 1_004 - 100);
        w.close(None);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut peer, &mut got)
                .await
                .unwrap();
            got
        });
        w.shutdown().await.unwrap();
        drop(w);
        let frames = parse(&reader.await.unwrap());
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].1, "y".repeat(1_000).into_bytes());
        assert_eq!(frames[1].0, OpCode::Control(Control::Close));
    }

    fn writer() -> (FrameWriter, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(1 << 20);
        (FrameWriter::new(Box::new(a)), b)
    }
}
