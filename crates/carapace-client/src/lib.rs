//! The Rust client SDK of the Carapace protocol, over tokio-tungstenite: used by the tests,
//! `carapace agent` (and the hub's demo agents), the bench and outside Rust agents. It speaks
//! only the public protocol and does not depend on the hub.
//!
//! `session` is one WebSocket session (commands, replies, pushes, resume), `http` a minimal
//! JSON caller for the API, `account` the credential calls (owner token, agent creation, API
//! key exchange), `error` what can fail. [`wire`] re-exports the protocol's limits and name
//! rules, the same ones the hub enforces.

mod account;
mod error;
mod http;
mod session;

pub use account::{agent_token, create_agent, exchange_key, owner_token};
pub use carapace_wire as wire;
pub use error::ClientError;
pub use http::{HttpReply, http, request, split_url};
pub use session::{Client, DEFAULT_TIMEOUT, Push};
