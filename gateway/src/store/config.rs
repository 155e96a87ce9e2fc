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

impl StoreSection {
    /// Checks values that types alone cannot; returns `(key, reason)` pairs.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
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

    /// The retention rules.
    pub fn retention(&self) -> Retention {
        Retention {
            raw_ms: i64::from(self.raw_retention_h) * 3_600_000,
            points_ms: i64::from(self.point_retention_days) * 86_400_000,
            max_bytes: self.max_size_mb.saturating_mul(1 << 20),
        }
    }
}
