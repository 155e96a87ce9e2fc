//! How a reading is kept in its row: the device and the two times in columns of their own, the
//! rest as JSON in `body`.
//!
//! Bodies written before this held the whole reading, columns included (about 40 % more bytes
//! per row, and as much more WAL): they still decode, the extra fields ignored.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::reading::{Measurement, Reading};

/// A reading's body as written.
#[derive(Serialize)]
pub(super) struct Body<'a> {
    zone: &'a str,
    kind: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unsynced_clock: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<(u32, u32)>,
    measurement: &'a Measurement,
}

impl<'a> From<&'a Reading> for Body<'a> {
    fn from(r: &'a Reading) -> Body<'a> {
        Body {
            zone: &r.zone,
            kind: &r.kind,
            unsynced_clock: r.unsynced_clock,
            origin: r.origin,
            measurement: &r.measurement,
        }
    }
}

/// A reading's body as read back.
#[derive(Deserialize)]
pub(super) struct StoredBody {
    zone: Arc<str>,
    kind: Arc<str>,
    #[serde(default)]
    unsynced_clock: bool,
    #[serde(default)]
    origin: Option<(u32, u32)>,
    measurement: Measurement,
}

impl StoredBody {
    /// The reading, with the row's columns.
    pub fn into_reading(self, device: &str, time_ms: i64, received_ms: i64) -> Reading {
        Reading {
            device: Arc::from(device),
            zone: self.zone,
            kind: self.kind,
            time_ms,
            received_ms,
            unsynced_clock: self.unsynced_clock,
            origin: self.origin,
            measurement: self.measurement,
        }
    }
}
