//! Quarantine: rows that no longer decode are moved aside and counted instead of crashing the
//! gateway, and a database file that fails SQLite's `quick_check` at open is replaced.

use std::path::Path;

use rusqlite::{Connection, params};

use super::{Store, StoreError};

impl Store {
    /// Moves a row whose body does not decode to quarantine, and deletes it from `table`.
    pub(super) fn quarantine_row<K: rusqlite::ToSql + ToString>(
        &self,
        table: &str,
        key_column: &str,
        key: &K,
        error: &dyn std::fmt::Display,
        body: &[u8],
    ) -> Result<(), StoreError> {
        let conn = self.writer(super::Cause::Operators)?;
        let reason = format!("{}: {error}", key.to_string());
        quarantine(&conn, table, None, &reason, body).map_err(|e| self.sqlite(e))?;
        conn.execute(
            &format!("DELETE FROM {table} WHERE {key_column} = ?1"),
            [key],
        )
        .map_err(|e| self.sqlite(e))?;
        Ok(())
    }

    /// How many rows were quarantined so far.
    pub fn quarantined(&self) -> Result<u64, StoreError> {
        let conn = self.reader()?;
        conn.query_row("SELECT COUNT(*) FROM quarantine", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n as u64)
        .map_err(|e| self.sqlite(e))
    }
}

pub(super) fn quarantine(
    conn: &Connection,
    source: &str,
    id: Option<i64>,
    reason: &str,
    body: &[u8],
) -> rusqlite::Result<usize> {
    tracing::warn!(source, id, reason, "corrupt record quarantined");
    conn.execute(
        "INSERT INTO quarantine (source, original_id, reason, body, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![source, id, reason, body, crate::clock::now_ms()],
    )
}

pub(super) fn passes_quick_check(path: &Path) -> bool {
    let Ok(conn) = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return false;
    };
    conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
        .is_ok_and(|s| s == "ok")
}
