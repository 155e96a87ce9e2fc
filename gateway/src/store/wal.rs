//! The write-ahead log: when it is copied into the database, and when it starts over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use std::path::Path;

use super::volume::{Volume, thread_bytes_written};
use super::{BUSY_TIMEOUT, Store, StoreError};

/// When the WAL is copied into the database, and when it starts over.
#[derive(Debug, Clone, Copy)]
pub(super) struct WalLimits {
    /// A commit that leaves the WAL at least this many pages long wakes the checkpoint thread
    /// (SQLite's own automatic checkpoint threshold).
    pub(super) wake_pages: i32,
    /// A WAL this long after a checkpoint is made to start over (`RESTART`).
    pub(super) restart_pages: i32,
    /// The WAL file is truncated back to this size when it starts over.
    pub(super) keep_bytes: i64,
}

pub(super) const WAL_LIMITS: WalLimits = WalLimits {
    wake_pages: 1000,
    restart_pages: 16_384,
    keep_bytes: 64 << 20,
};

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
pub(super) struct Checkpointer {
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set by the thread when the WAL is long enough to start over.
    restart: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Starts the thread and hooks it to `commits`, the connection that commits.
    pub(super) fn start(
        path: &Path,
        commits: &mut Connection,
        limits: WalLimits,
        volume: Arc<Volume>,
    ) -> Result<Checkpointer, StoreError> {
        let sqlite = |source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(sqlite)?;
        let restart = Arc::new(AtomicBool::new(false));
        let ask = restart.clone();
        let counts = volume.clone();
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    let started = Instant::now();
                    let done = measured(&counts, || checkpoint(&conn, "PASSIVE"));
                    if let Ok((_, wal_pages, copied)) = done {
                        tracing::debug!(took_ms = crate::clock::millis(started.elapsed()), wal_pages, copied, "WAL checkpoint");
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
                volume.committed(pages);
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

/// Runs a checkpoint on this thread, counting what it wrote (see `store/volume.rs`).
fn measured<T>(volume: &Volume, checkpoint: impl FnOnce() -> T) -> T {
    let before = thread_bytes_written();
    let done = checkpoint();
    if let (Some(before), Some(after)) = (before, thread_bytes_written()) {
        volume.checkpointed(after.saturating_sub(before));
    }
    done
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
    /// Makes the WAL start over when the checkpoint thread found it too long (see
    /// [`Checkpointer`]). The batch is committed when this runs: a failure here is logged and
    /// tried again after the next commit, never reported as the commit's.
    pub(super) fn restart_wal_if_asked(&self, conn: &Connection) {
        let restart = &self.checkpointer.restart;
        if !restart.swap(false, Ordering::Relaxed) {
            return;
        }
        // Without waiting: SQLite's busy handler would sleep the commit path (in steps of up to
        // 100 ms, to the busy timeout) while the thread's checkpoint, in its fsync (20–130 ms
        // under load here), or a reader's snapshot is in the way.
        let _ = conn.busy_timeout(Duration::ZERO);
        let restarted = measured(&self.volume, || checkpoint(conn, "RESTART"));
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
}
