//! Alerts: rules on readings, points and presence; one alert per episode; delivery to
//! operators.
//!
//! ```text
//! Readings + Points ──▶ engine (one Episode per rule and subject) ──▶ Changes
//! Changes ──▶ store (same transaction as the readings: alert_state + alert_events outbox)
//! alert_events ──▶ the notifiers (crate::sink::notify), each with its own cursor
//! ```
//!
//! # Layout
//! - [`episode`]: the state machine of one (rule, subject): hysteresis, hold times, escalation.
//! - [`rule`]: rule definitions, the defaults of DOMAIN.md §6, rule files with test cases.
//! - [`engine`]: evaluates rules and produces transitions.

pub mod engine;
pub mod episode;
pub mod rule;

pub use engine::{Alert, AlertEvent, Changes, Engine, EventKind, Status, SubjectState};
pub use rule::{Rule, RuleFile};
