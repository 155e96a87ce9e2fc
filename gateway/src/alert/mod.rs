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
//! - [`model`]: alerts, their events, the persisted state of each (rule, subject), changes.
//! - [`episode`]: the state machine of one (rule, subject): hysteresis, hold times, escalation.
//! - [`rule`]: rule definitions, the defaults of DOMAIN.md §6, rule files.
//! - [`context`]: what the engine knows of the site; [`history`]: recent values for derivations.
//! - [`engine`]: evaluates rules and produces transitions; [`state`]: restoring, acknowledging,
//!   taking changes.
//! - [`timed`]: holds on the clock: staleness, holds under way, the tick.
//! - [`retro`]: episodes corrected data shows entirely in the past (retrospective events).
//! - [`cases`]: the test cases of rule files.

pub mod advice;
pub mod cases;
pub mod context;
pub mod duty;
pub mod engine;
pub mod episode;
pub mod history;
pub mod model;
pub mod retro;
pub mod rule;
pub mod state;
pub mod timed;

pub use engine::Engine;
pub use model::{Alert, AlertEvent, Changes, EventKind, Status, SubjectState};
pub use rule::{Rule, RuleFile};
