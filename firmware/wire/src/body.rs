//! The report kinds a frame can carry.
//!
//! One [`Body`] variant per kind of report. Variants and fields are encoded by postcard in
//! declaration order: never reorder them; append new variants at the end, and bump
//! [`crate::FORMAT_VERSION`] for anything else. Capacities are constants so that a node's buffers
//! and the gateway's decoder agree on the worst case.

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::auth::{KEY_LEN, KeyFingerprint};

/// Most gate events one frame carries; a node with more sends several frames.
pub const MAX_GATE_EVENTS: usize = 32;
/// Most lanes one traffic detector reports on.
pub const MAX_LANES: usize = 8;
/// Most quantities one pipe report carries.
pub const MAX_PIPE_READINGS: usize = 8;

/// The payload of a frame.
///
/// Variants differ in size (32 gate events take ~520 bytes); without a heap there is nothing to box
/// them into, and one `Body` lives at a time on a node.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// Individual tag reads at an RFID gate.
    GateEvents(GateEvents),
    /// Counts from a gate that counts without identifying (beam or video counters).
    GateCounts(GateCounts),
    /// One detector interval (30 s by default) for each lane it watches.
    TrafficInterval(TrafficInterval),
    /// Pipe and well measurements.
    PipeReadings(PipeReadings),
    /// Health of the node itself.
    Status(DeviceStatus),
    /// Gateway → node.
    Downlink(Downlink),
    /// Node → gateway: the outcome of a downlink.
    Ack(DownlinkAck),
}

impl Body {
    /// A short stable name for the variant (logs, metrics labels).
    pub const fn kind(&self) -> &'static str {
        match self {
            Body::GateEvents(_) => "gate_events",
            Body::GateCounts(_) => "gate_counts",
            Body::TrafficInterval(_) => "traffic_interval",
            Body::PipeReadings(_) => "pipe_readings",
            Body::Status(_) => "status",
            Body::Downlink(_) => "downlink",
            Body::Ack(_) => "ack",
        }
    }
}

/// A batch of tag reads at one gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateEvents {
    /// The reads, oldest first.
    pub events: Vec<GateEvent, MAX_GATE_EVENTS>,
}

/// One visitor passing one gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateEvent {
    /// The ticket's tag id, hashed on the node with the site salt: no raw ticket id leaves it.
    pub tag: TagHash,
    /// Which way the visitor passed.
    pub direction: Direction,
    /// Milliseconds after the frame's timestamp (events are batched, then sent).
    pub offset_ms: u32,
}

/// The first 8 bytes of HMAC-SHA256(site salt, raw tag id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TagHash(pub [u8; 8]);

/// The direction of passage through a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Into the area.
    Entry,
    /// Out of the area.
    Exit,
}

/// Counts over one interval at a counting gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateCounts {
    /// Length of the interval that ends at the frame's timestamp, in seconds.
    pub interval_s: u16,
    /// Visitors in.
    pub entries: u32,
    /// Visitors out.
    pub exits: u32,
}

/// One detector interval (PeMS style: 30 s, per lane).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficInterval {
    /// Length of the interval that ends at the frame's timestamp, in seconds.
    pub interval_s: u16,
    /// One entry per lane the detector watches.
    pub lanes: Vec<LaneInterval, MAX_LANES>,
}

/// What one lane saw in one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneInterval {
    /// Lane number on the segment, 1-based from the kerb, as in the site file.
    pub lane: u8,
    /// Vehicles that passed.
    pub vehicles: u16,
    /// Time a vehicle was over the detector, in tenths of a percent (0..=1000, as PeMS).
    pub occupancy_permille: u16,
    /// Mean speed in 0.1 km/h, `None` where the detector cannot measure it (single loop) or saw
    /// no vehicle.
    pub mean_speed_dkmh: Option<u16>,
}

/// Measurements from a pipe, well or manhole node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipeReadings {
    /// Why the node sent this report now.
    pub trigger: Trigger,
    /// One value per measured quantity, as the device's profile lists them.
    pub readings: Vec<PipeReading, MAX_PIPE_READINGS>,
}

/// Why a report was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    /// The regular report interval elapsed.
    Periodic,
    /// A local threshold was crossed: sent at once, kept in the offline queue until delivered.
    Threshold,
}

/// One measured quantity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PipeReading {
    /// What was measured, which fixes the unit.
    pub quantity: Quantity,
    /// The value in the quantity's unit.
    pub value: f32,
}

/// Quantities measured underground, each with one fixed unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Quantity {
    /// Water pressure in MPa.
    Pressure,
    /// Distance from the cover down to the water surface in a well, in m.
    WellLevel,
    /// Water standing on the road surface, in cm.
    RoadWater,
    /// Combustible gas (CH4), in % of the lower explosive limit.
    Gas,
    /// Oxygen, in % by volume.
    Oxygen,
    /// Hydrogen sulphide, in ppm.
    HydrogenSulfide,
    /// Manhole cover tilt from level, in degrees.
    Tilt,
    /// Flow, in m³/h.
    Flow,
}

impl Quantity {
    /// Every quantity, in declaration order.
    pub const ALL: [Quantity; 8] = [
        Quantity::Pressure,
        Quantity::WellLevel,
        Quantity::RoadWater,
        Quantity::Gas,
        Quantity::Oxygen,
        Quantity::HydrogenSulfide,
        Quantity::Tilt,
        Quantity::Flow,
    ];

    /// The field name used in device profiles and time series.
    pub const fn name(self) -> &'static str {
        match self {
            Quantity::Pressure => "pressure",
            Quantity::WellLevel => "well_level",
            Quantity::RoadWater => "road_water",
            Quantity::Gas => "gas",
            Quantity::Oxygen => "oxygen",
            Quantity::HydrogenSulfide => "h2s",
            Quantity::Tilt => "tilt",
            Quantity::Flow => "flow",
        }
    }

    /// The unit of the value.
    pub const fn unit(self) -> &'static str {
        match self {
            Quantity::Pressure => "MPa",
            Quantity::WellLevel => "m",
            Quantity::RoadWater => "cm",
            Quantity::Gas => "%LEL",
            Quantity::Oxygen => "%vol",
            Quantity::HydrogenSulfide => "ppm",
            Quantity::Tilt => "deg",
            Quantity::Flow => "m3/h",
        }
    }

    /// The quantity with this profile field name.
    pub fn from_name(name: &str) -> Option<Quantity> {
        Quantity::ALL.into_iter().find(|q| q.name() == name)
    }
}

/// Health of a node, sent at boot and then periodically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Battery charge in percent; `None` on mains power.
    pub battery_pct: Option<u8>,
    /// Received signal strength in dBm.
    pub signal_dbm: i8,
    /// Seconds since boot.
    pub uptime_s: u32,
    /// The running firmware.
    pub firmware: FirmwareVersion,
    /// Fingerprint of the key the node signs with (shows a rotation took effect).
    pub key_fingerprint: KeyFingerprint,
}

/// A semantic version of the node firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareVersion {
    /// Incompatible changes.
    pub major: u8,
    /// Compatible features.
    pub minor: u8,
    /// Fixes.
    pub patch: u8,
}

/// Gateway → node messages, published on the device's `down` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Downlink {
    /// Change the periodic report interval.
    ConfigChange {
        /// New interval, seconds.
        report_interval_s: u32,
    },
    /// Set the node's clock.
    TimeSync {
        /// Gateway time, Unix milliseconds.
        unix_ms: u64,
    },
    /// Replace the node's key. The frame is signed with the current key.
    KeyRotation {
        /// Increments with each rotation of this device; never reused.
        key_id: u16,
        /// The new key, wrapped with [`crate::DeviceKey::wrap`] under the current key.
        wrapped_key: [u8; KEY_LEN],
    },
}

/// Node → gateway: what became of a downlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownlinkAck {
    /// The sequence number of the downlink frame being answered.
    pub sequence: u32,
    /// Applied, or why not.
    pub outcome: AckOutcome,
}

/// Outcome of a downlink on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckOutcome {
    /// Done; a new key is in use from the next frame on.
    Applied,
    /// The value was outside what the node accepts (e.g. a zero report interval).
    OutOfRange,
    /// The node could not persist the change.
    StorageFailed,
}
