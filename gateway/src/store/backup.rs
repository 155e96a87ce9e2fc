//! Backups of the local store, taken while the gateway runs, and putting one back.
//!
//! A backup is one SQLite `VACUUM INTO`: a single read transaction, so the copy is the store as
//! of one commit, and in WAL mode it never holds up the gateway's commits. It is written beside
//! its destination and renamed into place once complete, synced and checked: a backup file is
//! never half written.
//!
//! A restore needs the gateway stopped: a running gateway holds [`InUse`], an advisory lock on
//! `{store}.lock` (released by the kernel if the process dies). The store in place is moved
//! aside (`{store}.before-restore-{ms}`, with its WAL), never deleted.

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::SCHEMA_VERSION;

/// Why a backup or restore did nothing.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The source is not a store.
    #[error("{0} is not a local store (no such file)")]
    Missing(PathBuf),
    /// The destination of a backup exists already.
    #[error("{0} exists: a backup never overwrites a file, choose a new name")]
    Exists(PathBuf),
    /// A gateway runs on the store.
    #[error(
        "a gateway is running on {0}: stop it first (systemctl stop citysense-gateway), then restore"
    )]
    Running(PathBuf),
    /// The backup fails SQLite's integrity check.
    #[error("{path} is damaged: {detail}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What `quick_check` said.
        detail: String,
    },
    /// The backup has a newer format than this release reads.
    #[error("{path} has format (schema) {found}, newer than this release's {SCHEMA_VERSION}")]
    Newer {
        /// The file.
        path: PathBuf,
        /// Its `meta.schema`.
        found: String,
    },
    /// SQLite refused.
    #[error("{path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// SQLite's reason.
        source: rusqlite::Error,
    },
    /// A file could not be written, moved or synced.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The system's reason.
        source: std::io::Error,
    },
}

/// What a backup or restore copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Size of the copy, bytes.
    pub bytes: u64,
    /// Readings in it.
    pub readings: i64,
    /// Its newest reading's id.
    pub last_reading: i64,
    /// Its format (`meta.schema`).
    pub schema: String,
    /// Where a restore moved the store it replaced.
    pub moved_aside: Option<PathBuf>,
}

/// The lock a running gateway holds on its store (see the module's documentation).
#[derive(Debug)]
pub struct InUse {
    _file: File,
}

impl InUse {
    /// Takes the lock of the store at `store`, or says that a gateway already holds it.
    pub fn take(store: &Path) -> Result<InUse, BackupError> {
        let path = lock_path(store);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| BackupError::Io {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {
                // Who holds it: `gateway reload` signals this process.
                use std::io::Write as _;
                let mut f = &file;
                let _ = f
                    .set_len(0)
                    .and_then(|()| write!(f, "{}", std::process::id()));
                Ok(InUse { _file: file })
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(BackupError::Running(store.to_owned())),
            Err(std::fs::TryLockError::Error(source)) => Err(BackupError::Io { path, source }),
        }
    }

    /// The process id of the gateway running on the store at `store`, if one is.
    pub fn holder(store: &Path) -> Option<u32> {
        let path = lock_path(store);
        let file = File::open(&path).ok()?;
        match file.try_lock_shared() {
            Err(std::fs::TryLockError::WouldBlock) => {
                std::fs::read_to_string(&path).ok()?.trim().parse().ok()
            }
            _ => None,
        }
    }
}

fn lock_path(store: &Path) -> PathBuf {
    PathBuf::from(format!("{}.lock", store.display()))
}

/// Copies the store at `from` into the new file `to` (see the module's documentation).
pub fn backup(from: &Path, to: &Path) -> Result<Copied, BackupError> {
    if !from.exists() {
        return Err(BackupError::Missing(from.to_owned()));
    }
    if to.exists() {
        return Err(BackupError::Exists(to.to_owned()));
    }
    let partial = PathBuf::from(format!("{}.partial", to.display()));
    let _ = std::fs::remove_file(&partial);
    let source = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sqlite(from))?;
    source
        .busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sqlite(from))?;
    let copied = source
        .execute("VACUUM INTO ?1", [partial.to_string_lossy()])
        .map_err(sqlite(from));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let checked = check(&partial).and_then(|c| {
        sync(&partial)?;
        std::fs::rename(&partial, to).map_err(io(to))?;
        sync_dir(to)?;
        Ok(c)
    });
    if checked.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    checked
}

/// Puts the backup `from` in place of the store `to`, which no gateway may be running on: the
/// backup is checked first (integrity, a format this release reads), the store in place moved
/// aside, the backup copied in.
pub fn restore(from: &Path, to: &Path) -> Result<Copied, BackupError> {
    if !from.exists() {
        return Err(BackupError::Missing(from.to_owned()));
    }
    let _held = InUse::take(to)?;
    let mut copied = check(from)?;
    let partial = PathBuf::from(format!("{}.partial", to.display()));
    std::fs::copy(from, &partial).map_err(io(&partial))?;
    sync(&partial)?;
    if to.exists() {
        let aside = PathBuf::from(format!(
            "{}.before-restore-{}",
            to.display(),
            crate::clock::now_ms()
        ));
        std::fs::rename(to, &aside).map_err(io(to))?;
        for suffix in ["-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", to.display()));
            if file.exists() {
                let moved = PathBuf::from(format!("{}{suffix}", aside.display()));
                std::fs::rename(&file, &moved).map_err(io(&file))?;
            }
        }
        copied.moved_aside = Some(aside);
    }
    std::fs::rename(&partial, to).map_err(io(to))?;
    sync_dir(to)?;
    Ok(copied)
}

/// Checks a copy: SQLite's `quick_check`, a format this release reads; says what it holds.
fn check(path: &Path) -> Result<Copied, BackupError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sqlite(path))?;
    let verdict: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| BackupError::Damaged {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if verdict != "ok" {
        return Err(BackupError::Damaged {
            path: path.to_owned(),
            detail: verdict,
        });
    }
    let schema: String = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sqlite(path))?
        .unwrap_or_else(|| "1".into());
    if schema.parse::<u32>().map_or(true, |v| v > SCHEMA_VERSION) {
        return Err(BackupError::Newer {
            path: path.to_owned(),
            found: schema,
        });
    }
    let (readings, last_reading) = conn
        .query_row(
            "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM readings",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sqlite(path))?;
    Ok(Copied {
        bytes: std::fs::metadata(path).map_err(io(path))?.len(),
        readings,
        last_reading,
        schema,
        moved_aside: None,
    })
}

fn sync(path: &Path) -> Result<(), BackupError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

/// Makes a rename in `path`'s folder durable.
fn sync_dir(path: &Path) -> Result<(), BackupError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync(dir)
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> BackupError + '_ {
    move |source| BackupError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

    use super::*;
    use crate::alert::Changes;
    use crate::ledger::Ledger;
    use crate::reading::{Measurement, Reading};
    use crate::store::Store;

    fn reading(sequence: u32) -> Reading {
        Reading {
            device: Arc::from("gz-p1-press"),
            zone: Arc::from("360702"),
            kind: Arc::from("water-pressure"),
            time_ms: 1_000 + i64::from(sequence),
            received_ms: 1_001 + i64::from(sequence),
            unsynced_clock: false,
            origin: Some((1, sequence)),
            measurement: Measurement::Value {
                field: "pressure".into(),
                value: f64::from(sequence),
                urgent: false,
            },
        }
    }

    #[test]
    fn a_backup_taken_during_commits_holds_every_earlier_commit_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        let (store, _) = Store::open(&path).unwrap();
        let store = Arc::new(store);
        let (stop, committed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicI64::new(0)),
        );
        let writer = {
            let (store, stop, committed) = (store.clone(), stop.clone(), committed.clone());
            std::thread::spawn(move || {
                let mut ledger = Ledger::default();
                let mut sequence = 0;
                while !stop.load(Ordering::Relaxed) {
                    ledger.accept(1, sequence);
                    let r = reading(sequence);
                    store
                        .accept(&[r], &[], &[("gz-p1-press", &ledger)], &Changes::default())
                        .unwrap();
                    sequence += 1;
                    committed.store(i64::from(sequence), Ordering::Relaxed);
                }
            })
        };
        while committed.load(Ordering::Relaxed) < 200 {
            std::thread::yield_now();
        }
        let before = committed.load(Ordering::Relaxed);
        let copy = dir.path().join("backup.db");
        let made = backup(&path, &copy).unwrap();
        // Commits went on during the backup.
        let during = committed.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(
            made.readings >= before,
            "{made:?}, {before} committed before"
        );
        assert_eq!(made.readings, made.last_reading, "whole commits only");
        assert_eq!(made.schema, SCHEMA_VERSION.to_string());
        assert!(!PathBuf::from(format!("{}.partial", copy.display())).exists());
        assert!(
            matches!(backup(&path, &copy), Err(BackupError::Exists(_))),
            "a backup never overwrites"
        );

        // Restored in place of a store nobody runs on: the readings and ledger as of the copy.
        drop(store);
        let restored = restore(&copy, &path).unwrap();
        let aside = restored.moved_aside.clone().unwrap();
        assert!(aside.exists());
        let (store, report) = Store::open(&path).unwrap();
        assert_eq!(report.moved_corrupt_file, None);
        let readings = store.readings_after(0, 1_000_000).unwrap();
        assert_eq!(readings.len() as i64, made.readings);
        for (i, (_, r)) in readings.iter().enumerate() {
            assert_eq!(*r, reading(i as u32));
        }
        let ledger = store.ledgers().unwrap().pop().unwrap().1;
        assert_eq!(i64::from(ledger.highest) + 1, made.readings);
        assert_eq!(store.quarantined().unwrap(), 0);
        assert!(during >= before);
    }

    #[test]
    fn a_restore_refuses_a_running_gateway_a_damaged_or_newer_backup_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        let (store, _) = Store::open(&path).unwrap();
        store
            .accept(&[reading(0)], &[], &[], &Changes::default())
            .unwrap();
        drop(store);
        let copy = dir.path().join("backup.db");
        backup(&path, &copy).unwrap();

        let running = InUse::take(&path).unwrap();
        let e = restore(&copy, &path).unwrap_err();
        assert!(e.to_string().contains("a gateway is running on"), "{e}");
        drop(running);

        let damaged = dir.path().join("damaged.db");
        std::fs::write(&damaged, b"SQLite format 3\0 and then nothing useful").unwrap();
        let e = restore(&damaged, &path).unwrap_err();
        assert!(
            matches!(e, BackupError::Damaged { .. } | BackupError::Sqlite { .. }),
            "{e}"
        );

        let newer = dir.path().join("newer.db");
        backup(&path, &newer).unwrap();
        Connection::open(&newer)
            .unwrap()
            .execute("UPDATE meta SET value = '9' WHERE key = 'schema'", [])
            .unwrap();
        let e = restore(&newer, &path).unwrap_err();
        assert!(e.to_string().contains("schema) 9, newer"), "{e}");

        assert!(matches!(
            restore(&dir.path().join("nope.db"), &path),
            Err(BackupError::Missing(_))
        ));
        // Nothing was moved aside by the refusals.
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("before-restore")
            })
            .count();
        assert_eq!(aside, 0);
    }
}
