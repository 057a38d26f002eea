//! A channel's stored history, as the live stream sees it: where the sequence stands, and
//! the events after a seq as the push frames they went out as. The Hub reads it to start a
//! channel and to fill gaps; a session reads it to answer and replay `subscribe` with
//! `since`. Both read it here, from the Store, where every event was committed before it was
//! published.

use crate::auth::keyring::KeyRing;
use crate::auth::sealed;
use crate::bus::Event;
use crate::protocol::{Channel, push_frame};
use crate::service::ServiceError;
use crate::store::{Store, StoreError};
use std::sync::Arc;
use thiserror::Error;

/// Events read per page, to fill gaps and to replay `since`.
pub const PAGE: i64 = 1000;

#[derive(Debug, Error)]
pub enum HistoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot open event {channel}#{seq}")]
    Sealed { channel: String, seq: u64 },
    #[error("event not UTF-8")]
    NotUtf8,
}

impl From<HistoryError> for ServiceError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::Store(e) => e.into(),
            e => ServiceError::Internal(e.to_string()),
        }
    }
}

/// What a `subscribe` with `since` can recover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// The channel's last seq.
    pub last: u64,
    /// The seq after which replayed events count: `since`, or `last` if `since` is ahead.
    pub floor: u64,
    /// Whether history still reaches back to the event after `since`.
    pub recovered: bool,
}

/// The Store's event log, with the keys that open sealed events. Cheap to clone.
#[derive(Clone)]
pub struct History {
    store: Store,
    keys: Arc<KeyRing>,
}

impl History {
    pub fn new(store: Store, keys: Arc<KeyRing>) -> History {
        History { store, keys }
    }

    /// The channel's last assigned seq (0 if none).
    pub async fn last_seq(&self, channel: &Channel) -> Result<u64, HistoryError> {
        Ok(self.store.last_seq(&channel.to_string()).await?)
    }

    /// Where a client that saw up to `since` stands against the stored history.
    pub async fn recovery(&self, channel: &Channel, since: u64) -> Result<Recovery, HistoryError> {
        let name = channel.to_string();
        let last = self.store.last_seq(&name).await?;
        let recovered = since <= last
            && (since == last
                || self
                    .store
                    .first_seq(&name)
                    .await?
                    .is_some_and(|first| first <= since + 1));
        Ok(Recovery {
            last,
            floor: since.min(last),
            recovered,
        })
    }

    /// Stored events of `channel` after `since`, oldest first, at most `limit`, as push
    /// frames.
    pub async fn after(
        &self,
        channel: &Channel,
        since: u64,
        limit: i64,
    ) -> Result<Vec<Event>, HistoryError> {
        let name = channel.to_string();
        let rows = self.store.events_after(&name, since, limit).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let data = if r.sealed {
                sealed::open_string(&self.keys, &format!("event:{name}"), &r.data).map_err(
                    |_| HistoryError::Sealed {
                        channel: name.clone(),
                        seq: r.seq,
                    },
                )?
            } else {
                String::from_utf8(r.data).map_err(|_| HistoryError::NotUtf8)?
            };
            out.push(Event {
                channel: channel.clone(),
                seq: r.seq,
                frame: push_frame(&name, r.seq, &r.event, &data).into(),
            });
        }
        Ok(out)
    }
}
