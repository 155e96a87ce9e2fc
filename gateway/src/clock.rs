//! The wall clock, in one place: Unix milliseconds for event and receive times, and the
//! helpers the logs use for durations.
//!
//! Pure state elsewhere takes time as an argument (STYLE.md §6); only the edges (sources,
//! sinks, housekeeping) read the clock, through [`now_ms`].

use std::time::Duration;

/// The current time, Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A commit (or maintenance pass) this slow is logged with where its time went: a batch's
/// acknowledgements and alerts wait for its commit.
pub const SLOW_COMMIT: Duration = Duration::from_millis(100);

/// `d` in milliseconds, for the logs.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
