//! Facts about the deployment itself, kept with its data: the cluster id every replica
//! sharing this database agrees on.

use super::*;

impl Store {
    /// This deployment's id, made on first use: replicas sharing the database share it, so it
    /// namespaces what they share elsewhere (Redis channels and keys).
    pub async fn cluster_id(&self) -> StoreResult<String> {
        let fresh = uuid::Uuid::now_v7().simple().to_string();
        // The random tail of a v7 uuid; the leading time bits would be the same for clusters
        // made in the same millisecond.
        let fresh = &fresh[fresh.len() - 12..];
        sqlx::query(
            "INSERT INTO cluster_meta (name, value) VALUES ('cluster_id', $1) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(fresh)
        .execute(&self.write)
        .await?;
        let row = sqlx::query("SELECT value FROM cluster_meta WHERE name = 'cluster_id'")
            .fetch_one(&self.write)
            .await?;
        Ok(row.get("value"))
    }
}

/// The id of the blind-index key the owners' email indexes and the audit chain are under, kept
/// in `cluster_meta` so every replica and operator command agrees on it; `None` until the
/// first rotation (the deployment's first key).
const INDEX_KEY: &str = "index_key";

impl Store {
    pub async fn index_key_id(&self) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM cluster_meta WHERE name = $1")
            .bind(INDEX_KEY)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| r.get("value")))
    }
}

impl WriteTx {
    /// As [`Store::index_key_id`], inside the write (after `lock_audit_head`, which a rotation
    /// holds while it moves everything onto a new key).
    pub async fn index_key_id(&mut self) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM cluster_meta WHERE name = $1")
            .bind(INDEX_KEY)
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(row.map(|r| r.get("value")))
    }

    pub async fn set_index_key_id(&mut self, id: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO cluster_meta (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(INDEX_KEY)
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}
