//! Sink cursors and dead letters: how far each sink, notifier and city-platform lane delivered,
//! moved only on the receiver's acknowledgement, and the items a receiver refused for good.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, Table};

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
        let tx = conn.transaction().map_err(|e| self.sqlite(e))?;
        self.dead_letter(&tx, sink, refused)?;
        for (name, value) in cursors {
            tx.execute(
                "INSERT INTO cursors (sink, last_id) VALUES (?1, ?2) ON CONFLICT(sink) DO UPDATE SET last_id = excluded.last_id",
                params![name, value],
            )
            .map_err(|e| self.sqlite(e))?;
        }
        tx.commit().map_err(|e| self.sqlite(e))
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
        let tx = conn.transaction().map_err(|e| self.sqlite(e))?;
        self.dead_letter(&tx, sink, refused)?;
        tx.execute(
            "INSERT INTO cursors (sink, last_id) VALUES (?1, ?2) ON CONFLICT(sink) DO UPDATE SET last_id = MAX(last_id, excluded.last_id)",
            params![sink, last_id],
        )
        .map_err(|e| self.sqlite(e))?;
        tx.commit().map_err(|e| self.sqlite(e))
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

    #[test]
    fn a_cursor_moved_before_a_crash_is_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            let (store, _) = Store::open(&path).unwrap();
            store
                .advance("influxdb", 12, &[(3, "x".into(), "refused".into())])
                .unwrap();
            store
                .set_cursors("city", &[("city", 7), ("city:live", 9)], &[])
                .unwrap();
            // No checkpoint and no clean close: what a SIGKILL leaves.
            std::mem::forget(store);
        }
        let (store, _) = Store::open(&path).unwrap();
        assert_eq!(store.cursor("influxdb").unwrap(), 12);
        assert_eq!(store.cursor("city:live").unwrap(), 9);
        assert_eq!(store.dead_letters("influxdb").unwrap().len(), 1);
    }
}
