//! Rules: what is watched, on which subjects, with which thresholds.
//!
//! The defaults come from `DOMAIN.md` §6 and the site and profiles ([`defaults`]): crowd grades
//! on every scenic area and choke point, congestion and incidents on every road segment, the
//! `[[alert]]` thresholds of every profile, bursts, low batteries and offline devices. Rule
//! files (TOML, [`RuleFile`]) add rules or replace a default by reusing its id, and may carry
//! test cases that `gateway rules test FILE` runs.

mod defaults;
mod file;

pub use defaults::{DefaultsTuning, defaults};
pub use file::{Around, Expected, Ramp, RosterChange, RuleFile, TestCase};

use std::collections::BTreeMap;

use device_profiles::Catalog;
use serde::{Deserialize, Serialize};

use super::episode::{Side, Thresholds};

/// What a rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Aggregated points (`crowd`, `traffic`, `pipe`, `device_health`): the subject is the
    /// point's `choke_point`, `area`, `segment`, `asset` or `device` tag, in that order.
    Point,
    /// Readings as they arrive: `Value` fields by name, and `battery_pct` from status reports.
    /// The subject is the device's pipe asset, or the device.
    Reading,
    /// Device presence, checked every second: `offline` (1 when offline) and `silence_s`
    /// (seconds since the last report, only while the device's scenic area is open).
    Presence,
    /// Another rule's grade on a scenic area, applied to the area's access roads.
    Coupling,
    /// The gateway's sinks, checked every second: `refused` is 1 while a sink's server refuses
    /// the gateway (401/403/404). The subject is the sink.
    Sink,
}

/// The category an alert is filed under (the `{category}` of its MQTT topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Scenic-area crowds.
    Crowd,
    /// Road traffic.
    Traffic,
    /// Pipes, wells, tunnels and covers.
    Pipe,
    /// Device health (battery, presence).
    Device,
    /// The gateway itself (its sinks).
    Gateway,
}

impl Category {
    /// The label and topic segment.
    pub fn name(self) -> &'static str {
        match self {
            Category::Crowd => "crowd",
            Category::Traffic => "traffic",
            Category::Pipe => "pipe",
            Category::Device => "device",
            Category::Gateway => "gateway",
        }
    }
}

/// One grade of a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grade {
    /// Severity name: label of metrics and Alertmanager (`blue`, `warning`, `alarm`, …).
    pub name: String,
    /// What operators read (蓝, 中度拥堵, …); the name when absent.
    #[serde(default)]
    pub label: Option<String>,
    /// The set threshold.
    pub at: f64,
    /// What operators should do at this grade (the rule's `advice` when empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub advice: String,
}

/// Another field that must hold for the rule's value to count (otherwise the value counts as
/// clear).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Require {
    /// The field.
    pub field: String,
    /// It must be above this.
    #[serde(default)]
    pub above: Option<f64>,
    /// It must be below this.
    #[serde(default)]
    pub below: Option<f64>,
}

/// A value derived from the field's recent history instead of the field itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Derive {
    /// `drop` (highest value in the window minus the current) or `rise` (current minus the
    /// lowest).
    pub kind: DeriveKind,
    /// The window, seconds.
    pub window_s: u32,
}

/// See [`Derive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeriveKind {
    /// Max over the window minus now.
    Drop,
    /// Now minus min over the window.
    Rise,
}

/// How a derived value is confirmed before it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confirm {
    /// A neighbouring asset (site `neighbours`) saw at least half the first threshold within
    /// the window, or the asset's `flow` rose by half within it.
    NeighbourOrFlow,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique id, e.g. `crowd.occupancy`. A rule file reusing a default's id replaces it.
    pub id: String,
    /// Alert category.
    pub category: Category,
    /// What it means, for operators.
    #[serde(default)]
    pub description: String,
    /// The standard or regulation behind the thresholds, for operators (`LB/T 034-2014`, …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub standard: String,
    /// What operators should do when it fires; a grade's own advice comes first.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub advice: String,
    /// What it reads.
    pub source: Source,
    /// For `point` rules: the measurement.
    #[serde(default)]
    pub measurement: Option<String>,
    /// The field watched (for `coupling` rules: ignored, the upstream grade is watched).
    #[serde(default)]
    pub field: String,
    /// For `point` rules: tags that must match; `""` means the tag must be absent, `"*"` present.
    #[serde(default, rename = "where")]
    pub tags: BTreeMap<String, String>,
    /// Only devices of these kinds (`reading` and `presence` rules); empty means all.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only these subjects; empty means all.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Which side of the thresholds is bad.
    pub side: Side,
    /// Grades in order of severity, each with its set threshold.
    pub grades: Vec<Grade>,
    /// Hysteresis: a value clears this far back past the first threshold.
    #[serde(default)]
    pub clear_margin: f64,
    /// How long a grade must hold before it is raised, seconds.
    #[serde(default)]
    pub hold_s: u32,
    /// How long the value must stay clear before the alert resolves, seconds.
    #[serde(default)]
    pub clear_hold_s: u32,
    /// Re-notify an open alert this often, seconds; absent: `alerts.renotify_s`; 0: never.
    #[serde(default)]
    pub renotify_s: Option<u32>,
    /// A value counts as current this long without a newer one, seconds, so a hold completes
    /// on time after a single report; a stale value neither raises nor resolves. Absent: the
    /// offline threshold of the rule's device kinds (report interval × offline intervals) for
    /// reading rules, three windows for point rules, ten seconds for presence and sink rules.
    #[serde(default)]
    pub stale_s: Option<u32>,
    /// Other fields that must hold.
    #[serde(default)]
    pub require: Vec<Require>,
    /// Watch a change over a window instead of the value.
    #[serde(default)]
    pub derive: Option<Derive>,
    /// Confirmation of a derived value.
    #[serde(default)]
    pub confirm: Option<Confirm>,
    /// For `coupling` rules: the crowd rule whose grade is watched.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Thresholds multiplied by this factor for some subjects (a policy cap on one scenic area
    /// or choke point: `{ S7 = 0.5 }`).
    #[serde(default)]
    pub scale: BTreeMap<String, f64>,
}

impl Rule {
    /// The episode thresholds of this rule.
    pub fn thresholds(&self, default_renotify_s: u32) -> Thresholds {
        Thresholds {
            side: self.side,
            grades: self.grades.iter().map(|g| g.at).collect(),
            clear_margin: self.clear_margin,
            hold_ms: i64::from(self.hold_s) * 1000,
            clear_hold_ms: i64::from(self.clear_hold_s) * 1000,
            renotify_ms: i64::from(self.renotify_s.unwrap_or(default_renotify_s)) * 1000,
        }
    }

    /// The thresholds for one subject: scaled where `scale` names it.
    pub fn thresholds_for(&self, subject: &str, default_renotify_s: u32) -> Thresholds {
        let mut t = self.thresholds(default_renotify_s);
        if let Some(f) = self.scale.get(subject) {
            for g in &mut t.grades {
                *g *= f;
            }
            t.clear_margin *= f;
        }
        t
    }

    /// Problems with this rule, as `(key, reason)`.
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.id.is_empty() || self.id.contains(['/', ' ', '+', '#']) {
            p.push((
                "id",
                format!(
                    "\"{}\" is not a rule id (non-empty, no '/', '+', '#' or spaces)",
                    self.id
                ),
            ));
        }
        if self.grades.is_empty() {
            p.push(("grades", "a rule needs at least one grade".to_owned()));
        }
        let ordered = self.grades.windows(2).all(|w| match self.side {
            Side::Above => w[0].at < w[1].at,
            Side::Below => w[0].at > w[1].at,
        });
        if !ordered {
            p.push((
                "grades",
                format!(
                    "thresholds must grow in severity: strictly {} for side = \"{}\"",
                    if self.side == Side::Above {
                        "increasing"
                    } else {
                        "decreasing"
                    },
                    if self.side == Side::Above {
                        "above"
                    } else {
                        "below"
                    }
                ),
            ));
        }
        if self.grades.iter().any(|g| !g.at.is_finite()) {
            p.push(("grades", "thresholds must be finite numbers".to_owned()));
        }
        if !(self.clear_margin.is_finite() && self.clear_margin >= 0.0) {
            p.push(("clear_margin", "must be zero or positive".to_owned()));
        }
        match self.source {
            Source::Point if self.measurement.is_none() => p.push((
                "measurement",
                "a point rule names its measurement".to_owned(),
            )),
            Source::Coupling if self.upstream.is_none() => p.push((
                "upstream",
                "a coupling rule names the crowd rule it follows".to_owned(),
            )),
            _ => {}
        }
        if self.source != Source::Coupling && self.field.is_empty() {
            p.push(("field", "the field watched is missing".to_owned()));
        }
        if self.confirm.is_some() && self.derive.is_none() {
            p.push(("confirm", "only a derived value is confirmed".to_owned()));
        }
        if let Some((subject, f)) = self
            .scale
            .iter()
            .find(|(_, f)| !(f.is_finite() && **f > 0.0))
        {
            p.push((
                "scale",
                format!("the factor for \"{subject}\" must be a positive number, not {f}"),
            ));
        }
        if self.derive.as_ref().is_some_and(|d| d.window_s == 0) {
            p.push((
                "derive.window_s",
                "the window must be at least 1 s".to_owned(),
            ));
        }
        p
    }
}

/// Problems of rules against the site's profiles: kinds that do not exist or lack the field,
/// measurements that are never produced, coupling to a rule that is not there.
pub fn check_against(catalog: &Catalog, rules: &[Rule]) -> Vec<String> {
    const MEASUREMENTS: [&str; 4] = ["crowd", "traffic", "pipe", "device_health"];
    let mut p = Vec::new();
    for r in rules {
        for kind in &r.kinds {
            match catalog.profiles.get(kind) {
                None => p.push(format!("rule \"{}\": no device kind \"{kind}\"", r.id)),
                Some(profile)
                    if r.source == Source::Reading
                        && r.field != "battery_pct"
                        && !profile.fields.iter().any(|f| f.name == r.field) =>
                {
                    p.push(format!(
                        "rule \"{}\": device kind \"{kind}\" has no field \"{}\"",
                        r.id, r.field
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(m) = &r.measurement
            && !MEASUREMENTS.contains(&m.as_str())
        {
            p.push(format!(
                "rule \"{}\": no measurement \"{m}\" (one of {})",
                r.id,
                MEASUREMENTS.join(", ")
            ));
        }
        if let Some(up) = &r.upstream
            && !rules.iter().any(|o| &o.id == up)
        {
            p.push(format!(
                "rule \"{}\": upstream rule \"{up}\" does not exist",
                r.id
            ));
        }
    }
    p
}

/// The defaults with the rule files' rules: a rule with a default's id replaces it.
pub fn merge(mut rules: Vec<Rule>, files: &[RuleFile]) -> Vec<Rule> {
    for f in files {
        for r in &f.rule {
            match rules.iter_mut().find(|d| d.id == r.id) {
                Some(d) => *d = r.clone(),
                None => rules.push(r.clone()),
            }
        }
    }
    rules
}

/// The rules in force: the defaults of the site and profiles, then the rule files'.
pub fn in_force(
    catalog: &Catalog,
    rule_files: &[std::path::PathBuf],
    tuning: DefaultsTuning,
) -> anyhow::Result<Vec<Rule>> {
    let files = rule_files
        .iter()
        .map(|f| RuleFile::load(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let unknown: Vec<&String> = tuning
        .cap_factor_by_area
        .keys()
        .filter(|id| {
            !catalog
                .site
                .scenic_areas
                .iter()
                .any(|a| a.id == **id || a.choke_points.iter().any(|c| c.id == **id))
        })
        .collect();
    anyhow::ensure!(
        unknown.is_empty(),
        "alerts.cap_factor_by_area names no scenic area or choke point of the site: {unknown:?}"
    );
    let defaults = defaults(catalog, &tuning);
    let rules = merge(defaults, &files);
    let problems = check_against(catalog, &rules);
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::defaults::{base, grade};
    use super::*;

    #[test]
    fn the_defaults_cover_every_category_and_pass_their_own_checks() {
        let catalog = Catalog::ganzhou().unwrap();
        let rules = defaults(&catalog, &DefaultsTuning::default());
        for r in &rules {
            assert!(r.problems().is_empty(), "{}: {:?}", r.id, r.problems());
        }
        let ids: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        for id in [
            "crowd.occupancy",
            "crowd.daily",
            "crowd.forecast",
            "traffic.congestion",
            "traffic.incident",
            "pipe.burst",
            "pipe.gas_high",
            "pipe.tilt_high",
            "pipe.pressure_low",
            "device.offline",
            "device.low_battery",
        ] {
            assert!(ids.contains(&id), "{id} missing from {ids:?}");
        }
        // Water-pressure sensors and Modbus RTUs share one low-pressure rule.
        let low = rules.iter().find(|r| r.id == "pipe.pressure_low").unwrap();
        assert!(low.kinds.len() >= 2, "{:?}", low.kinds);
        // So do both manhole kinds' tilt rules, though only one profile gives advice.
        let tilt = rules.iter().find(|r| r.id == "pipe.tilt_high").unwrap();
        assert_eq!(tilt.kinds, ["manhole-json", "smart-manhole"]);
        assert!(tilt.advice.contains("井盖"), "{}", tilt.advice);
    }

    #[test]
    fn rules_are_checked_against_the_profiles() {
        let catalog = Catalog::ganzhou().unwrap();
        let mut rules = defaults(&catalog, &DefaultsTuning::default());
        assert!(check_against(&catalog, &rules).is_empty());
        rules.push(Rule {
            kinds: vec!["people-counter".into(), "no-such-kind".into()],
            grades: vec![grade("alarm", "报警", 1.0)],
            ..base("x.gas", Category::Pipe, Source::Reading, "gas", "")
        });
        assert_eq!(
            check_against(&catalog, &rules),
            vec![
                "rule \"x.gas\": device kind \"people-counter\" has no field \"gas\"",
                "rule \"x.gas\": no device kind \"no-such-kind\"",
            ]
        );
    }

    #[test]
    fn the_policy_cap_scales_the_crowd_thresholds() {
        let catalog = Catalog::ganzhou().unwrap();
        let tuning = DefaultsTuning {
            cap_factor: 0.5,
            cap_factor_by_area: BTreeMap::from([("S7".to_owned(), 0.3)]),
        };
        let rules = defaults(&catalog, &tuning);
        let r = rules.iter().find(|r| r.id == "crowd.occupancy").unwrap();
        assert_eq!(r.grades[3].at, 0.5);
        assert!((r.grades[0].at - 0.3).abs() < 1e-12);
        let s7 = r.thresholds_for("S7", 3600);
        assert!((s7.grades[3] - 0.3).abs() < 1e-12, "{s7:?}");
        assert_eq!(r.thresholds_for("S4", 3600).grades[3], 0.5);
    }

    #[test]
    fn a_bad_rule_file_names_the_rule_and_the_key() {
        let text = r#"
[[rule]]
id = "pipe.gas_custom"
category = "pipe"
source = "reading"
field = "gas"
side = "above"
grades = [{ name = "alarm", at = 50.0 }, { name = "warning", at = 25.0 }]
"#;
        let e = RuleFile::parse(Path::new("rules.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rules.toml: rule[0] (\"pipe.gas_custom\").grades: thresholds must grow"),
            "{e}"
        );
        let e = RuleFile::parse(Path::new("r.toml"), "[[rule]]\nid = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("r.toml: TOML parse error at line 2"), "{e}");
    }
}
