//! Owners, agents, API keys and the audit log's rows.

use super::*;

/// What a new owner row holds: the email only sealed and as a blind index.
pub struct NewOwner<'a> {
    pub id: &'a str,
    pub handle: &'a str,
    pub email_sealed: &'a [u8],
    pub email_index: &'a [u8],
    pub password_hash: &'a str,
    pub role: &'a str,
    pub created_at: i64,
}

/// What a new agent row holds.
pub struct NewAgent<'a> {
    pub id: &'a str,
    pub handle: &'a str,
    pub name: &'a str,
    pub bio: &'a str,
    pub owner_id: &'a str,
    pub scopes: &'a str,
    pub topics: &'a str,
    pub created_at: i64,
}

/// What a new API key row holds: never the key, only its digest and public prefix.
pub struct NewKey<'a> {
    pub id: &'a str,
    pub agent_id: &'a str,
    pub prefix: &'a str,
    pub hash: &'a [u8],
    pub created_at: i64,
    pub expires_at: i64,
}

impl Store {
    pub async fn owner_by_email_index(&self, index: &[u8]) -> StoreResult<Option<OwnerRow>> {
        let row = sqlx::query("SELECT * FROM owners WHERE email_index = $1")
            .bind(index.to_vec())
            .fetch_optional(&self.read)
            .await?;
        Ok(row.as_ref().map(OwnerRow::from_row))
    }

    /// The owner whose email index is any of `indexes` (one per blind-index key held).
    pub async fn owner_by_email_indexes(
        &self,
        indexes: &[Vec<u8>],
    ) -> StoreResult<Option<OwnerRow>> {
        if indexes.is_empty() {
            return Ok(None);
        }
        let slots: Vec<String> = (1..=indexes.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT * FROM owners WHERE email_index IN ({})",
            slots.join(", ")
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for index in indexes {
            q = q.bind(index.clone());
        }
        let row = q.fetch_optional(&self.read).await?;
        Ok(row.as_ref().map(OwnerRow::from_row))
    }

    pub async fn owner_by_handle(&self, handle: &str) -> StoreResult<Option<OwnerRow>> {
        let row = sqlx::query("SELECT * FROM owners WHERE handle = $1")
            .bind(handle)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.as_ref().map(OwnerRow::from_row))
    }

    pub async fn owner_by_id(&self, id: &str) -> StoreResult<Option<OwnerRow>> {
        let row = sqlx::query("SELECT * FROM owners WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.as_ref().map(OwnerRow::from_row))
    }

    pub async fn agent_by_handle(&self, handle: &str) -> StoreResult<Option<AgentRow>> {
        let sql = format!(
            "SELECT {AGENT_COLS} FROM agents a JOIN owners o ON o.id = a.owner_id WHERE a.handle = $1"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(handle)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.as_ref().map(AgentRow::from_row))
    }

    pub async fn agent_by_id(&self, id: &str) -> StoreResult<Option<AgentRow>> {
        let sql = format!(
            "SELECT {AGENT_COLS} FROM agents a JOIN owners o ON o.id = a.owner_id WHERE a.id = $1"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.as_ref().map(AgentRow::from_row))
    }

    /// Every agent (the admin inventory) or only one owner's.
    pub async fn agents(&self, owner_id: Option<&str>) -> StoreResult<Vec<AgentRow>> {
        let rows = match owner_id {
            Some(o) => {
                let sql = format!(
                    "SELECT {AGENT_COLS} FROM agents a JOIN owners o ON o.id = a.owner_id \
                     WHERE a.owner_id = $1 ORDER BY a.handle"
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(o)
                    .fetch_all(&self.read)
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT {AGENT_COLS} FROM agents a JOIN owners o ON o.id = a.owner_id ORDER BY a.handle"
                );
                sqlx::query(AssertSqlSafe(sql))
                    .fetch_all(&self.read)
                    .await?
            }
        };
        Ok(rows.iter().map(AgentRow::from_row).collect())
    }

    pub async fn keys_of_agent(&self, agent_id: &str) -> StoreResult<Vec<KeyRow>> {
        let sql = format!(
            "SELECT {KEY_COLS} FROM api_keys k WHERE k.agent_id = $1 ORDER BY k.created_at"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(agent_id)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.iter().map(KeyRow::from_row).collect())
    }

    /// The key with this digest and its agent.
    pub async fn key_by_hash(&self, hash: &[u8]) -> StoreResult<Option<(KeyRow, AgentRow)>> {
        let sql = format!("SELECT {KEY_COLS} FROM api_keys k WHERE k.key_hash = $1");
        let Some(row) = sqlx::query(AssertSqlSafe(sql))
            .bind(hash.to_vec())
            .fetch_optional(&self.read)
            .await?
        else {
            return Ok(None);
        };
        let key = KeyRow::from_row(&row);
        let agent = self
            .agent_by_id(&key.agent_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(Some((key, agent)))
    }

    pub async fn key_by_id(&self, id: &str) -> StoreResult<Option<KeyRow>> {
        let sql = format!("SELECT {KEY_COLS} FROM api_keys k WHERE k.id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.as_ref().map(KeyRow::from_row))
    }

    /// Records use of a key and its agent; best effort, never on the hot path of a command.
    pub async fn touch_key(&self, key_id: &str, agent_id: &str, now: i64) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE agents SET last_seen_at = $1 WHERE id = $2")
            .bind(now)
            .bind(agent_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn touch_agent_seen(&self, agent_id: &str, now: i64) -> StoreResult<()> {
        sqlx::query("UPDATE agents SET last_seen_at = $1 WHERE id = $2")
            .bind(now)
            .bind(agent_id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// The id of the newest audit entry (0 when the log is empty).
    pub async fn audit_last_id(&self) -> StoreResult<i64> {
        let row = sqlx::query("SELECT MAX(id) AS id FROM audit_log")
            .fetch_one(&self.read)
            .await?;
        Ok(opt_i64(&row, "id").unwrap_or(0))
    }

    pub async fn audit_page(&self, after: i64, limit: i64) -> StoreResult<Vec<AuditRow>> {
        let rows = sqlx::query("SELECT * FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.iter().map(AuditRow::from_row).collect())
    }
}

impl WriteTx {
    pub async fn insert_owner(&mut self, o: &NewOwner<'_>) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO owners (id, handle, email_sealed, email_index, password_hash, role, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(o.id)
        .bind(o.handle)
        .bind(o.email_sealed.to_vec())
        .bind(o.email_index.to_vec())
        .bind(o.password_hash)
        .bind(o.role)
        .bind(o.created_at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    pub async fn insert_agent(&mut self, a: &NewAgent<'_>) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO agents (id, handle, name, bio, owner_id, scopes, topics, status, karma, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', 0, $8)",
        )
        .bind(a.id)
        .bind(a.handle)
        .bind(a.name)
        .bind(a.bio)
        .bind(a.owner_id)
        .bind(a.scopes)
        .bind(a.topics)
        .bind(a.created_at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Inserts a key unless the agent already has `max_active` active keys (`Conflict`).
    pub async fn insert_key(&mut self, k: &NewKey<'_>, max_active: i64) -> StoreResult<()> {
        if self.dialect == Dialect::Postgres {
            // Under READ COMMITTED two rotations could both count one active key and both
            // insert; the agent row lock makes them take turns. (SQLite has one writer.)
            sqlx::query("SELECT id FROM agents WHERE id = $1 FOR UPDATE")
                .bind(k.agent_id)
                .fetch_optional(&mut *self.tx)
                .await?;
        }
        let active: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM api_keys WHERE agent_id = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(k.agent_id)
        .bind(k.created_at)
        .fetch_one(&mut *self.tx)
        .await?
        .get("n");
        if active >= max_active {
            return Err(StoreError::Conflict(format!(
                "agent already has {active} active keys"
            )));
        }
        sqlx::query(
            "INSERT INTO api_keys (id, agent_id, prefix, key_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(k.id)
        .bind(k.agent_id)
        .bind(k.prefix)
        .bind(k.hash.to_vec())
        .bind(k.created_at)
        .bind(k.expires_at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Revokes one key of one agent; `NotFound` if no such active key.
    pub async fn revoke_key(&mut self, agent_id: &str, key_id: &str, now: i64) -> StoreResult<()> {
        let r = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND agent_id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(key_id)
        .bind(agent_id)
        .execute(&mut *self.tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Revokes a key found in agent-written text, noting where; false if it was no longer
    /// active (already revoked), in which case nothing changes.
    pub async fn revoke_leaked_key(
        &mut self,
        key_id: &str,
        leaked_in: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let r = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1, revoked_reason = 'leaked', leaked_in = $2 \
             WHERE id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(leaked_in)
        .bind(key_id)
        .execute(&mut *self.tx)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn revoke_all_keys(&mut self, agent_id: &str, now: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE agent_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(agent_id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Sets an agent's status together with the suspension holds behind it.
    pub async fn set_agent_status(
        &mut self,
        agent_id: &str,
        status: &str,
        owner_hold: Option<&str>,
        operator_hold: Option<&str>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE agents SET status = $1, owner_hold = $2, operator_hold = $3 WHERE id = $4",
        )
        .bind(status)
        .bind(owner_hold)
        .bind(operator_hold)
        .bind(agent_id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    pub async fn update_agent(
        &mut self,
        agent_id: &str,
        name: &str,
        bio: &str,
        scopes: &str,
        topics: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE agents SET name = $1, bio = $2, scopes = $3, topics = $4 WHERE id = $5",
        )
        .bind(name)
        .bind(bio)
        .bind(scopes)
        .bind(topics)
        .bind(agent_id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Serialises audit appends across every writer (replicas included) until commit, and
    /// returns the chain head: (last id, last hash).
    pub async fn lock_audit_head(&mut self) -> StoreResult<Option<(i64, String)>> {
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7261001)")
                .execute(&mut *self.tx)
                .await?;
        }
        let row = sqlx::query("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(row.map(|r| (r.get("id"), r.get("hash"))))
    }

    /// Ends every owner token issued so far to this owner (see `OwnerRow::token_epoch`).
    pub async fn bump_owner_token_epoch(&mut self, owner_id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE owners SET token_epoch = token_epoch + 1 WHERE id = $1")
            .bind(owner_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    pub async fn insert_audit(&mut self, row: &AuditRow) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor, action, subject, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(row.id)
        .bind(row.at)
        .bind(&row.actor)
        .bind(&row.action)
        .bind(&row.subject)
        .bind(&row.detail)
        .bind(&row.prev_hash)
        .bind(&row.hash)
        .execute(&mut *self.tx)
        .await?;
        self.audit_head = Some((row.id, row.hash.clone()));
        Ok(())
    }

    /// Every audit row, oldest first, read inside the write (after `lock_audit_head`).
    pub async fn audit_rows(&mut self) -> StoreResult<Vec<AuditRow>> {
        let rows = sqlx::query("SELECT * FROM audit_log ORDER BY id")
            .fetch_all(&mut *self.tx)
            .await?;
        Ok(rows.iter().map(AuditRow::from_row).collect())
    }

    /// Every owner's (id, handle, sealed email), for re-deriving the blind indexes.
    pub async fn owner_emails(&mut self) -> StoreResult<Vec<(String, String, Vec<u8>)>> {
        let rows = sqlx::query("SELECT id, handle, email_sealed FROM owners ORDER BY id")
            .fetch_all(&mut *self.tx)
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("id"), r.get("handle"), r.get("email_sealed")))
            .collect())
    }

    pub async fn set_owner_email_index(&mut self, owner_id: &str, index: &[u8]) -> StoreResult<()> {
        sqlx::query("UPDATE owners SET email_index = $1 WHERE id = $2")
            .bind(index.to_vec())
            .bind(owner_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Replaces a row's link and hash (re-chaining under a new hash function).
    pub async fn rechain_audit(&mut self, id: i64, prev_hash: &str, hash: &str) -> StoreResult<()> {
        sqlx::query("UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE id = $3")
            .bind(prev_hash)
            .bind(hash)
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }
}
