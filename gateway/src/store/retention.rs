//! Retention and the size bound: what may be deleted (only what every sink delivered), the
//! explicit policy when the store is full, and the device checkpoint taken with it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension};

use super::{Cause, Store, StoreError};

/// How long data is kept and how large the store may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Raw readings are kept this long (for local queries and aggregation replay).
    pub raw_ms: i64,
    /// Points are kept this long once every sink delivered them.
    pub points_ms: i64,
    /// The bound on the database's used size.
    pub max_bytes: u64,
}

impl Default for Retention {
    /// A day of raw readings, a week of points, 4 GiB (the config file's defaults).
    fn default() -> Self {
        Retention {
            raw_ms: 24 * 3_600_000,
            points_ms: 7 * 86_400_000,
            max_bytes: 4096 << 20,
        }
    }
}
/// What one [`Store::enforce`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enforced {
    /// Raw readings past their retention.
    pub expired_readings: u64,
    /// Delivered points past their retention.
    pub expired_points: u64,
    /// Raw readings dropped (oldest first) to stay under the size bound.
    pub dropped_readings_for_space: u64,
    /// Used bytes afterwards.
    pub bytes: u64,
    /// Still over the bound with nothing droppable: back-pressure.
    pub full: bool,
    /// Device heads and ledgers written by a device checkpoint taken because the deletes
    /// reached past the last one.
    pub devices_written: usize,
    /// Time that device checkpoint took, its fsync included.
    pub devices_took: Duration,
    /// Time the whole pass held the writing connection (commits wait for it).
    pub took: Duration,
}

impl Store {
    /// Takes the device checkpoint: writes the heads and ledgers changed since the last one
    /// (see `store/devices.rs`); returns how many rows it wrote. Every minute, from the
    /// maintenance task: each one rewrites a row or two per device that reported, and the
    /// readings after it are replayed at open.
    pub fn checkpoint_devices(&self) -> Result<usize, StoreError> {
        let mut conn = self.writer(Cause::Devices)?;
        self.checkpoint_devices_on(&mut conn)
    }

    /// [`Store::checkpoint_devices`] on the writing connection, held by the caller.
    pub(super) fn checkpoint_devices_on(&self, conn: &mut Connection) -> Result<usize, StoreError> {
        let mut devices = self.devices.lock().map_err(|_| StoreError::Poisoned)?;
        self.volume.cause(Cause::Devices);
        if !devices.changed() {
            return Ok(0);
        }
        devices.write(conn).map_err(|e| self.sqlite(e))
    }

    /// Takes the device checkpoint within [`Store::enforce`], before it deletes readings the
    /// last one would need.
    fn checkpoint_before_deleting(
        &self,
        conn: &mut Connection,
        report: &mut Enforced,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        report.devices_written += self.checkpoint_devices_on(conn)?;
        report.devices_took += started.elapsed();
        self.volume.cause(Cause::Retention);
        Ok(())
    }

    /// The last reading the device checkpoint includes.
    fn checkpointed_id(&self) -> Result<i64, StoreError> {
        Ok(self
            .devices
            .lock()
            .map_err(|_| StoreError::Poisoned)?
            .checkpoint_id())
    }

    /// Applies retention and the size bound (the explicit policy when full), every ten seconds
    /// from the maintenance task. The readings after the device checkpoint rebuild the heads
    /// and ledgers at open: when what it deletes reaches past the checkpoint (a retention
    /// shorter than a minute, the size bound), it takes a new checkpoint first.
    /// 1. raw readings older than `raw_ms` and points older than `points_ms` go, but a point goes
    ///    only once every sink in `sinks` delivered it, and a reading only once every cursor in
    ///    `raw_sinks` (sinks forwarding raw readings) passed it;
    /// 2. while the database is larger than `max_bytes`, the oldest raw readings go (counted);
    /// 3. if it is still larger, the store reports full: [`Store::accept`] refuses, messages stay
    ///    unacknowledged with the broker (back-pressure), nothing accepted is dropped.
    ///
    /// The newest row of each table always stays, so ids never restart and no cursor ends up
    /// ahead of new rows.
    pub fn enforce(
        &self,
        now_ms: i64,
        rules: &Retention,
        sinks: &[&str],
        raw_sinks: &[&str],
    ) -> Result<Enforced, StoreError> {
        let started = Instant::now();
        let mut conn = self.writer(Cause::Retention)?;
        let e = |e| self.sqlite(e);
        let passed_by_all = |cursors: &[&str]| -> Result<i64, StoreError> {
            let mut min = i64::MAX;
            for s in cursors {
                let c: i64 = conn
                    .query_row("SELECT last_id FROM cursors WHERE sink = ?1", [s], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(e)?
                    .unwrap_or(0);
                min = min.min(c);
            }
            Ok(min)
        };
        let (points_delivered, readings_delivered) =
            (passed_by_all(sinks)?, passed_by_all(raw_sinks)?);
        // Ids follow the receive time, so the expired readings are those before the first
        // one still fresh: found by walking the ids from the oldest (no index on the time,
        // one B-tree fewer per reading), a walk no longer than the rows it deletes. The bound
        // is worked out first and the delete given that one range: with several bounds in one
        // statement SQLite ranged over the one without effect (no raw sink: every id) and
        // scanned the whole table, holding the writer for 0.1–0.4 s every ten seconds after a
        // minute at 23,000 readings/s, growing with the table.
        let bound = expiry_bound(
            &conn,
            "readings",
            "received_ms",
            now_ms - rules.raw_ms,
            readings_delivered,
        )
        .map_err(e)?;
        let mut report = Enforced::default();
        if bound > self.checkpointed_id()? + 1 {
            self.checkpoint_before_deleting(&mut conn, &mut report)?;
        }
        report.expired_readings = conn
            .execute("DELETE FROM readings WHERE id < ?1", [bound])
            .map_err(e)? as u64;
        // Points likewise (a point of an old window corrected later stays until those before
        // it go).
        let point_bound = expiry_bound(
            &conn,
            "points",
            "time_ms",
            now_ms - rules.points_ms,
            points_delivered,
        )
        .map_err(e)?;
        report.expired_points = conn
            .execute("DELETE FROM points WHERE id < ?1", [point_bound])
            .map_err(e)? as u64;
        let used = |conn: &Connection| -> rusqlite::Result<u64> {
            let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            Ok(((pages - free) * size) as u64)
        };
        report.bytes = used(&conn).map_err(e)?;
        if report.bytes > rules.max_bytes {
            self.checkpoint_before_deleting(&mut conn, &mut report)?;
        }
        while report.bytes > rules.max_bytes {
            let n = conn
                .execute("DELETE FROM readings WHERE id IN (SELECT id FROM readings ORDER BY id LIMIT 1000) AND id < (SELECT MAX(id) FROM readings)", [])
                .map_err(e)? as u64;
            if n == 0 {
                break;
            }
            report.dropped_readings_for_space += n;
            report.bytes = used(&conn).map_err(e)?;
        }
        report.full = report.bytes > rules.max_bytes;
        self.full.store(report.full, Ordering::Relaxed);
        if report.dropped_readings_for_space > 0 {
            tracing::warn!(
                dropped = report.dropped_readings_for_space,
                "local store at its size bound: oldest raw readings dropped (their points are kept)"
            );
        }
        if report.full {
            tracing::error!(
                bytes = report.bytes,
                max = rules.max_bytes,
                "local store full of undelivered points: refusing new reports until a sink catches up"
            );
        }
        report.took = started.elapsed();
        Ok(report)
    }
}

/// The first id of `table` that stays: rows before it are older than `cutoff` (by
/// `time_column`) and delivered (`delivered`, the lowest cursor of the sinks that need them).
/// The newest row always stays (ids never restart).
fn expiry_bound(
    conn: &Connection,
    table: &str,
    time_column: &str,
    cutoff: i64,
    delivered: i64,
) -> rusqlite::Result<i64> {
    let first_fresh: Option<i64> = conn
        .query_row(
            &format!("SELECT id FROM {table} WHERE {time_column} >= ?1 ORDER BY id LIMIT 1"),
            [cutoff],
            |r| r.get(0),
        )
        .optional()?;
    let newest: i64 = conn.query_row(
        &format!("SELECT COALESCE(MAX(id), 0) FROM {table}"),
        [],
        |r| r.get(0),
    )?;
    Ok(newest
        .min(first_fresh.unwrap_or(i64::MAX))
        .min(delivered.saturating_add(1)))
}
