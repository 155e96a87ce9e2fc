//! The rule engine: readings, points and presence in; alert transitions out.
//!
//! One [`Episode`] per (rule, subject) owns that alert: an episode yields exactly one raise, an
//! escalation per grade reached, reminders, and one resolution. The engine is plain state with
//! no clock and no I/O (time comes with the inputs); what changed since the last
//! [`Engine::take_changes`] is committed by the caller in the same transaction as the readings
//! that caused it, so a restart neither re-fires nor forgets.

use std::collections::BTreeSet;

// Keys are rule indices, subjects and fields of the site (never raw input): a fast hasher is safe.
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use device_profiles::Catalog;

use super::cases::round;
use super::context::Context;
use super::episode::{Episode, Side, Thresholds, Transition};
use super::history::History;
use super::model::{Alert, AlertEvent, EventKind, Status, SubjectState};
use super::rule::{Confirm, DeriveKind, Rule, Source};
use super::timed::{DEFAULT_STALE_MS, Pending, default_stale_ms};
use crate::point::{FieldValue, Point};
use crate::reading::{Measurement, Reading};
use crate::registry::{Presence, Registry, Seen, Survey};

/// An episode whose value came back past the clear threshold this often is flagged flapping.
const FLAPPING_CROSSINGS: u32 = 3;
#[derive(Debug, Clone)]
pub(super) struct Compiled {
    pub(super) rule: Rule,
    pub(super) thresholds: Thresholds,
    /// Thresholds of the subjects the rule scales.
    pub(super) scaled: HashMap<Arc<str>, Thresholds>,
    /// Indexes of the coupling rules that follow this one.
    pub(super) coupled: Vec<usize>,
    /// How long a value stays current without a newer one ([`Rule::stale_s`]).
    pub(super) stale_ms: i64,
}

/// The rule engine. See the module documentation.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(super) rules: Vec<Compiled>,
    pub(super) states: HashMap<(usize, Arc<str>), SubjectState>,
    /// Recent values per subject and field, for derived values (nested so that a lookup by
    /// `&str` allocates nothing).
    pub(super) history: HashMap<Arc<str>, HashMap<Box<str>, History>>,
    /// Fields whose history is kept, and for how long (ms): the fields of rules with a
    /// derivation for their window, `flow` for the window of bursts confirmed by a flow spike.
    pub(super) history_fields: HashMap<Box<str>, i64>,
    /// The reading rules by field: a reading is offered only to the rules that watch its field.
    pub(super) reading_rules: HashMap<Box<str>, Arc<[usize]>>,
    /// Latest derived value per (rule, subject), for confirmation by neighbours.
    pub(super) derived: HashMap<(usize, Arc<str>), (i64, f64)>,
    pub(super) ctx: Context,
    pub(super) dirty: BTreeSet<(usize, Arc<str>)>,
    pub(super) events: Vec<AlertEvent>,
    /// The (rule, subject)s with a hold under way: what [`Engine::tick`] visits.
    pub(super) pending: HashMap<(usize, Arc<str>), Pending>,
    /// The wall clock of the values being evaluated ([`Engine::arrived`]).
    pub(super) wall_ms: Option<i64>,
    /// Revised past points of the batch ([`super::retro`]).
    pub(super) revisions: super::retro::Revisions,
    /// How full the areas are and how the roads flow, for the alerts' advice.
    pub(super) situation: super::advice::Situation,
    /// The calendar entries whose caps the rules carry, for people.
    pub(super) calendar: Option<String>,
    /// Grids and rosters: who an alert goes to.
    pub(super) grids: super::duty::Grids,
    /// When each alert's current escalation step was taken, wall clock (in memory: it paces
    /// the steps of an alarm that comes late, see [`super::duty`]).
    pub(super) stepped_wall: HashMap<(usize, Arc<str>), i64>,
    /// Every device's presence as [`Engine::on_presence`] last saw it.
    pub(super) presence_seen: Seen,
    /// The registry generation, and for each rule the positions of the devices its presence
    /// source watches (its kinds).
    pub(super) presence_targets: Option<(u64, Vec<Vec<usize>>)>,
}

fn field_number(v: &FieldValue) -> Option<f64> {
    match v {
        FieldValue::Float(f) => Some(*f),
        FieldValue::Int(i) => Some(*i as f64),
        FieldValue::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        FieldValue::Str(_) => None,
    }
}

/// The subject of a point: its most specific place tag.
fn point_subject(p: &Point) -> Option<&str> {
    ["choke_point", "area", "segment", "asset", "device"]
        .iter()
        .find_map(|name| {
            p.tags
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        })
}

fn tags_match(rule: &Rule, p: &Point) -> bool {
    rule.tags.iter().all(|(k, want)| {
        let have = p.tags.iter().find(|(t, _)| t == k).map(|(_, v)| v.as_str());
        match (want.as_str(), have) {
            ("", None) | ("*", Some(_)) => true,
            (w, Some(h)) => w == h,
            (_, None) => false,
        }
    })
}

impl Compiled {
    pub(super) fn thresholds(&self, subject: &str) -> &Thresholds {
        self.scaled.get(subject).unwrap_or(&self.thresholds)
    }

    /// Grade `g` (1-based) of this rule for `subject`: its name, its label for people and its
    /// threshold.
    pub(super) fn grade_info(&self, subject: &str, g: u8) -> (String, String, f64) {
        let i = usize::from(g.max(1)) - 1;
        let grade = self.rule.grades.get(i);
        (
            grade.map_or_else(String::new, |g| g.name.clone()),
            grade.map_or_else(String::new, |g| g.label.clone().unwrap_or(g.name.clone())),
            self.thresholds(subject)
                .grades
                .get(i)
                .copied()
                .unwrap_or(f64::NAN),
        )
    }
}

impl Engine {
    /// An engine for `rules` on the site of `catalog`; open alerts re-notify every
    /// `renotify_s` unless a rule says otherwise.
    pub fn new(catalog: &Catalog, rules: Vec<Rule>, renotify_s: u32) -> Engine {
        let mut engine = Self::bare(rules, renotify_s);
        engine.ctx = Context::new(catalog);
        engine.situation = super::advice::Situation::new(catalog);
        engine.grids = super::duty::Grids::new(catalog);
        for c in &mut engine.rules {
            if c.rule.stale_s.is_none() {
                c.stale_ms = default_stale_ms(catalog, &c.rule);
            }
        }
        engine
    }

    pub(super) fn bare(rules: Vec<Rule>, renotify_s: u32) -> Engine {
        let mut compiled: Vec<Compiled> = rules
            .into_iter()
            .map(|rule| Compiled {
                thresholds: rule.thresholds(renotify_s),
                scaled: rule
                    .scale
                    .keys()
                    .map(|s| (Arc::from(s.as_str()), rule.thresholds_for(s, renotify_s)))
                    .collect(),
                stale_ms: rule
                    .stale_s
                    .map_or(DEFAULT_STALE_MS, |s| i64::from(s) * 1000),
                rule,
                coupled: Vec::new(),
            })
            .collect();
        for i in 0..compiled.len() {
            if let Some(up) = compiled[i].rule.upstream.clone()
                && let Some(u) = compiled.iter().position(|c| c.rule.id == up)
            {
                compiled[u].coupled.push(i);
            }
        }
        let mut history_fields: HashMap<Box<str>, i64> = HashMap::default();
        let mut by_field: HashMap<Box<str>, Vec<usize>> = HashMap::default();
        for (i, c) in compiled.iter().enumerate() {
            if let Some(d) = &c.rule.derive {
                let window_ms = i64::from(d.window_s) * 1000;
                let mut keep = |field: &str| {
                    let kept = history_fields.entry(field.into()).or_default();
                    *kept = (*kept).max(window_ms);
                };
                keep(&c.rule.field);
                if c.rule.confirm == Some(Confirm::NeighbourOrFlow) {
                    keep("flow");
                }
            }
            if c.rule.source == Source::Reading {
                by_field
                    .entry(c.rule.field.as_str().into())
                    .or_default()
                    .push(i);
            }
        }
        let reading_rules = by_field
            .into_iter()
            .map(|(field, rules)| (field, Arc::from(rules)))
            .collect();
        Engine {
            rules: compiled,
            states: HashMap::default(),
            history: HashMap::default(),
            history_fields,
            reading_rules,
            derived: HashMap::default(),
            ctx: Context::default(),
            dirty: BTreeSet::new(),
            events: Vec::new(),
            pending: HashMap::default(),
            wall_ms: None,
            revisions: super::retro::Revisions::default(),
            situation: super::advice::Situation::default(),
            calendar: None,
            grids: super::duty::Grids::default(),
            stepped_wall: HashMap::default(),
            presence_seen: Seen::default(),
            presence_targets: None,
        }
    }

    /// Names the calendar entries the rules were made for (`AlertsSection::rules_on`): crowd
    /// alerts raised or escalated from now on state it.
    pub fn set_calendar(&mut self, calendar: Option<String>) {
        self.calendar = calendar;
    }

    /// The calendar entries the rules were made for.
    pub fn calendar(&self) -> Option<&str> {
        self.calendar.as_deref()
    }

    /// The rules in force.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|c| &c.rule)
    }

    /// Feeds aggregated points.
    pub fn on_points(&mut self, points: &[Point]) {
        for p in points {
            self.situation.observe(p);
        }
        for p in points {
            let Some(subject) = point_subject(p) else {
                continue;
            };
            let subject: Arc<str> = subject.into();
            let zone: Arc<str> = p
                .tags
                .iter()
                .find(|(k, _)| k == "zone")
                .map_or("", |(_, v)| v.as_str())
                .into();
            for i in 0..self.rules.len() {
                let r = &self.rules[i].rule;
                if r.source != Source::Point
                    || r.measurement.as_deref() != Some(p.measurement.as_str())
                    || !tags_match(r, p)
                {
                    continue;
                }
                let lookup = |name: &str| {
                    p.fields
                        .iter()
                        .find(|(k, _)| k == name)
                        .and_then(|(_, v)| field_number(v))
                };
                // A corrected window older than what the rule saw live: history.
                if r.derive.is_none() && self.is_revision(i, &subject, p.time_ms) {
                    if let Some(v) = lookup(&r.field) {
                        self.revisions.push(i, &subject, &zone, p.time_ms, v);
                    }
                    continue;
                }
                self.evaluate(i, &subject, &zone, p.time_ms, &lookup);
            }
        }
        self.settle_revisions();
        if !points.is_empty() {
            self.refresh_advice();
        }
    }

    /// Brings the advice of open alerts up to date with the latest aggregates: the alert's
    /// state changes (and is committed), without an event.
    fn refresh_advice(&mut self) {
        for (&(i, ref subject), state) in self.states.iter_mut() {
            let Some(alert) = state.alert.as_mut() else {
                continue;
            };
            let advice = self.situation.advise(
                &self.rules[i].rule.field,
                subject,
                &alert.severity,
                alert.value,
                alert.updated_ms,
            );
            if advice != alert.advice {
                alert.advice = advice;
                self.dirty.insert((i, subject.clone()));
            }
        }
    }

    /// Feeds readings as they arrive, in event-time order.
    pub fn on_readings(&mut self, readings: &[Reading]) {
        let mut ordered: Vec<&Reading> = readings.iter().collect();
        ordered.sort_by_key(|r| r.time_ms);
        for r in ordered {
            let (field, value) = match &r.measurement {
                Measurement::Value { field, value, .. } => (&**field, *value),
                Measurement::Status {
                    battery_pct: Some(b),
                    ..
                } => ("battery_pct", f64::from(*b)),
                _ => continue,
            };
            let subject: Arc<str> = self
                .ctx
                .devices
                .get(&r.device)
                .and_then(|d| d.asset.clone())
                .unwrap_or_else(|| r.device.clone());
            self.remember(&subject, field, r.time_ms, value);
            // A shared handle: the rules run with `&mut self`.
            let Some(candidates) = self.reading_rules.get(field).cloned() else {
                continue;
            };
            for &i in candidates.iter() {
                let rule = &self.rules[i].rule;
                if !(rule.kinds.is_empty() || rule.kinds.iter().any(|k| **k == *r.kind)) {
                    continue;
                }
                let lookup = |name: &str| (name == field).then_some(value);
                self.evaluate(i, &subject, &r.zone, r.time_ms, &lookup);
            }
        }
    }

    /// Checks device presence at `now_ms` (every second or so).
    ///
    /// The `offline` rule visits the devices that are offline, those whose presence changed
    /// since the check before, and those with a hold under way. Any other device is online as
    /// it was when last visited, and the rule left it where a visit would leave it again:
    /// with no alert open (an open alert on an online device is clearing, a hold) and nothing
    /// to remind. The `silence_s` rule, whose value grows with the clock, visits every device
    /// of its kinds.
    ///
    /// Returns the survey of the registry it took (the presence gauges and the log of devices
    /// coming and going use it too).
    pub fn on_presence(&mut self, now_ms: i64, registry: &Registry) -> Survey {
        let survey = registry.survey(now_ms, &mut self.presence_seen);
        let changed = &survey.changed;
        if self.presence_targets.as_ref().map(|t| t.0) != Some(registry.generation()) {
            let targets = self
                .rules
                .iter()
                .map(|c| {
                    let rule = &c.rule;
                    if rule.source != Source::Presence {
                        return Vec::new();
                    }
                    registry
                        .iter()
                        .enumerate()
                        .filter(|(_, d)| {
                            rule.kinds.is_empty() || rule.kinds.iter().any(|k| **k == *d.info.kind)
                        })
                        .map(|(p, _)| p)
                        .collect()
                })
                .collect();
            self.presence_targets = Some((registry.generation(), targets));
        }
        let Some((_, targets)) = self.presence_targets.take() else {
            return survey;
        };
        let devices = registry.devices();
        for (i, targets) in targets.iter().enumerate() {
            let offline = match self.rules[i].rule.field.as_str() {
                "offline" => true,
                "silence_s" => false,
                _ => continue,
            };
            let mut holding: Vec<usize> = self
                .pending
                .keys()
                .filter(|(rule, _)| *rule == i)
                .filter_map(|(_, subject)| registry.position(subject))
                .collect();
            holding.sort_unstable();
            for &p in targets {
                let d = &devices[p];
                let value = if offline {
                    match d.presence(now_ms) {
                        Presence::Offline => 1.0,
                        Presence::Online
                            if changed.binary_search(&p).is_ok()
                                || holding.binary_search(&p).is_ok() =>
                        {
                            0.0
                        }
                        Presence::Online | Presence::Unknown => continue,
                    }
                } else {
                    match self.silence_s(d, now_ms) {
                        Some(silence) => silence,
                        None => continue,
                    }
                };
                let (id, zone) = (d.info.id.clone(), d.info.zone.clone());
                self.evaluate(i, &id, &zone, now_ms, &|_| Some(value));
            }
        }
        self.presence_targets = Some((registry.generation(), targets));
        survey
    }

    /// A device's `silence_s` at `now_ms`: seconds since its last report while its scenic area
    /// is open, 0 while it is closed; none before it is first heard.
    fn silence_s(&self, d: &crate::registry::Device, now_ms: i64) -> Option<f64> {
        let seen = d.state.last_seen_ms?;
        let open = self
            .ctx
            .devices
            .get(&d.info.id)
            .and_then(|c| c.gate_area.as_deref())
            .is_some_and(|area| self.ctx.is_open(area, now_ms));
        Some(if open {
            (now_ms - seen).max(0) as f64 / 1000.0
        } else {
            0.0
        })
    }

    /// Checks the gateway's sinks at `now_ms`: `(sink, refused)`; alerts are filed under `zone`.
    pub fn on_sinks(&mut self, now_ms: i64, zone: &str, sinks: &[(&str, bool)]) {
        let zone: Arc<str> = zone.into();
        for i in 0..self.rules.len() {
            if self.rules[i].rule.source != Source::Sink {
                continue;
            }
            for &(sink, refused) in sinks {
                let value = if refused { 1.0 } else { 0.0 };
                self.evaluate(i, &sink.into(), &zone, now_ms, &|_| Some(value));
            }
        }
    }

    pub(super) fn remember(&mut self, subject: &Arc<str>, field: &str, time_ms: i64, value: f64) {
        let Some(&keep_ms) = self.history_fields.get(field) else {
            return;
        };
        let fields = match self.history.get_mut(&**subject) {
            Some(f) => f,
            None => self.history.entry(subject.clone()).or_default(),
        };
        let h = match fields.get_mut(field) {
            Some(h) => h,
            None => fields.entry(field.into()).or_default(),
        };
        if h.latest.is_some_and(|(t, _)| t > time_ms) {
            return; // older than what is known: the window is about now
        }
        h.push(time_ms, value, keep_ms);
    }

    /// The kept history of `field` of `subject`.
    pub(super) fn history(&self, subject: &str, field: &str) -> Option<&History> {
        self.history.get(subject).and_then(|f| f.get(field))
    }

    /// The value rule `i` watches for one input, `None` when the input does not count (a
    /// requirement or confirmation failed), and nothing at all when the field is absent.
    pub(super) fn value_of(
        &mut self,
        i: usize,
        subject: &Arc<str>,
        time_ms: i64,
        lookup: &dyn Fn(&str) -> Option<f64>,
    ) -> Option<Option<f64>> {
        let rule = &self.rules[i].rule;
        let raw = if rule.source == Source::Coupling {
            lookup("grade")?
        } else {
            lookup(&rule.field)?
        };
        let mut value = raw;
        if let Some(d) = &rule.derive {
            let from = time_ms - i64::from(d.window_s) * 1000;
            let h = self.history(subject, &rule.field);
            value = match d.kind {
                DeriveKind::Drop => {
                    h.and_then(|h| h.max_since(from))
                        .map_or(raw, |m| m.max(raw))
                        - raw
                }
                DeriveKind::Rise => {
                    raw - h
                        .and_then(|h| h.min_since(from))
                        .map_or(raw, |m| m.min(raw))
                }
            };
            self.derived.insert((i, subject.clone()), (time_ms, value));
            let first = rule.grades.first().map_or(f64::INFINITY, |g| g.at);
            if rule.confirm == Some(Confirm::NeighbourOrFlow) && value >= first {
                let neighbour = self.ctx.neighbours.get(subject).is_some_and(|ns| {
                    ns.iter().any(|n| {
                        self.derived.get(&(i, n.clone())).is_some_and(|&(t, v)| {
                            (time_ms - t).abs() <= time_ms - from && v >= first / 2.0
                        })
                    })
                });
                let flow = self.history(subject, "flow");
                let latest = flow.and_then(|h| h.latest_since(from));
                let lowest = flow.and_then(|h| h.min_since(from));
                let flow_spike = match (lowest, latest) {
                    (Some(lo), Some(now)) => lo > 0.0 && now >= lo * 1.5,
                    _ => false,
                };
                if !(neighbour || flow_spike) {
                    return Some(None);
                }
            }
        }
        let required = rule.require.iter().all(|q| {
            lookup(&q.field)
                .is_some_and(|v| q.above.is_none_or(|a| v > a) && q.below.is_none_or(|b| v < b))
        });
        Some(required.then_some(value))
    }

    pub(super) fn evaluate(
        &mut self,
        i: usize,
        subject: &Arc<str>,
        zone: &Arc<str>,
        time_ms: i64,
        lookup: &dyn Fn(&str) -> Option<f64>,
    ) {
        let rule = &self.rules[i].rule;
        if !rule.subjects.is_empty() && !rule.subjects.iter().any(|s| **s == **subject) {
            return;
        }
        let Some(value) = self.value_of(i, subject, time_ms, lookup) else {
            return;
        };
        let t = self.rules[i].thresholds(subject);
        // An input that does not count is a value safely on the clear side.
        let value = value.unwrap_or_else(|| {
            let first = t.grades.first().copied().unwrap_or(0.0);
            match t.side {
                Side::Above => first - t.clear_margin - 1.0,
                Side::Below => first + t.clear_margin + 1.0,
            }
        });
        // Values from the gateway's own clock (presence, sinks) never arrive out of order, so a
        // state at rest holds nothing worth its few hundred bytes per device: none is made for
        // a value that leaves it at rest, and one that comes to rest is dropped (and written at
        // rest if it was dirty). Every second the `silence_s` rule visits every device of its kinds,
        // and the `offline` rule every offline one.
        let clocked = matches!(self.rules[i].rule.source, Source::Presence | Source::Sink);
        let key = (i, subject.clone());
        if clocked && !self.states.contains_key(&key) {
            let mut fresh = Episode::default();
            let t = self.rules[i].thresholds(subject);
            if fresh.observe(t, time_ms, value).is_none() && fresh.at_rest() {
                return;
            }
        }
        self.feed(i, subject, zone, time_ms, value);
        if clocked
            && self
                .states
                .get(&key)
                .is_some_and(|s| s.alert.is_none() && s.episode.at_rest())
        {
            self.states.remove(&key);
        }
    }

    pub(super) fn feed(
        &mut self,
        i: usize,
        subject: &Arc<str>,
        zone: &Arc<str>,
        time_ms: i64,
        value: f64,
    ) {
        let key = (i, subject.clone());
        let c = &self.rules[i];
        let state = self.states.entry(key.clone()).or_default();
        let before = state.episode.essence();
        let was_pending = state.episode.pending();
        let thresholds = c.thresholds(subject);
        let transition = state.episode.observe(thresholds, time_ms, value);
        if state.episode.essence() != before {
            self.dirty.insert(key.clone());
        }
        // Most values find their episode at rest: only a hold begun, going on or ended touches
        // the pending set.
        if state.episode.pending() {
            let pending = Pending {
                zone: zone.clone(),
                latest_ms: time_ms,
                arrived_ms: self.wall_ms,
            };
            self.pending.insert(key, pending);
        } else if was_pending {
            self.pending.remove(&key);
        }
        if let Some(transition) = transition {
            self.emit(i, subject, zone, transition, time_ms, value);
        }
    }

    /// Turns a transition of (rule `i`, `subject`) at `time_ms` into the alert operators see and
    /// its event, and passes a crowd grade on to the coupled rules of the area's access roads.
    pub(super) fn emit(
        &mut self,
        i: usize,
        subject: &Arc<str>,
        zone: &Arc<str>,
        transition: Transition,
        time_ms: i64,
        value: f64,
    ) {
        let key = (i, subject.clone());
        let c = &self.rules[i];
        let Some(state) = self.states.get_mut(&key) else {
            return;
        };
        let rule = &c.rule;
        let (name, zone) = self.ctx.name_and_zone(subject, zone);
        let grade_info = |g: u8| c.grade_info(subject, g);
        let flapping = state.episode.crossings >= FLAPPING_CROSSINGS;
        let (kind, grade, from) = match transition {
            Transition::Raised { grade } => (EventKind::Raised, grade, None),
            Transition::Escalated { from, to } => (EventKind::Escalated, to, Some(from)),
            Transition::Renotified { grade } => (EventKind::Renotified, grade, None),
            Transition::Resolved { grade } => (EventKind::Resolved, grade, None),
        };
        let previous_severity = from.map(|g| grade_info(g).0);
        let (severity, label, threshold) = grade_info(grade);
        let advice = match kind {
            EventKind::Resolved => None,
            _ => self
                .situation
                .advise(&rule.field, subject, &severity, value, time_ms),
        };
        let alert = state.alert.get_or_insert_with(|| Alert {
            id: format!("{}:{}:{}", rule.id, subject, time_ms),
            rule: rule.id.clone(),
            category: rule.category,
            subject: subject.to_string(),
            subject_name: name.clone(),
            zone: zone.to_string(),
            grade,
            severity: String::new(),
            label: String::new(),
            status: Status::Firing,
            value,
            threshold,
            started_ms: time_ms,
            updated_ms: time_ms,
            resolved_ms: None,
            ack: None,
            flapping,
            assigned_to: None,
            comments: Vec::new(),
            summary: String::new(),
            advice: None,
            calendar: None,
            duty: None,
            escalation: None,
        });
        if kind == EventKind::Renotified && alert.ack.is_some() {
            return; // taken: no reminders
        }
        alert.grade = grade;
        alert.severity = severity;
        alert.label = label.clone();
        alert.flapping |= flapping;
        alert.updated_ms = time_ms;
        if kind != EventKind::Resolved {
            alert.value = value;
            alert.threshold = threshold;
        }
        if kind == EventKind::Escalated {
            alert.ack = None;
        }
        alert.advice = advice;
        if matches!(kind, EventKind::Raised | EventKind::Escalated) {
            if rule.category == super::rule::Category::Crowd {
                alert.calendar = self.calendar.clone();
            }
            alert.duty = self.grids.route(subject, time_ms);
            // The person on duty is called now; an escalation starts again from them.
            let wall = self.wall_ms.map_or(time_ms, |w| w.max(time_ms));
            self.stepped_wall.insert(key.clone(), wall);
            alert.escalation = alert.duty.as_ref().map(|route| super::duty::Escalation {
                step: 0,
                // Event time, as every other time of the alert: replicas of a partition take
                // the same steps at the same times (one event id each), and an alarm a node
                // queued while offline has been waiting since it happened.
                since_ms: time_ms,
                to: Some(super::duty::called(route, 0)),
            });
        }
        let sign = if rule.side == Side::Above {
            "≥"
        } else {
            "≤"
        };
        alert.summary = match kind {
            EventKind::Resolved => format!("{name}: {} — resolved (was {label})", rule.description),
            _ => format!(
                "{name}: {} — {label} ({} {} {sign} {})",
                rule.description,
                if rule.field.is_empty() {
                    "grade"
                } else {
                    &rule.field
                },
                round(alert.value),
                round(threshold)
            ),
        };
        if kind == EventKind::Resolved {
            alert.status = Status::Resolved;
            alert.resolved_ms = Some(time_ms);
        }
        let event = AlertEvent {
            kind,
            at_ms: time_ms,
            previous_severity,
            alert: alert.clone(),
        };
        if kind == EventKind::Resolved {
            super::retro::remember(&mut state.past, (alert.started_ms, time_ms));
            state.alert = None;
        }
        self.dirty.insert(key);
        self.events.push(event);
        let coupled = self.rules[i].coupled.clone();
        if coupled.is_empty() {
            return;
        }
        let upstream_grade = f64::from(self.states[&(i, subject.clone())].episode.grade);
        for road in self
            .ctx
            .access_roads
            .get(subject)
            .cloned()
            .unwrap_or_default()
        {
            let road_zone = self
                .ctx
                .subjects
                .get(&road)
                .map_or(zone.clone(), |(_, z)| z.clone());
            for &ci in &coupled {
                self.evaluate(ci, &road, &road_zone, time_ms, &|n| {
                    (n == "grade").then_some(upstream_grade)
                });
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::alert::cases::run_case;
    use crate::alert::model::{AckError, Changes};
    use crate::alert::rule::Category;
    use crate::alert::rule::{DefaultsTuning, RuleFile, defaults};
    use crate::registry::StatusTopic;

    #[test]
    pub(super) fn history_extremes_match_a_walk_through_every_kept_value() {
        let keep_ms = 120_000;
        let mut h = History::default();
        let mut all: Vec<(i64, f64)> = Vec::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut t = 0i64;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += (x % 700) as i64; // several values per second, some at the same millisecond
            let v = (x % 1000) as f64 / 1000.0;
            h.push(t, v, keep_ms);
            all.push((t, v));
            for back in [0, 1, 999, 30_000, 119_999, 120_000] {
                let from = t - back;
                let kept = all
                    .iter()
                    .filter(|&&(at, _)| at >= from && at >= t - keep_ms);
                let max = kept.clone().map(|&(_, v)| v).reduce(f64::max);
                let min = kept.map(|&(_, v)| v).reduce(f64::min);
                assert_eq!(h.max_since(from), max, "max since {from} at {t}");
                assert_eq!(h.min_since(from), min, "min since {from} at {t}");
            }
            assert_eq!(h.latest_since(t), Some(v));
        }
        assert!(
            h.maxima.len() + h.minima.len() < 2 * all.len() / 10,
            "only extremes are kept"
        );
    }

    pub(in crate::alert) fn engine() -> Engine {
        let catalog = Catalog::ganzhou().unwrap();
        let rules = defaults(&catalog, &DefaultsTuning::default());
        Engine::new(&catalog, rules, 3600)
    }

    pub(in crate::alert) fn crowd_point(area: &str, minute: i64, ratio: f64) -> Point {
        Point {
            measurement: "crowd".into(),
            tags: vec![
                ("area".into(), area.into()),
                ("zone".into(), "360702".into()),
            ],
            fields: vec![("occupancy_ratio".into(), FieldValue::Float(ratio))],
            time_ms: minute * 60_000,
            quality: Default::default(),
        }
    }

    pub(super) fn gas(device: &str, time_ms: i64, value: f64) -> Reading {
        Reading {
            device: device.into(),
            zone: "360702".into(),
            kind: "tunnel-gas".into(),
            time_ms,
            received_ms: time_ms,
            unsynced_clock: false,
            origin: None,
            measurement: Measurement::Value {
                field: "gas".into(),
                value,
                urgent: false,
            },
        }
    }

    pub(in crate::alert) fn kinds(c: &Changes) -> Vec<(String, &'static str, String)> {
        c.events
            .iter()
            .map(|e| {
                (
                    e.alert.rule.clone(),
                    e.kind.name(),
                    e.alert.severity.clone(),
                )
            })
            .collect()
    }

    #[test]
    pub(super) fn the_shipped_rule_file_passes_its_own_cases() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rules/ganzhou.toml");
        let (report, ok) = crate::rules_test(&[path], None).unwrap();
        assert!(ok, "{report}");
        assert!(report.contains("0 failed"), "{report}");
    }

    #[test]
    pub(super) fn a_wrong_expectation_fails_with_a_diff() {
        let file = RuleFile::parse(
            std::path::Path::new("wrong.toml"),
            r#"
[[test]]
name = "gas at 21% is not an alarm (wrong on purpose)"
rule = "pipe.gas_high"
rows = [{ at_s = 0, gas = 21.0 }]
expect = []
"#,
        )
        .unwrap();
        let catalog = Catalog::ganzhou().unwrap();
        let rules = defaults(&catalog, &DefaultsTuning::default());
        let diff = run_case(&rules, &file.test[0], 3600, &catalog).unwrap_err();
        assert_eq!(
            diff,
            "expected:\n    (nothing)\ngot:\n    at_s = 0: raised alarm\n"
        );
    }

    #[test]
    pub(super) fn a_surge_on_points_raises_the_area_and_couples_its_access_roads() {
        let mut e = engine();
        e.on_points(&[crowd_point("S4", 1, 0.65)]);
        let c = e.take_changes();
        assert_eq!(
            kinds(&c),
            vec![("crowd.occupancy".into(), "raised", "blue".into())]
        );
        let a = &c.events[0].alert;
        assert_eq!(
            (a.subject.as_str(), a.subject_name.as_str(), a.zone.as_str()),
            ("S4", "通天岩", "360702")
        );
        assert_eq!(a.id, "crowd.occupancy:S4:60000");
        e.on_points(&[crowd_point("S4", 2, 0.82)]);
        let c = e.take_changes();
        let got = kinds(&c);
        assert_eq!(
            got[0],
            ("crowd.occupancy".into(), "escalated", "yellow".into())
        );
        assert_eq!(c.events[0].previous_severity.as_deref(), Some("blue"));
        let roads: Vec<&str> = c.events[1..]
            .iter()
            .map(|e| {
                assert_eq!(e.alert.rule, "traffic.crowd_coupling");
                e.alert.subject.as_str()
            })
            .collect();
        let site = Catalog::ganzhou().unwrap().site;
        let s4 = site.scenic_areas.iter().find(|a| a.id == "S4").unwrap();
        assert_eq!(
            roads,
            s4.access_roads
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        );
        assert!(!roads.is_empty());
        // The crowd resolves; its coupling follows.
        e.on_points(&[crowd_point("S4", 3, 0.2), crowd_point("S4", 14, 0.2)]);
        let c = e.take_changes();
        assert!(c.events.iter().all(|e| e.kind == EventKind::Resolved));
        assert_eq!(c.events.len(), 1 + roads.len());
        assert!(e.open_alerts().is_empty());
    }

    #[test]
    pub(super) fn choke_points_and_areas_are_separate_subjects() {
        let mut e = engine();
        let mut p = crowd_point("S3", 1, 0.95);
        p.tags.insert(1, ("choke_point".into(), "S3-bridge".into()));
        e.on_points(&[p]);
        let c = e.take_changes();
        assert_eq!(
            kinds(&c),
            vec![("crowd.choke_point".into(), "raised", "orange".into())]
        );
        assert_eq!(c.events[0].alert.subject, "S3-bridge");
    }

    #[test]
    pub(super) fn a_restart_mid_episode_neither_refires_nor_forgets() {
        let mut e = engine();
        e.on_readings(&[gas("gz-t1-gas", 1_000, 22.0)]);
        let c = e.take_changes();
        assert_eq!(
            kinds(&c),
            vec![("pipe.gas_high".into(), "raised", "alarm".into())]
        );
        assert_eq!(
            c.events[0].alert.subject, "T1",
            "pipe readings alert on their asset"
        );
        // What the store kept, through JSON as the store keeps it.
        let rows: Vec<(String, SubjectState)> = c
            .states
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap(),
                )
            })
            .collect();
        let mut restarted = engine();
        assert!(restarted.restore(rows).is_empty());
        assert_eq!(restarted.open_alerts().len(), 1);
        restarted.on_readings(&[gas("gz-t1-gas", 2_000, 22.5)]);
        assert!(restarted.take_changes().events.is_empty(), "no re-fire");
        restarted.on_readings(&[gas("gz-t1-gas", 3_000, 2.0)]);
        let c = restarted.take_changes();
        assert_eq!(
            kinds(&c),
            vec![("pipe.gas_high".into(), "resolved", "alarm".into())]
        );
        assert_eq!(
            c.events[0].alert.id, "pipe.gas_high:T1:1000",
            "the same alert resolves"
        );
    }

    #[test]
    pub(super) fn acknowledging_silences_reminders_until_an_escalation() {
        let catalog = Catalog::ganzhou().unwrap();
        let mut e = Engine::new(&catalog, defaults(&catalog, &DefaultsTuning::default()), 60);
        e.on_readings(&[gas("gz-t1-gas", 0, 21.0)]);
        let id = e.take_changes().events[0].alert.id.clone();
        assert_eq!(
            e.ack("nope", "li", "", 5),
            Err(AckError::NotFound("nope".into()))
        );
        let acked = e.ack(&id, "li", "ventilation on", 5).unwrap();
        assert_eq!(acked.ack.as_ref().unwrap().by, "li");
        assert_eq!(
            kinds(&e.take_changes()),
            vec![("pipe.gas_high".into(), "acknowledged", "alarm".into())]
        );
        e.on_readings(&[gas("gz-t1-gas", 120_000, 21.0)]);
        assert!(e.take_changes().events.is_empty(), "no reminder once taken");
        e.on_readings(&[gas("gz-t1-gas", 130_000, 26.0)]);
        let c = e.take_changes();
        assert_eq!(
            kinds(&c),
            vec![("pipe.gas_high".into(), "escalated", "critical".into())]
        );
        assert!(
            c.events[0].alert.ack.is_none(),
            "an escalation needs a new acknowledgement"
        );
    }

    #[test]
    pub(super) fn a_replica_adopts_what_operators_did_on_its_peer_once_with_their_times() {
        let (mut a, mut b) = (engine(), engine());
        for e in [&mut a, &mut b] {
            e.on_readings(&[gas("gz-t1-gas", 0, 21.0)]);
            e.take_changes();
        }
        let id = "pipe.gas_high:T1:0";
        a.ack(id, "wang.li", "ventilation on", 5_000).unwrap();
        a.assign(id, "zhao", "wang.li", 6_000).unwrap();
        let theirs = a.comment(id, "zhao", "on site", 7_000).unwrap();
        let on_a = a.take_changes().events;
        assert_eq!(b.adopt(&theirs), Ok(3));
        let on_b = b.take_changes().events;
        assert_eq!(
            on_b, on_a,
            "the same events, alert and times on both replicas"
        );
        assert_eq!(b.adopt(&theirs), Ok(0), "twice changes nothing");
        // Its own state back changes nothing either; an alert not open here is not found.
        assert_eq!(a.adopt(&theirs), Ok(0));
        let mut other = theirs.clone();
        other.id = "pipe.gas_high:T1:99".into();
        assert_eq!(b.adopt(&other), Err(AckError::NotFound(other.id.clone())));
    }

    #[test]
    pub(super) fn a_replica_behind_its_peer_adopts_an_acknowledgement_once_it_caught_up() {
        let (mut a, mut b) = (engine(), engine());
        for e in [&mut a, &mut b] {
            e.on_readings(&[gas("gz-t1-gas", 0, 21.0)]);
            e.take_changes();
        }
        let id = "pipe.gas_high:T1:0";
        // The peer escalated to critical, then its operator acknowledged the critical alarm.
        a.on_readings(&[gas("gz-t1-gas", 60_000, 26.0)]);
        a.take_changes();
        let theirs = a.ack(id, "wang.li", "evacuated", 61_000).unwrap();
        a.take_changes();
        assert_eq!(
            b.adopt(&theirs),
            Err(AckError::NotFound(id.into())),
            "not before this replica escalated too"
        );
        b.on_readings(&[gas("gz-t1-gas", 60_000, 26.0)]);
        b.take_changes();
        assert_eq!(b.adopt(&theirs), Ok(1));
        assert_eq!(b.open_alerts()[0], theirs);
        // A peer behind: its acknowledgement of the lower grade is not taken here.
        let (mut c, mut d) = (engine(), engine());
        for e in [&mut c, &mut d] {
            e.on_readings(&[gas("gz-t1-gas", 0, 21.0)]);
            e.take_changes();
        }
        let behind = c.ack(id, "zhao", "", 1_000).unwrap();
        d.on_readings(&[gas("gz-t1-gas", 60_000, 26.0)]);
        d.take_changes();
        assert_eq!(d.adopt(&behind), Ok(0));
        assert!(d.open_alerts()[0].ack.is_none());
    }

    #[test]
    pub(super) fn unchanged_episodes_are_not_rewritten_for_every_value() {
        let mut e = engine();
        e.on_readings(&[gas("gz-t1-gas", 0, 1.0)]);
        e.take_changes();
        e.on_readings(&[gas("gz-t1-gas", 1_000, 1.5), gas("gz-t1-gas", 2_000, 1.2)]);
        assert!(e.take_changes().is_empty());
    }

    #[test]
    pub(super) fn a_burst_is_confirmed_by_a_neighbour_drop() {
        let catalog = Catalog::ganzhou().unwrap();
        let p1 = catalog
            .site
            .pipe_assets
            .iter()
            .find(|a| a.id == "P1")
            .unwrap();
        let neighbour = p1
            .neighbours
            .first()
            .expect("P1 has a neighbour in the site")
            .clone();
        let nb_device = catalog
            .site
            .pipe_assets
            .iter()
            .find(|a| a.id == neighbour)
            .unwrap()
            .devices[0]
            .clone();
        let pressure = |device: &str, t: i64, v: f64| Reading {
            kind: "water-pressure".into(),
            measurement: Measurement::Value {
                field: "pressure".into(),
                value: v,
                urgent: false,
            },
            ..gas(device, t, v)
        };
        let mut e = engine();
        e.on_readings(&[
            pressure(&p1.devices[0], 0, 0.30),
            pressure(&nb_device, 0, 0.30),
            pressure(&nb_device, 50_000, 0.22),
            pressure(&p1.devices[0], 60_000, 0.17),
        ]);
        let c = e.take_changes();
        let bursts: Vec<&str> = c
            .events
            .iter()
            .filter(|e| e.alert.rule == "pipe.burst")
            .map(|e| e.alert.subject.as_str())
            .collect();
        assert_eq!(bursts, vec!["P1"], "{:?}", kinds(&c));
    }

    #[test]
    pub(super) fn a_refused_sink_raises_a_gateway_alert_until_it_delivers_again() {
        let mut e = engine();
        e.on_sinks(1_000, "360702", &[("influxdb", false)]);
        assert!(e.take_changes().events.is_empty());
        e.on_sinks(2_000, "360702", &[("influxdb", true)]);
        let c = e.take_changes();
        assert_eq!(
            kinds(&c),
            vec![("gateway.sink_refused".into(), "raised", "alarm".into())]
        );
        assert_eq!(c.events[0].alert.subject, "influxdb");
        assert_eq!(c.events[0].alert.category, Category::Gateway);
        e.on_sinks(3_000, "360702", &[("influxdb", true)]);
        assert!(e.take_changes().events.is_empty(), "one alert per episode");
        e.on_sinks(4_000, "360702", &[("influxdb", false)]);
        assert_eq!(
            kinds(&e.take_changes()),
            vec![("gateway.sink_refused".into(), "resolved", "alarm".into())]
        );
    }

    #[test]
    pub(super) fn a_gate_silent_in_opening_hours_is_stale_and_a_silent_device_offline() {
        let catalog = Catalog::ganzhou().unwrap();
        let keys = crate::keys::Keys::demo(&catalog);
        let mut registry = Registry::new(&catalog, &keys, &[]);
        // 2026-11-27 10:00 in Ganzhou (+08:00): 通天岩 is open (07:00–18:00).
        let ten_am = 1_795_744_800_000;
        registry.get_mut("gz-s4-g1").unwrap().state.last_seen_ms = Some(ten_am - 60_000);
        let mut e = engine();
        let stale = |c: &Changes| -> Vec<(String, &'static str, String)> {
            kinds(c)
                .into_iter()
                .filter(|k| k.0 == "crowd.sensor_stale")
                .collect()
        };
        e.on_presence(ten_am, &registry);
        assert!(
            stale(&e.take_changes()).is_empty(),
            "a minute of silence is fine"
        );
        e.on_presence(ten_am + 5 * 60_000, &registry);
        let c = e.take_changes();
        assert_eq!(
            stale(&c),
            vec![("crowd.sensor_stale".into(), "raised", "warning".into())]
        );
        let raised = c
            .events
            .iter()
            .find(|e| e.alert.rule == "crowd.sensor_stale")
            .unwrap();
        assert_eq!(raised.alert.subject, "gz-s4-g1");
        // Silent for six minutes, over twice its report interval: offline too.
        assert!(
            kinds(&c).contains(&("device.offline".into(), "raised", "warning".into())),
            "{:?}",
            kinds(&c)
        );
        // The same silence after closing time is no longer a data-quality problem.
        let eight_pm = ten_am + 10 * 3_600_000;
        e.on_presence(eight_pm, &registry);
        let got = stale(&e.take_changes());
        assert_eq!(
            got,
            vec![("crowd.sensor_stale".into(), "resolved", "warning".into())]
        );
    }

    #[test]
    pub(super) fn presence_keeps_no_state_for_devices_at_rest_and_writes_a_resolved_one_at_rest() {
        let catalog = Catalog::ganzhou().unwrap();
        let keys = crate::keys::Keys::demo(&catalog);
        let mut registry = Registry::new(&catalog, &keys, &[]);
        let t = 1_795_744_800_000;
        let ids: Vec<Arc<str>> = registry.iter().map(|d| d.info.id.clone()).collect();
        for id in &ids {
            registry.get_mut(id).unwrap().state.last_seen_ms = Some(t);
        }
        let mut e = engine();
        e.on_presence(t + 1_000, &registry);
        assert!(e.take_changes().is_empty());
        assert!(
            e.states.is_empty(),
            "every device online: {:?}",
            e.states.keys()
        );
        // One device goes silent, is raised offline, then reports again.
        let silent = "gz-p1-press";
        let mut offline = None;
        for now in (1..120).map(|m| t + m * 60_000) {
            for id in ids.iter().filter(|id| ***id != *silent) {
                registry.get_mut(id).unwrap().state.last_seen_ms = Some(now);
            }
            e.on_presence(now, &registry);
            let c = e.take_changes();
            if let Some(ev) = c.events.iter().find(|ev| ev.alert.rule == "device.offline") {
                assert_eq!(ev.alert.subject, silent);
                offline = Some(now);
                break;
            }
        }
        let offline = offline.expect("raised offline");
        assert!(!e.states.is_empty());
        for id in &ids {
            registry.get_mut(id).unwrap().state.last_seen_ms = Some(offline);
        }
        e.on_presence(offline + 1_000, &registry);
        let c = e.take_changes();
        assert!(c.events.iter().any(|ev| ev.kind == EventKind::Resolved));
        let row = format!("device.offline|{silent}");
        let (_, written) = c.states.iter().find(|(k, _)| *k == row).unwrap();
        assert!(written.alert.is_none() && written.episode.grade == 0);
        e.on_presence(offline + 2_000, &registry);
        assert!(
            e.states
                .values()
                .all(|s| s.alert.is_some() || !s.episode.at_rest()),
            "only states under way are kept"
        );
    }

    /// What each device does before a presence check: nothing, report, or say on its status
    /// topic that it is offline or online.
    #[derive(Debug, Clone, Copy)]
    enum Presenting {
        Quiet,
        Report,
        SayOffline,
        SayOnline,
    }

    fn presenting() -> impl proptest::strategy::Strategy<Value = Presenting> {
        use proptest::prelude::*;
        prop_oneof![
            6 => Just(Presenting::Quiet),
            3 => Just(Presenting::Report),
            1 => Just(Presenting::SayOffline),
            1 => Just(Presenting::SayOnline),
        ]
    }

    /// The presence rules as they were before they visited by change: every device of the
    /// rule's kinds at every check, offline or online.
    fn visit_every_device(e: &mut Engine, now_ms: i64, registry: &Registry) {
        for i in 0..e.rules.len() {
            if e.rules[i].rule.source != Source::Presence {
                continue;
            }
            for d in registry.iter() {
                let rule = &e.rules[i].rule;
                if !(rule.kinds.is_empty() || rule.kinds.iter().any(|k| **k == *d.info.kind)) {
                    continue;
                }
                let value = match rule.field.as_str() {
                    "offline" => match d.presence(now_ms) {
                        Presence::Offline => 1.0,
                        Presence::Online => 0.0,
                        Presence::Unknown => continue,
                    },
                    "silence_s" => match e.silence_s(d, now_ms) {
                        Some(silence) => silence,
                        None => continue,
                    },
                    _ => continue,
                };
                let (id, zone) = (d.info.id.clone(), d.info.zone.clone());
                e.evaluate(i, &id, &zone, now_ms, &|_| Some(value));
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The presence rules visit only the devices whose presence changed since the last
        /// check, and the offline ones; an engine that visits every device at every check (as
        /// they once did) raises, reminds, escalates and resolves exactly the same alerts at
        /// the same times, whatever the holds, reminders, silences and status messages.
        #[test]
        fn presence_by_change_alerts_as_a_visit_of_every_device_would(
            steps in proptest::collection::vec(
                (1i64..150, proptest::collection::vec((0usize..1_000, presenting()), 0..6)),
                1..60,
            ),
            hold_s in 0u32..90,
            clear_hold_s in 0u32..90,
            renotify_s in 0u32..200,
        ) {
            let catalog = Catalog::ganzhou().unwrap();
            let keys = crate::keys::Keys::demo(&catalog);
            let mut registry = Registry::new(&catalog, &keys, &[]);
            let mut rules = defaults(&catalog, &DefaultsTuning::default());
            for r in rules.iter_mut().filter(|r| r.id == "device.offline") {
                (r.hold_s, r.clear_hold_s) = (hold_s, clear_hold_s);
                r.renotify_s = Some(renotify_s);
            }
            let mut by_change = Engine::new(&catalog, rules.clone(), 3600);
            let mut every = Engine::new(&catalog, rules, 3600);
            let ids: Vec<Arc<str>> = registry.iter().map(|d| d.info.id.clone()).collect();
            // 2026-11-27 10:00 in Ganzhou: scenic areas open, so gates' silence counts too.
            let mut now = 1_795_744_800_000;
            for (advance_s, acts) in steps {
                now += advance_s * 1000;
                for (pick, act) in acts {
                    let d = registry.get_mut(&ids[pick % ids.len()]).unwrap();
                    match act {
                        Presenting::Quiet => {}
                        Presenting::Report => d.state.last_seen_ms = Some(now),
                        Presenting::SayOffline => d.state.status_topic = Some(StatusTopic::Offline),
                        Presenting::SayOnline => d.state.status_topic = Some(StatusTopic::Online),
                    }
                }
                let mut seen = Vec::new();
                for (e, all) in [(&mut by_change, false), (&mut every, true)] {
                    e.tick(now);
                    if all {
                        visit_every_device(e, now, &registry);
                    } else {
                        e.on_presence(now, &registry);
                    }
                    let events: Vec<(String, String, &'static str, String, i64)> = e
                        .take_changes()
                        .events
                        .iter()
                        .map(|ev| {
                            let a = &ev.alert;
                            (a.rule.clone(), a.subject.clone(), ev.kind.name(), a.severity.clone(), ev.at_ms)
                        })
                        .collect();
                    seen.push(events);
                }
                proptest::prop_assert_eq!(&seen[0], &seen[1], "at {}", now);
            }
        }
    }

    fn tilt(time_ms: i64, value: f64) -> Reading {
        Reading {
            device: "gz-m1-cover".into(),
            zone: "360702".into(),
            kind: "smart-manhole".into(),
            time_ms,
            received_ms: time_ms,
            unsynced_clock: false,
            origin: None,
            measurement: Measurement::Value {
                field: "tilt".into(),
                value,
                urgent: true,
            },
        }
    }

    fn tilt_events(e: &mut Engine) -> Vec<(EventKind, i64, String)> {
        e.take_changes()
            .events
            .into_iter()
            .filter(|x| x.alert.rule.contains("tilt"))
            .map(|x| (x.kind, x.at_ms, x.alert.severity))
            .collect()
    }

    #[test]
    fn a_cover_that_reports_once_when_lifted_raises_when_its_hold_ends() {
        let mut e = engine();
        const T: i64 = 1_790_900_000_000;
        e.arrived(T);
        e.on_readings(&[tilt(T, 45.0)]);
        assert!(
            tilt_events(&mut e).is_empty(),
            "the 30-s hold has just begun"
        );
        e.tick(T + 29_000);
        assert!(tilt_events(&mut e).is_empty());
        e.tick(T + 30_400);
        let raised = tilt_events(&mut e);
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!((raised[0].0, raised[0].1), (EventKind::Raised, T + 30_000));
        e.tick(T + 31_000);
        assert!(tilt_events(&mut e).is_empty(), "raised once");
    }

    #[test]
    fn a_rehearsal_on_a_past_day_completes_a_hold_only_after_its_span_without_a_newer_value() {
        let mut e = engine();
        const NOW: i64 = 1_790_900_000_000;
        // Values of three days ago arrive now, a simulated second every 10 ms.
        let past = NOW - 3 * 86_400_000;
        e.arrived(NOW);
        e.on_readings(&[tilt(past, 45.0)]);
        e.tick(NOW + 1_000);
        assert!(
            tilt_events(&mut e).is_empty(),
            "the wall clock is days past the hold's end, but the cover's own clock is not"
        );
        // The next simulated value puts the cover back before its hold ended: nothing to raise.
        e.arrived(NOW + 1_010);
        e.on_readings(&[tilt(past + 10_000, 0.5)]);
        e.tick(NOW + 60_000);
        assert!(tilt_events(&mut e).is_empty());
        // Lifted again and nothing more arrives: raised once its 30 s have passed.
        e.arrived(NOW + 61_000);
        e.on_readings(&[tilt(past + 20_000, 45.0)]);
        e.tick(NOW + 90_000);
        assert!(tilt_events(&mut e).is_empty());
        e.tick(NOW + 91_000);
        let raised = tilt_events(&mut e);
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(
            (raised[0].0, raised[0].1),
            (EventKind::Raised, past + 50_000)
        );
    }

    #[test]
    fn a_hold_under_way_survives_a_restart_and_completes_on_the_clock() {
        let mut e = engine();
        const T: i64 = 1_790_900_000_000;
        e.arrived(T);
        e.on_readings(&[tilt(T, 45.0)]);
        // What the store kept, through JSON as the store keeps it.
        let rows: Vec<(String, SubjectState)> = e
            .take_changes()
            .states
            .into_iter()
            .map(|(k, s)| {
                (
                    k,
                    serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap(),
                )
            })
            .collect();
        assert!(!rows.is_empty(), "the rising hold is persisted");
        // The gateway comes back 10 s later: the hold's 30 s count from its first look.
        let mut restarted = engine();
        assert!(restarted.restore(rows).is_empty());
        restarted.tick(T + 10_000);
        assert!(tilt_events(&mut restarted).is_empty());
        restarted.tick(T + 39_000);
        assert!(tilt_events(&mut restarted).is_empty());
        restarted.tick(T + 40_000);
        let raised = tilt_events(&mut restarted);
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!((raised[0].0, raised[0].1), (EventKind::Raised, T + 30_000));
    }

    #[test]
    fn a_reload_keeps_the_open_alerts_of_rules_still_in_force_and_drops_the_others() {
        let mut e = engine();
        e.on_points(&[crowd_point("S4", 1, 0.65)]);
        assert_eq!(kinds(&e.take_changes()).len(), 1);
        let catalog = Catalog::ganzhou().unwrap();
        let rules = defaults(&catalog, &DefaultsTuning::default());
        e.on_points(&[crowd_point("S5", 1, 0.3)]);
        assert!(e.reload(&catalog, rules.clone(), 3600).is_empty());
        assert_eq!(e.open_alerts().len(), 1);
        // What the advice reads survives the reload: S5 is still known at 30%.
        let advice = e
            .situation
            .advise("occupancy_ratio", "S4", "red", 1.0, 60_000);
        assert_eq!(advice.unwrap().divert_to[0].area, "S5");
        // The kept state knows the alert: the same value raises nothing again.
        e.on_points(&[crowd_point("S4", 2, 0.65)]);
        assert!(e.take_changes().events.is_empty());
        let without: Vec<Rule> = rules
            .into_iter()
            .filter(|r| r.id != "crowd.occupancy")
            .collect();
        let dropped = e.reload(&catalog, without, 3600);
        assert!(
            dropped.contains(&"crowd.occupancy|S4".to_owned()),
            "{dropped:?}"
        );
        assert!(e.open_alerts().is_empty());
    }

    #[test]
    fn an_orange_area_names_where_to_send_visitors_and_keeps_it_current_without_an_event() {
        let mut e = engine();
        e.on_points(&[crowd_point("S5", 10, 0.45), crowd_point("S4", 10, 0.65)]);
        let blue = e.take_changes();
        assert!(
            blue.events.iter().all(|ev| ev.alert.advice.is_none()),
            "蓝 calls for no diversion"
        );
        e.on_points(&[crowd_point("S4", 11, 0.92)]);
        let c = e.take_changes();
        let raised = c
            .events
            .iter()
            .find(|ev| ev.alert.rule == "crowd.occupancy" && ev.alert.subject == "S4")
            .unwrap();
        assert_eq!(raised.alert.severity, "orange");
        let advice = raised.alert.advice.as_ref().expect("橙 names where to go");
        assert_eq!(advice.divert_to[0].area, "S5");
        assert_eq!(advice.divert_to[0].occupancy_ratio, 0.45);
        // S5 fills up: the open alert's advice follows, with no event, and its state is
        // committed.
        e.on_points(&[crowd_point("S5", 12, 0.7), crowd_point("S4", 12, 0.92)]);
        let c = e.take_changes();
        assert!(
            c.events.iter().all(|ev| ev.alert.subject != "S4"),
            "{:?}",
            kinds(&c)
        );
        let open = e.open_alerts();
        let s4 = open
            .iter()
            .find(|a| a.rule == "crowd.occupancy" && a.subject == "S4")
            .unwrap();
        assert!(s4.advice.as_ref().unwrap().divert_to.is_empty());
        assert!(
            c.states.iter().any(|(row, _)| row == "crowd.occupancy|S4"),
            "the changed advice is committed"
        );
    }

    #[test]
    fn a_crowd_alert_on_a_holiday_states_the_calendar_entry_in_force() {
        let mut e = engine();
        e.set_calendar(Some(
            "国庆节（黄金周） (national-day-2026): 容量上限 75%".into(),
        ));
        e.on_points(&[crowd_point("S4", 1, 0.65)]);
        let c = e.take_changes();
        assert_eq!(
            c.events[0].alert.calendar.as_deref(),
            Some("国庆节（黄金周） (national-day-2026): 容量上限 75%")
        );
        e.set_calendar(None);
        e.on_points(&[crowd_point("S1", 1, 0.65)]);
        let c = e.take_changes();
        let s1 = c.events.iter().find(|ev| ev.alert.subject == "S1").unwrap();
        assert_eq!(s1.alert.calendar, None, "an ordinary day names none");
    }

    #[test]
    fn an_alert_goes_to_its_grid_and_the_person_the_roster_has_on_duty_then() {
        let mut e = engine();
        // 2026-10-02 15:00 +08:00, Golden Week: the reinforced roster of 城西景区网格.
        let golden_week = 1_790_924_400_000;
        let at = |p: Point, t: i64| Point { time_ms: t, ..p };
        e.on_points(&[at(crowd_point("S4", 0, 0.65), golden_week)]);
        let c = e.take_changes();
        let route = c.events[0].alert.duty.clone().expect("S4 is in a grid");
        assert_eq!(route.grid, "zg-west-scenic");
        assert_eq!(route.on_duty.unwrap().name, "黄金周值守（示例）");
        assert_eq!(route.supervisor.unwrap().name, "黄金周带班领导（示例）");
        assert_eq!(route.head.phone, "13800000001");
        // 2026-11-14 21:30 +08:00, an ordinary night: the night shift of the old city; the
        // bridge is in its area's grid.
        let night = 1_794_663_000_000;
        e.on_points(&[Point {
            tags: vec![
                ("area".into(), "S3".into()),
                ("choke_point".into(), "S3-bridge".into()),
                ("zone".into(), "360702".into()),
            ],
            ..at(crowd_point("S3", 0, 0.65), night)
        }]);
        let c = e.take_changes();
        let bridge = c
            .events
            .iter()
            .find(|ev| ev.alert.subject == "S3-bridge")
            .expect("the bridge's alert");
        let route = bridge.alert.duty.as_ref().unwrap();
        assert_eq!(route.grid, "zg-old-city");
        assert_eq!(route.on_duty.as_ref().unwrap().name, "夜班值守（示例）");
    }
}
