//! The audit trail (等保 2.0 安全审计): every login, failed login, logout, acknowledgement,
//! operator count, account or token change, appended to `audit` in the local store. Each record
//! carries the hash of the one before it, so [`Store::verify_audit`] names the first record that
//! was changed, removed or put out of order. Records are kept by age only
//! (`audit.retention_days`, 180 by default), never dropped by the size bound; when the oldest
//! expire, the hash of the last one removed becomes the chain's anchor (`meta.audit_anchor`).

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Store, StoreError};

/// How long audit records are kept (等保 asks six months), whatever the size bound.
pub const AUDIT_KEEP_MS: i64 = 180 * 86_400_000;

/// The anchor of a chain that never expired a record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, by whom, from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Who: an account name, `token:{id}`, `cli`, or what a failed login claimed.
    pub actor: String,
    /// From where: the client's address, or `cli`.
    pub source: String,
    /// What: `login`, `logout`, `ack`, `occupancy`, `account.add`, `token.add`, ...
    pub action: String,
    /// On what: an alert id, an area, an account, a token id.
    pub target: String,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    /// Free text (a note, a reason).
    pub detail: String,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Its place in the chain.
    pub id: i64,
    /// When, Unix ms.
    pub at_ms: i64,
    /// The entry.
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// The hash of the record before it (or the anchor).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this record's fields.
    pub hash: String,
}

/// Why the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditBroken {
    /// A record's fields do not give its hash: it was changed.
    #[error("audit record {id} was changed: its hash does not match its contents")]
    Changed {
        /// The record.
        id: i64,
    },
    /// A record does not follow the one before it: one was removed or they were reordered.
    #[error(
        "audit record {id} does not follow the record before it: a record before it was removed, or records were reordered"
    )]
    Unlinked {
        /// The first record out of the chain.
        id: i64,
    },
}

fn hash(prev: &str, id: i64, at_ms: i64, e: &AuditEntry) -> String {
    let fields = serde_json::json!([
        id, at_ms, e.actor, e.source, e.action, e.target, e.outcome, e.detail
    ]);
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(fields.to_string().as_bytes());
    hex::encode(h.finalize())
}

/// The table, made at open.
pub(super) fn create(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS audit (
             id INTEGER PRIMARY KEY,
             at_ms INTEGER NOT NULL,
             actor TEXT NOT NULL,
             source TEXT NOT NULL,
             action TEXT NOT NULL,
             target TEXT NOT NULL,
             outcome TEXT NOT NULL,
             detail TEXT NOT NULL,
             prev_hash TEXT NOT NULL,
             hash TEXT NOT NULL);",
    )
}

fn anchor(conn: &Connection) -> rusqlite::Result<String> {
    Ok(conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'audit_anchor'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or_else(|| GENESIS.to_owned()))
}

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        entry: AuditEntry {
            actor: r.get(2)?,
            source: r.get(3)?,
            action: r.get(4)?,
            target: r.get(5)?,
            outcome: r.get(6)?,
            detail: r.get(7)?,
        },
        prev_hash: r.get(8)?,
        hash: r.get(9)?,
    })
}

const COLUMNS: &str = "id, at_ms, actor, source, action, target, outcome, detail, prev_hash, hash";

impl Store {
    /// Appends `entry` at `at_ms` to the audit trail (fsync'd); returns its id.
    pub fn audit(&self, at_ms: i64, entry: &AuditEntry) -> Result<i64, StoreError> {
        let mut conn = self.writer(super::Cause::Operators)?;
        let tx = conn.transaction().map_err(|e| self.sqlite(e))?;
        let last: Option<(i64, String)> = tx
            .query_row(
                "SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.sqlite(e))?;
        let (id, prev) = match last {
            Some((id, hash)) => (id + 1, hash),
            None => {
                // After every record expired, ids go on from the last one removed.
                let next: i64 = tx
                    .query_row(
                        "SELECT COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'audit_anchor_id'), 0) + 1",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(|e| self.sqlite(e))?;
                (next, anchor(&tx).map_err(|e| self.sqlite(e))?)
            }
        };
        let h = hash(&prev, id, at_ms, entry);
        tx.execute(
            &format!(
                "INSERT INTO audit ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ),
            params![
                id,
                at_ms,
                entry.actor,
                entry.source,
                entry.action,
                entry.target,
                entry.outcome,
                entry.detail,
                prev,
                h
            ],
        )
        .map_err(|e| self.sqlite(e))?;
        tx.commit().map_err(|e| self.sqlite(e))?;
        Ok(id)
    }

    /// Walks the audit trail from its anchor: how many records hold, or the first that does not.
    pub fn verify_audit(&self) -> Result<Result<usize, AuditBroken>, StoreError> {
        let conn = self.reader()?;
        let mut prev = anchor(&conn).map_err(|e| self.sqlite(e))?;
        let mut prev_id: Option<i64> = conn
            .query_row(
                "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'audit_anchor_id'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sqlite(e))?;
        let mut stmt = conn
            .prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY id"))
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt.query_map([], record).map_err(|e| self.sqlite(e))?;
        let mut n = 0;
        for row in rows {
            let r = row.map_err(|e| self.sqlite(e))?;
            if hash(&r.prev_hash, r.id, r.at_ms, &r.entry) != r.hash {
                return Ok(Err(AuditBroken::Changed { id: r.id }));
            }
            let follows = prev_id.is_none_or(|p| r.id == p + 1);
            if r.prev_hash != prev || !follows {
                return Ok(Err(AuditBroken::Unlinked { id: r.id }));
            }
            (prev, prev_id) = (r.hash, Some(r.id));
            n += 1;
        }
        Ok(Ok(n))
    }

    /// The audit records from `since_ms` on, oldest first.
    #[allow(clippy::let_and_return)] // the binding ends the borrow of `stmt` before it drops
    pub fn audit_since(&self, since_ms: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM audit WHERE at_ms >= ?1 ORDER BY id"
            ))
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map([since_ms], record)
            .map_err(|e| self.sqlite(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sqlite(e));
        rows
    }

    /// Removes the records older than `before_ms`; the last one removed becomes the anchor.
    /// Returns how many.
    pub fn expire_audit(&self, before_ms: i64) -> Result<usize, StoreError> {
        let mut conn = self.writer(super::Cause::Operators)?;
        let tx = conn.transaction().map_err(|e| self.sqlite(e))?;
        let last: Option<(i64, String)> = tx
            .query_row(
                "SELECT id, hash FROM audit WHERE at_ms < ?1 ORDER BY id DESC LIMIT 1",
                [before_ms],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.sqlite(e))?;
        let Some((id, hash)) = last else {
            return Ok(0);
        };
        let n = tx
            .execute("DELETE FROM audit WHERE id <= ?1", [id])
            .map_err(|e| self.sqlite(e))?;
        for (key, value) in [("audit_anchor", hash), ("audit_anchor_id", id.to_string())] {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .map_err(|e| self.sqlite(e))?;
        }
        tx.commit().map_err(|e| self.sqlite(e))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            actor: "wang.li".into(),
            source: "10.0.0.7".into(),
            action: action.into(),
            target: "crowd.occupancy:S4:60000".into(),
            outcome: "ok".into(),
            detail: "on the way".into(),
        }
    }

    #[test]
    fn the_chain_names_the_first_record_changed_removed_or_reordered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.db");
        let (store, _) = Store::open(&path).unwrap();
        for (i, action) in ["login", "ack", "logout", "login", "ack"]
            .iter()
            .enumerate()
        {
            store.audit(1_000 + i as i64, &entry(action)).unwrap();
        }
        assert_eq!(store.verify_audit().unwrap(), Ok(5));
        let raw = rusqlite::Connection::open(&path).unwrap();
        // Changed.
        raw.execute("UPDATE audit SET actor = 'someone' WHERE id = 3", [])
            .unwrap();
        assert_eq!(
            store.verify_audit().unwrap(),
            Err(AuditBroken::Changed { id: 3 })
        );
        raw.execute("UPDATE audit SET actor = 'wang.li' WHERE id = 3", [])
            .unwrap();
        assert_eq!(store.verify_audit().unwrap(), Ok(5));
        // Removed.
        let saved: AuditRecord = raw
            .query_row(
                &format!("SELECT {COLUMNS} FROM audit WHERE id = 2"),
                [],
                record,
            )
            .unwrap();
        raw.execute("DELETE FROM audit WHERE id = 2", []).unwrap();
        assert_eq!(
            store.verify_audit().unwrap(),
            Err(AuditBroken::Unlinked { id: 3 })
        );
        raw.execute(
            &format!(
                "INSERT INTO audit ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ),
            params![
                saved.id,
                saved.at_ms,
                saved.entry.actor,
                saved.entry.source,
                saved.entry.action,
                saved.entry.target,
                saved.entry.outcome,
                saved.entry.detail,
                saved.prev_hash,
                saved.hash
            ],
        )
        .unwrap();
        assert_eq!(store.verify_audit().unwrap(), Ok(5));
        // Reordered: records 4 and 5 swap places.
        raw.execute_batch(
            "UPDATE audit SET id = 100 WHERE id = 4;
             UPDATE audit SET id = 4 WHERE id = 5;
             UPDATE audit SET id = 5 WHERE id = 100;",
        )
        .unwrap();
        assert!(store.verify_audit().unwrap().is_err());
        drop(store);
        let _ = Path::new(&path);
    }

    #[test]
    fn expired_records_leave_an_anchor_the_chain_goes_on_from() {
        let (store, _) = Store::open(Path::new(":memory:")).unwrap();
        for t in 0..6 {
            store.audit(t * 1000, &entry("login")).unwrap();
        }
        assert_eq!(store.expire_audit(3_000).unwrap(), 3);
        assert_eq!(store.verify_audit().unwrap(), Ok(3));
        assert_eq!(store.expire_audit(10_000).unwrap(), 3);
        let id = store.audit(20_000, &entry("logout")).unwrap();
        assert_eq!(id, 7, "ids go on");
        assert_eq!(store.verify_audit().unwrap(), Ok(1));
        assert_eq!(store.audit_since(0).unwrap()[0].entry.action, "logout");
    }
}
