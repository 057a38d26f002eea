//! The tamper-evident audit log: every credential, status, scope and login event, each row
//! chained to the previous by SHA-256, so altering or removing a row breaks the chain.
//! Rows never hold a secret or an email.

use crate::store::{AuditRow, Store, StoreResult, WriteTx};
use sha2::{Digest, Sha256};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One thing that happened, before it is chained.
pub struct Entry<'a> {
    /// Who did it: `owner:<handle>`, `agent:<handle>`, `admin:<handle>`, `cli`, `anonymous`.
    pub actor: &'a str,
    pub action: &'a str,
    pub subject: &'a str,
    pub detail: serde_json::Value,
}

fn chain_hash(
    prev: &str,
    id: i64,
    at: i64,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        prev,
        &id.to_string(),
        &at.to_string(),
        actor,
        action,
        subject,
        detail,
    ] {
        // Length-prefixed, so fields cannot be shifted into one another.
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Appends `entry` inside `tx`, so the audit row commits with the change it records.
pub async fn append(tx: &mut WriteTx, entry: Entry<'_>, now: i64) -> StoreResult<()> {
    let (id, prev) = match tx.lock_audit_head().await? {
        Some((id, hash)) => (id + 1, hash),
        None => (1, GENESIS.to_string()),
    };
    let detail = entry.detail.to_string();
    let hash = chain_hash(
        &prev,
        id,
        now,
        entry.actor,
        entry.action,
        entry.subject,
        &detail,
    );
    tx.insert_audit(&AuditRow {
        id,
        at: now,
        actor: entry.actor.into(),
        action: entry.action.into(),
        subject: entry.subject.into(),
        detail,
        prev_hash: prev,
        hash,
    })
    .await
}

/// Appends an entry in a transaction of its own (for events that change nothing else).
pub async fn record(store: &Store, entry: Entry<'_>) -> StoreResult<()> {
    let mut tx = store.begin().await?;
    append(&mut tx, entry, crate::clock::now_ms()).await?;
    tx.commit().await
}

/// The first break in the chain, if any.
#[derive(Debug, PartialEq)]
pub enum Break {
    /// The row's content no longer matches its hash.
    Altered(i64),
    /// The row does not follow the one before it (a row was removed or reordered).
    Unlinked(i64),
}

/// Walks the whole chain; `Ok(n)` is the number of rows verified.
pub async fn verify(store: &Store) -> StoreResult<Result<u64, Break>> {
    let mut prev_hash = GENESIS.to_string();
    let mut prev_id = 0;
    let mut count = 0;
    loop {
        let page = store.audit_page(prev_id, 1000).await?;
        if page.is_empty() {
            return Ok(Ok(count));
        }
        for r in page {
            if r.id != prev_id + 1 || r.prev_hash != prev_hash {
                return Ok(Err(Break::Unlinked(r.id)));
            }
            let expect = chain_hash(
                &r.prev_hash,
                r.id,
                r.at,
                &r.actor,
                &r.action,
                &r.subject,
                &r.detail,
            );
            if expect != r.hash {
                return Ok(Err(Break::Altered(r.id)));
            }
            prev_hash = r.hash;
            prev_id = r.id;
            count += 1;
        }
    }
}
