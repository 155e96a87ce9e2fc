//! A [`Reading`]: one decoded, verified measurement or event from one device, with event time.
//! Everything downstream (store, aggregators, rules, sinks) starts from here.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One measurement or event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Device id.
    pub device: Arc<str>,
    /// District code the device reports under.
    pub zone: Arc<str>,
    /// Device kind (profile).
    pub kind: Arc<str>,
    /// When it happened, Unix milliseconds (the receive time if the node's clock was unsynced).
    pub time_ms: i64,
    /// When the gateway received it, Unix milliseconds.
    pub received_ms: i64,
    /// The node's clock was not set: `time_ms` is the receive time.
    pub unsynced_clock: bool,
    /// `(boot epoch, sequence)` of the frame it came in, for wire devices: per-window
    /// completeness, and de-duplication upstream.
    #[serde(default)]
    pub origin: Option<(u32, u32)>,
    /// What was measured.
    pub measurement: Measurement,
}

/// What a reading says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Measurement {
    /// One visitor through a gate (RFID).
    Passage {
        /// Hashed ticket tag, hex.
        tag: String,
        /// `true` for an entry, `false` for an exit, as the reader saw it.
        entry: bool,
    },
    /// Counts from a counting gate over an interval ending at `time_ms`.
    Counts {
        /// Visitors in.
        entries: u32,
        /// Visitors out.
        exits: u32,
        /// Interval length, seconds.
        interval_s: u16,
    },
    /// One lane over one detector interval ending at `time_ms`.
    Lane {
        /// Lane number, 1-based from the kerb.
        lane: u8,
        /// Vehicles.
        vehicles: u16,
        /// Occupancy, percent.
        occupancy_pct: f64,
        /// Mean speed, km/h, where measured.
        speed_kmh: Option<f64>,
        /// Interval length, seconds.
        interval_s: u16,
    },
    /// A named value from a profile field (pipes, JSON devices, Modbus registers).
    Value {
        /// The profile field.
        field: String,
        /// The value in the field's unit.
        value: f64,
        /// Sent at once because the node saw a threshold crossed.
        urgent: bool,
    },
    /// The node's health.
    Status {
        /// Battery percent, if battery powered.
        battery_pct: Option<u8>,
        /// Signal strength, dBm.
        signal_dbm: i8,
        /// Seconds since boot.
        uptime_s: u32,
        /// Firmware version, `major.minor.patch`.
        firmware: String,
        /// Fingerprint of the key in use.
        key_fingerprint: String,
    },
}
