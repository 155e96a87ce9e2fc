//! What the store writes, by cause: the flash in a street cabinet has a write budget, and an
//! operator sizing it (or a change that writes more) needs to see where the bytes go.
//!
//! Every write transaction runs on the writing connection under a [`Cause`], set while its lock
//! is held. The connection's WAL hook counts the frames each commit appended (SQLite's own
//! count: a frame is a page and its 24-byte header) under the cause of the moment. The
//! checkpoint thread counts what copying the WAL into the database wrote, from its own thread's
//! `/proc/thread-self/io`. What the process wrote beyond both (`write_bytes` of
//! `/proc/self/io`) is the file system's rounding to whole blocks (a commit that appends part
//! of a 4 KiB block writes all of it) and other files.

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};

/// Why the writing connection is writing (its discriminant indexes [`Cause::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Cause {
    /// Accepted batches: readings, their points, alert changes, corrections.
    Batches,
    /// The device checkpoint: chain heads and sequence ledgers.
    Devices,
    /// Retention and the size bound.
    Retention,
    /// Sinks' and notifiers' cursors, dead letters.
    Cursors,
    /// Alert commits outside a batch (operators' acknowledgements, the presence sweep).
    Alerts,
    /// Accounts, tokens, the audit trail, quarantine.
    Operators,
}

impl Cause {
    /// Every cause, in the order of [`Written::wal`].
    pub const ALL: [Cause; 6] = [
        Cause::Batches,
        Cause::Devices,
        Cause::Retention,
        Cause::Cursors,
        Cause::Alerts,
        Cause::Operators,
    ];

    /// The label in `citysense_store_wal_bytes_total{cause}`.
    pub fn name(self) -> &'static str {
        match self {
            Cause::Batches => "batches",
            Cause::Devices => "devices",
            Cause::Retention => "retention",
            Cause::Cursors => "cursors",
            Cause::Alerts => "alerts",
            Cause::Operators => "operators",
        }
    }
}

/// Bytes written so far: to the WAL by cause, and by checkpoints into the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// WAL bytes (frames × (page size + 24)) by cause, in the order of [`Cause::ALL`].
    pub wal: [u64; 6],
    /// Bytes the checkpoints wrote into the database file.
    pub checkpoints: u64,
}

/// The counters, shared by the store, its WAL hook and the checkpoint thread.
#[derive(Debug)]
pub(super) struct Volume {
    /// The cause of the transaction in progress (an index into [`Cause::ALL`]).
    cause: AtomicUsize,
    /// Frames appended, by cause.
    frames: [AtomicU64; 6],
    /// The WAL's length after the last commit, in frames: the next commit's frames are the
    /// difference (or its whole length, when the WAL started over).
    wal_frames: AtomicI32,
    /// Bytes of one frame.
    frame_bytes: u64,
    checkpoints: AtomicU64,
}

impl Volume {
    pub(super) fn new(page_size: u64) -> Volume {
        Volume {
            cause: AtomicUsize::new(0),
            frames: Default::default(),
            wal_frames: AtomicI32::new(0),
            frame_bytes: page_size + 24,
            checkpoints: AtomicU64::new(0),
        }
    }

    /// Names the cause of the writes that follow (called with the writing connection held).
    pub(super) fn cause(&self, cause: Cause) {
        self.cause.store(cause as usize, Ordering::Relaxed);
    }

    /// A commit left the WAL `frames` long (from the WAL hook).
    pub(super) fn committed(&self, frames: i32) {
        let before = self.wal_frames.swap(frames, Ordering::Relaxed);
        let appended = if frames >= before {
            frames - before
        } else {
            frames
        };
        let i = self.cause.load(Ordering::Relaxed);
        self.frames[i].fetch_add(appended as u64, Ordering::Relaxed);
    }

    /// A checkpoint wrote `bytes` into the database.
    pub(super) fn checkpointed(&self, bytes: u64) {
        self.checkpoints.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn written(&self) -> Written {
        let mut w = Written {
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
            ..Written::default()
        };
        for (out, frames) in w.wal.iter_mut().zip(&self.frames) {
            *out = frames.load(Ordering::Relaxed) * self.frame_bytes;
        }
        w
    }
}

/// Bytes the calling thread caused to be written to storage so far (Linux; none elsewhere).
pub(super) fn thread_bytes_written() -> Option<u64> {
    proc_write_bytes(&std::fs::read_to_string("/proc/thread-self/io").ok()?)
}

/// The `write_bytes` of a `/proc/PID/io` text.
pub fn proc_write_bytes(io: &str) -> Option<u64> {
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_go_to_the_cause_of_the_moment_and_a_wal_that_started_over_counts_whole() {
        let v = Volume::new(4096);
        v.cause(Cause::Batches);
        v.committed(3);
        v.committed(5);
        v.cause(Cause::Devices);
        v.committed(105);
        v.cause(Cause::Batches);
        // Started over: the commit wrote 2 frames from the beginning.
        v.committed(2);
        let w = v.written();
        assert_eq!(w.wal[0], 7 * 4120);
        assert_eq!(w.wal[1], 100 * 4120);
        assert_eq!(w.wal[2..], [0, 0, 0, 0]);
    }

    #[test]
    fn write_bytes_come_from_proc_io() {
        let io = "rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 5\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(proc_write_bytes(io), Some(8192));
        assert_eq!(proc_write_bytes("nothing"), None);
    }
}
