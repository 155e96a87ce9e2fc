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
//!
//! The watermark is kept without scanning the unit: its devices are found by number (binary
//! search), and a unit of more than [`SCAN`] devices also keeps them ordered by event time per
//! offline threshold, since for one threshold `o` the oldest `max(latest, newest − o)` is
//! `max(oldest latest, newest − o)`. A reading costs O(log n) in a unit of n devices (a water
//! main with a hundred loggers, an area with its gates), not three passes over all of them.

use std::collections::BTreeSet;

use smallvec::SmallVec;

/// Units of up to this many devices are scanned: below about 32 devices a scan of a few cache
/// lines costs less than keeping them in order.
const SCAN: usize = 32;

/// A device of a unit: its number in the site, its offline threshold (s) and newest event time.
#[derive(Debug, Clone, Copy)]
struct Heard {
    device: u32,
    offline_s: u32,
    latest: i64,
}

impl Heard {
    /// Up to where the device holds the unit's windows open, when the unit's newest device is at
    /// `newest`: its own progress, or, once it is silent past its threshold, nothing older than
    /// the threshold.
    fn final_at(&self, newest: i64) -> i64 {
        self.latest
            .max(newest.saturating_sub(i64::from(self.offline_s) * 1000))
    }
}

/// Devices of one offline threshold as `(latest, device)`, oldest first.
type ByTime = BTreeSet<(i64, u32)>;

/// The devices of a large unit ordered by event time, a set per offline threshold (s).
#[derive(Debug, Clone, Default)]
struct Ordered {
    by_threshold: SmallVec<[(u32, ByTime); 1]>,
}

impl Ordered {
    fn of(devices: &[Heard]) -> Ordered {
        let mut o = Ordered::default();
        for d in devices {
            o.insert(d);
        }
        o
    }

    fn set(&mut self, offline_s: u32) -> &mut ByTime {
        let i = match self.by_threshold.iter().position(|(s, _)| *s == offline_s) {
            Some(i) => i,
            None => {
                self.by_threshold.push((offline_s, BTreeSet::new()));
                self.by_threshold.len() - 1
            }
        };
        &mut self.by_threshold[i].1
    }

    fn insert(&mut self, d: &Heard) {
        self.set(d.offline_s).insert((d.latest, d.device));
    }

    fn moved(&mut self, d: &Heard, from: i64) {
        let set = self.set(d.offline_s);
        set.remove(&(from, d.device));
        set.insert((d.latest, d.device));
    }

    /// The oldest [`Heard::final_at`] of the unit.
    fn final_at(&self, newest: i64) -> i64 {
        self.by_threshold
            .iter()
            .filter_map(|(offline_s, set)| {
                set.first().map(|&(latest, device)| {
                    Heard {
                        device,
                        offline_s: *offline_s,
                        latest,
                    }
                    .final_at(newest)
                })
            })
            .min()
            .unwrap_or(i64::MIN)
    }
}

/// The progress of one unit's devices.
#[derive(Debug, Clone)]
pub(super) struct Progress {
    /// Each device heard, by device number (most units have one: no allocation then).
    devices: SmallVec<[Heard; 1]>,
    /// The same devices in event-time order, once there are more than [`SCAN`].
    ordered: Option<Box<Ordered>>,
    /// The newest event time of any of them.
    newest: i64,
    /// The watermark, computed when a device moves.
    watermark: i64,
    /// The minute of the watermark when the unit's windows were last drained.
    drained_minute: i64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            devices: SmallVec::new(),
            ordered: None,
            newest: i64::MIN,
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

    /// The newest event time any of the unit's devices reported.
    #[inline]
    pub(super) fn newest(&self) -> i64 {
        self.newest
    }

    fn find(&self, device: u32) -> Result<usize, usize> {
        self.devices.binary_search_by_key(&device, |d| d.device)
    }

    /// Whether `device` has reported past `t` already: a reading at `t` comes out of order, and
    /// the windows it lands in, even open ones, took its device's later readings first.
    #[inline]
    pub(super) fn is_behind(&self, device: u32, t: i64) -> bool {
        self.find(device).is_ok_and(|i| t < self.devices[i].latest)
    }

    /// Device number `device` (offline after `offline_ms` of silence) reported at `t`. Returns
    /// whether the watermark entered a minute not yet drained.
    #[inline]
    pub(super) fn advance(&mut self, device: u32, t: i64, offline_ms: i64) -> bool {
        match self.find(device) {
            Ok(i) => {
                let d = &mut self.devices[i];
                if d.latest >= t {
                    return false;
                }
                let from = std::mem::replace(&mut d.latest, t);
                if let Some(o) = &mut self.ordered {
                    o.moved(d, from);
                }
            }
            Err(i) => {
                let d = Heard {
                    device,
                    offline_s: u32::try_from(offline_ms / 1000).unwrap_or(u32::MAX),
                    latest: t,
                };
                self.devices.insert(i, d);
                match &mut self.ordered {
                    Some(o) => o.insert(&d),
                    None if self.devices.len() > SCAN => {
                        self.ordered = Some(Box::new(Ordered::of(&self.devices)));
                    }
                    None => {}
                }
            }
        }
        self.newest = self.newest.max(t);
        let now_final = match &self.ordered {
            Some(o) => o.final_at(self.newest),
            None => self
                .devices
                .iter()
                .map(|d| d.final_at(self.newest))
                .min()
                .unwrap_or(i64::MIN),
        };
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
    use proptest::prelude::Just;

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
        assert_eq!(p.newest, 20 * MIN);
    }

    /// The watermark as the first release computed it: every device scanned on every reading.
    #[derive(Default)]
    struct Scanned {
        devices: Vec<Heard>,
        watermark: i64,
    }

    impl Scanned {
        fn advance(&mut self, device: u32, t: i64, offline_ms: i64) {
            match self.devices.iter_mut().find(|d| d.device == device) {
                Some(d) if d.latest >= t => return,
                Some(d) => d.latest = t,
                None => self.devices.push(Heard {
                    device,
                    offline_s: u32::try_from(offline_ms / 1000).unwrap_or(u32::MAX),
                    latest: t,
                }),
            }
            let newest = self
                .devices
                .iter()
                .map(|d| d.latest)
                .max()
                .unwrap_or(i64::MIN);
            let now_final = self
                .devices
                .iter()
                .map(|d| d.final_at(newest))
                .min()
                .unwrap_or(i64::MIN);
            self.watermark = self.watermark.max(now_final);
        }

        fn is_behind(&self, device: u32, t: i64) -> bool {
            self.devices
                .iter()
                .any(|d| d.device == device && t < d.latest)
        }
    }

    proptest::proptest! {
        /// Units of 1 to 99 devices with mixed offline thresholds, readings in any order
        /// (late, repeated, a device first heard far behind): the kept order gives the
        /// watermark, the newest time and the out-of-order verdicts of a full scan.
        #[test]
        fn the_watermark_kept_in_order_is_the_one_a_scan_finds(
            readings in proptest::collection::vec(
                (0u32..100, 0i64..(30 * MIN), proptest::prop_oneof![Just(MIN), Just(5 * MIN), Just(90_500)]),
                1..600,
            ),
            devices in 1u32..100,
        ) {
            let mut kept = Progress::default();
            let mut scanned = Scanned { watermark: i64::MIN, ..Scanned::default() };
            for (device, t, offline) in readings {
                let device = device % devices * 7919; // spread, not in arrival order
                proptest::prop_assert_eq!(kept.is_behind(device, t), scanned.is_behind(device, t));
                kept.advance(device, t, offline);
                scanned.advance(device, t, offline);
                proptest::prop_assert_eq!(kept.watermark(), scanned.watermark);
                proptest::prop_assert_eq!(
                    kept.newest,
                    scanned.devices.iter().map(|d| d.latest).max().unwrap_or(i64::MIN)
                );
            }
        }
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
