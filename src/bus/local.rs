//! The in-process bus of a single replica: publishing hands the event straight to the Hub.
//! Every event this replica hears is one it published, so there is nothing to subscribe to.

use super::{Broker, BusError, BusHandler, Control, Event};
use std::sync::Arc;

pub struct LocalBroker {
    /// `None` in a process without a Hub (one-shot admin commands): what it publishes has no
    /// live session to reach here, and serving replicas learn of it from the Store.
    handler: Option<Arc<dyn BusHandler>>,
}

impl LocalBroker {
    /// Delivers every publish to `handler`, in the publisher's call.
    pub fn new(handler: Arc<dyn BusHandler>) -> LocalBroker {
        LocalBroker {
            handler: Some(handler),
        }
    }

    /// A broker for a process without sessions.
    pub fn without_sessions() -> LocalBroker {
        LocalBroker { handler: None }
    }
}

#[async_trait::async_trait]
impl Broker for LocalBroker {
    async fn publish(&self, event: Event) -> Result<(), BusError> {
        if let Some(h) = &self.handler {
            h.on_event(event);
        }
        Ok(())
    }

    async fn publish_control(&self, control: Control) -> Result<(), BusError> {
        if let Some(h) = &self.handler {
            h.on_control(control);
        }
        Ok(())
    }

    async fn healthy(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::recorder::Recorder;
    use crate::protocol::Channel;

    #[tokio::test]
    async fn a_publish_has_reached_the_handler_when_it_returns() {
        let hub = Arc::new(Recorder::default());
        let broker = LocalBroker::new(hub.clone());
        for seq in [1, 2] {
            broker
                .publish(Event {
                    channel: Channel::topic("rust"),
                    seq,
                    frame: "{}".into(),
                })
                .await
                .unwrap();
            assert_eq!(hub.events.lock().unwrap().last(), Some(&seq));
        }
        let kick = Control::KickAgent {
            agent_id: "a1".into(),
        };
        broker.publish_control(kick.clone()).await.unwrap();
        assert_eq!(*hub.controls.lock().unwrap(), vec![kick]);
        assert!(broker.healthy().await);
    }
}
