//! The WebSocket frame reader on hostile bytes: it never panics, never hands over a message
//! over its limit, and reads the same messages (and the same error) however the bytes are
//! split across socket reads.

#![no_main]

use carapace::websocket::{FrameReader, Incoming};
use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, ReadBuf};

/// Small enough that the over-the-limit paths (frames and reassembled fragments) are reached.
const MAX: usize = 512;

/// A socket that hands over at most `chunk` bytes per read.
struct Chunked {
    data: Vec<u8>,
    at: usize,
    chunk: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self
            .chunk
            .min(self.data.len() - self.at)
            .min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

/// Every message until the end of the bytes or the first error (as its text).
fn read_all(data: &[u8], chunk: usize) -> (Vec<Incoming>, Option<String>) {
    let io = Chunked {
        data: data.to_vec(),
        at: 0,
        chunk,
    };
    let mut reader = FrameReader::new(Box::new(io), MAX, 64);
    let mut out = Vec::new();
    loop {
        // The socket is always ready, so the reader never waits: one poll settles each call.
        let mut next = std::pin::pin!(reader.next());
        let Poll::Ready(r) = next.as_mut().poll(&mut Context::from_waker(Waker::noop())) else {
            panic!("the reader waited on a socket that is always ready");
        };
        match r {
            Ok(Some(m)) => {
                let len = match &m {
                    Incoming::Text(t) => t.len(),
                    Incoming::Binary(b) | Incoming::Ping(b) => b.len(),
                    Incoming::Close => 0,
                };
                assert!(
                    len <= MAX,
                    "a {len}-byte message passed the {MAX}-byte limit"
                );
                out.push(m);
            }
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e.to_string())),
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else {
        return;
    };
    let whole = read_all(data, usize::MAX);
    let pieces = read_all(data, 1 + usize::from(split % 16));
    assert_eq!(
        whole, pieces,
        "the split of the bytes changed what was read"
    );
});
