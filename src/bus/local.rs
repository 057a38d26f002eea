//! The in-process bus of a single replica: publishing hands the event straight to the Hub.

use super::{Bus, BusError, BusHandler, Control, Event};
use crate::protocol::Channel;
use std::sync::{OnceLock, Weak};

#[derive(Default)]
pub struct LocalBus {
    /// Weak, because the Hub owns the bus; set once at start.
    handler: OnceLock<Weak<dyn BusHandler>>,
}

impl LocalBus {
    pub fn new() -> LocalBus {
        LocalBus::default()
    }

    fn handler(&self) -> Option<std::sync::Arc<dyn BusHandler>> {
        self.handler.get().and_then(Weak::upgrade)
    }
}

#[async_trait::async_trait]
impl Bus for LocalBus {
    fn attach(&self, handler: Weak<dyn BusHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn subscribe(&self, _channel: &Channel) -> Result<(), BusError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &Channel) {}

    async fn publish(&self, event: Event) -> Result<(), BusError> {
        if let Some(h) = self.handler() {
            h.on_event(event);
        }
        Ok(())
    }

    async fn publish_control(&self, control: Control) -> Result<(), BusError> {
        if let Some(h) = self.handler() {
            h.on_control(control);
        }
        Ok(())
    }

    async fn healthy(&self) -> bool {
        true
    }
}
