//! Sink cursors and dead letters: how far each sink, notifier and city-platform lane delivered,
//! moved only on the receiver's acknowledgement, and the items a receiver refused for good.
//!
//! A cursor's move is committed without an fsync of its own (`synchronous = NORMAL` for its
//! transaction, `FULL` again right after). The WAL is written in order, so the next synced
//! commit (the next batch, a retention pass) or checkpoint makes it durable with everything
//! before it; retention, which deletes only what every cursor passed, never outlives the
//! cursor move it relied on. A power cut in between moves the cursor back to its last durable
//! place and the sink sends again what it had sent: delivery is at least once and points are
//! idempotent (RELIABILITY.md, contract 3). A process crash loses nothing: the commit is in the
//! operating system's cache. What this saves is an fsync (a whole-block flush of the WAL) per
//! delivery, as many as the batches' own at nominal load.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{Store, StoreError, Table};

/// Runs `write` in one transaction of `conn` that is committed without an fsync (see the
/// module's documentation), and puts the connection back to fsync'd commits, whatever the
/// outcome: every other commit of the store stays `synchronous = FULL`.
fn unsynced<T>(
    store: &Store,
    conn: &mut Connection,
    write: impl FnOnce(&Transaction) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| store.sqlite(e))?;
    let outcome = conn
        .transaction()
        .map_err(|e| store.sqlite(e))
        .and_then(|tx| {
            let value = write(&tx)?;
            tx.commit().map_err(|e| store.sqlite(e))?;
            Ok(value)
        });
    // Outside any transaction now (committed, or rolled back when dropped): this cannot meet
    // a busy connection. Should it fail all the same, the error wins over the outcome, so that
    // no caller goes on as if the store were as it should be.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| store.sqlite(e))?;
    outcome
}

impl Store {
    /// This store's instance id: set when the file was created, kept for its life.
    pub fn instance(&self) -> Result<String, StoreError> {
        let conn = self.reader()?;
        conn.query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
            r.get(0)
        })
        .map_err(|e| self.sqlite(e))
    }

    /// The highest id of `table` (`points`, `readings` or `alert_events`; 0 when empty).
    pub fn last_id(&self, table: Table) -> Result<i64, StoreError> {
        let conn = self.reader()?;
        conn.query_row(
            &format!("SELECT COALESCE(MAX(id), 0) FROM {}", table.name()),
            [],
            |r| r.get(0),
        )
        .map_err(|e| self.sqlite(e))
    }

    /// Sets cursors to exactly these values and records what `sink` refused for good (dead
    /// letters: id, record, reason), in one transaction (a sink with several lanes).
    pub fn set_cursors(
        &self,
        sink: &str,
        cursors: &[(&str, i64)],
        refused: &[(i64, String, String)],
    ) -> Result<(), StoreError> {
        let mut conn = self.writer(super::Cause::Cursors)?;
        unsynced(self, &mut conn, |tx| {
            self.dead_letter(tx, sink, refused)?;
            for (name, value) in cursors {
                tx.execute(
                    "INSERT INTO cursors (sink, last_id) VALUES (?1, ?2) ON CONFLICT(sink) DO UPDATE SET last_id = excluded.last_id",
                    params![name, value],
                )
                .map_err(|e| self.sqlite(e))?;
            }
            Ok(())
        })
    }

    /// Records what `sink` refused for good (id, line or record, reason) within `tx`.
    pub(super) fn dead_letter(
        &self,
        tx: &rusqlite::Transaction,
        sink: &str,
        refused: &[(i64, String, String)],
    ) -> Result<(), StoreError> {
        for (id, record, reason) in refused {
            tx.execute(
                "INSERT INTO sink_dead_letters (sink, point_id, line, reason, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![sink, id, record, reason, crate::clock::now_ms()],
            )
            .map_err(|e| self.sqlite(e))?;
        }
        Ok(())
    }

    /// The event time of the first row of `table` after id `after` (the oldest a sink has not
    /// delivered), if any.
    pub fn time_after(&self, table: Table, after: i64) -> Result<Option<i64>, StoreError> {
        let conn = self.reader()?;
        let column = match table {
            Table::AlertEvents => "at_ms",
            Table::Points | Table::Readings => "time_ms",
        };
        conn.query_row(
            &format!(
                "SELECT {column} FROM {} WHERE id > ?1 ORDER BY id LIMIT 1",
                table.name()
            ),
            [after],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| self.sqlite(e))
    }

    /// The dead letters of `sink` (records refused for good): id, record, reason.
    #[allow(clippy::let_and_return)] // the binding ends the borrow of `stmt` before it drops
    pub fn dead_letters(&self, sink: &str) -> Result<Vec<(i64, String, String)>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare(
                "SELECT point_id, line, reason FROM sink_dead_letters WHERE sink = ?1 ORDER BY id",
            )
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map([sink], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| self.sqlite(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sqlite(e));
        rows
    }

    /// A sink's cursor: the last point id it delivered (0 for a new sink).
    pub fn cursor(&self, sink: &str) -> Result<i64, StoreError> {
        let conn = self.reader()?;
        conn.query_row("SELECT last_id FROM cursors WHERE sink = ?1", [sink], |r| {
            r.get(0)
        })
        .optional()
        .map(|v| v.unwrap_or(0))
        .map_err(|e| self.sqlite(e))
    }

    /// Moves a sink's cursor after its acknowledgement, and records the points it refused for
    /// good (dead letters), in one transaction.
    pub fn advance(
        &self,
        sink: &str,
        last_id: i64,
        refused: &[(i64, String, String)],
    ) -> Result<(), StoreError> {
        let mut conn = self.writer(super::Cause::Cursors)?;
        unsynced(self, &mut conn, |tx| {
            self.dead_letter(tx, sink, refused)?;
            tx.execute(
                "INSERT INTO cursors (sink, last_id) VALUES (?1, ?2) ON CONFLICT(sink) DO UPDATE SET last_id = MAX(last_id, excluded.last_id)",
                params![sink, last_id],
            )
            .map_err(|e| self.sqlite(e))
        })
        .map(|_| ())
    }

    /// The highest point id (0 when empty).
    pub fn last_point_id(&self) -> Result<i64, StoreError> {
        self.last_id(Table::Points)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn synchronous(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    /// SQLite's `synchronous` levels: NORMAL commits without an fsync in WAL mode, FULL
    /// fsyncs every commit.
    const NORMAL: i64 = 1;
    const FULL: i64 = 2;

    #[test]
    fn a_cursor_moves_without_an_fsync_of_its_own_and_every_other_commit_stays_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("store.db")).unwrap();
        let mut seen = None;
        {
            let mut conn = store.writer(crate::store::Cause::Cursors).unwrap();
            assert_eq!(synchronous(&conn), FULL, "a new store syncs its commits");
            unsynced(&store, &mut conn, |tx| {
                seen = Some(synchronous(tx));
                Ok(())
            })
            .unwrap();
            assert_eq!(
                synchronous(&conn),
                FULL,
                "synced again after a cursor moved"
            );
        }
        assert_eq!(seen, Some(NORMAL), "the cursor's own commit is not synced");

        store.advance("influxdb", 41, &[]).unwrap();
        store
            .set_cursors("city", &[("city", 7), ("city:live", 9)], &[])
            .unwrap();
        assert_eq!(store.cursor("influxdb").unwrap(), 41);
        assert_eq!(store.cursor("city:live").unwrap(), 9);
        let conn = store.writer(crate::store::Cause::Cursors).unwrap();
        assert_eq!(synchronous(&conn), FULL);
    }

    #[test]
    fn a_cursor_move_that_fails_is_rolled_back_and_leaves_commits_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("store.db")).unwrap();
        store.advance("influxdb", 5, &[]).unwrap();
        let mut conn = store.writer(crate::store::Cause::Cursors).unwrap();
        let failed = unsynced(&store, &mut conn, |tx| {
            tx.execute(
                "UPDATE cursors SET last_id = 99 WHERE sink = 'influxdb'",
                [],
            )
            .map_err(|e| store.sqlite(e))?;
            tx.execute("INSERT INTO no_such_table VALUES (1)", [])
                .map_err(|e| store.sqlite(e))
        });
        let message = failed.unwrap_err().to_string();
        assert!(message.contains("no_such_table"), "{message}");
        assert_eq!(synchronous(&conn), FULL);
        drop(conn);
        assert_eq!(store.cursor("influxdb").unwrap(), 5, "rolled back");
    }

    #[test]
    fn a_cursor_moved_before_a_crash_is_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let (store, _) = Store::open(&path).unwrap();
            store
                .advance("influxdb", 12, &[(3, "x".into(), "refused".into())])
                .unwrap();
            // No checkpoint and no clean close: what a SIGKILL leaves (the WAL in the
            // operating system's cache).
            std::mem::forget(store);
        }
        let (store, _) = Store::open(&path).unwrap();
        assert_eq!(store.cursor("influxdb").unwrap(), 12);
        assert_eq!(store.dead_letters("influxdb").unwrap().len(), 1);
    }
}
