//! Vehicle detection from a magnetometer under the lane, and the interval reports.
//!
//! The earth's field at the sensor is the *baseline*. A vehicle above it bends the field: the
//! distance of a sample from the baseline rises past `on` and falls back under `off`
//! (hysteresis), each for a few samples so noise does not count. While the lane is empty the
//! baseline follows slow drift (temperature, the sensor settling). A vehicle that stays longer
//! than `park_after_ms` is parked: the baseline takes its field, the presence ends, and when it
//! leaves and the field returns to the old baseline, that is not counted as a new vehicle.
//! Two sensors a known distance apart along the lane give the speed.

use wire::{LaneInterval, TrafficInterval};

/// Tuning of one detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// Deviation (LSB, 2 G range) at which a vehicle is present.
    pub on: f32,
    /// Deviation under which it has gone.
    pub off: f32,
    /// Samples past `on` before presence starts.
    pub on_samples: u8,
    /// Samples under `off` before presence ends.
    pub off_samples: u8,
    /// Weight of each empty-lane sample in the baseline (slow: follows drift, not cars).
    pub drift_weight: f32,
    /// A presence this long is a parked vehicle.
    pub park_after_ms: u64,
}

impl Default for Tuning {
    /// For a QMC5883L at 2 G and 200 Hz a passenger car gives a few hundred LSB.
    fn default() -> Self {
        Tuning {
            on: 120.0,
            off: 60.0,
            on_samples: 3,
            off_samples: 5,
            drift_weight: 0.002,
            park_after_ms: 120_000,
        }
    }
}

/// What one sample changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A vehicle arrived (counted).
    Arrived,
    /// It left.
    Left,
    /// It has been there too long: parked, absorbed into the baseline.
    Parked,
}

/// One magnetometer's detector.
#[derive(Debug, Clone)]
pub struct Detector {
    tuning: Tuning,
    baseline: Option<[f32; 3]>,
    /// The baseline before a parked vehicle was absorbed: its return is not a vehicle.
    before_parked: Option<[f32; 3]>,
    present_since: Option<u64>,
    streak: u8,
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    let (x, y, z) = (a[0] - b[0], a[1] - b[1], a[2] - b[2]);
    libm_sqrt(x * x + y * y + z * z)
}

/// Square root without std (Newton's method; the FPU has no sqrt in core).
fn libm_sqrt(v: f32) -> f32 {
    if v <= 0.0 {
        return 0.0;
    }
    let mut x = if v > 1.0 { v / 2.0 } else { 1.0 };
    for _ in 0..20 {
        x = 0.5 * (x + v / x);
    }
    x
}

impl Detector {
    /// A detector that learns its baseline from the first sample.
    pub const fn new(tuning: Tuning) -> Self {
        Detector {
            tuning,
            baseline: None,
            before_parked: None,
            present_since: None,
            streak: 0,
        }
    }

    /// Whether a vehicle is over the sensor.
    pub fn present(&self) -> bool {
        self.present_since.is_some()
    }

    /// The baseline (for status and tests).
    pub fn baseline(&self) -> Option<[f32; 3]> {
        self.baseline
    }

    /// Feeds one sample taken at `now_ms`.
    pub fn sample(&mut self, field: [i16; 3], now_ms: u64) -> Option<Change> {
        let f = [
            f32::from(field[0]),
            f32::from(field[1]),
            f32::from(field[2]),
        ];
        let Some(base) = self.baseline else {
            self.baseline = Some(f);
            return None;
        };
        let d = distance(f, base);
        let t = self.tuning;
        match self.present_since {
            None => {
                // A parked vehicle that left: the field is back at the old baseline.
                if let Some(old) = self.before_parked
                    && distance(f, old) < t.off
                {
                    self.baseline = Some(old);
                    self.before_parked = None;
                    self.streak = 0;
                    return None;
                }
                if d > t.on {
                    self.streak += 1;
                    if self.streak >= t.on_samples {
                        self.streak = 0;
                        self.present_since = Some(now_ms);
                        return Some(Change::Arrived);
                    }
                } else {
                    self.streak = 0;
                    if d < t.off {
                        // Empty lane: follow slow drift.
                        let w = t.drift_weight;
                        self.baseline =
                            Some(core::array::from_fn(|i| base[i] + w * (f[i] - base[i])));
                    }
                }
                None
            }
            Some(since) => {
                if d < t.off {
                    self.streak += 1;
                    if self.streak >= t.off_samples {
                        self.streak = 0;
                        self.present_since = None;
                        return Some(Change::Left);
                    }
                } else {
                    self.streak = 0;
                }
                if now_ms.saturating_sub(since) >= t.park_after_ms {
                    self.before_parked = Some(base);
                    self.baseline = Some(f);
                    self.present_since = None;
                    self.streak = 0;
                    return Some(Change::Parked);
                }
                None
            }
        }
    }
}

/// One lane over one report interval: counts, occupancy time, speeds.
#[derive(Debug, Clone, Default)]
pub struct LaneCounter {
    vehicles: u16,
    occupied_ms: u64,
    present_since: Option<u64>,
    /// Arrival at the first sensor, for the speed at the second.
    first_arrival: Option<u64>,
    speed_sum_dkmh: u32,
    speed_n: u16,
}

impl LaneCounter {
    /// Records what the first (upstream) sensor saw.
    pub fn first_sensor(&mut self, change: Change, now_ms: u64) {
        match change {
            Change::Arrived => {
                self.vehicles = self.vehicles.saturating_add(1);
                self.present_since = Some(now_ms);
                self.first_arrival = Some(now_ms);
            }
            Change::Left | Change::Parked => {
                if let Some(s) = self.present_since.take() {
                    self.occupied_ms += now_ms.saturating_sub(s);
                }
            }
        }
    }

    /// Records the second (downstream) sensor's arrival `spacing_mm` further on: a speed.
    pub fn second_sensor(&mut self, change: Change, now_ms: u64, spacing_mm: u32) {
        if change != Change::Arrived || spacing_mm == 0 {
            return;
        }
        let Some(t0) = self.first_arrival.take() else {
            return;
        };
        let dt = now_ms.saturating_sub(t0);
        if dt == 0 || dt > 2_000 {
            return; // not the same vehicle
        }
        // mm/ms = m/s; × 36 gives decimetres-per-hour-ish: km/h × 10 = mm/ms × 36.
        let dkmh = (u64::from(spacing_mm) * 36 / dt).min(u64::from(u16::MAX)) as u32;
        self.speed_sum_dkmh += dkmh;
        self.speed_n += 1;
    }

    /// The interval's figures, and a fresh counter (a vehicle still present carries over).
    pub fn close(&mut self, lane: u8, interval_ms: u64, now_ms: u64) -> LaneInterval {
        let mut occupied = self.occupied_ms;
        if let Some(s) = self.present_since {
            occupied += now_ms.saturating_sub(s);
            self.present_since = Some(now_ms);
        }
        let out = LaneInterval {
            lane,
            vehicles: self.vehicles,
            occupancy_permille: (occupied * 1000 / interval_ms.max(1)).min(1000) as u16,
            mean_speed_dkmh: (self.speed_n > 0)
                .then(|| (self.speed_sum_dkmh / u32::from(self.speed_n)) as u16),
        };
        self.vehicles = 0;
        self.occupied_ms = 0;
        self.speed_sum_dkmh = 0;
        self.speed_n = 0;
        out
    }
}

/// Builds the interval report of several lanes.
pub fn interval_report(interval_s: u16, lanes: &[LaneInterval]) -> TrafficInterval {
    let mut out = heapless::Vec::new();
    for l in lanes.iter().take(wire::body::MAX_LANES) {
        let _ = out.push(*l);
    }
    TrafficInterval {
        interval_s,
        lanes: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EARTH: [i16; 3] = [1200, -300, 4100];

    fn with(d: [i16; 3]) -> [i16; 3] {
        [EARTH[0] + d[0], EARTH[1] + d[1], EARTH[2] + d[2]]
    }

    /// Samples every 5 ms (200 Hz) from `from` to `to`, field from `f(t)`.
    fn run(
        det: &mut Detector,
        from: u64,
        to: u64,
        f: impl Fn(u64) -> [i16; 3],
    ) -> std::vec::Vec<(u64, Change)> {
        (from..to)
            .step_by(5)
            .filter_map(|t| det.sample(f(t), t).map(|c| (t, c)))
            .collect()
    }

    #[test]
    fn a_passing_car_is_counted_once() {
        let mut det = Detector::new(Tuning::default());
        // Empty lane, then a car over the sensor for 300 ms (a few noisy samples at the edges).
        let got = run(&mut det, 0, 2_000, |t| match t {
            1_000..1_300 => with([250, 90, -400]),
            995 | 1_305 => with([130, 0, 0]),
            _ => with([(t % 7) as i16 - 3, 0, 0]),
        });
        assert_eq!(
            got.iter().map(|(_, c)| *c).collect::<std::vec::Vec<_>>(),
            std::vec![Change::Arrived, Change::Left]
        );
        assert!((1_000..1_020).contains(&got[0].0), "{got:?}");
    }

    #[test]
    fn a_parked_car_counts_once_and_its_departure_is_not_a_car() {
        let mut det = Detector::new(Tuning::default());
        let parked = with([300, 120, -500]);
        let got = run(&mut det, 0, 400_000, |t| {
            if (1_000..300_000).contains(&t) {
                parked
            } else {
                EARTH
            }
        });
        let changes: std::vec::Vec<Change> = got.iter().map(|(_, c)| *c).collect();
        assert_eq!(changes, std::vec![Change::Arrived, Change::Parked]);
        // The lane is free again and a car passing later is counted.
        let later = run(&mut det, 400_000, 402_000, |t| {
            if (401_000..401_200).contains(&t) {
                with([250, 0, -300])
            } else {
                EARTH
            }
        });
        assert_eq!(later.len(), 2, "{later:?}");
    }

    #[test]
    fn slow_drift_is_followed_without_counting() {
        let mut det = Detector::new(Tuning::default());
        // 400 LSB of drift over ten minutes: more than `on`, but slow.
        let got = run(&mut det, 0, 600_000, |t| {
            with([(t * 400 / 600_000) as i16, 0, 0])
        });
        assert!(got.is_empty(), "{got:?}");
        let b = det.baseline().unwrap();
        assert!(
            (b[0] - 1600.0).abs() < 60.0,
            "baseline followed the drift: {b:?}"
        );
    }

    #[test]
    fn two_sensors_give_speed_and_the_interval_gives_occupancy() {
        let mut lane = LaneCounter::default();
        // 4 m apart; the car reaches the second sensor 240 ms later: 16.7 m/s = 60 km/h.
        lane.first_sensor(Change::Arrived, 10_000);
        lane.second_sensor(Change::Arrived, 10_240, 4_000);
        lane.first_sensor(Change::Left, 10_300);
        lane.first_sensor(Change::Arrived, 20_000);
        let li = lane.close(2, 30_000, 30_000);
        assert_eq!(li.vehicles, 2);
        assert_eq!(li.mean_speed_dkmh, Some(600));
        // 300 ms + 10,000 ms (still present at the close) of 30 s.
        assert_eq!(li.occupancy_permille, 343);
        let next = lane.close(2, 30_000, 60_000);
        assert_eq!(
            (next.vehicles, next.occupancy_permille),
            (0, 1000),
            "parked across"
        );
    }
}
