//! Who answers an alert (网格化管理): the grid of its subject, the grid's unit, and from the
//! grid's roster the person on duty when it was raised or escalated, their supervisor and the
//! unit's head (`device_profiles::grid`).
//!
//! Escalation: an alert that nobody acknowledges within its grade's time (`escalate_after_s`
//! of the grid: 红 5 minutes, 橙 15, 黄 30 by default) goes to the supervisor of whoever the
//! roster has on duty then, and after the same time again to the unit's head; each step is an
//! alert event (`escalated_to`) that the notifiers carry (DingTalk @-s the person). An
//! acknowledgement stops it; a higher grade starts it again from the person on duty. The step
//! is part of the alert's state, committed with it: a restart neither repeats a step nor
//! forgets one. Its times are event times, as all of an alert's (the raise's, plus the grade's
//! time per step), checked against the wall clock: the replicas of a partition take the same
//! steps at the same times, so each step is one event id for subscribers to keep once. A step
//! also waits its grade's time on the wall clock since the step before was taken (or the alert
//! raised) by this gateway: an alarm that arrives late (a node's queue after an outage, a
//! rehearsal of a past day) still gives each person their time to answer. After a restart the
//! wait starts again from the start: a step that fell due while the gateway was down comes one
//! grade's time later, with the time it was due.

use std::sync::Arc;

use device_profiles::Catalog;
use device_profiles::grid::{Grid, Person};
// Keys are subjects of the site (never raw input): a fast hasher is safe.
use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};

/// An alert's grid and the people it goes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Grid id.
    pub grid: String,
    /// Its name.
    pub grid_name: String,
    /// The responsible unit.
    pub unit: String,
    /// On duty at the time (none: the roster has a gap, and the head is called).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_duty: Option<Person>,
    /// The on-duty person's supervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<Person>,
    /// The unit's head.
    pub head: Person,
}

/// How far an alert has gone while nobody acknowledged it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    /// 0: the person on duty was called; 1: their supervisor; 2: the unit's head.
    pub step: u8,
    /// When this step was due (the raise's event time, plus the grade's time per step), Unix
    /// ms.
    pub since_ms: i64,
    /// Who this step called (step 0: the person on duty, or the head when nobody was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Person>,
}

/// The last step: the unit's head.
pub const HEAD: u8 = 2;

/// The site's grids, by subject.
#[derive(Debug, Clone, Default)]
pub(super) struct Grids {
    grids: Vec<Grid>,
    by_subject: HashMap<Arc<str>, usize>,
    utc_offset_ms: i64,
}

impl Grids {
    pub(super) fn new(catalog: &Catalog) -> Grids {
        let site = &catalog.site;
        let mut by_subject = HashMap::default();
        for (i, g) in site.grids.iter().enumerate() {
            for s in &g.subjects {
                by_subject.insert(Arc::from(s.as_str()), i);
            }
        }
        // A choke point is in its area's grid unless a grid lists it.
        for a in &site.scenic_areas {
            if let Some(&i) = by_subject.get(a.id.as_str()) {
                for c in &a.choke_points {
                    by_subject.entry(Arc::from(c.id.as_str())).or_insert(i);
                }
            }
        }
        Grids {
            grids: site.grids.clone(),
            by_subject,
            utc_offset_ms: site.site.utc_offset.ms(),
        }
    }

    /// How long an alert of `severity` on `subject` waits for an acknowledgement before the
    /// next step, ms (None: it does not escalate).
    pub(super) fn escalate_after_ms(&self, subject: &str, severity: &str) -> Option<i64> {
        let g = &self.grids[*self.by_subject.get(subject)?];
        g.escalate_after_s
            .get(severity)
            .map(|s| i64::from(*s) * 1000)
    }

    /// The route of an alert on `subject` at `time_ms`, if a grid holds the subject.
    pub(super) fn route(&self, subject: &str, time_ms: i64) -> Option<Route> {
        let g = &self.grids[*self.by_subject.get(subject)?];
        let local = time_ms + self.utc_offset_ms;
        let date = device_profiles::calendar::local_date(time_ms, self.utc_offset_ms);
        let minute = (local.rem_euclid(86_400_000) / 60_000) as u32;
        let duty = g.on_duty(&date, minute);
        Some(Route {
            grid: g.id.clone(),
            grid_name: g.name.clone(),
            unit: g.unit.clone(),
            on_duty: duty.map(|d| Person {
                name: d.name.clone(),
                phone: d.phone.clone(),
            }),
            supervisor: duty.map(|d| d.supervisor.clone()),
            head: g.head.clone(),
        })
    }
}

/// The person a step calls on `route`.
pub(super) fn called(route: &Route, step: u8) -> Person {
    match step {
        0 => route.on_duty.clone(),
        1 => route.supervisor.clone(),
        _ => None,
    }
    .unwrap_or_else(|| route.head.clone())
}

impl super::Engine {
    /// Takes the next step of every open alert nobody acknowledged in its grade's time (see the
    /// module's documentation). Call it every second with the wall clock.
    pub fn escalate(&mut self, now_ms: i64) {
        // Each due step with the time it was due: the raise's event time plus the grade's time
        // per step, a time every replica computes alike.
        let due: Vec<((usize, Arc<str>), i64)> = self
            .states
            .iter()
            .filter_map(|(key, s)| {
                let a = s.alert.as_ref()?;
                let e = a.escalation.as_ref()?;
                let after = self.grids.escalate_after_ms(&key.1, &a.severity)?;
                // Unknown after a restart: paced from the first look (below).
                let paced = self
                    .stepped_wall
                    .get(key)
                    .is_some_and(|&w| now_ms - w >= after);
                (a.ack.is_none()
                    && a.status == super::Status::Firing
                    && e.step < HEAD
                    && now_ms - e.since_ms >= after
                    && paced)
                    .then(|| (key.clone(), e.since_ms + after))
            })
            .collect();
        // An alert this gateway has not paced yet (it restarted) starts its wall-clock wait now: a step due meanwhile comes one grade's time later rather
        // than at once, and every replica waits alike.
        for (key, s) in &self.states {
            if s.alert
                .as_ref()
                .is_some_and(|a| a.escalation.is_some() && a.status == super::Status::Firing)
            {
                self.stepped_wall.entry(key.clone()).or_insert(now_ms);
            }
        }
        for (key, at_ms) in due {
            // Whoever the roster had on duty then: a roster changed meanwhile is followed.
            let route = self.grids.route(&key.1, at_ms);
            let Some(alert) = self.states.get_mut(&key).and_then(|s| s.alert.as_mut()) else {
                continue;
            };
            let (Some(route), Some(e)) = (route, alert.escalation.as_mut()) else {
                continue;
            };
            e.step += 1;
            e.since_ms = at_ms;
            e.to = Some(called(&route, e.step));
            alert.duty = Some(route);
            self.stepped_wall.insert(key.clone(), now_ms);
            let event = super::AlertEvent {
                kind: super::EventKind::EscalatedTo,
                at_ms,
                previous_severity: None,
                alert: alert.clone(),
            };
            self.dirty.insert(key);
            self.events.push(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::alert::engine::tests::{crowd_point, engine};
    use crate::alert::{Changes, Engine, EventKind};
    use crate::point::Point;

    /// 2026-11-16 15:00 +08:00, a Monday afternoon: the day shift of 城西景区网格.
    const T: i64 = 1_794_812_400_000;

    fn raise_red(e: &mut Engine) -> String {
        e.arrived(T);
        e.on_points(&[Point {
            time_ms: T,
            ..crowd_point("S4", 0, 1.02)
        }]);
        let c = e.take_changes();
        let a = &c.events[0].alert;
        assert_eq!(a.severity, "red");
        let esc = a.escalation.as_ref().unwrap();
        assert_eq!((esc.step, esc.since_ms), (0, T));
        assert_eq!(esc.to.as_ref().unwrap().name, "日班值守（示例）");
        a.id.clone()
    }

    fn steps(c: &Changes) -> Vec<(u8, String)> {
        c.events
            .iter()
            .filter(|e| e.kind == EventKind::EscalatedTo)
            .map(|e| {
                let esc = e.alert.escalation.as_ref().unwrap();
                (esc.step, esc.to.as_ref().unwrap().name.clone())
            })
            .collect()
    }

    #[test]
    fn an_unacknowledged_red_goes_to_the_supervisor_then_the_head_once_each() {
        let mut e = engine();
        raise_red(&mut e);
        e.escalate(T + 299_000);
        assert!(steps(&e.take_changes()).is_empty(), "红 waits 5 minutes");
        e.escalate(T + 300_000);
        assert_eq!(
            steps(&e.take_changes()),
            [(1, "值班科长（示例）".to_owned())]
        );
        e.escalate(T + 599_000);
        assert!(steps(&e.take_changes()).is_empty());
        e.escalate(T + 600_000);
        assert_eq!(steps(&e.take_changes()), [(2, "局长（示例）".to_owned())]);
        e.escalate(T + 3_600_000);
        assert!(
            steps(&e.take_changes()).is_empty(),
            "the head is the last step"
        );
    }

    #[test]
    fn a_late_alarm_still_gives_each_person_their_time_on_the_wall_clock() {
        let mut e = engine();
        // Raised an hour after its event time (a node's queue after an outage).
        e.arrived(T + 3_600_000);
        e.on_points(&[Point {
            time_ms: T,
            ..crowd_point("S4", 0, 1.02)
        }]);
        e.take_changes();
        e.escalate(T + 3_600_000 + 1_000);
        assert!(
            steps(&e.take_changes()).is_empty(),
            "the person on duty gets 5 minutes"
        );
        e.escalate(T + 3_900_000);
        let c = e.take_changes();
        assert_eq!(steps(&c), [(1, "值班科长（示例）".to_owned())]);
        assert_eq!(c.events[0].at_ms, T + 300_000, "due at event time + 5 min");
        e.escalate(T + 3_901_000);
        assert!(
            steps(&e.take_changes()).is_empty(),
            "and the supervisor too"
        );
    }

    #[test]
    fn an_acknowledgement_stops_the_next_step() {
        let mut e = engine();
        let id = raise_red(&mut e);
        e.ack(&id, "wang.li", "到场处置", T + 60_000).unwrap();
        e.escalate(T + 3_600_000);
        assert!(steps(&e.take_changes()).is_empty());
    }

    #[test]
    fn a_restart_mid_escalation_neither_repeats_nor_forgets_a_step() {
        let mut e = engine();
        raise_red(&mut e);
        e.escalate(T + 300_000);
        let committed = e.take_changes();
        assert_eq!(steps(&committed).len(), 1);
        // A new engine restored from the committed states, as at a start.
        let mut restarted = engine();
        assert!(restarted.restore(committed.states).is_empty());
        restarted.escalate(T + 301_000);
        assert!(steps(&restarted.take_changes()).is_empty(), "not repeated");
        // The wait starts again at the restart: the head's turn, due at T + 600 s, comes at
        // T + 601 s with the time it was due.
        restarted.escalate(T + 600_000);
        assert!(steps(&restarted.take_changes()).is_empty());
        restarted.escalate(T + 601_000);
        let c = restarted.take_changes();
        assert_eq!(steps(&c), [(2, "局长（示例）".to_owned())], "not forgotten");
        assert_eq!(c.events[0].at_ms, T + 600_000);
    }

    #[test]
    fn a_roster_changed_during_an_escalation_is_followed() {
        let mut e = engine();
        raise_red(&mut e);
        // The roster is changed (a reload): another supervisor for the day shift.
        let mut catalog = device_profiles::Catalog::ganzhou().unwrap();
        let grid = catalog
            .site
            .grids
            .iter_mut()
            .find(|g| g.id == "zg-west-scenic")
            .unwrap();
        for d in &mut grid.duty {
            d.supervisor.name = "新带班（示例）".into();
        }
        let rules: Vec<_> = e.rules().cloned().collect();
        assert!(e.reload(&catalog, rules, 3600).is_empty());
        e.escalate(T + 300_000);
        assert_eq!(steps(&e.take_changes()), [(1, "新带班（示例）".to_owned())]);
    }
}
