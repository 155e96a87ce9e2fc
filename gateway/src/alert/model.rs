//! What the alert engine produces and persists: alerts, their events, the state of each (rule,
//! subject), and the changes a commit takes.

use serde::{Deserialize, Serialize};

use super::episode::Episode;
use super::rule::Category;

/// Whether an alert is still on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Open.
    Firing,
    /// Over.
    Resolved,
}

/// Who acknowledged an alert, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// Operator name as given.
    pub by: String,
    /// Free text.
    #[serde(default)]
    pub note: String,
    /// When, Unix ms.
    pub at_ms: i64,
}

/// An operator's comment on an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comment {
    /// Who wrote it (from their login).
    pub by: String,
    /// What.
    pub text: String,
    /// When, Unix ms.
    pub at_ms: i64,
}

/// One alert: what operators see, on every notifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Unique per episode: `{rule}:{subject}:{started_ms}`.
    pub id: String,
    /// The rule.
    pub rule: String,
    /// Category (the `{category}` of the MQTT topic).
    pub category: Category,
    /// Scenic area, choke point, road segment, pipe asset or device id.
    pub subject: String,
    /// The subject's name from the site file, where it has one.
    pub subject_name: String,
    /// District code (GB/T 2260).
    pub zone: String,
    /// Grade number, 1 = least severe.
    pub grade: u8,
    /// Grade name (`blue`, `warning`, `alarm`, …).
    pub severity: String,
    /// Grade label for people (蓝, 中度拥堵, …).
    pub label: String,
    /// Firing or resolved.
    pub status: Status,
    /// The value at the latest transition.
    pub value: f64,
    /// The set threshold of the grade.
    pub threshold: f64,
    /// When the episode started (event time), Unix ms.
    pub started_ms: i64,
    /// The latest transition, Unix ms.
    pub updated_ms: i64,
    /// When it resolved.
    pub resolved_ms: Option<i64>,
    /// Acknowledgement, cleared by an escalation.
    pub ack: Option<Ack>,
    /// Who an operator gave it to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<String>,
    /// Operators' comments, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comments: Vec<Comment>,
    /// The value kept crossing back and forth during this episode.
    pub flapping: bool,
    /// One line for people.
    pub summary: String,
    /// What to do next: where to send the crowd, which roads to avoid or take
    /// ([`super::advice`]); kept current while the alert is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advice: Option<super::advice::Advice>,
    /// The holiday or event whose capacity caps were in force when a crowd alert was raised or
    /// escalated (`国庆节（黄金周） (national-day-2026): 容量上限 75%`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar: Option<String>,
    /// The grid, unit and people it goes to, from the roster when it was raised or escalated
    /// (or went to the next person).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duty: Option<super::duty::Route>,
    /// Who it has gone to while nobody acknowledged it ([`super::duty`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<super::duty::Escalation>,
}

/// What happened to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new alert.
    Raised,
    /// A higher grade.
    Escalated,
    /// A reminder.
    Renotified,
    /// Over.
    Resolved,
    /// An operator took it.
    Acknowledged,
    /// An episode that corrected data shows started and ended in the past: recorded, not
    /// notified as a live alarm.
    Retrospective,
    /// An operator gave it to someone.
    Assigned,
    /// An operator commented on it.
    Commented,
    /// Nobody acknowledged it in its grade's time: it went to the next person (the on-duty
    /// person's supervisor, then the unit's head; `alert.escalation.to`).
    EscalatedTo,
}

impl EventKind {
    /// The label and JSON name.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Raised => "raised",
            EventKind::Escalated => "escalated",
            EventKind::Renotified => "renotified",
            EventKind::Resolved => "resolved",
            EventKind::Acknowledged => "acknowledged",
            EventKind::Retrospective => "retrospective",
            EventKind::Assigned => "assigned",
            EventKind::Commented => "commented",
            EventKind::EscalatedTo => "escalated_to",
        }
    }
}

/// One transition, as published on `cs/v1/alerts/events` and handed to every notifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// What happened.
    pub kind: EventKind,
    /// When (event time), Unix ms.
    pub at_ms: i64,
    /// For escalations: the severity before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_severity: Option<String>,
    /// The alert after the transition.
    pub alert: Alert,
}

/// The persisted state of one (rule, subject).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubjectState {
    /// The episode state machine.
    pub episode: Episode,
    /// The open alert, if any.
    pub alert: Option<Alert>,
    /// The episodes it had (start, end, Unix ms), newest last, a few dozen at most: corrected
    /// data of the past does not record them again as retrospective ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past: Vec<(i64, i64)>,
}

/// What changed since the last [`Engine::take_changes`](super::Engine::take_changes): state rows `("{rule}|{subject}",
/// state)` and events, to be committed together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Changed states.
    pub states: Vec<(String, SubjectState)>,
    /// New events, in order.
    pub events: Vec<AlertEvent>,
}

impl Changes {
    /// Nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.events.is_empty()
    }
}

/// Why an acknowledgement failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// No open alert has that id.
    #[error("no open alert with id \"{0}\"")]
    NotFound(String),
}
