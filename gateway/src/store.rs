//! The store boundary: where accepted readings are handed over before their MQTT messages are
//! acknowledged.
//!
//! Today this keeps the latest readings of each device in memory, for the API. The durable
//! local store (SQLite, fsync'd, with per-sink cursors) replaces it behind the same
//! [`Store::accept`] call, and from then on an acknowledgement means "on disk".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::reading::Reading;

/// How many recent readings the API shows per device.
const RECENT_PER_DEVICE: usize = 16;

/// Why readings could not be accepted (the message is then not acknowledged, and the broker
/// redelivers it).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store refused the batch.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Accepted readings.
#[derive(Debug, Default)]
pub struct Store {
    recent: Mutex<HashMap<Arc<str>, Vec<Reading>>>,
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store::default()
    }

    /// Accepts a batch of readings. When this returns `Ok`, the messages that produced them may
    /// be acknowledged.
    pub async fn accept(&self, readings: &[Reading]) -> Result<(), StoreError> {
        let mut recent = self
            .recent
            .lock()
            .map_err(|_| StoreError::Unavailable("lock poisoned".into()))?;
        for r in readings {
            let v = recent.entry(r.device.clone()).or_default();
            if v.len() == RECENT_PER_DEVICE {
                v.remove(0);
            }
            v.push(r.clone());
        }
        Ok(())
    }

    /// The most recent readings of a device, oldest first.
    pub fn recent(&self, device: &str) -> Vec<Reading> {
        self.recent
            .lock()
            .map(|m| m.get(device).cloned().unwrap_or_default())
            .unwrap_or_default()
    }
}
