//! Device health per device in 5-minute windows: reports, the longest gap, completeness over
//! the frames' sequence numbers, battery and signal.

use std::sync::Arc;

// Keys are ids of known devices and subjects (never raw input): a fast hasher is safe.
use rustc_hash::FxHashMap as HashMap;

use super::MINUTE;
use super::window::{TooLate, Windows};
use crate::point::{FieldValue, Point, Quality};
use crate::reading::{Measurement, Reading};

/// One device's 5-minute health window, in constant space (a series per device).
#[derive(Debug, Default, Clone)]
pub(super) struct HealthWindow {
    /// Frames and reports without sequence numbers.
    reports: u32,
    /// Frames seen: readings of one frame count once (they arrive together).
    frames: u32,
    /// The frame counted last.
    last_origin: Option<(u32, u32)>,
    /// Boot epoch and the lowest and highest sequence seen in it.
    sequences: Option<(u32, u32, u32)>,
    /// Sequence numbers spanned in earlier epochs.
    span_before: u32,
    /// First and last report time, and the longest gap between reports taken in time order; a
    /// report arriving out of order inside that span leaves the gap as measured (an upper bound).
    first_ms: i64,
    last_ms: i64,
    max_gap_ms: i64,
    battery_pct: Option<u8>,
    signal_dbm: Option<i8>,
}

impl HealthWindow {
    /// Counts a report at `t` (frame `origin`, or none for JSON devices).
    #[inline]
    fn report(&mut self, origin: Option<(u32, u32)>, t: i64) {
        if let Some(o) = origin {
            if self.last_origin == Some(o) {
                return;
            }
            self.last_origin = Some(o);
            self.frames += 1;
            let (epoch, seq) = o;
            self.sequences = match self.sequences {
                None => Some((epoch, seq, seq)),
                Some((e, lo, hi)) if e == epoch => Some((e, lo.min(seq), hi.max(seq))),
                Some((e, lo, hi)) if e < epoch => {
                    self.span_before += hi - lo + 1;
                    Some((epoch, seq, seq))
                }
                // A late frame of an earlier epoch: a span of its own.
                current => {
                    self.span_before += 1;
                    current
                }
            };
        }
        if self.reports == 0 {
            (self.first_ms, self.last_ms) = (t, t);
        } else if t >= self.last_ms {
            self.max_gap_ms = self.max_gap_ms.max(t - self.last_ms);
            self.last_ms = t;
        } else if t < self.first_ms {
            self.max_gap_ms = self.max_gap_ms.max(self.first_ms - t);
            self.first_ms = t;
        }
        self.reports += 1;
    }

    /// Frames seen over the sequence numbers they span.
    fn completeness(&self) -> Option<f64> {
        let (_, lo, hi) = self.sequences?;
        let span = self.span_before + (hi - lo + 1);
        Some((f64::from(self.frames) / f64::from(span)).min(1.0))
    }
}

/// One device's zone, kind and windows.
type HealthSeries = (Arc<str>, Arc<str>, Windows<HealthWindow>);

/// The health of every device heard.
#[derive(Debug, Default)]
pub(super) struct Health {
    series: HashMap<Arc<str>, HealthSeries>,
}

impl Health {
    /// Counts `r` for its device, and its battery and signal when it is a status report.
    #[inline]
    pub(super) fn report(&mut self, r: &Reading, wm: i64) -> Result<(), TooLate> {
        let h = self
            .series
            .entry(r.device.clone())
            .or_insert_with(|| (r.zone.clone(), r.kind.clone(), Windows::new(5 * MINUTE)));
        let hw = h.2.get_mut_from(r.time_ms, r.unsynced_clock, wm)?;
        hw.report(r.origin, r.time_ms);
        if let Measurement::Status {
            battery_pct,
            signal_dbm,
            ..
        } = &r.measurement
        {
            hw.battery_pct = *battery_pct;
            hw.signal_dbm = Some(*signal_dbm);
        }
        Ok(())
    }

    /// Clears `device`'s windows from `start` on, for a correction.
    pub(super) fn reset(&mut self, device: &str, start: i64) {
        if let Some((_, _, w)) = self.series.get_mut(device) {
            w.clear_from(start);
        }
    }

    /// The points of `device`'s windows closed at watermark `wm`.
    pub(super) fn drain(&mut self, device: &Arc<str>, wm: i64, out: &mut Vec<Point>) {
        let Some((zone, kind, windows)) = self.series.get_mut(device) else {
            return;
        };
        for closed in windows.drain_closed(wm) {
            let (end, w) = (closed.end, closed.state);
            let mut fields = vec![("reports".into(), FieldValue::Int(i64::from(w.reports)))];
            if w.reports > 1 {
                let gap = w.max_gap_ms as f64 / 1000.0;
                fields.push(("max_gap_s".into(), FieldValue::Float(gap)));
            }
            if let Some(c) = w.completeness() {
                fields.push(("completeness".into(), FieldValue::Float(c)));
            }
            if let Some(b) = w.battery_pct {
                fields.push(("battery_pct".into(), FieldValue::Int(i64::from(b))));
            }
            if let Some(s) = w.signal_dbm {
                fields.push(("signal_dbm".into(), FieldValue::Int(i64::from(s))));
            }
            out.push(Point {
                measurement: "device_health".into(),
                tags: vec![
                    ("device".into(), device.to_string()),
                    ("zone".into(), zone.to_string()),
                    ("kind".into(), kind.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_790_820_000_000;

    #[test]
    fn device_health_completeness_spans_boot_epochs() {
        let mut w = HealthWindow::default();
        // Epoch 1: sequences 10..=12 with 11 lost; the node reboots: epoch 2, sequences 0 and 1.
        for (origin, t) in [
            ((1, 10), 0),
            ((1, 12), 20_000),
            ((2, 0), 30_000),
            ((2, 1), 40_000),
        ] {
            w.report(Some(origin), T0 + t);
            w.report(Some(origin), T0 + t); // a second reading of the same frame
        }
        assert_eq!((w.reports, w.frames), (4, 4));
        assert_eq!(w.completeness(), Some(4.0 / 5.0));
        assert_eq!(w.max_gap_ms, 20_000);
        // A frame arriving out of order before the first one extends the span it covers.
        w.report(Some((1, 9)), T0 - 30_000);
        assert_eq!(w.max_gap_ms, 30_000);
    }
}
