//! Holds on the clock: the staleness of each rule's values, the holds under way, and the tick
//! that completes them without another value (see [`super::episode`]).
//!
//! A subject's clock is its latest value's event time advanced by the wall time since that value
//! arrived ([`Engine::arrived`]): for a live device, the wall clock; for a backlog or a
//! rehearsal on a past day, a hold completes only once its remaining span has passed without a
//! newer value.

use std::sync::Arc;

use device_profiles::Catalog;

use super::engine::Engine;
use super::rule::{Rule, Source};

/// How long a value stays current when neither the rule nor its devices' profiles say: three
/// one-minute windows of a point.
pub(super) const DEFAULT_STALE_MS: i64 = 3 * 60_000;

/// A hold under way, as the tick sees it.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    /// The subject's zone, for the event.
    pub(super) zone: Arc<str>,
    /// Event time of the latest value.
    pub(super) latest_ms: i64,
    /// Wall-clock time that value arrived (or the tick first saw it).
    pub(super) arrived_ms: Option<i64>,
}

/// How long a value of `rule` stays current by default (see [`Rule::stale_s`]): for readings, as
/// long as the slowest of its device kinds stays online without a report.
pub(super) fn default_stale_ms(catalog: &Catalog, rule: &Rule) -> i64 {
    match rule.source {
        Source::Reading => catalog
            .profiles
            .values()
            .filter(|p| {
                if rule.kinds.is_empty() {
                    rule.field == "battery_pct" || p.fields.iter().any(|f| f.name == rule.field)
                } else {
                    rule.kinds.contains(&p.kind)
                }
            })
            .map(|p| i64::from(p.report_interval_s) * i64::from(p.offline_after_intervals) * 1000)
            .max()
            .unwrap_or(DEFAULT_STALE_MS),
        Source::Point if rule.measurement.as_deref() == Some("device_health") => 3 * 5 * 60_000,
        Source::Presence | Source::Sink => 10_000,
        _ => DEFAULT_STALE_MS,
    }
}

impl Engine {
    /// The values evaluated next arrived at wall-clock `now_ms`: the moment [`Engine::tick`]
    /// counts a hold's remaining time from.
    pub fn arrived(&mut self, now_ms: i64) {
        self.wall_ms = Some(now_ms);
    }

    /// Completes the holds under way whose end has passed while their latest value was current
    /// (see [`Episode::tick`](super::episode::Episode::tick)): a set hold raises and a clear hold resolves without another
    /// value. Call it every second with the wall clock.
    ///
    /// A subject's clock is the event time of its latest value advanced by the wall time since
    /// that value arrived: for a live device, the wall clock; for a backlog or a rehearsal on a
    /// past day, the hold completes only once its remaining span has passed without a newer
    /// value, so values arriving behind it still count.
    pub fn tick(&mut self, now_ms: i64) {
        let keys: Vec<(usize, Arc<str>)> = self.pending.keys().cloned().collect();
        for key in keys {
            let Some(p) = self.pending.get_mut(&key) else {
                continue;
            };
            let arrived = *p.arrived_ms.get_or_insert(now_ms);
            let subject_now = p
                .latest_ms
                .saturating_add(now_ms.saturating_sub(arrived).max(0));
            let zone = p.zone.clone();
            let c = &self.rules[key.0];
            let (thresholds, stale_ms) = (c.thresholds(&key.1), c.stale_ms);
            let Some(state) = self.states.get_mut(&key) else {
                self.pending.remove(&key);
                continue;
            };
            let value = state.episode.latest_value();
            let Some((transition, at_ms)) = state.episode.tick(thresholds, subject_now, stale_ms)
            else {
                continue;
            };
            self.dirty.insert(key.clone());
            if !state.episode.pending() {
                self.pending.remove(&key);
            }
            let (i, subject) = key;
            self.emit(
                i,
                &subject,
                &zone,
                transition,
                at_ms,
                value.unwrap_or(f64::NAN),
            );
        }
    }
}
