//! Every sealed blob at rest (owners' emails, DM bodies, private channels' event history), a
//! page at a time, for re-sealing under the newest data key.

use super::*;

/// Where a sealed blob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedKind {
    OwnerEmail,
    DmBody,
    PrivateEvent,
}

/// One sealed blob: its row (an id; for an event the channel and seq) and its seal context.
pub struct SealedBlob {
    pub kind: SealedKind,
    pub id: String,
    pub seq: i64,
    pub context: String,
    pub blob: Vec<u8>,
}

impl Store {
    /// Up to `limit` blobs of `kind` after the row `after` (id, seq), in row order.
    pub async fn sealed_page(
        &self,
        kind: SealedKind,
        after: (&str, i64),
        limit: i64,
    ) -> StoreResult<Vec<SealedBlob>> {
        let sql = match kind {
            SealedKind::OwnerEmail => {
                "SELECT id, CAST(0 AS BIGINT) AS seq, email_sealed AS blob FROM owners WHERE id > $1 AND $2 IS NOT NULL \
                 ORDER BY id LIMIT $3"
            }
            SealedKind::DmBody => {
                "SELECT id, CAST(0 AS BIGINT) AS seq, body_sealed AS blob FROM dms WHERE id > $1 AND $2 IS NOT NULL \
                 ORDER BY id LIMIT $3"
            }
            SealedKind::PrivateEvent => {
                "SELECT channel AS id, seq, data AS blob FROM events WHERE sealed = 1 \
                 AND (channel > $1 OR (channel = $1 AND seq > $2)) ORDER BY channel, seq LIMIT $3"
            }
        };
        let rows = sqlx::query(sql)
            .bind(after.0)
            .bind(after.1)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let id: String = r.get("id");
                let context = match kind {
                    SealedKind::OwnerEmail => "owner.email".to_string(),
                    SealedKind::DmBody => format!("dm:{id}"),
                    SealedKind::PrivateEvent => format!("event:{id}"),
                };
                SealedBlob {
                    kind,
                    seq: r.get("seq"),
                    blob: r.get("blob"),
                    context,
                    id,
                }
            })
            .collect())
    }

    /// Replaces `b`'s blob with `sealed`, unless the row changed meanwhile.
    pub async fn replace_sealed(&self, b: &SealedBlob, sealed: &[u8]) -> StoreResult<()> {
        let sql = match b.kind {
            SealedKind::OwnerEmail => {
                "UPDATE owners SET email_sealed = $1 WHERE id = $2 AND email_sealed = $3 AND $4 IS NOT NULL"
            }
            SealedKind::DmBody => {
                "UPDATE dms SET body_sealed = $1 WHERE id = $2 AND body_sealed = $3 AND $4 IS NOT NULL"
            }
            SealedKind::PrivateEvent => {
                "UPDATE events SET data = $1 WHERE channel = $2 AND data = $3 AND seq = $4"
            }
        };
        sqlx::query(sql)
            .bind(sealed.to_vec())
            .bind(&b.id)
            .bind(b.blob.clone())
            .bind(b.seq)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
