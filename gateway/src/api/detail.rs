//! What the console's alert detail shows beside the timeline: the rule with the standard
//! behind it and what to do at each grade, its thresholds for this subject, and which series
//! of `GET /api/v1/series` to chart under them.

use serde_json::{Value, json};

use crate::alert::Alert;
use crate::alert::rule::{Rule, Source};

/// The rule of `alert` as operators read it, thresholds scaled for its subject.
pub fn rule_view(rule: &Rule, alert: &Alert) -> Value {
    let scale = rule.scale.get(&alert.subject).copied().unwrap_or(1.0);
    let grades: Vec<Value> = rule
        .grades
        .iter()
        .map(|g| {
            json!({
                "name": g.name,
                "label": g.label.as_deref().unwrap_or(&g.name),
                "at": g.at * scale,
                "advice": if g.advice.is_empty() { &rule.advice } else { &g.advice },
            })
        })
        .collect();
    json!({
        "id": rule.id,
        "description": rule.description,
        "standard": rule.standard,
        "advice": rule.advice,
        "side": rule.side,
        "field": rule.field,
        "grades": grades,
    })
}

/// The series to chart for `alert`: a measurement, the tags its points must have (`""`: the
/// tag is absent) and the field to draw; none for presence, coupling and sink rules.
pub fn chart(rule: &Rule, alert: &Alert) -> Option<Value> {
    match rule.source {
        Source::Point => Some(json!({
            "measurement": rule.measurement.as_deref()?,
            "subject": alert.subject,
            "where": rule.tags,
            "field": rule.field,
        })),
        // A reading rule's subject is a pipe asset (its devices' field, aggregated per minute)
        // or a device (its health).
        Source::Reading if rule.field == "battery_pct" => Some(json!({
            "measurement": "device_health",
            "subject": alert.subject,
            "where": {},
            "field": "battery_pct",
        })),
        Source::Reading => Some(json!({
            "measurement": "pipe",
            "subject": alert.subject,
            "where": { "field": rule.field },
            "field": "last",
        })),
        Source::Presence | Source::Coupling | Source::Sink => None,
    }
}
