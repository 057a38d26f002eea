//! Moving the deployment onto a new blind-index key (`carapace keys rotate-index`): in one
//! write that holds the audit chain's lock, check the chain under the old key, re-derive every
//! owner's email index from the sealed email under the new key, re-chain every audit row under
//! it, name it in the database as the key in use, and append `audit.index_key_rotated`
//! recording the old chain's head. Replicas holding both keys keep working throughout: their
//! lookups try every key they hold, and what they write follows the key the database names.
//! Afterwards nothing needs the old key, so it can be deleted from the secrets dir.

use crate::audit::{self, Break, Entry, INDEX_KEY_ROTATED};
use crate::auth::keyring::KeyRing;
use crate::auth::sealed;
use crate::store::{Store, StoreError};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit chain BROKEN, nothing rotated: {0}")]
    Broken(Break),
    #[error(
        "no blind-index key newer than '{0}', the one in use, in the secrets dir: run `carapace \
         keys generate`, give the new key to every replica and restart them first"
    )]
    NothingNewer(String),
    #[error(
        "blind-index key '{0}' is in use but not in the secrets dir: point --secrets-dir at the replicas' secrets"
    )]
    InUseMissing(String),
    #[error(
        "the email of owner '{0}' does not open with the data keys in the secrets dir; nothing rotated"
    )]
    Email(String),
}

/// What a rotation did.
#[derive(Debug)]
pub struct Rotated {
    pub from: String,
    pub to: String,
    pub owners: usize,
    pub rows: usize,
    /// The chain's head under the old key, recorded in the rotation's audit row.
    pub old_head: Option<(i64, String)>,
}

/// Moves everything onto the newest blind-index key in `ring`.
pub async fn rotate(store: &Store, ring: &KeyRing) -> Result<Rotated, RotateError> {
    let mut tx = store.begin().await?;
    let (old_head, from) = audit::lock_chain(&mut tx).await?;
    let old_key = ring
        .index_key(&from)
        .ok_or_else(|| RotateError::InUseMissing(from.clone()))?;
    let to = ring.newest_index_id().to_string();
    if to <= from {
        return Err(RotateError::NothingNewer(from));
    }
    let new_key = ring.index_key(&to).expect("the newest id is in the ring");
    let rows = tx.audit_rows().await?;
    let unkeyed = audit::check(&rows, old_key).map_err(RotateError::Broken)?;
    let owners = tx.owner_emails().await?;
    for (id, handle, sealed_email) in &owners {
        let email = sealed::open_string(ring, "owner.email", sealed_email)
            .map_err(|_| RotateError::Email(handle.clone()))?;
        tx.set_owner_email_index(id, &sealed::email_index(new_key, &email))
            .await?;
    }
    audit::rechain(&mut tx, &rows, new_key).await?;
    tx.set_index_key_id(&to).await?;
    let head = old_head
        .as_ref()
        .map(|(id, hash)| json!({"id": id, "hash": hash}));
    let detail = json!({
        "from": from,
        "to": to,
        "owners": owners.len(),
        "rows": rows.len(),
        "unkeyed": unkeyed,
        "old_head": head,
    });
    let entry = Entry {
        actor: "cli",
        action: INDEX_KEY_ROTATED,
        subject: "blind_index_key",
        detail,
    };
    audit::append(&mut tx, ring, entry, crate::clock::now_ms()).await?;
    tx.commit().await?;
    Ok(Rotated {
        from,
        to,
        owners: owners.len(),
        rows: rows.len(),
        old_head,
    })
}
