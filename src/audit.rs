//! The tamper-evident audit log: every credential, status, scope and login event, each row
//! chained to the previous by an HMAC-SHA256 under a key from the secrets dir, so that
//! altering, removing or re-chaining rows is detectable by anyone holding the key, and cannot
//! be covered up with the database alone. The newest row (the head) goes to the process log at
//! each commit, so a log shipped elsewhere also catches rows cut off the end.
//! Rows never hold a secret or an email.

use crate::auth::keyring::KeyRing;
use crate::store::{AuditRow, Store, StoreResult, WriteTx};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation from the key's other use (the email blind index).
const DOMAIN: &[u8] = b"audit-chain\0";

/// One thing that happened, before it is chained.
pub struct Entry<'a> {
    /// Who did it: `owner:<handle>`, `agent:<handle>`, `admin:<handle>`, `cli`, `anonymous`.
    pub actor: &'a str,
    pub action: &'a str,
    pub subject: &'a str,
    pub detail: serde_json::Value,
}

/// The hashed fields of a row, length-prefixed so they cannot be shifted into one another.
fn chain_input(
    prev: &str,
    id: i64,
    at: i64,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> Vec<u8> {
    let (id, at) = (id.to_string(), at.to_string());
    let parts = [prev, &id, &at, actor, action, subject, detail];
    let mut out = Vec::with_capacity(parts.iter().map(|p| 8 + p.len()).sum());
    for part in parts {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

fn row_input(r: &AuditRow, prev: &str) -> Vec<u8> {
    chain_input(prev, r.id, r.at, &r.actor, &r.action, &r.subject, &r.detail)
}

fn keyed_hash(ring: &KeyRing, input: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(ring.index_key())
        .expect("HMAC accepts any key length");
    mac.update(DOMAIN);
    mac.update(input);
    hex::encode(mac.finalize().into_bytes())
}

/// The unkeyed SHA-256 of versions before the keyed chain; only ever verified, never written.
fn legacy_hash(input: &[u8]) -> String {
    hex::encode(Sha256::digest(input))
}

/// Appends `entry` inside `tx`, so the audit row commits with the change it records.
pub async fn append(
    tx: &mut WriteTx,
    ring: &KeyRing,
    entry: Entry<'_>,
    now: i64,
) -> StoreResult<()> {
    let (id, prev) = match tx.lock_audit_head().await? {
        Some((id, hash)) => (id + 1, hash),
        None => (1, GENESIS.to_string()),
    };
    let detail = entry.detail.to_string();
    let input = chain_input(
        &prev,
        id,
        now,
        entry.actor,
        entry.action,
        entry.subject,
        &detail,
    );
    let hash = keyed_hash(ring, &input);
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
pub async fn record(store: &Store, ring: &KeyRing, entry: Entry<'_>) -> StoreResult<()> {
    let mut tx = store.begin().await?;
    append(&mut tx, ring, entry, crate::clock::now_ms()).await?;
    tx.commit().await
}

/// What a walk of the whole chain found, when nothing is wrong.
#[derive(Debug, PartialEq)]
pub struct Verified {
    pub rows: u64,
    /// The newest row's (id, hash).
    pub head: Option<(i64, String)>,
}

/// The first thing wrong with the chain.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Break {
    #[error(
        "row {0} was altered: its content no longer matches its hash (or the secrets dir is not \
         the one the chain was written with: it is keyed with its blind-index key)"
    )]
    Altered(i64),
    #[error("row {0} does not follow the one before it: a row was removed or reordered")]
    Unlinked(i64),
    #[error(
        "the chain ends at row {last} but a head at row {head} was recorded: newer rows were cut off"
    )]
    Truncated { head: i64, last: i64 },
    #[error("row {0} is not the recorded head: the chain was rewritten from there or before")]
    HeadMismatch(i64),
    #[error(
        "rows 1 to {0} carry the unkeyed hash of earlier versions, which anyone able to write \
         the database could recompute; run `carapace admin audit reseal` once to chain them \
         under the key"
    )]
    Unkeyed(i64),
}

/// Walks the whole chain. Unkeyed rows are accepted only as a prefix (an install from before
/// the keyed chain), and reported as [`Break::Unkeyed`] when nothing worse is found. With
/// `head` (an id and hash taken from the process log), the chain must still hold that row.
pub async fn verify(
    store: &Store,
    ring: &KeyRing,
    head: Option<(i64, &str)>,
) -> StoreResult<Result<Verified, Break>> {
    let mut walk = Walk::new(head);
    let mut after = 0;
    loop {
        let page = store.audit_page(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for r in &page {
            if let Err(b) = walk.step(ring, r) {
                return Ok(Err(b));
            }
        }
    }
    Ok(walk.finish())
}

/// Re-chains every row under the key, in one transaction that holds the chain's lock, after
/// checking the chain as [`verify`] does (a broken chain is left as it is, and reported).
/// For installs whose log began before the keyed chain; returns the rows re-chained.
pub async fn reseal(store: &Store, ring: &KeyRing) -> StoreResult<Result<u64, Break>> {
    let mut tx = store.begin().await?;
    tx.lock_audit_head().await?;
    let rows = tx.audit_rows().await?;
    let mut walk = Walk::new(None);
    for r in &rows {
        if let Err(b) = walk.step(ring, r) {
            return Ok(Err(b));
        }
    }
    let unkeyed = match walk.finish() {
        Ok(_) => 0,
        Err(Break::Unkeyed(n)) => n,
        Err(b) => return Ok(Err(b)),
    };
    let mut prev = GENESIS.to_string();
    for r in &rows {
        let hash = keyed_hash(ring, &row_input(r, &prev));
        tx.rechain_audit(r.id, &prev, &hash).await?;
        prev = hash;
    }
    let now = crate::clock::now_ms();
    let detail = serde_json::json!({"rows": rows.len(), "unkeyed": unkeyed});
    let entry = Entry {
        actor: "cli",
        action: "audit.resealed",
        subject: "audit_log",
        detail,
    };
    append(&mut tx, ring, entry, now).await?;
    tx.commit().await?;
    Ok(Ok(rows.len() as u64))
}

/// The chain check, one row at a time.
struct Walk {
    prev: Option<(i64, String)>,
    rows: u64,
    /// The last of the unkeyed rows that open the chain.
    unkeyed_through: Option<i64>,
    keyed_seen: bool,
    head: Option<(i64, String)>,
}

impl Walk {
    fn new(head: Option<(i64, &str)>) -> Walk {
        Walk {
            prev: None,
            rows: 0,
            unkeyed_through: None,
            keyed_seen: false,
            head: head.map(|(id, hash)| (id, hash.to_ascii_lowercase())),
        }
    }

    fn step(&mut self, ring: &KeyRing, r: &AuditRow) -> Result<(), Break> {
        let (prev_id, prev_hash) = match &self.prev {
            Some((id, hash)) => (*id, hash.as_str()),
            None => (0, GENESIS),
        };
        if r.id != prev_id + 1 || r.prev_hash != prev_hash {
            return Err(Break::Unlinked(r.id));
        }
        let input = row_input(r, &r.prev_hash);
        if keyed_hash(ring, &input) == r.hash {
            self.keyed_seen = true;
        } else if !self.keyed_seen && legacy_hash(&input) == r.hash {
            self.unkeyed_through = Some(r.id);
        } else {
            return Err(Break::Altered(r.id));
        }
        if let Some((id, hash)) = &self.head
            && *id == r.id
            && *hash != r.hash
        {
            return Err(Break::HeadMismatch(r.id));
        }
        self.prev = Some((r.id, r.hash.clone()));
        self.rows += 1;
        Ok(())
    }

    fn finish(self) -> Result<Verified, Break> {
        let last = self.prev.as_ref().map_or(0, |(id, _)| *id);
        if let Some((head, _)) = self.head
            && head > last
        {
            return Err(Break::Truncated { head, last });
        }
        if let Some(n) = self.unkeyed_through {
            return Err(Break::Unkeyed(n));
        }
        Ok(Verified {
            rows: self.rows,
            head: self.prev,
        })
    }
}
