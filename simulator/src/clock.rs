//! The wall clock: virtual nodes stamp their reports with it (Unix milliseconds, as the node
//! firmware does once its clock is synced), and the oracle times what the gateway does.

/// The current time, Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::UNIX_EPOCH
        .elapsed()
        .map_or(0, |d| d.as_millis() as i64)
}
