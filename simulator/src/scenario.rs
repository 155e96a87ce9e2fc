//! Scenario files: when, how busy, what happens, what breaks, and what the gateway must say.
//!
//! ```toml
//! name = "golden-week-tongtianyan"
//! description = "…"
//! [time]
//! start = "08:00"        # local time (the site's utc_offset)
//! end = "12:00"
//! acceleration = 240     # simulated seconds per real second
//! # date = "2026-10-02"  # default: the latest day whose window has already passed
//! [[crowd]]
//! area = "S4"
//! peak_per_min = 60      # entries per minute at the curve's peak on a normal day
//! factor = 5             # holiday multiplier (DOMAIN.md §7: ×3–8); default: the site
//!                        # calendar's arrival_factor of the date, or 1
//! [[event]]
//! kind = "gas_leak"
//! subject = "T1"
//! at = "09:00"
//! until = "09:30"
//! [[expect]]
//! rule = "crowd.occupancy"
//! subject = "S4"
//! grade = "orange"
//! kind = "escalated"     # default "raised"
//! count = 1              # default 1; 0 means "must not happen"
//! advises = "S5"         # optional: its diversion advice sends visitors there
//! to = "值班科长"        # optional: the person it calls (escalated_to: the next one)
//! ```
//!
//! Simulated time always stays behind real time: the scenario's window is placed on a day that
//! has passed (reports from the future would be refused as `clock_skew`), within the gateway's
//! `max_age_s`.

use std::path::Path;

use anyhow::{Context, bail, ensure};
use serde::Deserialize;

/// A scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// What it rehearses.
    #[serde(default)]
    pub description: String,
    /// The simulated window.
    pub time: TimeSection,
    /// Visitor arrivals per scenic area (areas not listed see a quiet day).
    #[serde(default)]
    pub crowd: Vec<CrowdSection>,
    /// Traffic demand per road segment (segments not listed see light traffic).
    #[serde(default)]
    pub traffic: Vec<TrafficSection>,
    /// Pipe sensors.
    #[serde(default)]
    pub pipes: PipesSection,
    /// Things that happen.
    #[serde(default, rename = "event")]
    pub events: Vec<Event>,
    /// Things that break.
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
    /// Alerts the gateway must raise (or must not: `count = 0`).
    #[serde(default, rename = "expect")]
    pub expects: Vec<Expect>,
    /// Rejections the gateway must count.
    #[serde(default, rename = "expect_rejected")]
    pub expect_rejected: Vec<ExpectRejected>,
    /// The completeness the gateway must report for the simulated devices.
    #[serde(default)]
    pub expect_completeness: Option<ExpectCompleteness>,
    /// Only these devices are simulated (ids or prefixes such as `gz-s4-`); all when empty.
    #[serde(default)]
    pub devices: Vec<String>,
}

/// The simulated window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSection {
    /// `YYYY-MM-DD`; default: the latest day whose window ended before now.
    #[serde(default)]
    pub date: Option<String>,
    /// Local start, `HH:MM`.
    pub start: String,
    /// Local end, `HH:MM`.
    pub end: String,
    /// Simulated seconds per real second.
    pub acceleration: f64,
}

/// Arrivals at one scenic area.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrowdSection {
    /// Area id.
    pub area: String,
    /// Entries per minute at the arrival curve's peak, on a normal day.
    pub peak_per_min: f64,
    /// Holiday multiplier; by default the `arrival_factor` of the site's calendar entry of the
    /// scenario's date (the largest, if several), or 1 on an ordinary day.
    #[serde(default)]
    pub factor: Option<f64>,
    /// Median stay, minutes; the site's when absent.
    #[serde(default)]
    pub dwell_min: Option<f64>,
    /// Visitors already inside at the start.
    #[serde(default)]
    pub initial: u32,
}

/// Demand on one road segment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSection {
    /// Segment id.
    pub segment: String,
    /// Vehicles per hour over all its detected lanes at the peak.
    pub peak_vph: f64,
    /// Multiplier (rush hour, holiday ×1.3).
    #[serde(default = "one")]
    pub factor: f64,
}

/// Pipe sensors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipesSection {
    /// Report interval of pipe nodes, seconds (DOMAIN.md §7.3: 300; scenarios use less to see
    /// quick changes).
    #[serde(default = "default_pipe_interval")]
    pub report_interval_s: u32,
}

impl Default for PipesSection {
    fn default() -> Self {
        PipesSection {
            report_interval_s: default_pipe_interval(),
        }
    }
}

fn default_pipe_interval() -> u32 {
    300
}

fn one() -> f64 {
    1.0
}

/// Something that happens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// What.
    pub kind: EventKind,
    /// Area, choke point, segment or pipe asset.
    pub subject: String,
    /// From, local `HH:MM`.
    pub at: String,
    /// Until, local `HH:MM` (the end of the window when absent).
    #[serde(default)]
    pub until: Option<String>,
    /// Strength: arrivals or demand factor (surge, congestion), tilt in degrees (cover).
    #[serde(default)]
    pub value: Option<f64>,
}

/// Kinds of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Arrivals at an area multiplied by `value`.
    Surge,
    /// No passages through an area's gates (the 古浮桥 openings).
    Closure,
    /// Demand on a segment multiplied by `value`; speed falls with it.
    Congestion,
    /// An accident: a segment's speed collapses with the lanes full.
    Incident,
    /// A water main bursts on a pipe asset: −0.12 MPa within 90 s, flow up.
    Burst,
    /// Gas rises 3 %LEL a minute in an asset.
    GasLeak,
    /// A manhole cover tilted by `value` degrees (stolen: 60).
    Cover,
    /// Road water rises 4 cm every 10 minutes.
    Storm,
}

/// Something that breaks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// What.
    pub kind: FaultKind,
    /// The device (all of them for `broker_outage`).
    #[serde(default)]
    pub device: String,
    /// From, local `HH:MM`.
    pub at: String,
    /// Until, local `HH:MM`.
    #[serde(default)]
    pub until: Option<String>,
    /// Miss rate (rfid_miss) or number of frames (replay, forged).
    #[serde(default)]
    pub value: Option<f64>,
}

/// Kinds of faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The node's link is down: it queues its frames and sends them when it is back.
    LinkDown,
    /// The gate reader misses a fraction `value` of the tags (counts drift).
    RfidMiss,
    /// The node sends `value` of its old frames again.
    Replay,
    /// `value` frames for this device signed with a wrong key.
    Forged,
    /// The broker is unreachable for every node: they queue and send when it is back.
    BrokerOutage,
}

/// One expected alert transition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Rule id.
    pub rule: String,
    /// Subject.
    pub subject: String,
    /// `raised`, `escalated` or `resolved`.
    #[serde(default = "raised")]
    pub kind: String,
    /// Severity after the transition; any when absent.
    #[serde(default)]
    pub grade: Option<String>,
    /// Exactly this many.
    #[serde(default = "one_u32")]
    pub count: u32,
    /// Only transitions at local times in `[from, to]`.
    #[serde(default)]
    pub between: Option<[String; 2]>,
    /// Only transitions whose diversion advice sends visitors to this scenic area.
    #[serde(default)]
    pub advises: Option<String>,
    /// Only transitions that call this person (by name: the person on duty for `raised` and
    /// `escalated`, the next one for `escalated_to`).
    #[serde(default)]
    pub to: Option<String>,
}

fn raised() -> String {
    "raised".into()
}

fn one_u32() -> u32 {
    1
}

/// Rejections the gateway must have counted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectRejected {
    /// Reason label (`replayed`, `bad_tag`, …).
    pub reason: String,
    /// At least this many.
    pub min: u64,
}

/// Completeness of the simulated devices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectCompleteness {
    /// Received ÷ expected, at least.
    pub min: f64,
}

/// Minutes after midnight of `HH:MM`.
pub fn minutes(s: &str) -> anyhow::Result<u32> {
    let (h, m) = s
        .split_once(':')
        .with_context(|| format!("time \"{s}\" must be HH:MM"))?;
    let (h, m): (u32, u32) = (
        h.parse().with_context(|| format!("hour of \"{s}\""))?,
        m.parse().with_context(|| format!("minute of \"{s}\""))?,
    );
    ensure!(h <= 24 && m < 60, "time \"{s}\" is not a time of day");
    Ok(h * 60 + m)
}

impl Scenario {
    /// Loads and checks a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        let s: Scenario =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        s.check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(s)
    }

    fn check(&self) -> anyhow::Result<()> {
        let (start, end) = (minutes(&self.time.start)?, minutes(&self.time.end)?);
        ensure!(end > start, "time.end must be after time.start");
        ensure!(
            self.time.acceleration >= 1.0,
            "time.acceleration must be at least 1"
        );
        for e in &self.events {
            minutes(&e.at)?;
            if let Some(u) = &e.until {
                minutes(u)?;
            }
        }
        for f in &self.faults {
            minutes(&f.at)?;
            if f.kind != FaultKind::BrokerOutage && f.device.is_empty() {
                bail!("fault {:?} at {} names no device", f.kind, f.at);
            }
        }
        for x in &self.expects {
            if ![
                "raised",
                "escalated",
                "resolved",
                "renotified",
                "escalated_to",
            ]
            .contains(&x.kind.as_str())
            {
                bail!(
                    "expect {} {}: kind \"{}\" is not raised, escalated, resolved, renotified or escalated_to",
                    x.rule,
                    x.subject,
                    x.kind
                );
            }
        }
        Ok(())
    }

    /// Local minutes of the window.
    pub fn window(&self) -> (u32, u32) {
        (
            minutes(&self.time.start).unwrap_or(0),
            minutes(&self.time.end).unwrap_or(0),
        )
    }

    /// The Unix ms of the window's start: on `time.date`, or the latest day whose window has
    /// already ended at `now_ms`.
    pub fn start_ms(&self, now_ms: i64, utc_offset_ms: i64) -> anyhow::Result<i64> {
        const DAY: i64 = 86_400_000;
        let (start, end) = self.window();
        let day_start = |days: i64| days * DAY - utc_offset_ms;
        let days = match &self.time.date {
            Some(d) => days_from_civil(d)?,
            None => {
                let today = (now_ms + utc_offset_ms).div_euclid(DAY);
                if day_start(today) + i64::from(end) * 60_000 <= now_ms {
                    today
                } else {
                    today - 1
                }
            }
        };
        let start_ms = day_start(days) + i64::from(start) * 60_000;
        ensure!(
            start_ms + i64::from(end - start) * 60_000 <= now_ms,
            "the scenario's window ends in the future; simulated reports must be in the past"
        );
        Ok(start_ms)
    }

    /// Whether `device` is simulated.
    pub fn simulates(&self, device: &str) -> bool {
        self.devices.is_empty() || self.devices.iter().any(|d| device.starts_with(d.as_str()))
    }
}

/// Days since 1970-01-01 of `YYYY-MM-DD`.
fn days_from_civil(date: &str) -> anyhow::Result<i64> {
    device_profiles::calendar::days_from_civil(date)
        .with_context(|| format!("date \"{date}\" must be YYYY-MM-DD"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_lands_on_a_past_day_in_local_time() {
        let s: Scenario = toml::from_str(
            "name = \"t\"\n[time]\nstart = \"08:00\"\nend = \"12:00\"\nacceleration = 100\n",
        )
        .unwrap();
        let offset = 8 * 3_600_000;
        // 2026-11-27 21:00 +08:00: today's 08:00–12:00 has passed.
        let now = 1_795_784_400_000;
        let start = s.start_ms(now, offset).unwrap();
        assert_eq!(start, 1_795_737_600_000, "2026-11-27 08:00 +08:00");
        // At 10:00 +08:00 the window has not ended yet: yesterday's.
        let ten = 1_795_744_800_000;
        assert_eq!(s.start_ms(ten, offset).unwrap(), start - 86_400_000);
        assert_eq!(days_from_civil("1970-01-01").unwrap(), 0);
        assert_eq!(days_from_civil("2026-11-27").unwrap(), 20_784);
    }
}
