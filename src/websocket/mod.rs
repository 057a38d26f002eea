//! The server side of RFC 6455 for sessions: the upgrade handshake (`upgrade`), the reader of
//! the client's masked frames (`reader`) and the writer of the hub's frames (`writer`).
//!
//! Why not a stream of `Message`s: a fan-out sends the same few events to a thousand sockets.
//! Through a message sink every delivery built a `Message` from a clone of the shared bytes,
//! took the lock of the split stream twice, copied the bytes into tungstenite's buffer and
//! dropped the clone, and in a large fan-out that work dominated the writers. Here the
//! writer copies an event's bytes once, behind a header of two to ten bytes, into its
//! session's buffer, and sends the buffer in one call. Frame headers are parsed by
//! tungstenite's `FrameHeader`; everything the protocol checks on top of that is in `reader`.

mod reader;
mod upgrade;
mod writer;

pub use reader::{FrameReader, Incoming, ReadError};
pub use upgrade::{Socket, Upgrade};
pub use writer::FrameWriter;

/// Opcodes this side sends (RFC 6455 section 5.2).
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PONG: u8 = 0xA;
/// Control frames carry at most this many payload bytes (section 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
