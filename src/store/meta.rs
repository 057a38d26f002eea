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
