//! Holiday calendars (节假日): public holidays (国庆, 春节, 五一, 清明, 端午, 中秋) and local
//! events as date ranges of the site's local time, each able to cap the scenic areas'
//! capacities (the authorities' 75 % / 50 % / 30 % orders, LB/T 034-2014), and to scale the
//! simulator's arrivals.
//!
//! ```toml
//! [[calendar]]
//! id = "national-day-2026"
//! name = "国庆节"
//! kind = "holiday"           # or "event"
//! from = "2026-10-01"        # local dates, both included
//! to = "2026-10-07"
//! cap_factor = 0.75          # every scenic area and choke point
//! cap_factor_by_area = { S4 = 0.5 }
//! arrival_factor = 5.0       # the simulator's visitors against a normal day
//! rule_scale = { "crowd.daily" = 0.9 }   # rule thresholds these days, by rule id
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// A holiday or a local event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Unique id, e.g. "national-day-2026".
    pub id: String,
    /// Name for people, e.g. "国庆节".
    pub name: String,
    /// A public holiday or a local event.
    #[serde(default)]
    pub kind: Kind,
    /// First day, local `YYYY-MM-DD`.
    pub from: String,
    /// Last day, included.
    pub to: String,
    /// Cap on every scenic area's and choke point's capacity these days (0 < cap ≤ 1).
    #[serde(default)]
    pub cap_factor: Option<f64>,
    /// Caps of single areas or choke points, by id.
    #[serde(default)]
    pub cap_factor_by_area: BTreeMap<String, f64>,
    /// Visitors arriving against a normal day, for the simulator (> 0).
    #[serde(default)]
    pub arrival_factor: Option<f64>,
    /// Rule thresholds these days: each named rule's grades multiplied by its factor (> 0),
    /// e.g. `{ "traffic.congestion" = 1.1 }` to tolerate holiday traffic a little longer.
    #[serde(default)]
    pub rule_scale: BTreeMap<String, f64>,
}

/// What kind of day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A public holiday.
    #[default]
    Holiday,
    /// A local event (a festival, a marathon).
    Event,
}

impl Entry {
    /// Whether it is in force on `date` (`YYYY-MM-DD`).
    pub fn covers(&self, date: &str) -> bool {
        self.from.as_str() <= date && date <= self.to.as_str()
    }

    /// The cap on `subject` these days, if the entry sets one.
    pub fn cap_of(&self, subject: &str) -> Option<f64> {
        self.cap_factor_by_area
            .get(subject)
            .copied()
            .or(self.cap_factor)
    }

    /// What is wrong with it, as `(key, reason)` pairs; `areas` are the site's scenic areas
    /// and choke points.
    pub fn problems(&self, areas: &[&str]) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        for (key, date) in [("from", &self.from), ("to", &self.to)] {
            if days_from_civil(date).is_none() {
                p.push((key, format!("\"{date}\" is not a date YYYY-MM-DD")));
            }
        }
        if p.is_empty() && self.to < self.from {
            p.push((
                "to",
                format!("ends ({}) before it starts ({})", self.to, self.from),
            ));
        }
        let cap_ok = |c: f64| c > 0.0 && c <= 1.0;
        if self.cap_factor.is_some_and(|c| !cap_ok(c)) {
            p.push(("cap_factor", "a cap is above 0 and at most 1".to_owned()));
        }
        for (area, &cap) in &self.cap_factor_by_area {
            if !areas.contains(&area.as_str()) {
                p.push((
                    "cap_factor_by_area",
                    format!("\"{area}\" is not a scenic area or choke point"),
                ));
            } else if !cap_ok(cap) {
                p.push((
                    "cap_factor_by_area",
                    format!("the cap of \"{area}\" is above 0 and at most 1"),
                ));
            }
        }
        if self
            .arrival_factor
            .is_some_and(|f| f <= 0.0 || !f.is_finite())
        {
            p.push(("arrival_factor", "must be above 0".to_owned()));
        }
        p
    }
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date, or None when it is not one.
pub fn days_from_civil(date: &str) -> Option<i64> {
    let mut parts = date.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The `YYYY-MM-DD` of a day counted from 1970-01-01.
pub fn civil_from_days(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The local date (`YYYY-MM-DD`) at `unix_ms` for a UTC offset of `offset_ms`.
pub fn local_date(unix_ms: i64, offset_ms: i64) -> String {
    civil_from_days((unix_ms + offset_ms).div_euclid(86_400_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_go_there_and_back_and_nonsense_is_refused() {
        assert_eq!(days_from_civil("1970-01-01"), Some(0));
        assert_eq!(days_from_civil("2026-11-27"), Some(20_784));
        for days in [0, 59, 60, 365, 11_016, 20_784, 20_726] {
            assert_eq!(days_from_civil(&civil_from_days(days)), Some(days));
        }
        assert_eq!(civil_from_days(20_727), "2026-10-01");
        for bad in [
            "2026-02-29",
            "2026-13-01",
            "2026-1-01",
            "26-10-01",
            "2026-10-01-1",
            "x",
        ] {
            assert_eq!(days_from_civil(bad), None, "{bad}");
        }
        assert_eq!(days_from_civil("2028-02-29"), Some(21_243));
        // 2026-10-01 00:30 +08:00 is 2026-09-30 16:30 UTC.
        assert_eq!(local_date(1_790_785_800_000, 8 * 3_600_000), "2026-10-01");
    }
}
