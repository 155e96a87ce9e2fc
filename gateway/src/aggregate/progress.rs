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

use smallvec::SmallVec;

/// A device of a unit: its number in the site, its offline threshold (s) and newest event time.
#[derive(Debug, Clone, Copy)]
struct Heard {
    device: u32,
    offline_s: u32,
    latest: i64,
}

/// The progress of one unit's devices.
#[derive(Debug, Clone)]
pub(super) struct Progress {
    /// Each device heard (most units have one: no allocation then).
    devices: SmallVec<[Heard; 1]>,
    /// The watermark, computed when a device moves.
    watermark: i64,
    /// The minute of the watermark when the unit's windows were last drained.
    drained_minute: i64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            devices: SmallVec::new(),
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
        self.devices
            .iter()
            .map(|d| d.latest)
            .max()
            .unwrap_or(i64::MIN)
    }

    /// Whether `device` has reported past `t` already: a reading at `t` comes out of order, and
    /// the windows it lands in, even open ones, took its device's later readings first.
    #[inline]
    pub(super) fn is_behind(&self, device: u32, t: i64) -> bool {
        self.devices
            .iter()
            .any(|d| d.device == device && t < d.latest)
    }

    /// Device number `device` (offline after `offline_ms` of silence) reported at `t`. Returns
    /// whether the watermark entered a minute not yet drained.
    #[inline]
    pub(super) fn advance(&mut self, device: u32, t: i64, offline_ms: i64) -> bool {
        match self.devices.iter_mut().find(|d| d.device == device) {
            Some(d) if d.latest >= t => return false,
            Some(d) => d.latest = t,
            None => self.devices.push(Heard {
                device,
                offline_s: u32::try_from(offline_ms / 1000).unwrap_or(u32::MAX),
                latest: t,
            }),
        }
        let newest = self.newest();
        let now_final = self
            .devices
            .iter()
            .map(|d| {
                let offline = i64::from(d.offline_s) * 1000;
                d.latest.max(newest.saturating_sub(offline))
            })
            .min()
            .unwrap_or(i64::MIN);
        // Never back: a device first heard behind the others (a backlog before its first live
        // report) must not reopen windows already emitted; its data is a correction.
        self.watermark = self.watermark.max(now_final);
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
        let (a, b) = (1, 2);
        let mut p = Progress::default();
        assert_eq!(p.watermark(), i64::MIN);
        p.advance(a, 10 * MIN, 5 * MIN);
        p.advance(b, 10 * MIN, 5 * MIN);
        p.advance(a, 13 * MIN, 5 * MIN);
        assert_eq!(p.watermark(), 10 * MIN, "b is live and behind");
        assert!(p.is_behind(b, 9 * MIN) && !p.is_behind(b, 11 * MIN));
        p.advance(a, 20 * MIN, 5 * MIN);
        assert_eq!(p.watermark(), 15 * MIN, "b went silent 5 minutes behind a");
        p.advance(b, 19 * MIN, 5 * MIN);
        assert_eq!(p.watermark(), 19 * MIN, "b is back");
        p.advance(3, 2 * MIN, 5 * MIN);
        assert_eq!(
            p.watermark(),
            19 * MIN,
            "a device first heard far behind reopens nothing"
        );
        assert!(p.is_behind(3, MIN));
        assert_eq!(p.newest(), 20 * MIN);
    }

    #[test]
    fn a_unit_drains_once_per_minute_of_its_watermark() {
        let a = 7;
        let mut p = Progress::default();
        assert!(p.advance(a, MIN + 1, MIN));
        p.drained();
        assert!(!p.advance(a, MIN + 30_000, MIN));
        assert!(p.advance(a, 2 * MIN, MIN));
    }
}
