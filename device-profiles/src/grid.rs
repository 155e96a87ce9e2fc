//! Grids (网格化管理): the site's subjects grouped under a responsible unit, with a duty roster
//! that says who answers an alert in the grid at a given local date and time of day.
//!
//! ```toml
//! [[grid]]
//! id = "zg-old-city"
//! name = "章贡老城网格"
//! unit = "章贡区文广旅局"
//! subjects = ["S1", "S2", "S3", "R6"]     # areas (with their choke points), roads, assets, devices
//! head = { name = "刘局长", phone = "13800000001" }
//!
//! escalate_after_s = { red = 300, orange = 900, yellow = 1800 }   # unacknowledged: next person
//!
//! [[grid.duty]]
//! name = "王丽"
//! phone = "13900000002"
//! supervisor = { name = "陈科长", phone = "13900000003" }
//! hours = "08:00-20:00"                    # local time of day; "20:00-08:00" runs past
//!                                          # midnight; "00:00-24:00" is the whole day
//! from = "2026-10-01"                      # optional dates, both included
//! to = "2026-10-07"
//! ```
//!
//! The first duty entry whose dates and hours hold is the one on duty; a roster should cover
//! every hour (the site check does not require it: an alert with nobody on duty goes to the
//! unit's head).

use serde::Deserialize;

use crate::calendar::days_from_civil;

/// A person to call.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// Name.
    pub name: String,
    /// Mobile number (the DingTalk and WeCom robots @ it).
    pub phone: String,
}

/// One line of a duty roster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Duty {
    /// Who is on duty.
    pub name: String,
    /// Their mobile number.
    pub phone: String,
    /// Who an unanswered alert goes to next.
    pub supervisor: Person,
    /// Local time of day, `HH:MM-HH:MM` (the end excluded; past midnight when it is earlier).
    pub hours: String,
    /// First date, `YYYY-MM-DD` (every day when absent).
    #[serde(default)]
    pub from: Option<String>,
    /// Last date, included.
    #[serde(default)]
    pub to: Option<String>,
}

/// A grid.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// Unique id.
    pub id: String,
    /// Name for people.
    pub name: String,
    /// The responsible unit.
    pub unit: String,
    /// Its subjects: scenic areas (with their choke points), road segments, pipe assets,
    /// devices.
    pub subjects: Vec<String>,
    /// The unit's head: the last step of an alert nobody answers.
    pub head: Person,
    /// The duty roster.
    #[serde(default)]
    pub duty: Vec<Duty>,
    /// How long an alert of a grade waits for an acknowledgement before it goes to the next
    /// person (the supervisor, then the head), seconds, by grade name. Grades not listed do not
    /// escalate. Default: red and critical 300, orange and alarm 900, yellow and warning 1800.
    #[serde(default = "default_escalation")]
    pub escalate_after_s: std::collections::BTreeMap<String, u32>,
}

fn default_escalation() -> std::collections::BTreeMap<String, u32> {
    [
        ("red", 300),
        ("critical", 300),
        ("orange", 900),
        ("alarm", 900),
        ("yellow", 1800),
        ("warning", 1800),
    ]
    .into_iter()
    .map(|(g, s)| (g.to_owned(), s))
    .collect()
}

/// Minutes after midnight of `HH:MM` (`24:00`: the end of the day).
fn minutes(hhmm: &str) -> Option<u32> {
    let (h, m) = hhmm.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    ((h < 24 && m < 60 || h == 24 && m == 0) && hhmm.len() == 5).then_some(h * 60 + m)
}

impl Duty {
    /// The hours as minutes after midnight, start and end.
    fn window(&self) -> Option<(u32, u32)> {
        let (a, b) = self.hours.split_once('-')?;
        Some((minutes(a.trim())?, minutes(b.trim())?))
    }

    /// Whether this line holds on `date` at `minute` of the day (local).
    pub fn holds(&self, date: &str, minute: u32) -> bool {
        let dated = self.from.as_deref().is_none_or(|f| f <= date)
            && self.to.as_deref().is_none_or(|t| date <= t);
        let Some((start, end)) = self.window() else {
            return false;
        };
        let timed = if start < end {
            (start..end).contains(&minute)
        } else {
            // Past midnight: the evening of `date` and the morning after it.
            minute >= start || minute < end
        };
        dated && timed
    }

    /// What is wrong with it, as `(key, reason)` pairs.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        match self.window() {
            None => p.push(("hours", format!("\"{}\" is not HH:MM-HH:MM", self.hours))),
            Some((a, b)) if a == b => p.push(("hours", "starts and ends at the same time".into())),
            Some(_) => {}
        }
        for (key, date) in [("from", &self.from), ("to", &self.to)] {
            if let Some(d) = date
                && days_from_civil(d).is_none()
            {
                p.push((key, format!("\"{d}\" is not a date YYYY-MM-DD")));
            }
        }
        if let (Some(f), Some(t)) = (&self.from, &self.to)
            && t < f
        {
            p.push(("to", format!("ends ({t}) before it starts ({f})")));
        }
        for (key, phone) in [
            ("phone", &self.phone),
            ("supervisor.phone", &self.supervisor.phone),
        ] {
            if !is_phone(phone) {
                p.push((key, format!("\"{phone}\" is not a phone number")));
            }
        }
        p
    }
}

/// Digits, with an optional leading `+`, 5 to 15 of them.
pub fn is_phone(s: &str) -> bool {
    let digits = s.strip_prefix('+').unwrap_or(s);
    (5..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

impl Grid {
    /// Who is on duty on `date` at `minute` of the day (local), if anyone.
    pub fn on_duty(&self, date: &str, minute: u32) -> Option<&Duty> {
        self.duty.iter().find(|d| d.holds(date, minute))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duty(hours: &str, from: Option<&str>, to: Option<&str>) -> Duty {
        Duty {
            name: "王丽".into(),
            phone: "13900000002".into(),
            supervisor: Person {
                name: "陈科长".into(),
                phone: "13900000003".into(),
            },
            hours: hours.into(),
            from: from.map(Into::into),
            to: to.map(Into::into),
        }
    }

    #[test]
    fn a_duty_holds_in_its_hours_and_dates_also_past_midnight() {
        assert!(duty("00:00-24:00", None, None).holds("2026-10-02", 24 * 60 - 1));
        let day = duty("08:00-20:00", None, None);
        assert!(day.holds("2026-10-02", 8 * 60));
        assert!(!day.holds("2026-10-02", 20 * 60));
        let night = duty("20:00-08:00", Some("2026-10-01"), Some("2026-10-07"));
        assert!(night.holds("2026-10-02", 23 * 60));
        assert!(night.holds("2026-10-02", 3 * 60));
        assert!(!night.holds("2026-10-02", 12 * 60));
        assert!(!night.holds("2026-10-08", 23 * 60));
        assert!(night.problems().is_empty());
        let bad = Duty {
            phone: "call me".into(),
            ..duty("8-20", Some("2026-10-07"), Some("2026-10-01"))
        };
        let keys: Vec<&str> = bad.problems().iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["hours", "to", "phone"]);
    }
}
