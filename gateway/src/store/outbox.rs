//! The alert outbox: each (rule, subject)'s persisted state, and the events the notifiers drain,
//! written in the same transaction as the readings that caused them.

use std::sync::Arc;
use std::time::Instant;

use rusqlite::params;

use super::{Store, StoreError};
use crate::alert::{AlertEvent, Changes, SubjectState};

/// Alert events just committed, handed to the notifiers with their wake-up: a notifier whose
/// cursor they follow delivers them without reading them back from the outbox.
#[derive(Debug, Clone)]
pub struct Committed {
    /// When the commit ended.
    pub at: Instant,
    /// The events with their outbox ids, in order; empty when the ids are not known (the
    /// notifiers then read the outbox).
    pub events: Arc<[(i64, AlertEvent)]>,
}

impl Store {
    /// Writes the alert changes; returns the outbox ids of the events, in their order.
    pub(super) fn write_alerts(
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
        let mut conn = self.writer(super::Cause::Alerts)?;
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
        let conn = self.writer(super::Cause::Retention)?;
        conn.execute(
            "DELETE FROM alert_events WHERE at_ms < ?1 AND id <= ?2
             AND id < (SELECT MAX(id) FROM alert_events)",
            params![before_ms, delivered],
        )
        .map(|n| n as u64)
        .map_err(|e| self.sqlite(e))
    }
}
