//! The Bus: how events, control messages, presence and rate limits are shared by replicas.
//! Three seams, each with an in-process and a Redis side next to each other:
//! - `broker`: publishing (`Broker`, held by the Service) and choosing what this replica
//!   hears (`Subscriptions`, held by the Hub). What the broker hears goes to the
//!   `BusHandler` (the Hub) it was built with; the Hub holds only handles that do not reach
//!   that handler, so nothing points back.
//! - `presence`: which agents are on a topic, across replicas.
//! - `limits`: rate-limit buckets every replica draws from.
//!
//! In-process (`local`, one replica) there is only a broker: the Hub's own view is all the
//! presence there is, and this process's buckets all the limits. With Redis (`redis`, many
//! replicas) all three are shared. The bus only carries; ordering and gap filling are the
//! Hub's job, and the Store keeps everything that must not be lost.

pub mod broker;
pub mod limits;
pub mod local;
pub mod presence;
pub mod redis;

pub use broker::{Broker, BusHandler, Control, Event, Subscriptions};
pub use limits::SharedLimits;
pub use presence::Presence;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// A handler that records what reaches it, for the brokers' own tests.
#[cfg(test)]
pub(crate) mod recorder {
    use super::{BusHandler, Control, Event};
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Recorder {
        pub events: Mutex<Vec<u64>>,
        pub controls: Mutex<Vec<Control>>,
    }

    impl BusHandler for Recorder {
        fn on_event(&self, event: Event) {
            self.events.lock().unwrap().push(event.seq);
        }
        fn on_control(&self, control: Control) {
            self.controls.lock().unwrap().push(control);
        }
        fn on_resync(&self) {}
        fn on_sweep(&self) {}
    }
}
