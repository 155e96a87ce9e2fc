//! What the sinks and the API read: readings, points and their lines by id, a device's recent
//! readings, series, and the ledgers at open. Rows that no longer decode are quarantined on the
//! way, never served.

use std::sync::Arc;

use rusqlite::params;

use super::{Store, StoreError, row};
use crate::ledger::Ledger;
use crate::point::Point;
use crate::reading::Reading;

/// How long, at least, before the earliest event time a correction asks for its chain walks
/// stop (a minute more than the verifier's `max_clock_skew_s` when that is longer).
pub const RECEIVED_MARGIN_MS: i64 = 10 * 60_000;

impl Store {
    /// Runs `SELECT key, body ...` on `table` and decodes the bodies; rows that do not decode
    /// are quarantined and deleted (by `key_column`).
    pub(super) fn decoded<K, T>(
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
                Err(e) => self.quarantine_row(table, key_column, &key, &e, body.as_bytes())?,
            }
        }
        Ok(out)
    }

    /// Every persisted ledger (to restore the registry at start). Rows that do not decode are
    /// quarantined.
    pub fn ledgers(&self) -> Result<Vec<(String, Ledger)>, StoreError> {
        let conn = self.writer(super::Cause::Operators)?;
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
                    super::quarantine::quarantine(
                        &conn,
                        "ledgers",
                        None,
                        &e.to_string(),
                        body.as_bytes(),
                    )
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

    /// The readings of `devices` with event time at or after `since_ms` and `id <= until_id`,
    /// in acceptance order (for corrections of the aggregates). Each device's chain is followed
    /// back from its head until a reading received well before `since_ms` (ten minutes, or a
    /// minute more than `clock_skew_ms`, the verifier's `max_clock_skew_s`): nothing with a
    /// later event time was accepted before it, since the verifier refuses clocks further ahead.
    pub fn readings_of(
        &self,
        devices: &[Arc<str>],
        since_ms: i64,
        until_id: i64,
        clock_skew_ms: i64,
    ) -> Result<Vec<Reading>, StoreError> {
        let margin = RECEIVED_MARGIN_MS.max(clock_skew_ms + 60_000);
        let heads: Vec<i64> = {
            let known = self.devices.lock().map_err(|_| StoreError::Poisoned)?;
            devices
                .iter()
                .filter_map(|d| known.heads.get(&**d).copied())
                .collect()
        };
        let mut out = Vec::new();
        for head in heads {
            out.extend(self.decoded_readings(
                "WITH RECURSIVE chain(id) AS (
                     SELECT ?1
                     UNION ALL
                     SELECT r.prev_id FROM chain c JOIN readings r ON r.id = c.id
                     WHERE r.prev_id IS NOT NULL AND r.received_ms >= ?2)
                 SELECT r.id, r.device, r.time_ms, r.received_ms, r.body
                 FROM chain c JOIN readings r ON r.id = c.id
                 WHERE r.time_ms >= ?3 AND r.id <= ?4",
                params![head, since_ms - margin, since_ms, until_id],
            )?);
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out.into_iter().map(|(_, r)| r).collect())
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
    pub(super) fn decoded_readings(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<(i64, Reading)>, StoreError> {
        // The body as stored: compact (a BLOB) or JSON (text), see `store/row.rs`.
        type Row = (i64, String, i64, i64, Option<bool>, Vec<u8>);
        let rows: Vec<Row> = {
            let conn = self.reader()?;
            let mut stmt = conn.prepare_cached(sql).map_err(|e| self.sqlite(e))?;
            stmt.query_map(args, |r| {
                let (compact, body) = match row::body_bytes(r.get_ref(4)?) {
                    Ok((compact, bytes)) => (Some(compact), bytes.to_vec()),
                    Err(_) => (None, Vec::new()),
                };
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, compact, body))
            })
            .map_err(|e| self.sqlite(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sqlite(e))?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (id, device, time_ms, received_ms, compact, body) in rows {
            let decoded = match compact {
                Some(compact) => row::decode(compact, &body, &device, time_ms, received_ms),
                None => Err(row::BodyError::Type("neither text nor a BLOB")),
            };
            match decoded {
                Ok(r) => out.push((id, r)),
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

    /// The row id of the first emission of `p`'s window (same measurement, tags and time), when
    /// still stored: the city platform keeps it as the id of a revised window's record.
    pub fn first_emission(&self, p: &Point) -> Result<Option<i64>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, body FROM points WHERE measurement = ?1 AND time_ms = ?2 ORDER BY id",
            )
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map(params![p.measurement, p.time_ms], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(|e| self.sqlite(e))?;
        for row in rows {
            let (id, body) = row.map_err(|e| self.sqlite(e))?;
            if serde_json::from_str::<Point>(&body).is_ok_and(|q| q.tags == p.tags) {
                return Ok(Some(id));
            }
        }
        Ok(None)
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

    /// The newest point of each series (measurement and tags) of `measurement` at or after
    /// `since_ms`, looking at no more than `scan` rows, newest first: what the console's
    /// situation shows.
    pub fn latest_points(
        &self,
        measurement: &str,
        since_ms: i64,
        scan: usize,
    ) -> Result<Vec<Point>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT body FROM points WHERE measurement = ?1 AND time_ms >= ?2 \
                 ORDER BY time_ms DESC, id DESC LIMIT ?3",
            )
            .map_err(|e| self.sqlite(e))?;
        let rows = stmt
            .query_map(params![measurement, since_ms, scan as i64], |r| {
                r.get::<_, String>(0)
            })
            .map_err(|e| self.sqlite(e))?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for body in rows {
            let body = body.map_err(|e| self.sqlite(e))?;
            if let Ok(p) = serde_json::from_str::<Point>(&body)
                && seen.insert(p.tags.clone())
            {
                out.push(p);
            }
        }
        Ok(out)
    }
}
