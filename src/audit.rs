//! The tamper-evident audit log: every credential, status, scope and login event, each row
//! chained to the previous by an HMAC-SHA256 under a key from the secrets dir, so that
//! altering, removing or re-chaining rows is detectable by anyone holding the key, and cannot
//! be covered up with the database alone. The newest row (the head) goes to the process log at
//! each commit, so a log shipped elsewhere also catches rows cut off the end.
//! The key is the blind-index key the database names (see `index_rotation`, which re-chains
//! every row when that key changes). Rows never hold a secret or an email.

use crate::auth::keyring::{FIRST_INDEX_ID, KeyRing};
use crate::store::{AuditRow, Store, StoreError, StoreResult, WriteTx};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation from the key's other use (the email blind index).
const DOMAIN: &[u8] = b"audit-chain\0";

/// The action of the row a blind-index key rotation appends; its detail records the head the
/// chain had under the old key (`old_head`: `id`, `hash`).
pub const INDEX_KEY_ROTATED: &str = "audit.index_key_rotated";

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

fn keyed_hash(key: &[u8; 32], input: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(DOMAIN);
    mac.update(input);
    hex::encode(mac.finalize().into_bytes())
}

/// The unkeyed SHA-256 of versions before the keyed chain; only ever verified, never written.
fn legacy_hash(input: &[u8]) -> String {
    hex::encode(Sha256::digest(input))
}

/// The id of the blind-index key in use, as the database names it.
fn in_use(named: Option<String>) -> String {
    named.unwrap_or_else(|| FIRST_INDEX_ID.to_string())
}

/// Takes the chain's lock (held until `tx` ends: a rotation holds it while it moves
/// everything onto a new key) and returns the chain's head and the id of the key in use.
pub async fn lock_chain(tx: &mut WriteTx) -> StoreResult<(Option<(i64, String)>, String)> {
    let head = tx.lock_audit_head().await?;
    let id = in_use(tx.index_key_id().await?);
    Ok((head, id))
}

/// The blind-index key in use, under the chain's lock: what a new row is chained under and
/// a new owner's email indexed under, in the same write.
pub async fn index_key_in_use<'r>(
    tx: &mut WriteTx,
    ring: &'r KeyRing,
) -> StoreResult<&'r [u8; 32]> {
    let (_, id) = lock_chain(tx).await?;
    ring.index_key(&id).ok_or_else(|| missing_key(&id))
}

fn missing_key(id: &str) -> StoreError {
    tracing::error!(
        key = id,
        "the blind-index key in use is not in this process's secrets dir"
    );
    StoreError::Unavailable(format!(
        "blind-index key '{id}' is in use but not in this process's secrets dir"
    ))
}

/// Appends `entry` inside `tx`, so the audit row commits with the change it records.
pub async fn append(
    tx: &mut WriteTx,
    ring: &KeyRing,
    entry: Entry<'_>,
    now: i64,
) -> StoreResult<()> {
    let (head, key_id) = lock_chain(tx).await?;
    let key = ring
        .index_key(&key_id)
        .ok_or_else(|| missing_key(&key_id))?;
    let (id, prev) = match head {
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
    let hash = keyed_hash(key, &input);
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
        "row {head} was re-chained under a new blind-index key at row {rotation}; a head logged \
         before that is checked as the one the rotation recorded: --head {old_id}:{old_hash}, \
         which should be the newest head your logs hold from before the rotation"
    )]
    HeadBeforeRotation {
        head: i64,
        rotation: i64,
        old_id: i64,
        old_hash: String,
    },
    #[error(
        "the chain is keyed with blind-index key '{0}', which is not in the secrets dir: point \
         --secrets-dir at the replicas' secrets"
    )]
    KeyMissing(String),
    #[error(
        "rows 1 to {0} carry the unkeyed hash of earlier versions, which anyone able to write \
         the database could recompute; run `carapace admin audit reseal` once to chain them \
         under the key"
    )]
    Unkeyed(i64),
}

/// Walks the whole chain. Unkeyed rows are accepted only as a prefix (an install from before
/// the keyed chain), and reported as [`Break::Unkeyed`] when nothing worse is found. With
/// `head` (an id and hash taken from the process log), the chain must still hold that row, or,
/// for a head logged before a blind-index key rotation, the rotation must have recorded it.
pub async fn verify(
    store: &Store,
    ring: &KeyRing,
    head: Option<(i64, &str)>,
) -> StoreResult<Result<Verified, Break>> {
    let id = in_use(store.index_key_id().await?);
    let Some(key) = ring.index_key(&id) else {
        return Ok(Err(Break::KeyMissing(id)));
    };
    let mut walk = Walk::new(*key, head);
    if head.is_some() {
        walk.older = ring
            .index_keys()
            .filter(|(other, _)| *other != id)
            .map(|(id, key)| Older {
                id: id.to_string(),
                key: *key,
                prev: GENESIS.to_string(),
                at_head: None,
            })
            .collect();
    }
    let mut after = 0;
    loop {
        let page = store.audit_page(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for r in &page {
            if let Err(b) = walk.step(r) {
                return Ok(Err(b));
            }
        }
    }
    Ok(walk.finish())
}

/// Checks `rows` (the whole chain, oldest first) under `key` as [`verify`] does; returns how
/// many rows open it with the unkeyed hash of earlier versions.
pub fn check(rows: &[AuditRow], key: &[u8; 32]) -> Result<u64, Break> {
    let mut walk = Walk::new(*key, None);
    for r in rows {
        walk.step(r)?;
    }
    match walk.finish() {
        Ok(_) => Ok(0),
        Err(Break::Unkeyed(n)) => Ok(n as u64),
        Err(b) => Err(b),
    }
}

/// Re-chains `rows` (the whole chain, oldest first) under `key`, inside `tx`.
pub async fn rechain(tx: &mut WriteTx, rows: &[AuditRow], key: &[u8; 32]) -> StoreResult<()> {
    let mut prev = GENESIS.to_string();
    for r in rows {
        let hash = keyed_hash(key, &row_input(r, &prev));
        tx.rechain_audit(r.id, &prev, &hash).await?;
        prev = hash;
    }
    Ok(())
}

/// Re-chains every row under the key, in one transaction that holds the chain's lock, after
/// checking the chain as [`verify`] does (a broken chain is left as it is, and reported).
/// For installs whose log began before the keyed chain; returns the rows re-chained.
pub async fn reseal(store: &Store, ring: &KeyRing) -> StoreResult<Result<u64, Break>> {
    let mut tx = store.begin().await?;
    let key = index_key_in_use(&mut tx, ring).await?;
    let rows = tx.audit_rows().await?;
    let unkeyed = match check(&rows, key) {
        Ok(n) => n,
        Err(b) => return Ok(Err(b)),
    };
    rechain(&mut tx, &rows, key).await?;
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
    key: [u8; 32],
    prev: Option<(i64, String)>,
    rows: u64,
    /// The last of the unkeyed rows that open the chain.
    unkeyed_through: Option<i64>,
    keyed_seen: bool,
    head: Option<(i64, String)>,
    /// The chain holds the head's row with another hash.
    head_differs: bool,
    /// The first key rotation after the head's row: its id and the old head it recorded.
    rotation_after_head: Option<(i64, Option<(i64, String)>)>,
    /// With a head, the chain as each older blind-index key still held would have it: a head
    /// logged before a rotation is checked against the old key's chain while that key is kept.
    older: Vec<Older>,
    /// With the key the rotation after the head retired still held (its chain recomputed
    /// ending at the head the rotation recorded): whether that chain holds the head.
    head_under_older_key: Option<bool>,
}

struct Older {
    id: String,
    key: [u8; 32],
    prev: String,
    at_head: Option<String>,
}

/// The `old_head` a rotation row's detail records.
fn recorded_old_head(detail: &str) -> Option<(i64, String)> {
    let v: serde_json::Value = serde_json::from_str(detail).ok()?;
    let old = &v["old_head"];
    Some((old["id"].as_i64()?, old["hash"].as_str()?.to_string()))
}

/// The key a rotation row's detail says it retired.
fn recorded_from(detail: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(detail).ok()?;
    v["from"].as_str().map(str::to_string)
}

impl Walk {
    fn new(key: [u8; 32], head: Option<(i64, &str)>) -> Walk {
        Walk {
            key,
            older: Vec::new(),
            head_under_older_key: None,
            head_differs: false,
            rotation_after_head: None,
            prev: None,
            rows: 0,
            unkeyed_through: None,
            keyed_seen: false,
            head: head.map(|(id, hash)| (id, hash.to_ascii_lowercase())),
        }
    }

    fn step(&mut self, r: &AuditRow) -> Result<(), Break> {
        let (prev_id, prev_hash) = match &self.prev {
            Some((id, hash)) => (*id, hash.as_str()),
            None => (0, GENESIS),
        };
        if r.id != prev_id + 1 || r.prev_hash != prev_hash {
            return Err(Break::Unlinked(r.id));
        }
        let input = row_input(r, &r.prev_hash);
        if keyed_hash(&self.key, &input) == r.hash {
            self.keyed_seen = true;
        } else if !self.keyed_seen && legacy_hash(&input) == r.hash {
            self.unkeyed_through = Some(r.id);
        } else {
            return Err(Break::Altered(r.id));
        }
        if let Some((id, hash)) = &self.head {
            if *id == r.id && *hash != r.hash {
                self.head_differs = true;
            }
            if r.id > *id && r.action == INDEX_KEY_ROTATED && self.rotation_after_head.is_none() {
                let recorded = recorded_old_head(&r.detail);
                // The retired key's chain, recomputed, must end where the rotation recorded
                // (which shows it is the chain that key had) and hold the head.
                let from = recorded_from(&r.detail);
                self.head_under_older_key = self
                    .older
                    .iter()
                    .find(|o| {
                        Some(&o.id) == from.as_ref()
                            && recorded.as_ref() == Some(&(r.id - 1, o.prev.clone()))
                    })
                    .map(|o| o.at_head.as_ref() == Some(hash));
                self.rotation_after_head = Some((r.id, recorded));
            }
            if self.rotation_after_head.is_none() {
                for o in &mut self.older {
                    let h = keyed_hash(&o.key, &row_input(r, &o.prev));
                    if r.id == *id {
                        o.at_head = Some(h.clone());
                    }
                    o.prev = h;
                }
            }
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
        if let Some((head, hash)) = self.head.filter(|_| self.head_differs) {
            // A head logged before a rotation was under the old key: its row has been
            // re-chained since, and the rotation (chained under the new key) recorded the
            // old chain's head, which is what such a head is checked against.
            match self.rotation_after_head {
                Some((_, Some((id, old)))) if id == head && old == hash => {}
                Some(_) if self.head_under_older_key == Some(true) => {}
                Some(_) if self.head_under_older_key == Some(false) => {
                    return Err(Break::HeadMismatch(head));
                }
                Some((rotation, Some((old_id, old_hash)))) if head < old_id => {
                    return Err(Break::HeadBeforeRotation {
                        head,
                        rotation,
                        old_id,
                        old_hash,
                    });
                }
                _ => return Err(Break::HeadMismatch(head)),
            }
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
