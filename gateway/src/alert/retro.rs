//! Retrospective episodes. A correction (see `aggregate::correct`) emits a unit's windows again
//! from the first one its late data touched. The latest of them is evaluated as usual: rules see
//! the corrected current state. The older ones are history: a point rule's subject may turn out
//! to have crossed its threshold and come back entirely in the past (a gate offline during a
//! surge: the occupancy the operators saw was too low). Such an episode is recorded as a
//! `retrospective` event (in the outbox, the alert history, the API and the MQTT event stream)
//! and not notified as a live alarm: it is over, nobody can act on it now.
//!
//! The revised values of each (rule, subject) are played on an episode of their own, with the
//! rule's thresholds and holds in event time; each episode that is raised and resolved within
//! them, and overlaps no alert the subject had live, is recorded.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Engine;
use super::episode::{Episode, Transition};
use super::model::{Alert, AlertEvent, EventKind, Status};

/// Episodes kept per (rule, subject) to tell a retrospective one from one operators had.
const PAST: usize = 32;

/// A rule (by index) and a subject.
type RuleSubject = (usize, Arc<str>);

/// Values by event time.
type Values = Vec<(i64, f64)>;

/// Revised past values of a batch of points by (rule, subject): zone and `(time, value)`.
#[derive(Debug, Clone, Default)]
pub(super) struct Revisions(BTreeMap<RuleSubject, (Arc<str>, Values)>);

impl Revisions {
    /// A value of (rule `i`, `subject`) at `time_ms`, older than what the rule has seen live.
    pub(super) fn push(
        &mut self,
        i: usize,
        subject: &Arc<str>,
        zone: &Arc<str>,
        time_ms: i64,
        value: f64,
    ) {
        self.0
            .entry((i, subject.clone()))
            .or_insert_with(|| (zone.clone(), Vec::new()))
            .1
            .push((time_ms, value));
    }
}

/// Records an episode (start, end) in `past`, keeping the newest [`PAST`].
pub(super) fn remember(past: &mut Vec<(i64, i64)>, episode: (i64, i64)) {
    if past.len() == PAST {
        past.remove(0);
    }
    past.push(episode);
}

/// An episode found in revised values: start, end, the highest grade and the value there.
struct Found {
    start: i64,
    end: i64,
    grade: u8,
    value: f64,
}

impl Engine {
    /// Whether a point of rule `i` for `subject` at `time_ms` is older than the latest value the
    /// rule evaluated live: a revision of the past.
    pub(super) fn is_revision(&self, i: usize, subject: &Arc<str>, time_ms: i64) -> bool {
        self.states
            .get(&(i, subject.clone()))
            .and_then(|s| s.episode.last_time())
            .is_some_and(|last| time_ms < last)
    }

    /// Plays the revised values of the batch and records the episodes they show entirely in
    /// the past.
    pub(super) fn settle_revisions(&mut self) {
        for ((i, subject), (zone, mut values)) in std::mem::take(&mut self.revisions.0) {
            values.sort_by_key(|(t, _)| *t);
            let thresholds = self.rules[i].thresholds(&subject).clone();
            let mut episode = Episode::default();
            let mut open: Option<Found> = None;
            let mut found = Vec::new();
            for (t, v) in values {
                match episode.observe(&thresholds, t, v) {
                    Some(Transition::Raised { grade }) => {
                        open = Some(Found {
                            start: t,
                            end: t,
                            grade,
                            value: v,
                        })
                    }
                    Some(Transition::Escalated { to, .. }) => {
                        if let Some(f) = open.as_mut() {
                            (f.grade, f.value) = (to, v);
                        }
                    }
                    Some(Transition::Resolved { .. }) => {
                        if let Some(mut f) = open.take() {
                            f.end = t;
                            found.push(f);
                        }
                    }
                    _ => {}
                }
            }
            // One still open at the last revised value reaches into the live state: not past.
            let key = (i, subject.clone());
            for f in found {
                let state = self.states.entry(key.clone()).or_default();
                let overlaps = |&(s, e): &(i64, i64)| s <= f.end && f.start <= e;
                let live_since = state.alert.as_ref().map(|a| a.started_ms);
                if state.past.iter().any(overlaps) || live_since.is_some_and(|s| s <= f.end) {
                    continue;
                }
                remember(&mut state.past, (f.start, f.end));
                self.dirty.insert(key.clone());
                self.record_retrospective(i, &subject, &zone, &f);
            }
        }
    }

    fn record_retrospective(&mut self, i: usize, subject: &Arc<str>, zone: &Arc<str>, f: &Found) {
        let c = &self.rules[i];
        let rule = &c.rule;
        let (name, zone) = self.ctx.name_and_zone(subject, zone);
        let (severity, label, threshold) = c.grade_info(subject, f.grade);
        let minutes = (f.end - f.start) / 60_000;
        let summary = format!(
            "{name}: {} — {label} for {minutes} min, found in corrected data (retrospective)",
            rule.description
        );
        self.events.push(AlertEvent {
            kind: EventKind::Retrospective,
            at_ms: f.end,
            previous_severity: None,
            alert: Alert {
                id: format!("{}:{}:{}", rule.id, subject, f.start),
                rule: rule.id.clone(),
                category: rule.category,
                subject: subject.to_string(),
                subject_name: name,
                zone: zone.to_string(),
                grade: f.grade,
                severity,
                label,
                status: Status::Resolved,
                value: f.value,
                threshold,
                started_ms: f.start,
                updated_ms: f.end,
                resolved_ms: Some(f.end),
                ack: None,
                flapping: false,
                assigned_to: None,
                comments: Vec::new(),
                summary,
                advice: None,
                calendar: None,
                duty: None,
                escalation: None,
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::alert::EventKind;
    use crate::alert::engine::tests::{crowd_point, engine, kinds};

    #[test]
    fn a_surge_corrected_data_shows_in_the_past_is_a_retrospective_event_not_an_alarm() {
        let mut e = engine();
        // Live: 通天岩 looked quiet for forty minutes (a gate's counts were missing).
        let live: Vec<_> = (1..=40).map(|m| crowd_point("S4", m, 0.2)).collect();
        e.on_points(&live);
        assert!(e.take_changes().events.is_empty());
        // The correction: it was at 70 % from minute 10 to 15.
        let revised: Vec<_> = (10..=30)
            .map(|m| crowd_point("S4", m, if m <= 15 { 0.7 } else { 0.2 }))
            .collect();
        e.on_points(&revised);
        let c = e.take_changes();
        assert_eq!(
            kinds(&c),
            vec![("crowd.occupancy".into(), "retrospective", "blue".into())]
        );
        let event = &c.events[0];
        assert_eq!(event.kind, EventKind::Retrospective);
        let a = &event.alert;
        assert_eq!(
            (a.started_ms, a.id.as_str()),
            (10 * 60_000, "crowd.occupancy:S4:600000")
        );
        assert!(
            a.resolved_ms
                .is_some_and(|end| end > a.started_ms && end <= 30 * 60_000)
        );
        assert!(a.summary.contains("retrospective"), "{}", a.summary);
        assert!(e.open_alerts().is_empty(), "nothing live");
        // The same revision again records nothing more, after a restart too.
        e.on_points(&revised);
        assert!(e.take_changes().events.is_empty());
        let mut restarted = engine();
        assert!(restarted.restore(c.states).is_empty());
        restarted.on_points(&revised);
        assert!(restarted.take_changes().events.is_empty());
    }

    #[test]
    fn an_episode_operators_had_live_is_not_recorded_again() {
        let mut e = engine();
        let live: Vec<_> = (1..=40)
            .map(|m| crowd_point("S4", m, if (10..=15).contains(&m) { 0.7 } else { 0.2 }))
            .collect();
        e.on_points(&live);
        let c = e.take_changes();
        assert_eq!(c.events.first().map(|e| e.kind), Some(EventKind::Raised));
        // A correction of the same stretch with slightly other values: the alert was live.
        let revised: Vec<_> = (10..=30)
            .map(|m| crowd_point("S4", m, if m <= 16 { 0.72 } else { 0.2 }))
            .collect();
        e.on_points(&revised);
        assert!(e.take_changes().events.is_empty());
    }
}
