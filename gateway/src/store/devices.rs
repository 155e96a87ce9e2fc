//! Each device's chain head and sequence ledger, as of the last commit.
//!
//! Both change with every batch, for every device in it. Written with each commit, they were
//! most of what a batch from many devices wrote: a page of `ledgers` and one of `reading_heads`
//! per device, against a few pages of readings (2.6 KB of disk writes per report at 11,700
//! reports/s from 1,000 devices, and commits stalling behind the WAL that volume filled).
//! They are kept here instead and written to their tables at a checkpoint, with the id of the
//! last reading they include (`meta.devices_checkpoint`). At open, the readings after that id
//! are replayed onto them: every reading names its device and carries its frame's `(epoch,
//! sequence)`, so a crash between checkpoints loses nothing that was committed.
//!
//! What a replay cannot rebuild is what no reading records: frames refused as replays since the
//! checkpoint (the `replayed` count) and a verified frame that carried no reading.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use rustc_hash::FxHashMap;

use crate::ledger::Ledger;

/// The heads and ledgers, and how far the tables have them.
#[derive(Debug, Default)]
pub(super) struct Devices {
    /// Each device's newest committed reading: the next one's `prev_id`.
    pub heads: FxHashMap<Arc<str>, i64>,
    /// Ledgers committed since the last checkpoint, by device.
    pub ledgers: FxHashMap<String, Ledger>,
    /// The last reading the tables include.
    checkpoint_id: i64,
    /// The last reading committed.
    pub last_id: i64,
}

fn encode(ledger: &Ledger) -> rusqlite::Result<String> {
    serde_json::to_string(ledger).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))
}

impl Devices {
    /// Loads the last checkpoint, replays the readings committed after it, and writes the
    /// result as a new checkpoint.
    pub fn load(conn: &mut Connection) -> rusqlite::Result<Devices> {
        let heads = conn
            .prepare("SELECT device, last_id FROM reading_heads")?
            .query_map([], |r| Ok((Arc::from(r.get::<_, String>(0)?), r.get(1)?)))?
            .collect::<rusqlite::Result<FxHashMap<Arc<str>, i64>>>()?;
        let saved: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'devices_checkpoint'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        // A store without the key wrote heads and ledgers with every commit: they are current.
        let checkpoint_id = match saved.and_then(|v| v.parse().ok()) {
            Some(id) => id,
            None => conn.query_row("SELECT COALESCE(MAX(id), 0) FROM readings", [], |r| {
                r.get(0)
            })?,
        };
        let mut devices = Devices {
            heads,
            ledgers: FxHashMap::default(),
            checkpoint_id,
            last_id: checkpoint_id,
        };
        let replayed = devices.replay(conn)?;
        if replayed > 0 {
            tracing::info!(
                readings = replayed,
                "local store: device heads and ledgers rebuilt from the readings after their last checkpoint"
            );
        }
        // Written even when nothing was replayed: a store without the key gets it.
        devices.write(conn)?;
        Ok(devices)
    }

    /// Applies the readings after the checkpoint to the heads and ledgers; returns how many.
    fn replay(&mut self, conn: &Connection) -> rusqlite::Result<usize> {
        // A body that does not decode any more still moves its device's head; the row is
        // quarantined when it is read.
        let mut rows =
            conn.prepare("SELECT id, device, body FROM readings WHERE id > ?1 ORDER BY id")?;
        let mut rows = rows.query([self.checkpoint_id])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let (id, device): (i64, String) = (r.get(0)?, r.get(1)?);
            let origin = super::row::body_bytes(r.get_ref(2)?)
                .and_then(|(compact, body)| super::row::origin(compact, body));
            n += 1;
            self.last_id = id;
            self.heads.insert(Arc::from(device.as_str()), id);
            let Ok(Some((epoch, sequence))) = origin else {
                continue;
            };
            let ledger = match self.ledgers.entry(device) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let saved = saved_ledger(conn, e.key())?;
                    e.insert(saved)
                }
            };
            // The frame's other readings find it accepted already.
            if ledger.check(epoch, sequence).is_ok() {
                ledger.accept(epoch, sequence);
            }
        }
        Ok(n)
    }

    /// Records a committed batch: its heads moved to `moved` (the batch's readings' ids), its
    /// devices' ledgers.
    pub fn committed(&mut self, moved: FxHashMap<Arc<str>, i64>, ledgers: &[(&str, &Ledger)]) {
        if let Some(&newest) = moved.values().max() {
            self.last_id = self.last_id.max(newest);
        }
        self.heads.extend(moved);
        // A device reports several times between checkpoints: its entry is overwritten in place,
        // its id copied only the first time.
        for (device, ledger) in ledgers {
            match self.ledgers.get_mut(*device) {
                Some(l) => l.clone_from(ledger),
                None => {
                    self.ledgers.insert((*device).to_owned(), (*ledger).clone());
                }
            }
        }
    }

    /// Writes the heads and ledgers that changed since the last checkpoint, in one
    /// transaction on `conn` (held by the caller, so no commit comes in between). Returns how
    /// many rows it wrote.
    pub fn write(&mut self, conn: &mut Connection) -> rusqlite::Result<usize> {
        let tx = conn.transaction()?;
        let mut written = 0;
        {
            let mut head = tx.prepare_cached(
                "INSERT INTO reading_heads (device, last_id) VALUES (?1, ?2)
                 ON CONFLICT(device) DO UPDATE SET last_id = excluded.last_id",
            )?;
            for (device, id) in &self.heads {
                if *id > self.checkpoint_id {
                    written += head.execute(params![&**device, id])?;
                }
            }
            let mut ledger = tx.prepare_cached(
                "INSERT INTO ledgers (device, body) VALUES (?1, ?2)
                 ON CONFLICT(device) DO UPDATE SET body = excluded.body",
            )?;
            for (device, l) in &self.ledgers {
                written += ledger.execute(params![device, encode(l)?])?;
            }
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('devices_checkpoint', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [self.last_id.to_string()],
            )?;
        }
        tx.commit()?;
        self.checkpoint_id = self.last_id;
        self.ledgers.clear();
        Ok(written)
    }

    /// The last reading the tables include.
    pub fn checkpoint_id(&self) -> i64 {
        self.checkpoint_id
    }

    /// Something moved since the last checkpoint.
    pub fn changed(&self) -> bool {
        self.last_id != self.checkpoint_id || !self.ledgers.is_empty()
    }
}

/// A device's ledger as of the last checkpoint; one that no longer decodes is quarantined and
/// the replay starts from an empty one.
fn saved_ledger(conn: &Connection, device: &str) -> rusqlite::Result<Ledger> {
    let body: Option<String> = conn
        .query_row(
            "SELECT body FROM ledgers WHERE device = ?1",
            [device],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match body.map(|b| (serde_json::from_str(&b), b)) {
        Some((Ok(l), _)) => l,
        Some((Err(e), b)) => {
            super::quarantine::quarantine(
                conn,
                "ledgers",
                None,
                &format!("{device}: {e}"),
                b.as_bytes(),
            )?;
            Ledger::default()
        }
        None => Ledger::default(),
    })
}
