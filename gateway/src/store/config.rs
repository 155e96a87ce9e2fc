//! `[store]`: where the local store lives, how long it keeps data, and how large it may grow.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Retention;

/// The local store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// The SQLite database file where readings are committed before they are acknowledged.
    /// Its folder must be writable by the gateway.
    pub path: PathBuf,
    /// Raw readings are kept this many hours for local queries and for rebuilding aggregation
    /// state after a restart.
    #[serde(default = "default_raw_retention")]
    pub raw_retention_h: u32,
    /// Points are kept this many days, and never before every sink delivered them.
    #[serde(default = "default_point_retention")]
    pub point_retention_days: u32,
    /// Bound on the store's size. At the bound the oldest raw readings are dropped (counted);
    /// if undelivered points alone fill it, new reports are refused until a sink catches up
    /// (the broker keeps them).
    #[serde(default = "default_max_size")]
    pub max_size_mb: u64,
    /// A batch that raised no alert event and holds no urgent reading waits up to this long,
    /// from its first message, for others to share its commit: one fsync and one WAL block for
    /// many reports instead of one each (flash endurance, CPU). Alerts never wait for it; the
    /// acknowledgements of quiet reports do. 0 commits every batch at once.
    #[serde(default = "default_commit_interval")]
    pub commit_interval_ms: u32,
}

fn default_raw_retention() -> u32 {
    24
}
fn default_point_retention() -> u32 {
    7
}
fn default_max_size() -> u64 {
    4096
}
/// `store.commit_interval_ms` when the config file does not say. At nominal load (1,000
/// reports/s) 200 ms against 50 ms costs a fifth less CPU and a quarter fewer bytes written per
/// report (BENCHMARKS.md, "CPU per report, third pass"); alerts never wait for it, and what
/// it delays (quiet reports' acknowledgements to the broker, readings reaching the sinks) nobody
/// waits on: a node has its acknowledgement from the broker.
pub const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// The longest `store.commit_interval_ms` allowed.
const MAX_COMMIT_INTERVAL_MS: u32 = 1000;

fn default_commit_interval() -> u32 {
    COMMIT_INTERVAL.as_millis() as u32
}

impl StoreSection {
    /// Checks values that types alone cannot; returns `(key, reason)` pairs.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if self.commit_interval_ms > MAX_COMMIT_INTERVAL_MS {
            p.push((
                "store.commit_interval_ms".into(),
                format!(
                    "must be at most {MAX_COMMIT_INTERVAL_MS}: quiet reports' acknowledgements \
                     wait this long, and the broker stops sending once {} are unacknowledged",
                    crate::net::mqtt::RECEIVE_MAXIMUM
                ),
            ));
        }
        let store_dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !store_dir.is_dir() {
            p.push((
                "store.path".into(),
                format!(
                    "folder {} of the local store does not exist",
                    store_dir.display()
                ),
            ));
        } else if std::fs::metadata(store_dir).is_ok_and(|m| m.permissions().readonly()) {
            p.push((
                "store.path".into(),
                format!(
                    "folder {} of the local store is not writable",
                    store_dir.display()
                ),
            ));
        }
        p
    }

    /// How long a quiet batch waits for others to share its commit.
    pub fn commit_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.commit_interval_ms.into())
    }

    /// The retention rules.
    pub fn retention(&self) -> Retention {
        Retention {
            raw_ms: i64::from(self.raw_retention_h) * 3_600_000,
            points_ms: i64::from(self.point_retention_days) * 86_400_000,
            max_bytes: self.max_size_mb.saturating_mul(1 << 20),
        }
    }
}
