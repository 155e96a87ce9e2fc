//! Pipe, well and cover nodes: transducers on an ADS1115, sensors on RS-485 (Modbus RTU), tilt;
//! a report every interval, and one at once when a value crosses a threshold.
//!
//! Power: the node wakes to sample every `sample_s`, reports every `report_interval_s`, and
//! sleeps in between ([`Schedule::next_wake`]); a crossing reports at once. A crossing must hold
//! for `hold_ms` (a car driving over a cover tilts it for well under two seconds).

use wire::{Body, PipeReading, PipeReadings, Quantity, Trigger};

/// Two-point calibration of a transducer: raw counts to engineering units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Raw count at the low point.
    pub raw_lo: f32,
    /// Value at the low point.
    pub value_lo: f32,
    /// Raw count at the high point.
    pub raw_hi: f32,
    /// Value at the high point.
    pub value_hi: f32,
}

impl Calibration {
    /// A 4–20 mA transducer over a 150 Ω shunt (0.6–3.0 V) read at ±4.096 V (125 µV/LSB):
    /// 4,800 counts at 4 mA, 24,000 at 20 mA, spanning `lo..hi` units.
    pub fn four_to_twenty_ma(lo: f32, hi: f32) -> Calibration {
        Calibration {
            raw_lo: 4_800.0,
            value_lo: lo,
            raw_hi: 24_000.0,
            value_hi: hi,
        }
    }

    /// The value of a raw count.
    pub fn apply(&self, raw: i16) -> f32 {
        let span = self.raw_hi - self.raw_lo;
        if span == 0.0 {
            return self.value_lo;
        }
        self.value_lo + (f32::from(raw) - self.raw_lo) * (self.value_hi - self.value_lo) / span
    }

    /// Whether a raw count is outside the loop's live range (broken wire: under 3.6 mA; short:
    /// over 21 mA).
    pub fn loop_fault(&self, raw: i16) -> bool {
        let per_ma = (self.raw_hi - self.raw_lo) / 16.0;
        let ma = 4.0 + (f32::from(raw) - self.raw_lo) / per_ma;
        !(3.6..=21.0).contains(&ma)
    }
}

/// A threshold watched on the node: crossing it reports at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watch {
    /// The quantity.
    pub quantity: Quantity,
    /// Alarm at or above this.
    pub high: Option<f32>,
    /// Alarm at or below this.
    pub low: Option<f32>,
    /// How far back the value must come to re-arm.
    pub margin: f32,
    /// How long a crossing must hold before it counts, ms.
    pub hold_ms: u64,
}

/// State of one [`Watch`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WatchState {
    beyond_since: Option<u64>,
    alarmed: bool,
}

impl Watch {
    fn beyond(&self, v: f32) -> bool {
        self.high.is_some_and(|h| v >= h) || self.low.is_some_and(|l| v <= l)
    }

    fn back(&self, v: f32) -> bool {
        self.high.is_none_or(|h| v < h - self.margin)
            && self.low.is_none_or(|l| v > l + self.margin)
    }

    /// Feeds a sample: `Some(true)` when the alarm starts (report at once), `Some(false)` when
    /// it clears (report at once too, so the gateway sees the end quickly).
    pub fn check(&self, state: &mut WatchState, value: f32, now_ms: u64) -> Option<bool> {
        if !state.alarmed {
            if self.beyond(value) {
                let since = *state.beyond_since.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) >= self.hold_ms {
                    state.alarmed = true;
                    return Some(true);
                }
            } else {
                state.beyond_since = None;
            }
            None
        } else if self.back(value) {
            state.alarmed = false;
            state.beyond_since = None;
            Some(false)
        } else {
            None
        }
    }
}

/// When to sample and when to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Sample every this many ms.
    pub sample_ms: u64,
    /// Report every this many ms.
    pub report_ms: u64,
    /// The next periodic report.
    pub next_report_ms: u64,
}

impl Schedule {
    /// Starting at `now_ms`.
    pub fn new(sample_ms: u64, report_ms: u64, now_ms: u64) -> Schedule {
        Schedule {
            sample_ms,
            report_ms,
            next_report_ms: now_ms + report_ms,
        }
    }

    /// Whether the periodic report is due (and moves it on).
    pub fn report_due(&mut self, now_ms: u64) -> bool {
        if now_ms < self.next_report_ms {
            return false;
        }
        while self.next_report_ms <= now_ms {
            self.next_report_ms += self.report_ms.max(1);
        }
        true
    }

    /// When to wake next: the next sample or report, whichever is first. In between the MCU
    /// sleeps (stop mode on the board).
    pub fn next_wake(&self, now_ms: u64) -> u64 {
        (now_ms + self.sample_ms).min(self.next_report_ms)
    }
}

/// A pipe report body.
pub fn report(trigger: Trigger, values: &[(Quantity, f32)]) -> Body {
    let mut readings = heapless::Vec::new();
    for &(quantity, value) in values.iter().take(wire::body::MAX_PIPE_READINGS) {
        let _ = readings.push(PipeReading { quantity, value });
    }
    Body::PipeReadings(PipeReadings { trigger, readings })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(w: &Watch, series: &[(u64, f32)]) -> std::vec::Vec<(u64, bool)> {
        let mut s = WatchState::default();
        series
            .iter()
            .filter_map(|&(t, v)| w.check(&mut s, v, t).map(|a| (t, a)))
            .collect()
    }

    #[test]
    fn a_pressure_burst_reports_at_once_and_its_recovery_too() {
        let low = Watch {
            quantity: Quantity::Pressure,
            high: None,
            low: Some(0.14),
            margin: 0.02,
            hold_ms: 0,
        };
        // 0.30 MPa, a burst drops it to 0.08 within seconds, repaired an hour later.
        let mut series: std::vec::Vec<(u64, f32)> = (0..10).map(|i| (i * 1_000, 0.30)).collect();
        series.extend([
            (10_000, 0.22),
            (11_000, 0.12),
            (12_000, 0.08),
            (13_000, 0.09),
        ]);
        series.extend([(3_600_000, 0.15), (3_601_000, 0.29)]);
        assert_eq!(
            samples(&low, &series),
            std::vec![(11_000, true), (3_601_000, false)]
        );
    }

    #[test]
    fn a_cover_lifted_for_one_second_is_ignored_and_for_sixty_reported() {
        let tilt = Watch {
            quantity: Quantity::Tilt,
            high: Some(10.0),
            low: None,
            margin: 1.0,
            hold_ms: 2_000,
        };
        // Sampled every 500 ms while the accelerometer reports motion.
        let lifted = |from: u64, to: u64| -> std::vec::Vec<(u64, f32)> {
            (0..200u64)
                .map(|i| {
                    let t = i * 500;
                    (t, if (from..to).contains(&t) { 35.0 } else { 0.5 })
                })
                .collect()
        };
        assert!(samples(&tilt, &lifted(10_000, 11_000)).is_empty());
        assert_eq!(
            samples(&tilt, &lifted(10_000, 70_000)),
            std::vec![(12_000, true), (70_000, false)]
        );
    }

    #[test]
    fn the_schedule_sleeps_until_the_next_sample_or_report() {
        let mut s = Schedule::new(10_000, 60_000, 0);
        assert_eq!(s.next_wake(0), 10_000);
        assert_eq!(s.next_wake(55_000), 60_000);
        assert!(!s.report_due(59_999));
        assert!(s.report_due(60_000));
        assert!(!s.report_due(60_001));
        // A long sleep (a missed wake) reports once, not for every missed interval.
        assert!(s.report_due(300_000));
        assert_eq!(s.next_report_ms, 360_000);
    }
}
