//! A [`Reading`]: one decoded, verified measurement or event from one device, with event time.
//! Everything downstream (store, aggregators, rules, sinks) starts from here.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
        /// Hashed ticket tag.
        tag: Tag,
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
        /// The profile field (a shared name for wire quantities, no allocation per reading).
        field: Cow<'static, str>,
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
    /// An operator's count of the visitors inside the scenic area or choke point the reading's
    /// `device` names, at `time_ms`: the occupancy baseline (see `aggregate::crowd`).
    Occupancy {
        /// Visitors inside.
        count: u32,
    },
}

/// A hashed ticket tag: the 8 bytes a reader sends (salted HMAC of the ticket's EPC), never the
/// ticket itself. Written as 16 hex digits in JSON and to people.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag(pub [u8; 8]);

impl From<u64> for Tag {
    /// A tag from a number (tests, simulations): its big-endian bytes.
    fn from(n: u64) -> Tag {
        Tag(n.to_be_bytes())
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({self})")
    }
}

impl std::str::FromStr for Tag {
    type Err = String;

    fn from_str(s: &str) -> Result<Tag, String> {
        let mut bytes = [0u8; 8];
        hex::decode_to_slice(s, &mut bytes)
            .map_err(|e| format!("tag \"{s}\" is not 16 hex digits ({e})"))?;
        Ok(Tag(bytes))
    }
}

impl Serialize for Tag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut hex = [0u8; 16];
        // Cannot fail: the buffer is exactly twice the tag's length.
        hex::encode_to_slice(self.0, &mut hex).map_err(serde::ser::Error::custom)?;
        s.serialize_str(std::str::from_utf8(&hex).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tag, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_sixteen_hex_digits_both_ways() {
        let tag = Tag([0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 0xff]);
        assert_eq!(tag.to_string(), "deadbeef000102ff");
        let json = serde_json::to_string(&tag).unwrap();
        assert_eq!(json, "\"deadbeef000102ff\"");
        assert_eq!(serde_json::from_str::<Tag>(&json).unwrap(), tag);
        assert_eq!(Tag::from(0xaa), Tag([0, 0, 0, 0, 0, 0, 0, 0xaa]));
        let err = serde_json::from_str::<Tag>("\"abc\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not 16 hex digits"), "{err}");
    }
}
