//! The test cases of rule files (`[[test]]`): inputs in, the transitions a rule must make out,
//! and a readable diff when it does not (`gateway rules test`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::engine::Engine;
use super::rule::Rule;
use crate::point::{FieldValue, Point};

fn want_at(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// An `around` row as the aggregate it stands for.
fn around_point(a: &super::rule::Around) -> Option<(i64, Point)> {
    let at = (a.at_s * 1000.0).round() as i64;
    let (measurement, tags, field, value) = match (&a.area, a.occupancy_ratio, &a.segment, a.grade)
    {
        (Some(area), Some(v), None, None) => {
            ("crowd", vec![("area", area.as_str())], "occupancy_ratio", v)
        }
        (None, None, Some(segment), Some(v)) => (
            "traffic",
            vec![("segment", segment.as_str()), ("bin", "5m")],
            "grade",
            v,
        ),
        _ => return None,
    };
    Some((
        at,
        Point {
            measurement: measurement.into(),
            tags: tags
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            fields: vec![(field.into(), FieldValue::Float(value))],
            time_ms: at,
            quality: Default::default(),
        },
    ))
}

/// `v` to three decimals, as rule cases and listings show values.
pub fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Runs one rule-file test case against `rules` on the site of `catalog` (where its advice
/// looks); `Err` is a readable diff.
pub fn run_case(
    rules: &[Rule],
    case: &super::rule::TestCase,
    renotify_s: u32,
    catalog: &device_profiles::Catalog,
) -> Result<usize, String> {
    let Some(rule) = rules.iter().find(|r| r.id == case.rule) else {
        return Err(format!("no rule \"{}\" to test", case.rule));
    };
    let fresh = || {
        let mut engine = Engine::bare(vec![rule.clone()], renotify_s);
        engine.situation = super::advice::Situation::new(catalog);
        engine.grids = super::duty::Grids::new(catalog);
        engine
    };
    let mut engine = fresh();
    let ms = |s: f64| (s * 1000.0).round() as i64;
    let (mut ack_at, mut restart_at) = (case.ack_at_s.map(ms), case.restart_at_s.map(ms));
    let mut roster_change = case.roster_change.as_ref();
    let mut events = Vec::new();
    let mut around: Vec<(i64, Point)> = case.around.iter().filter_map(around_point).collect();
    around.sort_by_key(|(t, _)| *t);
    let mut around = around.into_iter().peekable();
    let mut rows: Vec<(i64, BTreeMap<String, f64>)> = case
        .rows
        .iter()
        .map(|r| {
            let at = r.get("at_s").copied().unwrap_or(0.0);
            ((at * 1000.0).round() as i64, r.clone())
        })
        .collect();
    for ramp in &case.ramp {
        let span = f64::from(ramp.to_s - ramp.from_s).max(1.0);
        let mut t = ramp.from_s;
        while t <= ramp.to_s {
            let v = ramp.start + (ramp.end - ramp.start) * f64::from(t - ramp.from_s) / span;
            let at = i64::from(t) * 1000;
            match rows.iter_mut().find(|(a, _)| *a == at) {
                Some((_, row)) => {
                    row.insert(ramp.field.clone(), v);
                }
                None => rows.push((at, BTreeMap::from([(ramp.field.clone(), v)]))),
            }
            t += ramp.every_s;
        }
    }
    rows.sort_by_key(|(t, _)| *t);
    let subject: Arc<str> = case.subject.as_str().into();
    let zone: Arc<str> = "".into();
    for (at, row) in &rows {
        while let Some((_, p)) = around.next_if(|(t, _)| t <= at) {
            engine.situation.observe(&p);
        }
        // An operator's acknowledgement, and a restart from the committed states.
        if ack_at.is_some_and(|t| t <= *at) {
            ack_at = None;
            if let Some(a) = engine.open_alerts().first() {
                let _ = engine.ack(&a.id, "case", "", *at);
            }
        }
        if restart_at.is_some_and(|t| t <= *at) {
            restart_at = None;
            let committed = engine.take_changes();
            events.extend(committed.events);
            let mut restarted = fresh();
            restarted.restore(committed.states);
            engine = restarted;
        }
        if let Some(change) = roster_change.filter(|c| ms(c.at_s) <= *at) {
            roster_change = None;
            let mut changed = catalog.clone();
            match changed.site.grids.iter_mut().find(|g| g.id == change.grid) {
                Some(g) => g.duty = change.duty.clone(),
                None => return Err(format!("roster_change: no grid \"{}\"", change.grid)),
            }
            engine.grids = super::duty::Grids::new(&changed);
        }
        // Rows are the wall clock too: holds end and unanswered alerts go to the next person.
        engine.arrived(*at);
        engine.escalate(*at);
        if let Some(v) = row.get(&rule.field) {
            engine.remember(&subject, &rule.field, *at, *v);
        }
        if let Some(v) = row.get("flow") {
            engine.remember(&subject, "flow", *at, *v);
        }
        engine.evaluate(0, &subject, &zone, *at, &|n| row.get(n).copied());
    }
    events.extend(engine.take_changes().events);
    // An acknowledgement is the operator's input, not the rule's output.
    events.retain(|e| e.kind != super::EventKind::Acknowledged);
    let got: Vec<(f64, String, String)> = events
        .iter()
        .map(|e| {
            (
                e.at_ms as f64 / 1000.0,
                e.kind.name().to_owned(),
                e.alert.severity.clone(),
            )
        })
        .collect();
    let want: Vec<(f64, String, String)> = case
        .expect
        .iter()
        .map(|e| (e.at_s, e.kind.clone(), e.grade.clone()))
        .collect();
    if got == want {
        let advice_diff: String = case
            .expect
            .iter()
            .zip(&events)
            .flat_map(|(want, e)| {
                let advice = want.advice.as_deref().map(|w| {
                    (
                        "advice",
                        w,
                        e.alert.advice.as_ref().map_or("", |a| a.text.as_str()),
                    )
                });
                let to = want.to.as_deref().map(|w| {
                    let called = e.alert.escalation.as_ref().and_then(|x| x.to.as_ref());
                    ("to", w, called.map_or("", |p| p.name.as_str()))
                });
                advice
                    .into_iter()
                    .chain(to)
                    .filter(|(_, want, got)| want != got)
                    .map(|(what, want, got)| {
                        format!(
                            "at_s = {}: {} {what}\n    expected: {want}\n    got:      {got}\n",
                            want_at(e.at_ms),
                            e.kind.name()
                        )
                    })
            })
            .collect();
        return if advice_diff.is_empty() {
            Ok(got.len())
        } else {
            Err(advice_diff)
        };
    }
    let show = |v: &[(f64, String, String)]| {
        if v.is_empty() {
            return "    (nothing)\n".to_owned();
        }
        v.iter()
            .map(|(t, k, g)| format!("    at_s = {t}: {k} {g}\n"))
            .collect::<String>()
    };
    Err(format!("expected:\n{}got:\n{}", show(&want), show(&got)))
}
