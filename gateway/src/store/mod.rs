//! The local store: the one place where readings are *accepted*.
//!
//! A batch of readings, with the points and alert changes they caused, is committed in one
//! SQLite transaction (WAL, `synchronous = FULL`: fsync'd) before the MQTT messages that carried
//! them are acknowledged. A crash after the commit loses nothing; a crash before it leaves the
//! messages unacknowledged with the broker, which redelivers them. The devices' sequence
//! ledgers move with the same commit, in memory, and reach their table at a checkpoint; at open
//! the readings after the last checkpoint are replayed onto them (each reading carries its
//! frame's `(epoch, sequence)`), so the ledgers reject nothing that was not committed and
//! accept nothing twice that was (see `store/devices.rs`).
//!
//! Writes go through one connection; queries that change nothing (sinks, notifiers, the HTTP
//! API) through another, which in WAL mode reads the last commit without waiting for the one
//! in progress.
//!
//! # Layout on disk
//!
//! - `readings(id, device, time_ms, received_ms, body, prev_id)`: accepted readings, in
//!   acceptance order (`id`); `prev_id` is the same device's previous reading; `body` is
//!   compact (postcard) since schema 2, JSON before, both read (see `store/row.rs`).
//! - `reading_heads(device, last_id)` and `ledgers(device, body)`: each device's newest reading
//!   and its replay window and completeness counts, as of `meta.devices_checkpoint`.
//! - `points(id, measurement, time_ms, line, body)`: aggregated points, drained by sinks.
//! - `alert_state(key, body)`: the episode and open alert of each (rule, subject).
//! - `alert_events(id, at_ms, body)`: the alert outbox, drained by notifiers.
//! - `cursors(sink, last_id)`: how far each sink and notifier delivered.
//! - `quarantine(...)`: rows that no longer decode, moved aside and counted instead of crashing.
//! - `accounts`, `api_tokens`: operators and machines, passwords and tokens hashed.
//! - `audit(...)`: the audit trail, each record chained to the one before by its hash.
//! - `meta(key, value)`: the schema version (a newer one than this release's is refused), the store's instance id, the device checkpoint,
//!   the corrections still to run, the audit trail's anchor.
//!
//! A database file that fails SQLite's `quick_check` at open is renamed `*.corrupt-<ms>` and a
//! new one started: the gateway comes up, an ERROR says what happened, and the old file is kept
//! for inspection.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use rustc_hash::FxHashMap;

mod accounts;
mod audit;
mod backup;
mod config;
mod cursors;
mod devices;
mod outbox;
mod quarantine;
mod reads;
mod retention;
mod row;
mod volume;
mod wal;

pub use accounts::{Account, ApiToken};
pub use audit::{AUDIT_KEEP_MS, AuditBroken, AuditEntry, AuditRecord};
pub use backup::{BackupError, Copied, InUse, backup, restore};
pub use config::{COMMIT_INTERVAL, StoreSection};
pub use outbox::Committed;
pub use retention::{Enforced, Retention};
pub use volume::{Cause, Written, proc_write_bytes};

use quarantine::passes_quick_check;
use volume::Volume;
use wal::{Checkpointer, WAL_LIMITS, WalLimits};

use crate::alert::Changes;
use crate::ledger::Ledger;
use crate::point::Point;
use crate::reading::Reading;

/// The store's format (`meta.schema`): 2 writes readings' bodies compact (`store/row.rs`); 1
/// wrote them as JSON, which 2 still reads.
const SCHEMA_VERSION: u32 = 2;

/// The tables sinks drain by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Aggregated points.
    Points,
    /// Raw readings.
    Readings,
    /// The alert outbox.
    AlertEvents,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Points => "points",
            Table::Readings => "readings",
            Table::AlertEvents => "alert_events",
        }
    }
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused (disk full, I/O error, corruption discovered while running).
    #[error("local store {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's reason.
        source: rusqlite::Error,
    },
    /// The size bound is reached and only undelivered points and alerts are left: back-pressure
    /// until a sink catches up or an operator raises `store.max_size_mb`.
    #[error("local store is full (store.max_size_mb): waiting for sinks to deliver")]
    Full,
    /// A point or an alert change could not be encoded.
    #[error("cannot encode a record: {0}")]
    Encode(#[from] serde_json::Error),
    /// A reading could not be encoded.
    #[error("cannot encode a reading: {0}")]
    EncodeReading(#[from] postcard::Error),
    /// The connection's lock was poisoned by a panic.
    #[error("local store lock poisoned")]
    Poisoned,
    /// The file was written by a release with a newer format than this one reads.
    #[error(
        "local store {path} has format (schema) {found}, newer than this release's {SCHEMA_VERSION}: \
         run the release that wrote it, or move the file aside to start a new store"
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its `meta.schema`.
        found: String,
    },
    /// The WAL checkpoint thread could not be started.
    #[error("cannot start the local store's checkpoint thread: {0}")]
    Thread(std::io::Error),
}

/// Where one commit's time went (see [`Store::accept`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommitTimes {
    /// Waiting for the writing connection, held by maintenance ([`Store::enforce`]) or an
    /// alert commit.
    pub wait: Duration,
    /// Writing the rows.
    pub write: Duration,
    /// The commit itself, the WAL's fsync included.
    pub sync: Duration,
    /// Starting the WAL over after the commit, when the checkpoint thread asked for it.
    pub restart: Duration,
}
/// What a commit of [`Store::accept`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Commit {
    /// Where its time went.
    pub times: CommitTimes,
    /// The outbox ids its alert events got, in their order.
    pub event_ids: Vec<i64>,
}

/// What opening found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The file failed its integrity check and was moved to this path.
    pub moved_corrupt_file: Option<PathBuf>,
}

/// The durable store.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    /// The connection that writes: commits, cursors, retention, quarantine.
    conn: Mutex<Connection>,
    /// The connection for queries that change nothing (notifiers reading the outbox, sinks,
    /// the HTTP API). In WAL mode it reads the last commit without waiting for the one in
    /// progress: the notifier that delivers an alert does not wait for the next batch's fsync.
    /// `None` for an in-memory store.
    reader: Option<Mutex<Connection>>,
    /// Each device's newest committed reading (the next one's `prev_id`) and ledger, written
    /// to `reading_heads` and `ledgers` at a checkpoint (see `store/devices.rs`). Locked after `conn`
    /// when both are taken.
    devices: Mutex<devices::Devices>,
    /// Set by [`Store::enforce`] when the size bound is reached with nothing left to drop.
    full: AtomicBool,
    /// What the writing connection wrote, by cause.
    volume: Arc<Volume>,
    /// Declared after `conn`, so it is dropped after it: the connection's WAL hook holds the
    /// sender of the thread's wake-ups, and the thread ends once it is gone.
    checkpointer: Checkpointer,
}

/// How long the writing connection waits for a lock another holds (a second process opening
/// the store; rusqlite's default, set explicitly since the WAL restart lifts it for a moment).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite's page cache of the committing connection, KiB.
const CACHE_KIB: i64 = 32 << 10;

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<(Store, OpenReport), StoreError> {
        Store::open_with(path, WAL_LIMITS)
    }

    fn open_with(path: &Path, limits: WalLimits) -> Result<(Store, OpenReport), StoreError> {
        let mut report = OpenReport::default();
        if path.exists() && !passes_quick_check(path) {
            let moved = path.with_extension(format!("corrupt-{}", crate::clock::now_ms()));
            tracing::error!(path = %path.display(), moved_to = %moved.display(), "local store failed its integrity check; starting a new one and keeping the old file");
            let _ = std::fs::rename(path, &moved);
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            report.moved_corrupt_file = Some(moved);
        }
        let err = |source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             -- Retention finds expired readings by id (ids follow the receive time).
             DROP INDEX IF EXISTS readings_by_received;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             -- prev_id: the same device's previous reading. A device's readings are a chain
             -- from its head in reading_heads, instead of an index by device that every
             -- reading of a batch from many devices updated in a page of its own.
             CREATE TABLE IF NOT EXISTS readings (
                 id INTEGER PRIMARY KEY,
                 device TEXT NOT NULL,
                 time_ms INTEGER NOT NULL,
                 received_ms INTEGER NOT NULL,
                 body TEXT NOT NULL,
                 prev_id INTEGER);
             CREATE TABLE IF NOT EXISTS reading_heads (
                 device TEXT PRIMARY KEY,
                 last_id INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS ledgers (device TEXT PRIMARY KEY, body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS points (
                 id INTEGER PRIMARY KEY,
                 measurement TEXT NOT NULL,
                 time_ms INTEGER NOT NULL,
                 line TEXT NOT NULL,
                 body TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS points_by_measurement ON points(measurement, time_ms);
             -- Retention finds expired points by id, as it does readings: one page fewer in
             -- every commit that holds points.
             DROP INDEX IF EXISTS points_by_time;
             CREATE TABLE IF NOT EXISTS cursors (sink TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS sink_dead_letters (
                 id INTEGER PRIMARY KEY,
                 sink TEXT NOT NULL,
                 point_id INTEGER NOT NULL,
                 line TEXT NOT NULL,
                 reason TEXT NOT NULL,
                 at_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS alert_state (key TEXT PRIMARY KEY, body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS alert_events (
                 id INTEGER PRIMARY KEY,
                 at_ms INTEGER NOT NULL,
                 body TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS quarantine (
                 id INTEGER PRIMARY KEY,
                 source TEXT NOT NULL,
                 original_id INTEGER,
                 reason TEXT NOT NULL,
                 body BLOB,
                 at_ms INTEGER NOT NULL);",
        )
        .map_err(err)?;
        upgrade_schema(&conn, path)?;
        accounts::create(&conn).map_err(err)?;
        audit::create(&conn).map_err(err)?;
        chain_readings_by_device(&mut conn).map_err(err)?;
        let devices = devices::Devices::load(&mut conn).map_err(err)?;
        // Row ids restart when a store is replaced (corrupt, deleted): the instance id keeps
        // ids forwarded upstream unique across stores.
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', ?1)",
            [format!("{:x}", crate::clock::now_ms())],
        )
        .map_err(err)?;
        // Every commit touches the index leaf of each reporting device: with tens of thousands
        // of devices SQLite's default 2 MB cache re-reads them from the OS for every batch.
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(err)?;
        conn.pragma_update(None, "journal_size_limit", limits.keep_bytes)
            .map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        let reader = if path == Path::new(":memory:") {
            None
        } else {
            let reader = Connection::open(path).map_err(err)?;
            reader
                .pragma_update(None, "query_only", true)
                .map_err(err)?;
            Some(Mutex::new(reader))
        };
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(err)?;
        let volume = Arc::new(Volume::new(page_size.unsigned_abs()));
        let checkpointer = Checkpointer::start(path, &mut conn, limits, volume.clone())?;
        Ok((
            Store {
                path: path.to_owned(),
                conn: Mutex::new(conn),
                reader,
                devices: Mutex::new(devices),
                full: AtomicBool::new(false),
                volume,
                checkpointer,
            },
            report,
        ))
    }

    /// The writing connection, for writes of `cause`.
    fn writer(&self, cause: Cause) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        let conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        self.volume.cause(cause);
        Ok(conn)
    }

    /// What the store wrote so far: to the WAL by cause, and by checkpoints.
    pub fn written(&self) -> Written {
        self.volume.written()
    }

    /// The reading connection (never held while taking the writer). An in-memory store
    /// (`:memory:`, for tests and trials) is one connection's own: it reads through the writer.
    fn reader(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        match &self.reader {
            Some(reader) => reader.lock().map_err(|_| StoreError::Poisoned),
            None => self.writer(Cause::Operators),
        }
    }

    fn sqlite(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Commits `readings`, the `points` aggregated from them, the `ledgers` of their devices and
    /// the alert changes they caused in one fsync'd transaction. When this returns `Ok`, the
    /// messages that produced them may be acknowledged; it says where the time went and which
    /// outbox ids the alert events got.
    pub fn accept(
        &self,
        readings: &[Reading],
        points: &[Point],
        ledgers: &[(&str, &Ledger)],
        alerts: &Changes,
    ) -> Result<Commit, StoreError> {
        self.accept_with(readings, points, ledgers, alerts, None)
    }

    /// [`Store::accept`], also recording the aggregates' corrections still to run (JSON, see
    /// [`Store::pending_corrections`]) with the batch: a correction whose backlog is committed
    /// is never lost to a stop before it runs.
    pub fn accept_with(
        &self,
        readings: &[Reading],
        points: &[Point],
        ledgers: &[(&str, &Ledger)],
        alerts: &Changes,
        corrections: Option<&str>,
    ) -> Result<Commit, StoreError> {
        if self.full.load(Ordering::Relaxed) {
            return Err(StoreError::Full);
        }
        let started = Instant::now();
        let mut conn = self.writer(Cause::Batches)?;
        let mut devices = self.devices.lock().map_err(|_| StoreError::Poisoned)?;
        let mut times = CommitTimes {
            wait: started.elapsed(),
            ..CommitTimes::default()
        };
        let started = Instant::now();
        // The heads this batch moves, applied to `devices` once it is committed.
        let mut moved: FxHashMap<Arc<str>, i64> = FxHashMap::default();
        let tx = conn.transaction().map_err(|e| self.sqlite(e))?;
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO readings (device, time_ms, received_ms, body, prev_id) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(|e| self.sqlite(e))?;
            // One buffer for every body of the batch (SQLite copies what it is bound to).
            let mut body = Vec::with_capacity(128);
            for r in readings {
                body.clear();
                body = row::encode(r, body)?;
                let prev = moved
                    .get(&r.device)
                    .or_else(|| devices.heads.get(&r.device));
                insert
                    .execute(params![
                        &*r.device,
                        r.time_ms,
                        r.received_ms,
                        &body[..],
                        prev
                    ])
                    .map_err(|e| self.sqlite(e))?;
                moved.insert(r.device.clone(), tx.last_insert_rowid());
            }
            let mut insert_point = tx
                .prepare_cached(
                    "INSERT INTO points (measurement, time_ms, line, body) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(|e| self.sqlite(e))?;
            for p in points {
                let line = p.line();
                if line.is_empty() {
                    continue; // nothing writable (all fields non-finite)
                }
                insert_point
                    .execute(params![
                        p.measurement,
                        p.time_ms,
                        line,
                        serde_json::to_string(p)?
                    ])
                    .map_err(|e| self.sqlite(e))?;
            }
        }
        let event_ids = self.write_alerts(&tx, alerts)?;
        if let Some(c) = corrections {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('pending_corrections', ?1)",
                [c],
            )
            .map_err(|e| self.sqlite(e))?;
        }
        times.write = started.elapsed();
        let started = Instant::now();
        tx.commit().map_err(|e| self.sqlite(e))?;
        times.sync = started.elapsed();
        devices.committed(moved, ledgers);
        drop(devices);
        let started = Instant::now();
        self.restart_wal_if_asked(&conn);
        times.restart = started.elapsed();
        Ok(Commit { times, event_ids })
    }
}

impl Store {
    /// The corrections still to run as of the last commit that recorded them (JSON written by
    /// the pipeline), if any.
    pub fn pending_corrections(&self) -> Result<Option<String>, StoreError> {
        use rusqlite::OptionalExtension;
        let conn = self.reader()?;
        conn.query_row(
            "SELECT value FROM meta WHERE key = 'pending_corrections'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| self.sqlite(e))
    }
}

impl Drop for Store {
    /// A clean close takes the device checkpoint, so the next open has nothing to replay.
    fn drop(&mut self) {
        if let Ok(mut conn) = self.writer(Cause::Devices)
            && let Err(e) = self.checkpoint_devices_on(&mut conn)
        {
            tracing::warn!(error = %e, "local store: device checkpoint at close failed; the next open replays the readings after the last one");
        }
    }
}

/// Checks the store's format and records this release's: a store of schema 1 (JSON bodies)
/// is read as it is, its new readings written compact (see `store/row.rs`); one newer than this
/// release is refused before anything is written to it.
fn upgrade_schema(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    use rusqlite::OptionalExtension;
    let err = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let found: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(err)?;
    match found.as_deref().map(str::parse::<u32>) {
        Some(Ok(v)) if v == SCHEMA_VERSION => return Ok(()),
        Some(Ok(v)) if v < SCHEMA_VERSION => tracing::info!(
            from = v,
            to = SCHEMA_VERSION,
            "local store: new readings are written compact from now on; the JSON ones stay readable until retention removes them"
        ),
        None => {}
        Some(_) => {
            return Err(StoreError::NewerSchema {
                path: path.to_owned(),
                found: found.unwrap_or_default(),
            });
        }
    }
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?1)",
        [SCHEMA_VERSION.to_string()],
    )
    .map_err(err)?;
    Ok(())
}

/// Moves a store made before `prev_id` (readings found by an index on device) to chains: adds
/// the column, links every reading to its device's previous one and records each device's head,
/// while the old index still makes that fast, then drops the index. Once, in one transaction.
fn chain_readings_by_device(conn: &mut Connection) -> rusqlite::Result<()> {
    let chained = conn
        .prepare("SELECT 1 FROM pragma_table_info('readings') WHERE name = 'prev_id'")?
        .exists([])?;
    let indexed = conn
        .prepare(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'readings_by_device'",
        )?
        .exists([])?;
    if chained && !indexed {
        return Ok(());
    }
    tracing::info!("local store: linking each device's readings (once, for this version)");
    let tx = conn.transaction()?;
    if !chained {
        tx.execute_batch("ALTER TABLE readings ADD COLUMN prev_id INTEGER")?;
    }
    if indexed {
        tx.execute_batch(
            "UPDATE readings SET prev_id = (SELECT MAX(p.id) FROM readings p
                 WHERE p.device = readings.device AND p.id < readings.id);
             INSERT OR REPLACE INTO reading_heads (device, last_id)
                 SELECT device, MAX(id) FROM readings GROUP BY device;
             DROP INDEX readings_by_device;",
        )?;
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::reading::Measurement;

    fn reading(device: &str, value: f64) -> Reading {
        Reading {
            device: Arc::from(device),
            zone: Arc::from("360702"),
            kind: Arc::from("water-pressure"),
            time_ms: 1000,
            received_ms: 1001,
            unsynced_clock: false,
            origin: None,
            measurement: Measurement::Value {
                field: "pressure".into(),
                value,
                urgent: false,
            },
        }
    }

    #[test]
    fn accepted_readings_and_ledgers_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let mut ledger = Ledger::default();
        ledger.accept(1, 7);
        {
            let (store, _) = Store::open(&path).unwrap();
            store
                .accept(
                    &[reading("a", 0.3), reading("a", 0.31)],
                    &[],
                    &[("a", &ledger)],
                    &Changes::default(),
                )
                .unwrap();
        }
        let (store, report) = Store::open(&path).unwrap();
        assert_eq!(report, OpenReport::default());
        let recent = store.recent("a", 10).unwrap();
        assert_eq!(recent, vec![reading("a", 0.3), reading("a", 0.31)]);
        let ledgers = store.ledgers().unwrap();
        assert_eq!(ledgers.len(), 1);
        assert_eq!(ledgers[0].1.was_accepted(1, 7), Some(true));
    }

    #[test]
    fn an_in_memory_store_reads_what_it_committed() {
        // A second connection to `:memory:` would be another, empty database.
        let (store, _) = Store::open(Path::new(":memory:")).unwrap();
        store
            .accept(&[reading("a", 0.3)], &[], &[], &Changes::default())
            .unwrap();
        store.advance("influxdb", 7, &[]).unwrap();
        assert_eq!(store.readings_after(0, 10).unwrap().len(), 1);
        assert_eq!(store.recent("a", 10).unwrap(), [reading("a", 0.3)]);
        assert_eq!(store.cursor("influxdb").unwrap(), 7);
    }

    #[test]
    fn at_the_size_bound_raw_readings_go_first_then_back_pressure_and_points_stay() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("s.db")).unwrap();
        let readings: Vec<Reading> = (0..3000).map(|i| reading("a", f64::from(i))).collect();
        let points: Vec<Point> = (0..50)
            .map(|i| Point {
                measurement: "pipe".into(),
                tags: vec![("asset".into(), "P1".into())],
                fields: vec![("mean".into(), crate::point::FieldValue::Float(0.3))],
                time_ms: i * 60_000,
                quality: Default::default(),
            })
            .collect();
        store
            .accept(&readings, &points, &[], &Changes::default())
            .unwrap();
        let generous = Retention {
            raw_ms: i64::MAX / 2,
            points_ms: i64::MAX / 2,
            max_bytes: u64::MAX,
        };
        let before = store
            .enforce(10_000, &generous, &["influxdb"], &[])
            .unwrap();
        assert_eq!(
            (
                before.expired_readings,
                before.dropped_readings_for_space,
                before.full
            ),
            (0, 0, false)
        );

        let half = Retention {
            max_bytes: before.bytes / 2,
            ..generous
        };
        let r = store.enforce(10_000, &half, &["influxdb"], &[]).unwrap();
        assert!(r.dropped_readings_for_space > 0 && !r.full, "{r:?}");
        assert_eq!(
            store.lines_after(0, 1000).unwrap().len(),
            50,
            "points are never dropped for space"
        );
        assert!(
            store.readings_after(0, 10_000).unwrap().first().unwrap().0 > 1,
            "the oldest went first"
        );

        let tiny = Retention {
            max_bytes: 4096,
            ..generous
        };
        assert!(
            store
                .enforce(10_000, &tiny, &["influxdb"], &[])
                .unwrap()
                .full
        );
        assert!(matches!(
            store.accept(&[reading("a", 1.0)], &[], &[], &Changes::default()),
            Err(StoreError::Full)
        ));
        assert_eq!(store.lines_after(0, 1000).unwrap().len(), 50);
        // Room again: accepting resumes.
        store
            .enforce(10_000, &generous, &["influxdb"], &[])
            .unwrap();
        store
            .accept(&[reading("a", 1.0)], &[], &[], &Changes::default())
            .unwrap();
    }

    fn point(t: i64) -> Point {
        Point {
            measurement: "pipe".into(),
            tags: vec![],
            fields: vec![("v".into(), crate::point::FieldValue::Int(1))],
            time_ms: t,
            quality: Default::default(),
        }
    }

    #[test]
    fn retention_expires_raw_readings_and_only_delivered_points() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .accept(
                &[reading("a", 1.0), reading("a", 2.0)],
                &[point(0), point(1)],
                &[],
                &Changes::default(),
            )
            .unwrap();
        store.advance("influxdb", 1, &[]).unwrap();
        let rules = Retention {
            raw_ms: 500,
            points_ms: 500,
            max_bytes: u64::MAX,
        };
        let r = store
            .enforce(1_000_000, &rules, &["influxdb"], &[])
            .unwrap();
        assert_eq!(
            (r.expired_readings, r.expired_points),
            (1, 1),
            "the undelivered point stays, and the newest reading (it holds the next id)"
        );
        assert_eq!(store.lines_after(0, 10).unwrap().len(), 1);
    }

    #[test]
    fn retention_reaching_past_the_device_checkpoint_takes_a_new_one_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (store, _) = Store::open(&path).unwrap();
        let mut a = Ledger::default();
        a.accept(1, 0);
        a.accept(1, 1);
        let old = |sequence, value| Reading {
            received_ms: 0,
            ..framed("a", 1, sequence, value)
        };
        store
            .accept(
                &[old(0, 1.0), old(1, 2.0)],
                &[],
                &[("a", &a)],
                &Changes::default(),
            )
            .unwrap();
        // Nothing expires: no checkpoint (they are the maintenance task's, once a minute).
        let r = store.enforce(1, &Retention::default(), &[], &[]).unwrap();
        assert_eq!((r.expired_readings, r.devices_written), (0, 0));
        // The first reading expires: the ledger it would rebuild is checkpointed first.
        let rules = Retention {
            raw_ms: 1,
            ..Retention::default()
        };
        let r = store.enforce(1_000, &rules, &[], &[]).unwrap();
        assert_eq!(r.expired_readings, 1);
        assert!(r.devices_written > 0);
        std::mem::forget(store);
        let (store, _) = Store::open(&path).unwrap();
        let ledgers: FxHashMap<String, Ledger> = store.ledgers().unwrap().into_iter().collect();
        assert_eq!(ledgers["a"].was_accepted(1, 0), Some(true));
        assert_eq!(ledgers["a"].highest, 1);
    }

    #[test]
    fn ids_never_restart_after_retention_so_no_cursor_skips_new_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .accept(
                &[reading("a", 1.0)],
                &[point(0), point(1)],
                &[],
                &Changes::default(),
            )
            .unwrap();
        store.advance("influxdb", 2, &[]).unwrap();
        let rules = Retention {
            raw_ms: 500,
            points_ms: 500,
            max_bytes: u64::MAX,
        };
        store
            .enforce(1_000_000, &rules, &["influxdb"], &[])
            .unwrap();
        store
            .accept(&[], &[point(2_000_000)], &[], &Changes::default())
            .unwrap();
        let after = store
            .lines_after(store.cursor("influxdb").unwrap(), 10)
            .unwrap();
        assert_eq!(after.len(), 1, "the new point is after the cursor");
        assert_eq!(after[0].0, 3);
    }

    #[test]
    fn raw_readings_expire_up_to_the_first_fresh_one() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("s.db")).unwrap();
        let received = |device: &str, ms: i64| Reading {
            received_ms: ms,
            ..reading(device, 1.0)
        };
        let batch = [
            received("old", 100),
            received("old", 200),
            received("fresh", 900),
            received("clock-stepped-back", 300),
            received("newest", 1000),
        ];
        store.accept(&batch, &[], &[], &Changes::default()).unwrap();
        store.advance("city:raw", 5, &[]).unwrap();
        let rules = Retention {
            raw_ms: 500,
            points_ms: 500,
            max_bytes: u64::MAX,
        };
        let r = store.enforce(1000, &rules, &[], &["city:raw"]).unwrap();
        assert_eq!(r.expired_readings, 2);
        let left: Vec<String> = store
            .readings_after(0, 10)
            .unwrap()
            .into_iter()
            .map(|(_, r)| r.device.to_string())
            .collect();
        assert_eq!(left, ["fresh", "clock-stepped-back", "newest"]);
    }

    /// SQLite's virtual-machine steps for one `enforce` over a store of `n` fresh readings
    /// (counted by a progress handler every 100 steps).
    fn enforce_steps(n: usize) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("s.db")).unwrap();
        let batch: Vec<Reading> = (0..n).map(|i| reading("a", i as f64)).collect();
        store.accept(&batch, &[], &[], &Changes::default()).unwrap();
        store.enforce(0, &Retention::default(), &[], &[]).unwrap();
        let steps = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = steps.clone();
        store
            .conn
            .lock()
            .unwrap()
            .progress_handler(
                100,
                Some(move || {
                    counted.fetch_add(100, Ordering::Relaxed);
                    false
                }),
            )
            .unwrap();
        let r = store
            .enforce(1001, &Retention::default(), &[], &[])
            .unwrap();
        assert_eq!(r.expired_readings, 0);
        steps.load(Ordering::Relaxed)
    }

    #[test]
    fn retention_with_nothing_expired_does_not_walk_the_readings() {
        // Every ten seconds under load: a walk through the whole table held the writer (and
        // every commit behind it) for longer as the day's readings piled up.
        let (small, large) = (enforce_steps(100), enforce_steps(20_000));
        assert!(
            large < small + 1_000,
            "retention took {large} SQLite steps over 20,000 readings, {small} over 100"
        );
    }

    /// A slow commit is logged with its phases: the time it waited for the writer (held here
    /// as maintenance holds it) must be counted as waiting, not as writing or syncing.
    #[test]
    fn a_commit_says_how_long_it_waited_for_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("s.db")).unwrap();
        let store = Arc::new(store);
        let held = store.conn.lock().unwrap();
        let (started, committing) = std::sync::mpsc::channel();
        let committer = {
            let store = store.clone();
            std::thread::spawn(move || {
                started.send(()).unwrap();
                store.accept(&[reading("a", 1.0)], &[], &[], &Changes::default())
            })
        };
        committing.recv().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        drop(held);
        let times = committer.join().unwrap().unwrap().times;
        assert!(times.wait >= Duration::from_millis(100), "{times:?}");
        assert!(times.write < times.wait, "{times:?}");
    }

    #[test]
    fn the_wal_is_checkpointed_into_the_database_off_the_commit_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (store, _) = Store::open(&path).unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let batch: Vec<Reading> = (0..2000).map(|i| reading("a", f64::from(i))).collect();
        // Past the 1,000 WAL pages that wake the thread (about 700 pages per 10 batches).
        for _ in 0..30 {
            store.accept(&batch, &[], &[], &Changes::default()).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::fs::metadata(&path).unwrap().len() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file never grew: nothing checkpointed the WAL"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    #[test]
    fn sustained_commits_all_succeed_and_the_wal_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let limits = WalLimits {
            wake_pages: 16,
            restart_pages: 256,
            keep_bytes: 1 << 20,
        };
        let (store, _) = Store::open_with(&path, limits).unwrap();
        let wal = dir.path().join("s.db-wal");
        let batch: Vec<Reading> = (0..200).map(|i| reading("a", f64::from(i))).collect();
        // About 30 MB of WAL in all, written back to back: passive checkpoints copy it but never
        // let it start over, so without restarts the WAL file holds all of it.
        let mut largest = 0;
        for _ in 0..400 {
            store.accept(&batch, &[], &[], &Changes::default()).unwrap();
            largest = largest.max(std::fs::metadata(&wal).unwrap().len());
        }
        assert!(
            largest < 8 << 20,
            "the WAL grew to {largest} B: it never started over"
        );
        assert_eq!(store.last_id(Table::Readings).unwrap(), 400 * 200);
    }

    #[test]
    fn a_devices_recent_readings_follow_its_chain_across_batches_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let (store, _) = Store::open(&path).unwrap();
            let first = [reading("a", 1.0), reading("b", 1.0), reading("a", 2.0)];
            store.accept(&first, &[], &[], &Changes::default()).unwrap();
        }
        let (store, _) = Store::open(&path).unwrap();
        let second = [reading("b", 2.0), reading("a", 3.0)];
        store
            .accept(&second, &[], &[], &Changes::default())
            .unwrap();
        let a = |v| reading("a", v);
        assert_eq!(store.recent("a", 10).unwrap(), [a(1.0), a(2.0), a(3.0)]);
        assert_eq!(store.recent("a", 2).unwrap(), [a(2.0), a(3.0)]);
        assert_eq!(
            store.recent("b", 10).unwrap(),
            [reading("b", 1.0), reading("b", 2.0)]
        );
        assert_eq!(store.recent("c", 10).unwrap(), []);
    }

    /// A reading of frame `(epoch, sequence)`.
    fn framed(device: &str, epoch: u32, sequence: u32, value: f64) -> Reading {
        Reading {
            origin: Some((epoch, sequence)),
            ..reading(device, value)
        }
    }

    #[test]
    fn heads_and_ledgers_are_rebuilt_from_the_readings_after_a_crash_between_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut a = Ledger::default();
        let mut b = Ledger::default();
        let (store, _) = Store::open(&path).unwrap();
        // Checkpointed: a's frames 0 and 1, b's frame 0.
        for (epoch, sequence) in [(1, 0), (1, 1)] {
            a.accept(epoch, sequence);
        }
        b.accept(1, 0);
        let first = [
            framed("a", 1, 0, 1.0),
            framed("a", 1, 1, 2.0),
            framed("b", 1, 0, 1.0),
        ];
        store
            .accept(&first, &[], &[("a", &a), ("b", &b)], &Changes::default())
            .unwrap();
        store.checkpoint_devices().unwrap();
        // Committed after the checkpoint: a's frame 2 (two readings), then a new boot epoch of
        // b; and a frame of a device with no ledger yet.
        a.accept(1, 2);
        b.accept(2, 0);
        let mut c = Ledger::default();
        c.accept(5, 9);
        let second = [
            framed("a", 1, 2, 3.0),
            framed("a", 1, 2, 4.0),
            framed("b", 2, 0, 2.0),
            framed("c", 5, 9, 1.0),
        ];
        store
            .accept(
                &second,
                &[],
                &[("a", &a), ("b", &b), ("c", &c)],
                &Changes::default(),
            )
            .unwrap();
        // A crash: no checkpoint at close.
        std::mem::forget(store);

        let (store, _) = Store::open(&path).unwrap();
        let ledgers: FxHashMap<String, Ledger> = store.ledgers().unwrap().into_iter().collect();
        for (device, expected) in [("a", &a), ("b", &b), ("c", &c)] {
            let got = &ledgers[device];
            assert_eq!(
                (got.epoch, got.highest, got.expected, got.received),
                (
                    expected.epoch,
                    expected.highest,
                    expected.expected,
                    expected.received
                ),
                "ledger of {device}"
            );
        }
        assert_eq!(ledgers["a"].was_accepted(1, 2), Some(true));
        assert!(ledgers["b"].check(2, 0).is_err(), "b's new epoch is known");
        assert_eq!(
            store.recent("a", 10).unwrap(),
            [
                framed("a", 1, 0, 1.0),
                framed("a", 1, 1, 2.0),
                framed("a", 1, 2, 3.0),
                framed("a", 1, 2, 4.0)
            ]
        );
        // The next reading of b chains onto the replayed head.
        store
            .accept(&[framed("b", 2, 1, 3.0)], &[], &[], &Changes::default())
            .unwrap();
        assert_eq!(
            store.recent("b", 10).unwrap(),
            [
                framed("b", 1, 0, 1.0),
                framed("b", 2, 0, 2.0),
                framed("b", 2, 1, 3.0)
            ]
        );
    }

    #[test]
    fn a_store_indexed_by_device_is_linked_into_chains_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE readings (id INTEGER PRIMARY KEY, device TEXT NOT NULL,
                     time_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL, body TEXT NOT NULL);
                 CREATE INDEX readings_by_device ON readings(device, id);",
            )
            .unwrap();
            for r in [reading("a", 1.0), reading("b", 1.0), reading("a", 2.0)] {
                old.execute(
                    // Bodies of that version held the whole reading.
                    "INSERT INTO readings (device, time_ms, received_ms, body) VALUES (?1, ?2, ?3, ?4)",
                    params![&*r.device, r.time_ms, r.received_ms, serde_json::to_string(&r).unwrap()],
                )
                .unwrap();
            }
        }
        let (store, _) = Store::open(&path).unwrap();
        store
            .accept(&[reading("a", 3.0)], &[], &[], &Changes::default())
            .unwrap();
        let a = |v| reading("a", v);
        assert_eq!(store.recent("a", 10).unwrap(), [a(1.0), a(2.0), a(3.0)]);
        assert_eq!(store.recent("b", 10).unwrap(), [reading("b", 1.0)]);
        let conn = store.conn.lock().unwrap();
        let indexed: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'readings_by_device'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexed, 0, "the index by device is dropped once linked");
    }

    #[test]
    fn raw_readings_wait_for_the_sinks_that_forward_them() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("s.db")).unwrap();
        let readings: Vec<Reading> = (0..4).map(|i| reading("a", f64::from(i))).collect();
        store
            .accept(&readings, &[], &[], &Changes::default())
            .unwrap();
        store.advance("city:raw", 2, &[]).unwrap();
        let rules = Retention {
            raw_ms: 500,
            points_ms: 500,
            max_bytes: u64::MAX,
        };
        let r = store
            .enforce(1_000_000, &rules, &[], &["city:raw"])
            .unwrap();
        assert_eq!(r.expired_readings, 2, "only what the raw cursor passed");
        assert_eq!(store.readings_after(0, 10).unwrap().len(), 2);
    }

    #[test]
    fn a_corrupt_row_is_quarantined_and_the_rest_served() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("s.db")).unwrap();
        let batch = [reading("a", 1.0), reading("a", 1.5), reading("a", 2.0)];
        store.accept(&batch, &[], &[], &Changes::default()).unwrap();
        store
            .conn
            .lock()
            .unwrap()
            .execute("UPDATE readings SET body = '{not json' WHERE id = 2", [])
            .unwrap();
        assert_eq!(
            store.recent("a", 10).unwrap(),
            vec![reading("a", 1.0), reading("a", 2.0)]
        );
        assert_eq!(store.quarantined().unwrap(), 1);
        assert_eq!(store.readings_after(0, 10).unwrap().len(), 2);
        // A compact body cut short, and one that is a number.
        store
            .conn
            .lock()
            .unwrap()
            .execute_batch(
                "UPDATE readings SET body = substr(body, 1, 5) WHERE id = 3;
                 UPDATE readings SET body = 7 WHERE id = 1;",
            )
            .unwrap();
        assert_eq!(store.readings_after(0, 10).unwrap(), []);
        assert_eq!(store.quarantined().unwrap(), 3);
    }

    /// What `fixtures/store-schema1.db` holds, written by the release before schema 2 (commit
    /// d099019, through this module's API): every kind of measurement, JSON bodies.
    fn fixture_readings() -> Vec<Reading> {
        use crate::reading::Tag;
        use std::borrow::Cow;
        let t = 1_796_000_000_000_i64;
        let r = |device: &str, zone: &str, kind: &str, dt: i64, origin, measurement| Reading {
            device: Arc::from(device),
            zone: Arc::from(zone),
            kind: Arc::from(kind),
            time_ms: t + dt,
            received_ms: t + dt + 40,
            unsynced_clock: dt == 7_000,
            origin,
            measurement,
        };
        let value = |field: &'static str, value: f64, urgent: bool| Measurement::Value {
            field: Cow::Borrowed(field),
            value,
            urgent,
        };
        let (pressure, gate, count, lane, gas) = (
            "water-pressure",
            "uhf-rfid-gate",
            "people-counter",
            "traffic-loop",
            "tunnel-gas",
        );
        vec![
            r(
                "gz-p1-press",
                "360702",
                pressure,
                0,
                Some((1, 0)),
                value("pressure", 0.31, false),
            ),
            r(
                "gz-p1-press",
                "360702",
                pressure,
                0,
                Some((1, 0)),
                value("flow", 120.5, false),
            ),
            r(
                "gz-gate-1",
                "360702",
                gate,
                1_000,
                Some((3, 7)),
                Measurement::Passage {
                    tag: Tag::from(0x0123_4567_89ab_cdef),
                    entry: true,
                },
            ),
            r(
                "gz-count-1",
                "360702",
                count,
                2_000,
                None,
                Measurement::Counts {
                    entries: 12,
                    exits: 3,
                    interval_s: 60,
                },
            ),
            r(
                "gz-loop-1",
                "360703",
                lane,
                3_000,
                Some((2, 1)),
                Measurement::Lane {
                    lane: 2,
                    vehicles: 17,
                    occupancy_pct: 23.5,
                    speed_kmh: Some(41.0),
                    interval_s: 60,
                },
            ),
            r(
                "gz-loop-1",
                "360703",
                lane,
                4_000,
                Some((2, 2)),
                Measurement::Lane {
                    lane: 1,
                    vehicles: 3,
                    occupancy_pct: 2.0,
                    speed_kmh: None,
                    interval_s: 60,
                },
            ),
            r(
                "gz-p1-press",
                "360702",
                pressure,
                5_000,
                Some((1, 1)),
                Measurement::Status {
                    battery_pct: Some(87),
                    signal_dbm: -71,
                    uptime_s: 86_400,
                    firmware: "1.2.0".into(),
                    key_fingerprint: "ab12cd34".into(),
                },
            ),
            r(
                "tongtianyan",
                "360702",
                "operator",
                6_000,
                None,
                Measurement::Occupancy { count: 420 },
            ),
            r(
                "gz-t1-gas",
                "360702",
                gas,
                7_000,
                Some((1, 5)),
                value("gas", 35.0, true),
            ),
            r(
                "gz-p1-press",
                "360702",
                pressure,
                8_000,
                Some((1, 2)),
                value("pressure", 0.30, false),
            ),
        ]
    }

    #[test]
    fn a_store_of_the_previous_release_opens_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/store-schema1.db"),
            &path,
        )
        .unwrap();
        let (store, report) = Store::open(&path).unwrap();
        assert_eq!(report, OpenReport::default());
        let schema: String = store
            .conn
            .lock()
            .unwrap()
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(schema, SCHEMA_VERSION.to_string());
        // Every reading, in acceptance order, every kind of measurement.
        let all: Vec<Reading> = store
            .readings_after(0, 100)
            .unwrap()
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        assert_eq!(all, fixture_readings());
        assert_eq!(store.quarantined().unwrap(), 0);
        // The ledgers: checkpointed ones, and those replayed from the JSON readings after the
        // checkpoint (the fixture was closed without one).
        let ledgers: FxHashMap<String, Ledger> = store.ledgers().unwrap().into_iter().collect();
        assert_eq!(ledgers["gz-p1-press"].highest, 2);
        assert_eq!(ledgers["gz-p1-press"].was_accepted(1, 1), Some(true));
        assert_eq!(ledgers["gz-t1-gas"].was_accepted(1, 5), Some(true));
        assert_eq!(ledgers["gz-loop-1"].highest, 2);
        // Points, the alert raised, the sink's cursor, the operator and the audit trail.
        assert_eq!(store.last_point_id().unwrap(), 2);
        assert_eq!(store.alert_states().unwrap().len(), 1);
        assert_eq!(store.recent_alert_events(10).unwrap().len(), 1);
        assert_eq!(store.cursor("influxdb").unwrap(), 1);
        assert!(store.account("wang.li").unwrap().is_some());
        assert_eq!(store.verify_audit().unwrap(), Ok(1));
        // New readings are compact and chain onto the old ones.
        let next = Reading {
            origin: Some((1, 3)),
            ..fixture_readings()[9].clone()
        };
        store
            .accept(std::slice::from_ref(&next), &[], &[], &Changes::default())
            .unwrap();
        let recent = store.recent("gz-p1-press", 10).unwrap();
        assert_eq!(recent.len(), 5);
        assert_eq!(recent[4], next);
        let types: Vec<String> = store
            .conn
            .lock()
            .unwrap()
            .prepare("SELECT typeof(body) FROM readings ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(types[..10], ["text"; 10]);
        assert_eq!(types[10], "blob");
        drop(store);
        // And the next open replays both formats.
        let (store, _) = Store::open(&path).unwrap();
        assert_eq!(store.recent("gz-p1-press", 10).unwrap().len(), 5);
    }

    #[test]
    fn a_store_of_a_newer_release_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema'", [])
            .unwrap();
        drop(conn);
        let e = Store::open(&path).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("format (schema) 3, newer than this release's 2"),
            "{text}"
        );
        let conn = Connection::open(&path).unwrap();
        let schema: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(schema, "3");
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_a_new_store_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let (store, report) = Store::open(&path).unwrap();
        let moved = report.moved_corrupt_file.unwrap();
        assert!(moved.exists());
        store
            .accept(&[reading("a", 1.0)], &[], &[], &Changes::default())
            .unwrap();
        assert_eq!(store.readings_after(0, 10).unwrap().len(), 1);
    }
}
