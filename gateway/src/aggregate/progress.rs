//! Per-device progress: how far in event time each device of a unit has reported, and so up to
//! where the unit's windows are final.
//!
//! A *unit* is what one set of devices feeds: a scenic area with its choke points (its gates), a
//! road segment (its detectors), a field of a pipe asset (the asset's devices that measure it),
//! or one device's health. The unit's watermark is the oldest progress among its *live*
//! devices: a window is final only when every live device has passed it. A device counts as
//! live while it is within its profile's offline threshold (`report_interval_s ×
//! offline_after_intervals`) of the unit's newest device; one silent longer, or never heard,
//! holds no window open, and its backlog, when it comes, is a correction (see
//! [`super::correct`]). Everything is event time: a rehearsal on a past day moves its own units
//! and no others, and a replay gives the same watermarks as live delivery.

use std::sync::Arc;

/// The progress of one unit's devices.
#[derive(Debug, Clone)]
pub(super) struct Progress {
    /// Each device heard: its id, its newest event time and its offline threshold.
    devices: Vec<(Arc<str>, i64, i64)>,
    /// The watermark, computed when a device moves.
    watermark: i64,
    /// The minute of the watermark when the unit's windows were last drained.
    drained_minute: i64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            devices: Vec::new(),
            watermark: i64::MIN,
            drained_minute: i64::MIN,
        }
    }
}

impl Progress {
    /// Up to where the unit's windows are final.
    #[inline]
    pub(super) fn watermark(&self) -> i64 {
        self.watermark
    }

    /// The newest event time of any of its devices.
    #[inline]
    pub(super) fn newest(&self) -> i64 {
        self.devices.iter().map(|d| d.1).max().unwrap_or(i64::MIN)
    }

    /// Whether `device` has reported past `t` already: a reading at `t` comes out of order, and
    /// the windows it lands in, even open ones, took its device's later readings first.
    #[inline]
    pub(super) fn is_behind(&self, device: &Arc<str>, t: i64) -> bool {
        self.devices
            .iter()
            .any(|(d, latest, _)| *d == *device && t < *latest)
    }

    /// `device` (offline after `offline_ms` of silence) reported at `t`. Returns whether the
    /// watermark entered a minute not yet drained.
    #[inline]
    pub(super) fn advance(&mut self, device: &Arc<str>, t: i64, offline_ms: i64) -> bool {
        match self.devices.iter_mut().find(|d| d.0 == *device) {
            Some(d) if d.1 >= t => return false,
            Some(d) => d.1 = t,
            None => self.devices.push((device.clone(), t, offline_ms)),
        }
        let newest = self.newest();
        self.watermark = self
            .devices
            .iter()
            .map(|&(_, latest, offline)| latest.max(newest.saturating_sub(offline)))
            .min()
            .unwrap_or(i64::MIN);
        self.watermark.div_euclid(super::MINUTE) != self.drained_minute
    }

    /// The unit's windows were drained at its current watermark.
    pub(super) fn drained(&mut self) {
        self.drained_minute = self.watermark.div_euclid(super::MINUTE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn the_watermark_waits_for_a_live_device_and_not_for_a_silent_one() {
        let (a, b): (Arc<str>, Arc<str>) = ("gate-a".into(), "gate-b".into());
        let mut p = Progress::default();
        assert_eq!(p.watermark(), i64::MIN);
        p.advance(&a, 10 * MIN, 5 * MIN);
        p.advance(&b, 10 * MIN, 5 * MIN);
        p.advance(&a, 13 * MIN, 5 * MIN);
        assert_eq!(p.watermark(), 10 * MIN, "b is live and behind");
        p.advance(&a, 20 * MIN, 5 * MIN);
        assert_eq!(p.watermark(), 15 * MIN, "b went silent 5 minutes behind a");
        p.advance(&b, 19 * MIN, 5 * MIN);
        assert_eq!(p.watermark(), 19 * MIN, "b is back");
        assert_eq!(p.newest(), 20 * MIN);
    }

    #[test]
    fn a_unit_drains_once_per_minute_of_its_watermark() {
        let a: Arc<str> = "gate-a".into();
        let mut p = Progress::default();
        assert!(p.advance(&a, MIN + 1, MIN));
        p.drained();
        assert!(!p.advance(&a, MIN + 30_000, MIN));
        assert!(p.advance(&a, 2 * MIN, MIN));
    }
}
