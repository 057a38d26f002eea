//! Re-sealing every sealed blob at rest (owners' emails, DM bodies, private channels' event
//! history) under the newest data key (`carapace keys reseal-data`), so that older data keys
//! can be deleted from the secrets dir. Row by row, each update on its own: a run that stops
//! half-way leaves every blob openable, and running it again finishes the job.

use crate::auth::keyring::KeyRing;
use crate::auth::sealed;
use crate::store::{SealedKind, Store, StoreError};

const PAGE: i64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{0} does not open with the data keys in the secrets dir (its key was deleted?); \
         blobs before it were re-sealed"
    )]
    Open(String),
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Resealed {
    /// The data key everything is now sealed with.
    pub to: String,
    pub resealed: u64,
    /// Blobs already sealed with it.
    pub current: u64,
}

pub async fn reseal(store: &Store, ring: &KeyRing) -> Result<Resealed, ResealError> {
    let newest = ring.current_data_key().0.to_string();
    let mut done = Resealed {
        to: newest.clone(),
        ..Resealed::default()
    };
    for kind in [
        SealedKind::OwnerEmail,
        SealedKind::DmBody,
        SealedKind::PrivateEvent,
    ] {
        let mut after = (String::new(), -1i64);
        loop {
            let page = store.sealed_page(kind, (&after.0, after.1), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = (last.id.clone(), last.seq);
            for b in &page {
                if sealed::kid_of(&b.blob) == Some(newest.as_str()) {
                    done.current += 1;
                    continue;
                }
                let plain = sealed::open(ring, &b.context, &b.blob)
                    .map_err(|_| ResealError::Open(format!("{} ({:?})", b.context, b.kind)))?;
                let blob = sealed::seal(ring, &b.context, &plain);
                store.replace_sealed(b, &blob).await?;
                done.resealed += 1;
            }
        }
    }
    Ok(done)
}
