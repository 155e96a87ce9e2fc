//! Corrections: data for windows already closed (a node's offline backlog, a rehearsal caught
//! up by live data, a count an operator dates back) is not dropped. Its unit is recomputed from
//! the raw readings in the local store, from the first window it touches: the unit starts again
//! from what it carried before that window (the crowd's occupancy and daily entries, the
//! traffic speed baseline), takes its devices' readings in event-time order, and emits every
//! window from there on again as revisions (same timestamp and tags: InfluxDB and
//! VictoriaMetrics overwrite the points, the city platform is sent a revision). The windows
//! still open take the corrected state, so the rules see it too.
//!
//! A backlog of thousands of readings comes in many batches: a correction waits until a batch
//! brings its unit no late data (the backlog has arrived) and then runs once for all of it.
//! Only data older than the raw retention (`store.raw_retention_h`) cannot be corrected: it is
//! counted as `too_late`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::traffic::BASELINE_MS;
use super::{AggregateCounts, Aggregators, MINUTE, Place, UnitKey};
use crate::point::Point;
use crate::reading::{Measurement, Reading};

/// A unit's correction, waiting for its backlog.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The earliest event time of its late data.
    from: i64,
    /// The last batch brought it late data: more may follow.
    recent: bool,
}

/// Corrections waiting, by unit.
#[derive(Debug, Default)]
pub(super) struct Corrections {
    pending: BTreeMap<usize, Pending>,
    /// Units or their `from` changed since last recorded.
    changed: bool,
}

impl Corrections {
    /// Unit `u` took a reading at `t` for a window that had closed.
    pub(super) fn late(&mut self, u: usize, t: i64) {
        let p = self.pending.entry(u).or_insert_with(|| Pending {
            from: i64::MAX,
            recent: true,
        });
        if t < p.from {
            p.from = t;
            self.changed = true;
        }
        p.recent = true;
    }
}

/// Which pending corrections [`Aggregators::correct`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Those whose unit took no late data since the last call (its backlog has come).
    Settled,
    /// All of them (a replay of the store, a test's end).
    All,
}

impl std::fmt::Display for UnitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnitKey::Area(a) => write!(f, "area/{a}"),
            UnitKey::Segment(s) => write!(f, "segment/{s}"),
            UnitKey::Pipe(k) => write!(f, "pipe/{}/{}", k.0, k.1),
            UnitKey::Health(d) => write!(f, "health/{d}"),
        }
    }
}

impl Aggregators {
    /// The corrections waiting, as `(unit, from)`, when they changed since last asked: recorded
    /// with the commit, so that those a stop interrupts run at the next start
    /// ([`Aggregators::expect_corrections`]).
    pub fn corrections_to_record(&mut self) -> Option<Vec<(String, i64)>> {
        if !std::mem::take(&mut self.corrections.changed) {
            return None;
        }
        let pending = self.corrections.pending.iter();
        Some(
            pending
                .map(|(u, p)| (self.units[*u].key.to_string(), p.from))
                .collect(),
        )
    }

    /// Corrections recorded before a stop, to run again (units this site no longer has are
    /// left out).
    pub fn expect_corrections(&mut self, pending: &[(String, i64)]) {
        for (key, from) in pending {
            if let Some(u) = self.units.iter().position(|u| u.key.to_string() == *key) {
                self.corrections.late(u, *from);
            }
        }
    }

    /// Whether corrections are waiting.
    pub fn corrections_pending(&self) -> bool {
        !self.corrections.pending.is_empty()
    }

    /// Runs the pending corrections that are `due` and returns the points they emit again.
    /// `read` gives the raw readings of some devices (or counted areas) from an event time on,
    /// in the order they were accepted. On an error the correction stays pending.
    pub fn correct<E>(
        &mut self,
        due: Due,
        mut read: impl FnMut(&[Arc<str>], i64) -> Result<Vec<Reading>, E>,
    ) -> Result<Vec<Point>, E> {
        let mut out = Vec::new();
        let mut rest = std::mem::take(&mut self.corrections.pending).into_iter();
        for (u, p) in rest.by_ref() {
            if due == Due::Settled && p.recent {
                self.corrections
                    .pending
                    .insert(u, Pending { recent: false, ..p });
                continue;
            }
            if let Err(e) = self.recompute(u, p.from, &mut read, &mut out) {
                self.corrections.pending.insert(u, p);
                self.corrections.pending.extend(rest);
                return Err(e);
            }
            self.corrections.changed = true;
        }
        Ok(out)
    }

    /// Recomputes unit `u` from the window holding `from`: the points of its closed windows go
    /// to `out`.
    fn recompute<E>(
        &mut self,
        u: usize,
        from: i64,
        read: &mut impl FnMut(&[Arc<str>], i64) -> Result<Vec<Reading>, E>,
        out: &mut Vec<Point>,
    ) -> Result<(), E> {
        let floor = |t: i64, size: i64| t.div_euclid(size) * size;
        let key = self.units[u].key.clone();
        // The first window, where the unit's windows are cleared from (the speed baseline of a
        // segment's first windows is rebuilt too), and where the readings are read from
        // (passages just before are read for the tag dedupe).
        let (start, cleared, read_from) = match &key {
            UnitKey::Area(_) => {
                let start = floor(from, MINUTE);
                (start, start, start - self.settings.tag_dedupe_ms)
            }
            UnitKey::Segment(_) => {
                let start = floor(from, 5 * MINUTE);
                (start, start - BASELINE_MS, start - BASELINE_MS)
            }
            UnitKey::Pipe(_) => (
                floor(from, MINUTE),
                floor(from, MINUTE),
                floor(from, MINUTE),
            ),
            UnitKey::Health(_) => {
                let start = floor(from, 5 * MINUTE);
                (start, start, start)
            }
        };
        let mut readings = match (&self.units[u].sources, &key) {
            (Some(sources), _) => read(sources, read_from)?,
            (None, UnitKey::Health(device)) => read(std::slice::from_ref(device), read_from)?,
            (None, _) => Vec::new(),
        };
        readings.retain(|r| r.time_ms >= read_from);
        readings.sort_by(super::event_order);
        match &key {
            UnitKey::Area(area) => self.crowds.reset(area, cleared),
            UnitKey::Segment(segment) => self.traffic.reset(segment, cleared),
            UnitKey::Pipe(k) => self.pipes.reset(k, cleared),
            UnitKey::Health(device) => self.health.reset(device, cleared),
        }
        // What the readings count was counted when they came: the correction counts nothing.
        let counted = self.counts;
        let mut scratch = AggregateCounts::default();
        for r in &readings {
            self.refeed(&key, r, cleared, &mut scratch);
        }
        let mut points = Vec::new();
        self.drain_unit(u, &mut points);
        self.counts = AggregateCounts {
            corrections: counted.corrections + 1,
            corrected_readings: counted.corrected_readings + readings.len() as u64,
            ..counted
        };
        // The baseline's windows before `start` are as they were.
        out.extend(points.into_iter().filter(|p| p.time_ms > start));
        Ok(())
    }

    /// Adds `r` again to unit `key` only (its other units are not corrected), whose windows
    /// were cleared from `cleared` on.
    fn refeed(&mut self, key: &UnitKey, r: &Reading, cleared: i64, counts: &mut AggregateCounts) {
        // Nothing is closed while a correction adds its readings.
        let wm = i64::MIN;
        let place = self.devices.get(&r.device).and_then(|d| d.place.as_ref());
        // Every window it touches was cleared: none refuses it.
        let _ = match (key, place, &r.measurement) {
            (
                UnitKey::Area(_),
                Some(Place::Gate {
                    subjects,
                    gate,
                    direction,
                    ..
                }),
                Measurement::Passage { tag, entry },
            ) => {
                if r.time_ms < cleared {
                    self.crowds
                        .prime(gate, *tag, r.time_ms, self.settings.tag_dedupe_ms);
                    return;
                }
                self.crowds.passage(
                    r,
                    (subjects, gate, *direction),
                    (*tag, *entry),
                    self.settings.tag_dedupe_ms,
                    wm,
                    counts,
                )
            }
            _ if r.time_ms < cleared => return,
            (
                UnitKey::Area(_),
                Some(Place::Gate { subjects, .. }),
                Measurement::Counts { entries, exits, .. },
            ) => self.crowds.counts(r, subjects, (*entries, *exits), wm),
            (UnitKey::Area(_), None, Measurement::Occupancy { count }) => {
                self.crowds.count(r, &r.device, *count, wm)
            }
            (
                UnitKey::Segment(segment),
                Some(Place::Detector { .. }),
                Measurement::Lane {
                    lane,
                    vehicles,
                    occupancy_pct,
                    speed_kmh,
                    ..
                },
            ) => self.traffic.lane(
                r,
                segment,
                *lane,
                (*vehicles, *occupancy_pct, *speed_kmh),
                wm,
            ),
            (
                UnitKey::Pipe(k),
                Some(Place::Asset { .. }),
                Measurement::Value { field, value, .. },
            ) if *field == k.1 => self.pipes.value(r, k, *value, wm),
            (UnitKey::Health(device), _, _) if r.device == *device => self.health.report(r, wm),
            _ => Ok(()),
        };
    }
}
