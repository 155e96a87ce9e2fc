//! The local store: the one place where readings are *accepted*.
//!
//! A batch of readings, with the points and alert changes they caused, is committed in one
//! SQLite transaction (WAL, `synchronous = FULL`: fsync'd) before the MQTT messages that carried
//! them are acknowledged. A crash after the commit loses nothing; a crash before it leaves the
//! messages unacknowledged with the broker, which redelivers them. The devices' sequence
//! ledgers move with the same commit, in memory, and reach their table at a checkpoint; at open
//! the readings after the last checkpoint are replayed onto them (each reading carries its
//! frame's `(epoch, sequence)`), so the ledgers reject nothing that was not committed and
//! accept nothing twice that was (see [`devices`]).
//!
//! Writes go through one connection; queries that change nothing (sinks, notifiers, the HTTP
//! API) through another, which in WAL mode reads the last commit without waiting for the one
//! in progress.
//!
//! # Layout on disk
//!
//! - `readings(id, device, time_ms, received_ms, body, prev_id)`: accepted readings, JSON
//!   bodies, in acceptance order (`id`); `prev_id` is the same device's previous reading.
//! - `reading_heads(device, last_id)` and `ledgers(device, body)`: each device's newest reading
//!   and its replay window and completeness counts, as of `meta.devices_checkpoint`.
//! - `points(id, measurement, time_ms, line, body)`: aggregated points, drained by sinks.
//! - `alert_state(key, body)`: the episode and open alert of each (rule, subject).
//! - `alert_events(id, at_ms, body)`: the alert outbox, drained by notifiers.
//! - `cursors(sink, last_id)`: how far each sink and notifier delivered.
//! - `quarantine(...)`: rows that no longer decode, moved aside and counted instead of crashing.
//! - `meta(key, value)`: the schema version, the store's instance id, the device checkpoint.
//!
//! A database file that fails SQLite's `quick_check` at open is renamed `*.corrupt-<ms>` and a
//! new one started: the gateway comes up, an ERROR says what happened, and the old file is kept
//! for inspection.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use rustc_hash::FxHashMap;

mod devices;
mod row;

use crate::alert::{AlertEvent, Changes, SubjectState};
use crate::ledger::Ledger;
use crate::point::Point;
use crate::reading::Reading;

const SCHEMA_VERSION: &str = "1";

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
    /// A reading could not be encoded.
    #[error("cannot encode a reading: {0}")]
    Encode(#[from] serde_json::Error),
    /// The connection's lock was poisoned by a panic.
    #[error("local store lock poisoned")]
    Poisoned,
    /// The WAL checkpoint thread could not be started.
    #[error("cannot start the local store's checkpoint thread: {0}")]
    Thread(std::io::Error),
}

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
    /// Device heads and ledgers written by the device checkpoint taken first.
    pub devices_written: usize,
    /// Time the device checkpoint took, its fsync included.
    pub devices_took: Duration,
    /// Time the whole pass held the writing connection (commits wait for it).
    pub took: Duration,
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
    /// to `reading_heads` and `ledgers` at a checkpoint (see [`devices`]). Locked after `conn`
    /// when both are taken.
    devices: Mutex<devices::Devices>,
    /// Set by [`Store::enforce`] when the size bound is reached with nothing left to drop.
    full: AtomicBool,
    /// Declared after `conn`, so it is dropped after it: the connection's WAL hook holds the
    /// sender of the thread's wake-ups, and the thread ends once it is gone.
    checkpointer: Checkpointer,
}

/// When the WAL is copied into the database, and when it starts over.
#[derive(Debug, Clone, Copy)]
struct WalLimits {
    /// A commit that leaves the WAL at least this many pages long wakes the checkpoint thread
    /// (SQLite's own automatic checkpoint threshold).
    wake_pages: i32,
    /// A WAL this long after a checkpoint is made to start over (`RESTART`).
    restart_pages: i32,
    /// The WAL file is truncated back to this size when it starts over.
    keep_bytes: i64,
}

const WAL_LIMITS: WalLimits = WalLimits {
    wake_pages: 1000,
    restart_pages: 16_384,
    keep_bytes: 64 << 20,
};
/// How long the writing connection waits for a lock another holds (a second process opening
/// the store; rusqlite's default, set explicitly since the WAL restart lifts it for a moment).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite's page cache of the committing connection, KiB.
const CACHE_KIB: i64 = 32 << 10;

/// A thread with its own connection that copies the WAL into the database whenever a commit
/// left it [`WalLimits::wake_pages`] long. With SQLite's automatic checkpoint, that commit did
/// the copy and its fsync itself (11 % of commit time in `store_commit`); a checkpoint on a
/// timer instead made commits wait on its fsyncs when idle (publish → alert p99 1.8 → 4.3 ms
/// with one every second).
///
/// The copy is `PASSIVE`: it never blocks a commit. But SQLite starts a WAL over only at a
/// commit whose transaction began after everything in it was copied, which never happens while
/// commits follow each other without a pause: under sustained load the WAL would grow without
/// bound. Once it is [`WalLimits::restart_pages`] long the thread asks for a restart, and the
/// next commit runs a `RESTART` checkpoint after it (see [`Store::restart_wal_if_asked`]): it
/// copies the little the passive one left and makes the commit after it start the WAL over.
#[derive(Debug)]
struct Checkpointer {
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set by the thread when the WAL is long enough to start over.
    restart: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Starts the thread and hooks it to `commits`, the connection that commits.
    fn start(
        path: &Path,
        commits: &mut Connection,
        limits: WalLimits,
    ) -> Result<Checkpointer, StoreError> {
        let sqlite = |source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(sqlite)?;
        let restart = Arc::new(AtomicBool::new(false));
        let ask = restart.clone();
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    let started = Instant::now();
                    let done = checkpoint(&conn, "PASSIVE");
                    if let Ok((_, wal_pages, copied)) = done {
                        tracing::debug!(took_ms = crate::pipeline::millis(started.elapsed()), wal_pages, copied, "WAL checkpoint");
                    }
                    match done {
                        Ok((_, wal_pages, _)) if wal_pages >= limits.restart_pages => {
                            ask.store(true, Ordering::Relaxed);
                        }
                        Ok((_, wal_pages, copied)) if copied < wal_pages => {
                            tracing::debug!(wal_pages, copied, "WAL checkpoint incomplete (a reader holds an old snapshot)");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; the next commit past the threshold tries again"),
                    }
                }
            })
            .map_err(StoreError::Thread)?;
        // The hook owns the only sender: the thread ends when the connection is closed. It must
        // never return an error: the commit has happened when it runs, and an error would make
        // the caller retry (and store) the batch a second time.
        commits
            .wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
                if pages >= limits.wake_pages {
                    // Full: a wake-up is already pending.
                    let _ = wake.try_send(());
                }
                Ok(())
            }))
            .map_err(sqlite)?;
        Ok(Checkpointer {
            thread: Some(thread),
            restart,
        })
    }
}

/// `PRAGMA wal_checkpoint(mode)`: whether it was blocked, WAL pages, pages copied.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i32, i32)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<(Store, OpenReport), StoreError> {
        Store::open_with(path, WAL_LIMITS)
    }

    fn open_with(path: &Path, limits: WalLimits) -> Result<(Store, OpenReport), StoreError> {
        let mut report = OpenReport::default();
        if path.exists() && !passes_quick_check(path) {
            let moved = path.with_extension(format!("corrupt-{}", crate::pipeline::now_ms()));
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
             -- Retention deletes points by age every ten seconds: this keeps it from scanning.
             CREATE INDEX IF NOT EXISTS points_by_time ON points(time_ms);
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
        chain_readings_by_device(&mut conn).map_err(err)?;
        let devices = devices::Devices::load(&mut conn).map_err(err)?;
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?1)",
            [SCHEMA_VERSION],
        )
        .map_err(err)?;
        // Row ids restart when a store is replaced (corrupt, deleted): the instance id keeps
        // ids forwarded upstream unique across stores.
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', ?1)",
            [format!("{:x}", crate::pipeline::now_ms())],
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
        let checkpointer = Checkpointer::start(path, &mut conn, limits)?;
        Ok((
            Store {
                path: path.to_owned(),
                conn: Mutex::new(conn),
                reader,
                devices: Mutex::new(devices),
                full: AtomicBool::new(false),
                checkpointer,
            },
            report,
        ))
    }

    /// The writing connection.
    fn writer(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// The reading connection (never held while taking the writer). An in-memory store
    /// (`:memory:`, for tests and trials) is one connection's own: it reads through the writer.
    fn reader(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        match &self.reader {
            Some(reader) => reader.lock().map_err(|_| StoreError::Poisoned),
            None => self.writer(),
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
        if self.full.load(Ordering::Relaxed) {
            return Err(StoreError::Full);
        }
        let started = Instant::now();
        let mut conn = self.writer()?;
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
            // One buffer for every body of the batch (SQLite copies the text it is bound to).
            let mut body = Vec::with_capacity(512);
            for r in readings {
                body.clear();
                serde_json::to_writer(&mut body, &row::Body::from(r))?;
                let text = std::str::from_utf8(&body)
                    .map_err(|e| StoreError::Encode(serde::ser::Error::custom(e)))?;
                let prev = moved
                    .get(&r.device)
                    .or_else(|| devices.heads.get(&r.device));
                insert
                    .execute(params![&*r.device, r.time_ms, r.received_ms, text, prev])
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

    /// Makes the WAL start over when the checkpoint thread found it too long (see
    /// [`Checkpointer`]). The batch is committed when this runs: a failure here is logged and
    /// tried again after the next commit, never reported as the commit's.
    fn restart_wal_if_asked(&self, conn: &Connection) {
        let restart = &self.checkpointer.restart;
        if !restart.swap(false, Ordering::Relaxed) {
            return;
        }
        // Without waiting: SQLite's busy handler would sleep the commit path (in steps of up to
        // 100 ms, to the busy timeout) while the thread's checkpoint, in its fsync (20–130 ms
        // under load here), or a reader's snapshot is in the way.
        let _ = conn.busy_timeout(Duration::ZERO);
        let restarted = checkpoint(conn, "RESTART");
        let _ = conn.busy_timeout(BUSY_TIMEOUT);
        match restarted {
            Ok((0, _, _)) => {}
            Err(e) if e.sqlite_error_code() != Some(rusqlite::ErrorCode::DatabaseBusy) => {
                restart.store(true, Ordering::Relaxed);
                tracing::warn!(error = %e, "WAL restart failed; the next commit tries again");
            }
            // Busy: a checkpoint in progress or a reader's snapshot.
            _ => {
                restart.store(true, Ordering::Relaxed);
                tracing::debug!(
                    "WAL restart blocked by a checkpoint or a reader; the next commit tries again"
                );
            }
        }
    }

    /// Writes the alert changes; returns the outbox ids of the events, in their order.
    fn write_alerts(
        &self,
        tx: &rusqlite::Transaction,
        alerts: &Changes,
    ) -> Result<Vec<i64>, StoreError> {
        let mut upsert = tx
            .prepare_cached("INSERT INTO alert_state (key, body) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET body = excluded.body")
            .map_err(|e| self.sqlite(e))?;
        for (key, state) in &alerts.states {
            upsert
                .execute(params![key, serde_json::to_string(state)?])
                .map_err(|e| self.sqlite(e))?;
        }
        let mut insert = tx
            .prepare_cached("INSERT INTO alert_events (at_ms, body) VALUES (?1, ?2)")
            .map_err(|e| self.sqlite(e))?;
        let mut ids = Vec::with_capacity(alerts.events.len());
        for e in &alerts.events {
            insert
                .execute(params![e.at_ms, serde_json::to_string(e)?])
                .map_err(|e| self.sqlite(e))?;
            ids.push(tx.last_insert_rowid());
        }
        Ok(ids)
    }

    /// Commits alert changes that no reading caused (presence, acknowledgements); returns the
    /// outbox ids of the events. Alerts are never refused for space.
    pub fn commit_alerts(&self, alerts: &Changes) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction().map_err(|e| self.sqlite(e))?;
        let ids = self.write_alerts(&tx, alerts)?;
        tx.commit().map_err(|e| self.sqlite(e))?;
        Ok(ids)
    }

    /// Every persisted alert state (to restore the engine at start); rows that do not decode
    /// are quarantined.
    pub fn alert_states(&self) -> Result<Vec<(String, SubjectState)>, StoreError> {
        self.decoded(
            "alert_state",
            "SELECT key, body FROM alert_state",
            "key",
            params![],
        )
    }

    /// Alert events with `id > after`, in order, at most `limit` (for notifiers).
    pub fn alert_events_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, AlertEvent)>, StoreError> {
        self.decoded(
            "alert_events",
            "SELECT id, body FROM alert_events WHERE id > ?1 ORDER BY id LIMIT ?2",
            "id",
            params![after, limit as i64],
        )
    }

    /// The `limit` latest alert events, newest first.
    pub fn recent_alert_events(&self, limit: usize) -> Result<Vec<(i64, AlertEvent)>, StoreError> {
        self.decoded(
            "alert_events",
            "SELECT id, body FROM alert_events ORDER BY id DESC LIMIT ?1",
            "id",
            params![limit as i64],
        )
    }

    /// How many alert events come after id `after` (a notifier's cursor).
    pub fn alert_events_pending(&self, after: i64) -> Result<u64, StoreError> {
        let conn = self.reader()?;
        conn.query_row(
            "SELECT COUNT(*) FROM alert_events WHERE id > ?1",
            [after],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n as u64)
        .map_err(|e| self.sqlite(e))
    }

    /// Deletes alert events older than `before_ms` that every notifier in `cursors` delivered.
    pub fn expire_alert_events(
        &self,
        before_ms: i64,
        cursors: &[String],
    ) -> Result<u64, StoreError> {
        let mut delivered = i64::MAX;
        for c in cursors {
            delivered = delivered.min(self.cursor(c)?);
        }
        let conn = self.writer()?;
        conn.execute(
            "DELETE FROM alert_events WHERE at_ms < ?1 AND id <= ?2
             AND id < (SELECT MAX(id) FROM alert_events)",
            params![before_ms, delivered],
        )
        .map(|n| n as u64)
        .map_err(|e| self.sqlite(e))
    }

    /// Runs `SELECT key, body ...` on `table` and decodes the bodies; rows that do not decode
    /// are quarantined and deleted (by `key_column`).
    fn decoded<K, T>(
        &self,
        table: &str,
        sql: &str,
        key_column: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<(K, T)>, StoreError>
    where
        K: rusqlite::types::FromSql + rusqlite::ToSql + ToString,
        T: serde::de::DeserializeOwned,
    {
        let rows: Vec<(K, String)> = {
            let conn = self.reader()?;
            let mut stmt = conn.prepare_cached(sql).map_err(|e| self.sqlite(e))?;
            stmt.query_map(args, |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| self.sqlite(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.sqlite(e))?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (key, body) in rows {
            match serde_json::from_str(&body) {
                Ok(v) => out.push((key, v)),
                Err(e) => self.quarantine_row(table, key_column, &key, &e, &body)?,
            }
        }
        Ok(out)
    }

    /// Moves a row whose body does not decode to quarantine, and deletes it from `table`.
    fn quarantine_row<K: rusqlite::ToSql + ToString>(
        &self,
        table: &str,
        key_column: &str,
        key: &K,
        error: &serde_json::Error,
        body: &str,
    ) -> Result<(), StoreError> {
        let conn = self.writer()?;
        let reason = format!("{}: {error}", key.to_string());
        quarantine(&conn, table, None, &reason, body.as_bytes()).map_err(|e| self.sqlite(e))?;
        conn.execute(
            &format!("DELETE FROM {table} WHERE {key_column} = ?1"),
            [key],
        )
        .map_err(|e| self.sqlite(e))?;
        Ok(())
    }

    /// Every persisted ledger (to restore the registry at start). Rows that do not decode are
    /// quarantined.
    pub fn ledgers(&self) -> Result<Vec<(String, Ledger)>, StoreError> {
        let conn = self.writer()?;
        let mut stmt = conn
            .prepare("SELECT device, body FROM ledgers")
            .map_err(|e| self.sqlite(e))?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.sqlite(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sqlite(e))?;
        drop(stmt);
        let mut out = Vec::new();
        for (device, body) in rows {
            match serde_json::from_str(&body) {
                Ok(l) => out.push((device, l)),
                Err(e) => {
                    quarantine(&conn, "ledgers", None, &e.to_string(), body.as_bytes())
                        .map_err(|e| self.sqlite(e))?;
                    conn.execute("DELETE FROM ledgers WHERE device = ?1", [&device])
                        .map_err(|e| self.sqlite(e))?;
                }
            }
        }
        Ok(out)
    }

    /// The `limit` most recent readings of a device, oldest first. Rows that do not decode are
    /// quarantined.
    pub fn recent(&self, device: &str, limit: usize) -> Result<Vec<Reading>, StoreError> {
        // From the device's head back along `prev_id`: ends at its first reading, at one
        // expired or quarantined, or at `limit`.
        let head = {
            let devices = self.devices.lock().map_err(|_| StoreError::Poisoned)?;
            devices.heads.get(device).copied()
        };
        let Some(head) = head else {
            return Ok(Vec::new());
        };
        let mut rows = self.decoded_readings(
            "WITH RECURSIVE chain(id, n) AS (
                 SELECT ?1, 1
                 UNION ALL
                 SELECT r.prev_id, c.n + 1 FROM chain c JOIN readings r ON r.id = c.id
                 WHERE r.prev_id IS NOT NULL AND c.n < ?2)
             SELECT r.id, r.device, r.time_ms, r.received_ms, r.body
             FROM chain c JOIN readings r ON r.id = c.id ORDER BY r.id DESC",
            params![head, limit as i64],
        )?;
        rows.reverse();
        Ok(rows.into_iter().map(|(_, r)| r).collect())
    }

    /// Readings with `id > after`, in acceptance order, at most `limit` (for sinks and replay).
    pub fn readings_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Reading)>, StoreError> {
        self.decoded_readings(
            "SELECT id, device, time_ms, received_ms, body FROM readings WHERE id > ?1 ORDER BY id LIMIT ?2",
            params![after, limit as i64],
        )
    }

    /// Runs a `SELECT id, device, time_ms, received_ms, body FROM readings ...` query and
    /// decodes the rows; rows that do not decode are moved to quarantine instead of failing the
    /// query.
    fn decoded_readings(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<(i64, Reading)>, StoreError> {
        type Row = (i64, String, i64, i64, String);
        let rows: Vec<Row> = {
            let conn = self.reader()?;
            let mut stmt = conn.prepare_cached(sql).map_err(|e| self.sqlite(e))?;
            stmt.query_map(args, |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(|e| self.sqlite(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sqlite(e))?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (id, device, time_ms, received_ms, body) in rows {
            match serde_json::from_str::<row::StoredBody>(&body) {
                Ok(b) => out.push((id, b.into_reading(&device, time_ms, received_ms))),
                Err(e) => self.quarantine_row("readings", "id", &id, &e, &body)?,
            }
        }
        Ok(out)
    }

    /// Points with `id > after` as line protocol, in order, at most `limit` (for sinks).
    #[allow(clippy::let_and_return)] // the binding ends the borrow of `stmt` before it drops
    pub fn lines_after(&self, after: i64, limit: usize) -> Result<Vec<(i64, String)>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare_cached("SELECT id, line FROM points WHERE id > ?1 ORDER BY id LIMIT ?2")
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map(params![after, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.sqlite(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sqlite(e));
        rows
    }

    /// Points with `id > after` and `id <= until`, in order, at most `limit` (for sinks that
    /// forward the points themselves, not their line protocol).
    pub fn points_after(
        &self,
        after: i64,
        until: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Point)>, StoreError> {
        self.decoded(
            "points",
            "SELECT id, body FROM points WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
            "id",
            params![after, until, limit as i64],
        )
    }

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
        let mut conn = self.writer()?;
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
    fn dead_letter(
        &self,
        tx: &rusqlite::Transaction,
        sink: &str,
        refused: &[(i64, String, String)],
    ) -> Result<(), StoreError> {
        for (id, record, reason) in refused {
            tx.execute(
                "INSERT INTO sink_dead_letters (sink, point_id, line, reason, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![sink, id, record, reason, crate::pipeline::now_ms()],
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
        let mut conn = self.writer()?;
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

    /// Recent points of a measurement, optionally of one subject (any tag value), oldest first.
    /// A window emitted again (late data) shows once, with its latest values.
    pub fn series(
        &self,
        measurement: &str,
        subject: Option<&str>,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<Point>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare_cached("SELECT body FROM points WHERE measurement = ?1 AND time_ms >= ?2 ORDER BY time_ms DESC, id DESC")
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map(params![measurement, since_ms], |r| r.get::<_, String>(0))
            .map_err(|e| self.sqlite(e))?;
        let mut out: Vec<Point> = Vec::new();
        for body in rows {
            let body = body.map_err(|e| self.sqlite(e))?;
            let Ok(p) = serde_json::from_str::<Point>(&body) else {
                continue;
            };
            let matches = subject.is_none_or(|s| p.tags.iter().any(|(_, v)| v == s));
            if matches
                && !out
                    .iter()
                    .any(|q| q.time_ms == p.time_ms && q.tags == p.tags)
            {
                out.push(p);
                if out.len() == limit {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }
    /// Writes the device heads and ledgers changed since the last checkpoint (see [`devices`]);
    /// returns how many rows it wrote.
    fn checkpoint_devices(&self, conn: &mut Connection) -> Result<usize, StoreError> {
        let mut devices = self.devices.lock().map_err(|_| StoreError::Poisoned)?;
        if !devices.changed() {
            return Ok(0);
        }
        devices.write(conn).map_err(|e| self.sqlite(e))
    }

    /// Applies retention and the size bound (the explicit policy when full). Takes the device
    /// checkpoint first (every ten seconds, from the maintenance task):
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
        let mut conn = self.writer()?;
        // The device checkpoint first: nothing removed below is then needed to rebuild it.
        let devices_written = self.checkpoint_devices(&mut conn)?;
        let devices_took = started.elapsed();
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
        let first_fresh: Option<i64> = conn
            .query_row(
                "SELECT id FROM readings WHERE received_ms >= ?1 ORDER BY id LIMIT 1",
                [now_ms - rules.raw_ms],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)?;
        let newest: i64 = conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM readings", [], |r| {
                r.get(0)
            })
            .map_err(e)?;
        // The newest reading always stays (ids never restart), and none a raw sink still needs.
        let bound = newest
            .min(first_fresh.unwrap_or(i64::MAX))
            .min(readings_delivered.saturating_add(1));
        let mut report = Enforced {
            expired_readings: conn
                .execute("DELETE FROM readings WHERE id < ?1", [bound])
                .map_err(e)? as u64,
            devices_written,
            devices_took,
            ..Enforced::default()
        };
        report.expired_points = conn
            .execute(
                "DELETE FROM points WHERE time_ms < ?1 AND id <= ?2
                 AND id < (SELECT MAX(id) FROM points)",
                params![now_ms - rules.points_ms, points_delivered],
            )
            .map_err(e)? as u64;
        let used = |conn: &Connection| -> rusqlite::Result<u64> {
            let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            Ok(((pages - free) * size) as u64)
        };
        report.bytes = used(&conn).map_err(e)?;
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

impl Drop for Store {
    /// A clean close takes the device checkpoint, so the next open has nothing to replay.
    fn drop(&mut self) {
        if let Ok(mut conn) = self.conn.lock()
            && let Err(e) = self.checkpoint_devices(&mut conn)
        {
            tracing::warn!(error = %e, "local store: device checkpoint at close failed; the next open replays the readings after the last one");
        }
    }
}

fn quarantine(
    conn: &Connection,
    source: &str,
    id: Option<i64>,
    reason: &str,
    body: &[u8],
) -> rusqlite::Result<usize> {
    tracing::warn!(source, id, reason, "corrupt record quarantined");
    conn.execute(
        "INSERT INTO quarantine (source, original_id, reason, body, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![source, id, reason, body, crate::pipeline::now_ms()],
    )
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

fn passes_quick_check(path: &Path) -> bool {
    let Ok(conn) = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return false;
    };
    conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
        .is_ok_and(|s| s == "ok")
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
        store.enforce(0, &Retention::default(), &[], &[]).unwrap();
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
