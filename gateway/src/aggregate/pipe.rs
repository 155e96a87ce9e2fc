//! Pipe assets (DOMAIN.md §4): each field of each asset per minute: last, min, max, mean, count
//! and the rate of change.

use std::borrow::Cow;
use std::sync::Arc;

// Keys are ids of known devices and subjects (never raw input): a fast hasher is safe.
use rustc_hash::FxHashMap as HashMap;

use super::MINUTE;
use super::window::{ExactSum, TooLate, Windows};
use crate::point::{FieldValue, Point, Quality};
use crate::reading::Reading;

#[derive(Debug, Default, Clone)]
struct PipeWindow {
    first: Option<(i64, f64)>,
    last: Option<(i64, f64)>,
    min: f64,
    max: f64,
    sum: ExactSum,
    n: u64,
}

/// One asset's field: its zone and windows.
type PipeSeries = (Arc<str>, Windows<PipeWindow>);

/// An asset and one of its fields.
pub(super) type PipeKey = (Arc<str>, Cow<'static, str>);

/// The fields of a site's pipe assets.
#[derive(Debug, Default)]
pub(super) struct Pipes {
    series: HashMap<PipeKey, PipeSeries>,
}

impl Pipes {
    /// One value of `field` on `asset`.
    #[inline]
    pub(super) fn value(
        &mut self,
        r: &Reading,
        key: &PipeKey,
        value: f64,
        wm: i64,
    ) -> Result<(), TooLate> {
        let entry = match self.series.get_mut(key) {
            Some(e) => e,
            None => self
                .series
                .entry(key.clone())
                .or_insert_with(|| (r.zone.clone(), Windows::new(MINUTE))),
        };
        let w = entry.1.get_mut_from(r.time_ms, r.unsynced_clock, wm)?;
        if w.n == 0 {
            (w.min, w.max) = (value, value);
        }
        // Ties in time (two devices measuring one field) go to the smaller value first: the same
        // whatever order they came in.
        let before =
            |(t, v): (i64, f64), (u, x): (i64, f64)| t.cmp(&u).then(v.total_cmp(&x)).is_lt();
        let this = (r.time_ms, value);
        if w.first.is_none_or(|first| before(this, first)) {
            w.first = Some(this);
        }
        if w.last.is_none_or(|last| before(last, this)) {
            w.last = Some(this);
        }
        w.min = w.min.min(value);
        w.max = w.max.max(value);
        w.sum.add(value);
        w.n += 1;
        Ok(())
    }

    /// Clears the windows of `key` from `start` on, for a correction.
    pub(super) fn reset(&mut self, key: &PipeKey, start: i64) {
        if let Some((_, w)) = self.series.get_mut(key) {
            w.clear_from(start);
        }
    }

    /// The points of `key`'s windows closed at watermark `wm`.
    pub(super) fn drain(&mut self, key: &PipeKey, wm: i64, out: &mut Vec<Point>) {
        let Some((zone, windows)) = self.series.get_mut(key) else {
            return;
        };
        let (asset, field) = key;
        for closed in windows.drain_closed(wm) {
            let (end, w) = (closed.end, closed.state);
            let mut fields = vec![
                ("min".into(), FieldValue::Float(w.min)),
                ("max".into(), FieldValue::Float(w.max)),
                (
                    "mean".into(),
                    FieldValue::Float(w.sum.value() / w.n.max(1) as f64),
                ),
                ("count".into(), FieldValue::Int(w.n as i64)),
            ];
            if let Some((_, last)) = w.last {
                fields.insert(0, ("last".into(), FieldValue::Float(last)));
            }
            if let (Some((t0, v0)), Some((t1, v1))) = (w.first, w.last)
                && t1 > t0
            {
                fields.push((
                    "rate_per_min".into(),
                    FieldValue::Float((v1 - v0) / ((t1 - t0) as f64 / 60_000.0)),
                ));
            }
            out.push(Point {
                measurement: "pipe".into(),
                tags: vec![
                    ("asset".into(), asset.to_string()),
                    ("zone".into(), zone.to_string()),
                    ("field".into(), field.to_string()),
                ],
                fields,
                time_ms: end,
                quality: Quality {
                    late: closed.late,
                    unsynced_clock: closed.unsynced_clock,
                    estimated: false,
                },
            });
        }
    }
}
