//! Alert episodes: the state machine that turns a series of values for one (rule, subject) into
//! exactly one alert per episode, with escalation and one resolution.
//!
//! An episode starts when the value has stayed past a grade's *set* threshold for the rule's
//! minimum duration (`hold_ms`); it escalates when a higher grade holds for that duration; it
//! resolves when the value has stayed on the good side of the lowest grade's *clear* threshold
//! (set threshold minus the hysteresis margin) for `clear_hold_ms` (DOMAIN.md §6.1: 5 points
//! lower for 10 minutes). Values that cross back and forth inside
//! the hysteresis band, or for less than the minimum duration, change nothing: a flapping value
//! or two triggering readings 1 ms apart give one alert. Grades only rise within an episode (the
//! operator's alert shows the worst grade reached) until it resolves. A re-notification is due
//! every `renotify_ms` while the episode lasts.
//!
//! Holds are timed, not sampled (Prometheus `for:`): a value is current until a newer one
//! replaces it or it goes stale, so a hold completes at `since + hold` without another value
//! ([`Episode::tick`]), as long as the latest value was still current then. A device that reports
//! once when a cover is lifted raises after the hold, not at its next report an hour later; a
//! stale value neither raises nor resolves.
//!
//! Plain state, no clock: time comes with each value and each tick (STYLE.md §6). The state is
//! small and serialisable, so it is persisted with the store and a restart neither re-fires nor
//! forgets.

use serde::{Deserialize, Serialize};

/// Which side of the thresholds is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// High values are bad (occupancy, gas, tilt).
    Above,
    /// Low values are bad (pressure, oxygen).
    Below,
}

/// A rule's thresholds for one subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Which side is bad.
    pub side: Side,
    /// Set thresholds of grades 1, 2, … in order of severity.
    pub grades: Vec<f64>,
    /// Hysteresis: a grade clears this far back past its set threshold.
    pub clear_margin: f64,
    /// How long a grade must hold before it is raised, ms.
    pub hold_ms: i64,
    /// How long the value must stay cleared before the episode resolves, ms.
    pub clear_hold_ms: i64,
    /// Re-notify an open episode this often, ms (0: never).
    pub renotify_ms: i64,
}

impl Thresholds {
    fn past(&self, value: f64, threshold: f64) -> bool {
        match self.side {
            Side::Above => value >= threshold,
            Side::Below => value <= threshold,
        }
    }

    /// The grade whose set threshold `value` reaches (0: none).
    fn grade_of(&self, value: f64) -> u8 {
        self.grades
            .iter()
            .take_while(|t| self.past(value, **t))
            .count() as u8
    }

    /// Whether `value` is back past the clear threshold of grade 1.
    fn cleared(&self, value: f64) -> bool {
        let Some(first) = self.grades.first() else {
            return true;
        };
        match self.side {
            Side::Above => value < first - self.clear_margin,
            Side::Below => value > first + self.clear_margin,
        }
    }
}

/// What an operator is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transition {
    /// A new episode at this grade.
    Raised {
        /// Grade reached.
        grade: u8,
    },
    /// The episode reached a higher grade.
    Escalated {
        /// Grade before.
        from: u8,
        /// Grade now.
        to: u8,
    },
    /// Still open: a reminder.
    Renotified {
        /// Current grade.
        grade: u8,
    },
    /// The episode is over.
    Resolved {
        /// The highest grade it reached.
        grade: u8,
    },
}

/// The state of one (rule, subject).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// Grade of the open episode (0: none).
    pub grade: u8,
    /// Since when the value has been above the current grade, and the lowest grade it held
    /// meanwhile (what may be raised once `hold_ms` passed).
    rising: Option<(i64, u8)>,
    /// Since when the value has been cleared (while open).
    clearing: Option<i64>,
    /// When the episode was last notified, ms.
    last_notified: Option<i64>,
    /// Latest time seen: older values are ignored.
    last_time: Option<i64>,
    /// How often the value came back past the clear threshold during the open episode without
    /// staying there: a flapping value.
    #[serde(default)]
    pub crossings: u32,
    /// The latest value and its time while rising or clearing: what a hold completes on
    /// without another value ([`Episode::tick`]).
    #[serde(default)]
    latest: Option<(i64, f64)>,
}

impl Episode {
    /// Whether an episode is open.
    pub fn is_open(&self) -> bool {
        self.grade > 0
    }

    /// Whether a hold is under way that [`Episode::tick`] may complete.
    pub fn pending(&self) -> bool {
        self.latest.is_some() && (self.rising.is_some() || self.clearing.is_some())
    }

    /// The latest value while a hold is under way.
    pub fn latest_value(&self) -> Option<f64> {
        self.latest.map(|(_, v)| v)
    }

    /// The event time of the latest value it observed.
    pub fn last_time(&self) -> Option<i64> {
        self.last_time
    }

    /// The time of the latest value while a hold is under way.
    pub fn latest_time(&self) -> Option<i64> {
        self.latest.map(|(t, _)| t)
    }

    /// Raises or escalates to the grade held throughout the rise, at `at_ms`.
    fn rise(&mut self, at_ms: i64) -> Transition {
        let (from, to) = (self.grade, self.rising.map_or(self.grade, |(_, held)| held));
        self.grade = to;
        self.rising = None;
        self.latest = None;
        self.last_notified = Some(at_ms);
        if from == 0 {
            Transition::Raised { grade: to }
        } else {
            Transition::Escalated { from, to }
        }
    }

    /// Ends the episode.
    fn resolve(&mut self) -> Transition {
        let grade = self.grade;
        *self = Episode {
            last_time: self.last_time,
            ..Episode::default()
        };
        Transition::Resolved { grade }
    }

    /// Completes a hold under way once `now_ms` has passed its end, without another value: the
    /// latest value counts until it is `stale_ms` old. Returns the transition and when the hold
    /// completed (event time: the same whenever the tick comes), or nothing when no hold is due,
    /// or the value went stale before its hold ended (a stale value neither raises nor resolves).
    pub fn tick(
        &mut self,
        t: &Thresholds,
        now_ms: i64,
        stale_ms: i64,
    ) -> Option<(Transition, i64)> {
        let (latest_ms, _) = self.latest?;
        let current_until = latest_ms.saturating_add(stale_ms);
        if let Some((since, _)) = self.rising {
            let due = since.saturating_add(t.hold_ms);
            return (now_ms >= due && due <= current_until).then(|| (self.rise(due), due));
        }
        if let Some(since) = self.clearing
            && self.is_open()
        {
            let due = since.saturating_add(t.clear_hold_ms);
            return (now_ms >= due && due <= current_until).then(|| (self.resolve(), due));
        }
        None
    }

    /// Nothing under way: no episode, nothing rising, clearing or counted (the time of the
    /// latest value aside).
    pub fn at_rest(&self) -> bool {
        self.essence() == Episode::default()
    }

    /// The part of the state worth persisting: everything but the time of the latest value, so
    /// an unchanged episode is not rewritten for every value.
    pub fn essence(&self) -> Episode {
        Episode {
            last_time: None,
            ..self.clone()
        }
    }

    /// Feeds one value at `time_ms`; returns what to tell operators, if anything.
    pub fn observe(&mut self, t: &Thresholds, time_ms: i64, value: f64) -> Option<Transition> {
        if !value.is_finite() || self.last_time.is_some_and(|last| time_ms < last) {
            return None;
        }
        self.last_time = Some(time_ms);
        let reached = t.grade_of(value);

        // Clearing: only while open, and only once it held long enough.
        if self.is_open() && t.cleared(value) {
            self.rising = None;
            if self.clearing.is_none() {
                self.crossings += 1;
            }
            let since = *self.clearing.get_or_insert(time_ms);
            if time_ms - since >= t.clear_hold_ms {
                return Some(self.resolve());
            }
            self.latest = Some((time_ms, value));
            return None;
        }
        self.clearing = None;
        self.latest = None;

        // Rising: above the current grade for long enough raises or escalates to the lowest
        // grade held throughout.
        if reached > self.grade {
            let (since, held) = self.rising.get_or_insert((time_ms, reached));
            *held = (*held).min(reached);
            if time_ms - *since >= t.hold_ms {
                return Some(self.rise(time_ms));
            }
            self.latest = Some((time_ms, value));
            return None;
        }
        self.rising = None;

        // Open and holding: a reminder when due.
        if self.is_open()
            && t.renotify_ms > 0
            && self
                .last_notified
                .is_some_and(|n| time_ms - n >= t.renotify_ms)
        {
            self.last_notified = Some(time_ms);
            return Some(Transition::Renotified { grade: self.grade });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LB/T 034-2014 crowd grades on occupancy ratio: 蓝 60 %, 黄 80 %, 橙 90 %, 红 100 %.
    fn crowd() -> Thresholds {
        Thresholds {
            side: Side::Above,
            grades: vec![0.6, 0.8, 0.9, 1.0],
            clear_margin: 0.05,
            hold_ms: 0,
            clear_hold_ms: 600_000,
            renotify_ms: 0,
        }
    }

    fn run(t: &Thresholds, series: &[(i64, f64)]) -> Vec<(i64, Transition)> {
        let mut e = Episode::default();
        series
            .iter()
            .filter_map(|&(time, v)| e.observe(t, time, v).map(|x| (time, x)))
            .collect()
    }

    #[test]
    fn a_golden_week_surge_raises_blue_yellow_orange_once_each_then_resolves() {
        // Occupancy climbs 50 % → 95 % over two hours, then falls back, one value a minute.
        let mut series = Vec::new();
        for m in 0..120 {
            series.push((m * 60_000, 0.50 + 0.45 * (m as f64 / 119.0)));
        }
        for m in 0..120 {
            series.push(((120 + m) * 60_000, 0.95 - 0.50 * (m as f64 / 119.0)));
        }
        let got: Vec<Transition> = run(&crowd(), &series).into_iter().map(|(_, x)| x).collect();
        assert_eq!(
            got,
            vec![
                Transition::Raised { grade: 1 },
                Transition::Escalated { from: 1, to: 2 },
                Transition::Escalated { from: 2, to: 3 },
                Transition::Resolved { grade: 3 },
            ]
        );
    }

    #[test]
    fn a_value_flapping_around_a_threshold_gives_one_alert() {
        let t = crowd();
        // Across the set threshold and even past the clear threshold, but never cleared for the
        // ten minutes the rule asks.
        let series: Vec<(i64, f64)> = (0..200)
            .map(|i| (i * 30_000, if i % 2 == 0 { 0.61 } else { 0.54 }))
            .collect();
        let got = run(&t, &series);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].1, Transition::Raised { grade: 1 });
        let mut e = Episode::default();
        for &(time, v) in &series {
            e.observe(&t, time, v);
        }
        assert_eq!(
            e.crossings, 100,
            "every dip past the clear threshold is counted"
        );
    }

    #[test]
    fn two_triggering_readings_one_millisecond_apart_give_one_alert() {
        let t = crowd();
        let got = run(&t, &[(1000, 0.85), (1001, 0.85), (1002, 0.86)]);
        assert_eq!(got, vec![(1000, Transition::Raised { grade: 2 })]);
    }

    #[test]
    fn a_transient_shorter_than_the_hold_changes_nothing() {
        // A car driving over a manhole cover: 40° for 1 s; the rule needs 30 s.
        let tilt = Thresholds {
            side: Side::Above,
            grades: vec![5.0, 10.0, 30.0],
            clear_margin: 1.0,
            hold_ms: 30_000,
            clear_hold_ms: 30_000,
            renotify_ms: 0,
        };
        assert!(run(&tilt, &[(0, 0.5), (1000, 40.0), (2000, 0.5), (40_000, 0.5)]).is_empty());
        let lifted = run(
            &tilt,
            &[(0, 0.5), (1000, 40.0), (31_000, 40.0), (61_000, 40.0)],
        );
        assert_eq!(lifted, vec![(31_000, Transition::Raised { grade: 3 })]);
    }

    #[test]
    fn low_pressure_is_the_below_side_and_renotifies() {
        let t = Thresholds {
            side: Side::Below,
            grades: vec![0.14],
            clear_margin: 0.02,
            hold_ms: 300_000,
            clear_hold_ms: 300_000,
            renotify_ms: 3_600_000,
        };
        let mut series: Vec<(i64, f64)> = (0..150).map(|m| (m * 60_000, 0.10)).collect();
        series.extend((150..160).map(|m| (m * 60_000, 0.15))); // inside the band: still open
        series.extend((160..170).map(|m| (m * 60_000, 0.30)));
        let got: Vec<Transition> = run(&t, &series).into_iter().map(|(_, x)| x).collect();
        assert_eq!(
            got,
            vec![
                Transition::Raised { grade: 1 },
                Transition::Renotified { grade: 1 },
                Transition::Renotified { grade: 1 },
                Transition::Resolved { grade: 1 },
            ]
        );
    }

    #[test]
    fn the_state_survives_a_restart_without_refiring() {
        let t = crowd();
        let mut e = Episode::default();
        assert_eq!(
            e.observe(&t, 0, 0.85),
            Some(Transition::Raised { grade: 2 })
        );
        let saved = serde_json::to_string(&e).unwrap();
        let mut restored: Episode = serde_json::from_str(&saved).unwrap();
        assert_eq!(
            restored.observe(&t, 120_000, 0.85),
            None,
            "no re-fire after a restart"
        );
        assert_eq!(restored.observe(&t, 180_000, 0.10), None);
        assert_eq!(
            restored.observe(&t, 780_000, 0.10),
            Some(Transition::Resolved { grade: 2 }),
            "the resolution still comes"
        );
    }

    /// A cover that reports once when lifted: tilt past 15° held 30 s, clear after 60 s.
    fn cover() -> Thresholds {
        Thresholds {
            side: Side::Above,
            grades: vec![15.0],
            clear_margin: 5.0,
            hold_ms: 30_000,
            clear_hold_ms: 60_000,
            renotify_ms: 0,
        }
    }

    const HOUR: i64 = 3_600_000;

    #[test]
    fn one_report_past_the_threshold_raises_when_its_hold_ends_without_another() {
        let t = cover();
        let mut e = Episode::default();
        assert_eq!(e.observe(&t, 1_000, 80.0), None, "the hold has just begun");
        assert!(e.pending());
        assert_eq!(e.tick(&t, 30_999, 2 * HOUR), None, "not yet");
        assert_eq!(
            e.tick(&t, 31_500, 2 * HOUR),
            Some((Transition::Raised { grade: 1 }, 31_000)),
            "at the hold's end, stamped with it"
        );
        assert!(e.is_open() && !e.pending());
        assert_eq!(e.tick(&t, 40_000, 2 * HOUR), None, "raised once");
        // The cover is put back: one report, and the clear hold completes on the clock too.
        assert_eq!(e.observe(&t, 100_000, 2.0), None);
        assert_eq!(e.tick(&t, 159_999, 2 * HOUR), None);
        assert_eq!(
            e.tick(&t, 160_000, 2 * HOUR),
            Some((Transition::Resolved { grade: 1 }, 160_000))
        );
        assert!(e.at_rest());
    }

    #[test]
    fn a_stale_value_neither_raises_nor_resolves() {
        let t = cover();
        let mut e = Episode::default();
        e.observe(&t, 0, 80.0);
        // The value went stale 10 s after it came, before its 30-s hold ended.
        assert_eq!(e.tick(&t, HOUR, 10_000), None);
        assert!(!e.is_open());
        // Open, then one cleared value that goes stale before the clear hold ends.
        let mut open = Episode::default();
        open.observe(&t, 0, 80.0);
        assert!(open.tick(&t, 30_000, HOUR).is_some());
        open.observe(&t, 40_000, 1.0);
        assert_eq!(
            open.tick(&t, HOUR, 20_000),
            None,
            "stale before 60 s of clear"
        );
        assert!(open.is_open());
    }

    #[test]
    fn a_value_back_on_the_good_side_before_the_hold_ends_cancels_it() {
        let t = cover();
        let mut e = Episode::default();
        e.observe(&t, 0, 80.0);
        e.observe(&t, 10_000, 3.0);
        assert!(!e.pending());
        assert_eq!(e.tick(&t, HOUR, 2 * HOUR), None);
        assert!(e.at_rest());
    }

    #[test]
    fn a_tick_and_a_later_report_give_one_raise_between_them() {
        let t = cover();
        let (mut ticked, mut sampled) = (Episode::default(), Episode::default());
        ticked.observe(&t, 0, 80.0);
        let first = ticked.tick(&t, 30_000, HOUR);
        assert!(matches!(first, Some((Transition::Raised { .. }, 30_000))));
        assert_eq!(ticked.observe(&t, 45_000, 81.0), None, "already raised");
        // Without a tick, the next report raises, as before.
        sampled.observe(&t, 0, 80.0);
        assert_eq!(
            sampled.observe(&t, 45_000, 81.0),
            Some(Transition::Raised { grade: 1 })
        );
    }
}
