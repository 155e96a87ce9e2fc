//! The city's demand and physics: visitors arriving by time of day, traffic by rush hour, and the
//! values a pipe's sensors see under the scenario's events (DOMAIN.md §7). Pure functions of
//! time and a seeded generator.

use std::collections::VecDeque;

use rand::Rng;
use rand::rngs::StdRng;
use wire::Quantity;

use crate::scenario::{EventKind, Scenario, minutes};

#[derive(Debug)]
pub(super) struct Area {
    pub(super) peak_per_min: f64,
    pub(super) factor: f64,
    pub(super) dwell_ms: f64,
    /// When each visitor inside leaves.
    pub(super) leaving: VecDeque<i64>,
}

pub(super) fn poisson(rng: &mut StdRng, lambda: f64) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 30.0 {
        let n = lambda + lambda.sqrt() * rng.random_range(-1.0..1.0) * 1.7;
        return n.max(0.0).round() as u32;
    }
    let (l, mut k, mut p) = ((-lambda).exp(), 0u32, 1.0f64);
    loop {
        p *= rng.random::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

/// Daytime arrivals: peaks at 10–11 h and 14:30–16 h (DOMAIN.md §7), quiet at night.
pub(super) fn arrival_curve(minute_of_day: f64) -> f64 {
    let bump = |centre: f64, width: f64| (-((minute_of_day - centre) / width).powi(2)).exp();
    (0.15 + bump(630.0, 75.0) + 0.9 * bump(915.0, 70.0)).min(1.0) * day_light(minute_of_day)
}

/// Traffic: morning and evening rush.
pub(super) fn traffic_curve(minute_of_day: f64) -> f64 {
    let bump = |centre: f64, width: f64| (-((minute_of_day - centre) / width).powi(2)).exp();
    (0.25 + bump(480.0, 60.0) + bump(1080.0, 70.0)).min(1.0)
}

pub(super) fn day_light(minute_of_day: f64) -> f64 {
    if (360.0..1380.0).contains(&minute_of_day) {
        1.0
    } else {
        0.1
    }
}

/// Local minute of day at `t` (Unix ms) for a site `utc_offset_ms` ahead of UTC.
pub(super) fn minute_of_day(t: i64, utc_offset_ms: i64) -> f64 {
    ((t + utc_offset_ms).rem_euclid(86_400_000)) as f64 / 60_000.0
}

/// Whether an event of `kind` on `subject` is on at local minute `m`: its value (1 when the
/// scenario gives none) and the minutes since it began.
pub(super) fn event_on(
    scenario: &Scenario,
    kind: EventKind,
    subject: &str,
    m: f64,
) -> Option<(f64, f64)> {
    scenario.events.iter().find_map(|e| {
        if e.kind != kind || e.subject != subject {
            return None;
        }
        let since = minutes_into(&e.at, e.until.as_deref(), f64::MAX, m)?;
        Some((e.value.unwrap_or(1.0), since))
    })
}

/// Minutes since `at` when local minute `m` lies in `[at, until)`; without `until`, the window
/// lasts `default_minutes`.
pub(super) fn minutes_into(
    at: &str,
    until: Option<&str>,
    default_minutes: f64,
    m: f64,
) -> Option<f64> {
    let from = f64::from(minutes(at).ok()?);
    let until = until
        .and_then(|u| minutes(u).ok())
        .map_or(from + default_minutes, f64::from);
    (m >= from && m < until).then_some(m - from)
}

/// What a pipe asset's sensors are under at one moment: night or day, and the events on it
/// (their value and the minutes since they began).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PipeConditions {
    pub(super) night: bool,
    pub(super) burst: Option<(f64, f64)>,
    pub(super) leak: Option<(f64, f64)>,
    pub(super) cover: Option<(f64, f64)>,
    pub(super) storm: Option<(f64, f64)>,
}

impl PipeConditions {
    /// The value of `q` (DOMAIN.md §7.3 plus the events), with sensor noise from `rng`.
    pub(super) fn value(&self, q: Quantity, rng: &mut StdRng) -> f32 {
        let v = match q {
            Quantity::Pressure => {
                let base = if self.night { 0.34 } else { 0.30 } + rng.random_range(-0.01..0.01);
                // A burst takes 0.12 MPa within 90 s.
                base - self
                    .burst
                    .map_or(0.0, |(_, mins)| 0.12 * (mins / 1.5).min(1.0))
            }
            Quantity::Flow => {
                rng.random_range(180.0..220.0)
                    * self
                        .burst
                        .map_or(1.0, |(_, mins)| 1.0 + 0.8 * (mins / 1.5).min(1.0))
            }
            Quantity::Gas => {
                rng.random_range(0.0..2.0) + self.leak.map_or(0.0, |(_, mins)| 3.0 * mins)
            }
            Quantity::Oxygen => rng.random_range(20.7..20.95),
            Quantity::HydrogenSulfide => rng.random_range(0.0..1.0),
            Quantity::Tilt => self
                .cover
                .map_or(rng.random_range(0.0..1.0), |(deg, _)| deg),
            Quantity::WellLevel => {
                rng.random_range(1.8..2.0) - self.storm.map_or(0.0, |(_, mins)| 0.035 * mins)
            }
            Quantity::RoadWater => self.storm.map_or(0.0, |(_, mins)| 0.4 * mins),
        };
        v.clamp(0.0, 1000.0) as f32
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn poisson_draws_average_their_rate_small_and_large() {
        let mut rng = StdRng::seed_from_u64(1);
        for lambda in [0.5, 4.0, 60.0] {
            let n = 4000;
            let sum: u64 = (0..n).map(|_| u64::from(poisson(&mut rng, lambda))).sum();
            let mean = sum as f64 / f64::from(n);
            assert!(
                (mean - lambda).abs() < lambda * 0.1 + 0.05,
                "λ {lambda}: mean {mean}"
            );
        }
        assert_eq!(poisson(&mut rng, 0.0), 0);
    }

    #[test]
    fn arrivals_peak_in_the_late_morning_and_traffic_at_rush_hour() {
        let at = |h: f64| arrival_curve(h * 60.0);
        assert!(at(10.5) > 0.9, "{}", at(10.5));
        assert!(at(15.25) > at(12.75), "the afternoon peak");
        assert!(at(3.0) < 0.05, "night: {}", at(3.0));
        let rush = |h: f64| traffic_curve(h * 60.0);
        assert!(rush(8.0) > 2.0 * rush(13.0) - 0.3 && rush(8.0) > rush(3.0));
        assert!(rush(18.0) > rush(13.0));
    }

    #[test]
    fn the_minute_of_day_is_local_time() {
        // 2026-10-02 00:30 UTC is 08:30 in Ganzhou (+08:00).
        let t = 1_790_901_000_000;
        assert_eq!(minute_of_day(t, 8 * 3_600_000), 8.0 * 60.0 + 30.0);
        assert_eq!(minute_of_day(t, 0), 30.0);
        assert_eq!(minute_of_day(t, -3_600_000), 23.0 * 60.0 + 30.0);
    }

    #[test]
    fn an_event_is_on_from_its_start_until_its_end_with_its_value() {
        let scenario: Scenario = toml::from_str(
            r#"
            name = "t"
            [time]
            start = "08:00"
            end = "12:00"
            acceleration = 60
            [[event]]
            kind = "burst"
            subject = "P1"
            at = "09:00"
            until = "09:30"
            value = 2.0
            "#,
        )
        .unwrap();
        let on = |m: f64| event_on(&scenario, EventKind::Burst, "P1", m);
        assert_eq!(on(539.0), None);
        assert_eq!(on(545.0), Some((2.0, 5.0)));
        assert_eq!(on(570.0), None, "until is exclusive");
        assert_eq!(event_on(&scenario, EventKind::Burst, "P2", 545.0), None);
        assert_eq!(event_on(&scenario, EventKind::GasLeak, "P1", 545.0), None);
    }

    #[test]
    fn a_burst_takes_pressure_down_and_flow_up_within_ninety_seconds() {
        let mut rng = StdRng::seed_from_u64(3);
        let calm = PipeConditions::default();
        let burst = PipeConditions {
            burst: Some((1.0, 1.5)),
            ..calm
        };
        let p0 = calm.value(Quantity::Pressure, &mut rng);
        let p1 = burst.value(Quantity::Pressure, &mut rng);
        assert!((0.29..=0.31).contains(&p0), "{p0}");
        assert!((p0 - p1 - 0.12).abs() < 0.025, "{p0} → {p1}");
        assert!(burst.value(Quantity::Flow, &mut rng) > calm.value(Quantity::Flow, &mut rng));
        let night = PipeConditions {
            night: true,
            ..calm
        };
        assert!(
            night.value(Quantity::Pressure, &mut rng) > 0.32,
            "night pressure is higher"
        );
    }
}
