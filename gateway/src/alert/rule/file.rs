//! Rule files (TOML): rules that add to the defaults or replace one by its id, and the test
//! cases `gateway rules test FILE` runs.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

use super::Rule;

/// One test case of a rule file: a series of inputs and the alerts it must give.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// What it shows.
    pub name: String,
    /// The rule under test (from this file or the defaults).
    pub rule: String,
    /// The subject the inputs are for.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Inputs: `{ at_s = 0, occupancy_ratio = 0.5, ... }`, the time and field values.
    #[serde(default)]
    pub rows: Vec<BTreeMap<String, f64>>,
    /// Inputs generated as straight lines, merged with `rows` by time.
    #[serde(default)]
    pub ramp: Vec<Ramp>,
    /// The transitions expected, in order; nothing else may happen.
    #[serde(default)]
    pub expect: Vec<Expected>,
    /// The situation around the subject, for the alerts' advice: other areas' occupancy and
    /// roads' grades, `{ at_s = 0, area = "S5", occupancy_ratio = 0.45 }`,
    /// `{ at_s = 0, segment = "R2", grade = 4 }`. A value counts for 30 minutes.
    #[serde(default)]
    pub around: Vec<Around>,
    /// An operator acknowledges the open alert at this time, seconds.
    #[serde(default)]
    pub ack_at_s: Option<f64>,
    /// The gateway restarts at this time: the engine is rebuilt from the committed states.
    #[serde(default)]
    pub restart_at_s: Option<f64>,
    /// A grid's roster is replaced at a time (a reload of the site file).
    #[serde(default)]
    pub roster_change: Option<RosterChange>,
}

/// A grid's new roster from a time on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterChange {
    /// When, seconds.
    pub at_s: f64,
    /// The grid.
    pub grid: String,
    /// Its roster from then on, as in the site file's `[[grid.duty]]`.
    pub duty: Vec<device_profiles::grid::Duty>,
}

/// A value of another place at a time: an area's occupancy or a road segment's grade.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Around {
    /// When, seconds.
    pub at_s: f64,
    /// A scenic area, with `occupancy_ratio`.
    pub area: Option<String>,
    /// Its occupancy against its capacity.
    pub occupancy_ratio: Option<f64>,
    /// A road segment, with `grade`.
    pub segment: Option<String>,
    /// Its 5-minute congestion grade (1 畅通 … 5 严重拥堵).
    pub grade: Option<f64>,
}

fn default_subject() -> String {
    "test".to_owned()
}

/// A straight line of one field's values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ramp {
    /// The field.
    pub field: String,
    /// Start, seconds.
    pub from_s: u32,
    /// End, seconds (inclusive).
    pub to_s: u32,
    /// One value every this many seconds.
    pub every_s: u32,
    /// Value at the start.
    pub start: f64,
    /// Value at the end.
    pub end: f64,
}

/// One expected transition.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// When, seconds.
    pub at_s: f64,
    /// `raised`, `escalated`, `renotified` or `resolved`.
    pub kind: String,
    /// The grade name after the transition (for `resolved`: the highest reached).
    pub grade: String,
    /// The advice the event carries, as its one line (`""`: none); unchecked when absent.
    pub advice: Option<String>,
    /// Who the event calls (its grid's roster: the person on duty, then the supervisor, then
    /// the head), by name; unchecked when absent.
    pub to: Option<String>,
}

/// A rule file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Rules.
    #[serde(default)]
    pub rule: Vec<Rule>,
    /// Test cases.
    #[serde(default)]
    pub test: Vec<TestCase>,
}

impl RuleFile {
    /// Loads and checks a rule file; errors name the file, the rule and the key.
    pub fn load(path: &Path) -> anyhow::Result<RuleFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        Self::parse(path, &text)
    }

    /// Parses and checks rule-file text.
    pub fn parse(path: &Path, text: &str) -> anyhow::Result<RuleFile> {
        let file: RuleFile =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut problems = Vec::new();
        for (i, r) in file.rule.iter().enumerate() {
            for (key, reason) in r.problems() {
                problems.push(format!(
                    "{}: rule[{i}] (\"{}\").{key}: {reason}",
                    path.display(),
                    r.id
                ));
            }
            if file.rule[..i].iter().any(|o| o.id == r.id) {
                problems.push(format!(
                    "{}: rule[{i}].id: \"{}\" is defined twice in this file",
                    path.display(),
                    r.id
                ));
            }
        }
        for (i, t) in file.test.iter().enumerate() {
            for (j, row) in t.rows.iter().enumerate() {
                if !row.contains_key("at_s") {
                    problems.push(format!(
                        "{}: test[{i}] (\"{}\").rows[{j}]: every row needs at_s",
                        path.display(),
                        t.name
                    ));
                }
            }
            for (j, r) in t.ramp.iter().enumerate() {
                if r.every_s == 0 || r.to_s < r.from_s {
                    problems.push(format!(
                        "{}: test[{i}] (\"{}\").ramp[{j}]: needs every_s > 0 and to_s >= from_s",
                        path.display(),
                        t.name
                    ));
                }
            }
        }
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
        Ok(file)
    }
}
