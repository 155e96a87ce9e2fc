//! Verify and decode: from an MQTT message to [`Reading`]s, or a [`Rejection`] with a reason.
//!
//! Checks, in order, each with its own reason label:
//! 1. the topic is `cs/v1/{zone}/{kind}/{device}/up` (`bad_topic`), the device is served
//!    (`unknown_device`) and publishes under its own zone and kind (`wrong_topic`);
//! 2. wire devices: the frame's layout (the [`wire::FrameError`] reasons), that the frame is the
//!    topic's device (`device_mismatch`), its key (`no_key`), tag, body; then the replay window
//!    (`replayed`) and the timestamp (`clock_skew`, `stale`);
//! 3. JSON devices: size (`oversized`), nesting (`too_deep`), syntax (`malformed_json`), the
//!    mapped fields (`missing_field`, `wrong_type`) and the device id (`device_mismatch`);
//! 4. the report suits the device (`unexpected_report`, `unknown_field`) and every value is
//!    inside the profile's range (`out_of_range`, which also catches NaN and infinities).
//!
//! A rejection touches nothing but the counters of the device it names: other devices, and the
//! device's own replay window, are unchanged.

use std::borrow::Cow;
use std::sync::Arc;

use device_profiles::{Catalog, Category, Encoding, Profile};
use rustc_hash::FxHashMap;
use serde_json::Value as Json;
use wire::{Body, Frame, FrameError, Timestamp};

use crate::config::VerifySection;
use crate::keys::Keys;
use crate::reading::{Measurement, Reading, Tag};
use crate::registry::{Device, DeviceInfo, Registry, StatusTopic};

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable label: metrics and the DLQ.
    pub reason: &'static str,
    /// A sentence for people.
    pub detail: String,
    /// Zone from the topic, when it names a served district (the DLQ topic).
    pub zone: Option<Arc<str>>,
}

fn reject(reason: &'static str, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
        zone: None,
    }
}

/// Which stream of a device a topic belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `.../up`: reports.
    Up,
    /// `.../status`: retained online/offline.
    Status,
}

/// The parts of a device topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceTopic<'a> {
    /// District code.
    pub zone: &'a str,
    /// Profile kind.
    pub kind: &'a str,
    /// Device id.
    pub device: &'a str,
    /// Which stream.
    pub stream: Stream,
}

/// Parses `cs/v1/{zone}/{kind}/{device}/{up|status}`.
pub fn parse_topic(topic: &str) -> Option<DeviceTopic<'_>> {
    let rest = topic.strip_prefix("cs/v1/")?;
    let (zone, rest) = rest.split_once('/')?;
    let (kind, rest) = rest.split_once('/')?;
    let (device, stream) = rest.split_once('/')?;
    let stream = match stream {
        "up" => Stream::Up,
        "status" => Stream::Status,
        _ => return None, // also a topic with more levels
    };
    Some(DeviceTopic {
        zone,
        kind,
        device,
        stream,
    })
}

/// Verifies and decodes messages against the catalog, keys and registry.
#[derive(Debug)]
pub struct Verifier {
    /// The catalog's profiles by kind, hashed: one lookup per message.
    profiles: FxHashMap<Box<str>, Profile>,
    keys: Keys,
    rules: VerifySection,
}

impl Verifier {
    /// The profile of a device kind.
    pub fn profile(&self, kind: &str) -> Option<&device_profiles::Profile> {
        self.profiles.get(kind)
    }

    /// A verifier for `catalog` with `keys`.
    pub fn new(catalog: &Catalog, keys: Keys, rules: VerifySection) -> Verifier {
        Verifier {
            profiles: catalog
                .profiles
                .iter()
                .map(|(kind, p)| (kind.as_str().into(), p.clone()))
                .collect(),
            keys,
            rules,
        }
    }

    /// Handles a message on a device's `up` topic: the readings it carries, or why not.
    /// Updates the device's state (last seen, ledger, counters) in `registry`.
    pub fn report(
        &self,
        registry: &mut Registry,
        topic: &str,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<Vec<Reading>, Rejection> {
        let t = parse_topic(topic)
            .filter(|t| t.stream == Stream::Up)
            .ok_or_else(|| {
                reject(
                    "bad_topic",
                    format!("topic \"{topic}\" is not cs/v1/{{zone}}/{{kind}}/{{device}}/up"),
                )
            })?;
        let Some(device) = registry.get_mut(t.device) else {
            return Err(Rejection {
                zone: registry.zone(t.zone),
                ..reject(
                    "unknown_device",
                    format!(
                        "device \"{}\" is not in the site (or not in a zone this gateway serves)",
                        t.device
                    ),
                )
            });
        };
        let result = self.report_from(device, t, payload, now_ms);
        match &result {
            Ok(_) => {
                device.state.accepted += 1;
                device.state.last_seen_ms = Some(now_ms);
                if device.state.status_topic == Some(StatusTopic::Offline) {
                    device.state.status_topic = None;
                }
            }
            Err(_) => device.state.rejected += 1,
        }
        result.map_err(|mut r| {
            r.zone = registry.zone(t.zone);
            r
        })
    }

    fn report_from(
        &self,
        device: &mut Device,
        t: DeviceTopic<'_>,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<Vec<Reading>, Rejection> {
        let info = &device.info;
        if &*info.zone != t.zone || &*info.kind != t.kind {
            return Err(reject(
                "wrong_topic",
                format!(
                    "device \"{}\" reports under cs/v1/{}/{}/..., not {}/{}",
                    info.id, info.zone, info.kind, t.zone, t.kind
                ),
            ));
        }
        let profile = self.profiles.get(&*info.kind).ok_or_else(|| {
            reject(
                "unknown_device",
                format!("profile \"{}\" is not loaded", info.kind),
            )
        })?;
        match profile.encoding {
            Encoding::Wire => self.wire_report(device, profile, payload, now_ms),
            Encoding::Json => json_report(info, profile, payload, now_ms),
            Encoding::Modbus => Err(reject(
                "wrong_topic",
                format!(
                    "device \"{}\" is polled over Modbus and does not publish",
                    info.id
                ),
            )),
        }
    }

    fn wire_report(
        &self,
        device: &mut Device,
        profile: &Profile,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<Vec<Reading>, Rejection> {
        let Device { info, state } = device;
        let frame_error = |e: FrameError| reject(e.reason(), e.to_string());
        let frame = Frame::new_checked(payload).map_err(frame_error)?;
        if frame.device_id() != &*info.id {
            return Err(reject(
                "device_mismatch",
                format!(
                    "a frame of device \"{}\" was published on the topic of \"{}\"",
                    frame.device_id(),
                    info.id
                ),
            ));
        }
        let key = self.keys.prepared(&info.id).ok_or_else(|| {
            reject(
                "no_key",
                format!("no key for device \"{}\" in the keys file", info.id),
            )
        })?;
        let message = frame
            .verify_prepared(key)
            .map_err(frame_error)?
            .decode()
            .map_err(frame_error)?;
        let h = message.header;
        if state.ledger.check(h.boot_epoch, h.sequence).is_err() {
            state.ledger.count_replay();
            return Err(reject(
                "replayed",
                format!(
                    "boot epoch {} sequence {} was already accepted or is older than the replay window",
                    h.boot_epoch, h.sequence
                ),
            ));
        }
        let (time_ms, unsynced) = match h.timestamp {
            Timestamp::Synced { unix_ms } => {
                let t = i64::try_from(unix_ms).unwrap_or(i64::MAX);
                let skew_ms = self.rules.max_clock_skew_s as i64 * 1000;
                if t > now_ms.saturating_add(skew_ms) {
                    return Err(reject(
                        "clock_skew",
                        format!("timestamp is {} s in the future", (t - now_ms) / 1000),
                    ));
                }
                if t < now_ms - self.rules.max_age_s as i64 * 1000 {
                    return Err(reject(
                        "stale",
                        format!(
                            "timestamp is {} s old (max_age_s = {})",
                            (now_ms - t) / 1000,
                            self.rules.max_age_s
                        ),
                    ));
                }
                (t, false)
            }
            Timestamp::Unsynced { .. } => (now_ms, true),
        };
        let reading = |time_ms: i64, measurement| Reading {
            device: info.id.clone(),
            zone: info.zone.clone(),
            kind: info.kind.clone(),
            time_ms,
            received_ms: now_ms,
            unsynced_clock: unsynced,
            origin: Some((h.boot_epoch, h.sequence)),
            measurement,
        };
        let readings = body_readings(info, profile, &message.body, time_ms, reading)?;
        state.ledger.accept(h.boot_epoch, h.sequence);
        if let Body::Status(s) = &message.body {
            state.battery_pct = s.battery_pct;
            state.signal_dbm = Some(s.signal_dbm);
            state.firmware = Some(format!(
                "{}.{}.{}",
                s.firmware.major, s.firmware.minor, s.firmware.patch
            ));
            state.key_fingerprint = Some(s.key_fingerprint.to_string());
        }
        Ok(readings)
    }

    /// Handles a retained status message (`online` / `offline`).
    pub fn status(
        &self,
        registry: &mut Registry,
        topic: &str,
        payload: &[u8],
    ) -> Result<(), Rejection> {
        let t = parse_topic(topic)
            .filter(|t| t.stream == Stream::Status)
            .ok_or_else(|| {
                reject(
                    "bad_topic",
                    format!("topic \"{topic}\" is not a device status topic"),
                )
            })?;
        let device = registry.get_mut(t.device).ok_or_else(|| {
            reject(
                "unknown_device",
                format!("device \"{}\" is not served here", t.device),
            )
        })?;
        if &*device.info.zone != t.zone || &*device.info.kind != t.kind {
            return Err(reject(
                "wrong_topic",
                format!("status of \"{}\" on another zone or kind", t.device),
            ));
        }
        device.state.status_topic = match payload {
            b"online" => Some(StatusTopic::Online),
            b"offline" => Some(StatusTopic::Offline),
            b"" => None, // retained message cleared
            _ => {
                return Err(reject(
                    "bad_status",
                    "status payload must be \"online\" or \"offline\"",
                ));
            }
        };
        Ok(())
    }
}

fn out_of_range(profile: &Profile, field: &str, value: f64) -> Option<Rejection> {
    let f = profile.field(field)?;
    (!(value.is_finite() && value >= f.min && value <= f.max)).then(|| {
        reject(
            "out_of_range",
            format!(
                "{field} = {value} is outside {}..={} {}",
                f.min, f.max, f.unit
            ),
        )
    })
}

fn check_range(profile: &Profile, field: &str, value: f64) -> Result<(), Rejection> {
    out_of_range(profile, field, value).map_or(Ok(()), Err)
}

fn body_readings(
    info: &DeviceInfo,
    profile: &Profile,
    body: &Body,
    time_ms: i64,
    reading: impl Fn(i64, Measurement) -> Reading,
) -> Result<Vec<Reading>, Rejection> {
    let unexpected = || {
        reject(
            "unexpected_report",
            format!(
                "a {} report from a {} device ({})",
                body.kind(),
                crate::registry::category_name(info.category),
                info.kind
            ),
        )
    };
    match (body, info.category) {
        (Body::GateEvents(g), Category::Crowd) => Ok(g
            .events
            .iter()
            .map(|e| {
                reading(
                    time_ms + i64::from(e.offset_ms),
                    Measurement::Passage {
                        tag: Tag(e.tag.0),
                        entry: e.direction == wire::Direction::Entry,
                    },
                )
            })
            .collect()),
        (Body::GateCounts(c), Category::Crowd) => {
            check_range(profile, "passages", f64::from(c.entries))?;
            check_range(profile, "passages", f64::from(c.exits))?;
            Ok(vec![reading(
                time_ms,
                Measurement::Counts {
                    entries: c.entries,
                    exits: c.exits,
                    interval_s: c.interval_s,
                },
            )])
        }
        (Body::TrafficInterval(t), Category::Traffic) => {
            let mut out = Vec::with_capacity(t.lanes.len());
            for l in &t.lanes {
                let occupancy_pct = f64::from(l.occupancy_permille) / 10.0;
                let speed_kmh = l.mean_speed_dkmh.map(|s| f64::from(s) / 10.0);
                check_range(profile, "vehicles", f64::from(l.vehicles))?;
                check_range(profile, "occupancy", occupancy_pct)?;
                if let Some(s) = speed_kmh {
                    check_range(profile, "speed", s)?;
                }
                out.push(reading(
                    time_ms,
                    Measurement::Lane {
                        lane: l.lane,
                        vehicles: l.vehicles,
                        occupancy_pct,
                        speed_kmh,
                        interval_s: t.interval_s,
                    },
                ));
            }
            Ok(out)
        }
        (Body::PipeReadings(p), Category::Pipe) => {
            let urgent = p.trigger == wire::Trigger::Threshold;
            let mut out = Vec::with_capacity(p.readings.len());
            for r in &p.readings {
                let name = r.quantity.name();
                if profile.field(name).is_none() {
                    return Err(reject(
                        "unknown_field",
                        format!("{} does not measure {name}", info.kind),
                    ));
                }
                let value = f64::from(r.value);
                check_range(profile, name, value)?;
                out.push(reading(
                    time_ms,
                    Measurement::Value {
                        field: Cow::Borrowed(name),
                        value,
                        urgent,
                    },
                ));
            }
            Ok(out)
        }
        (Body::Status(s), _) => {
            if s.battery_pct.is_some_and(|b| b > 100) {
                return Err(reject("out_of_range", "battery above 100%"));
            }
            Ok(vec![reading(
                time_ms,
                Measurement::Status {
                    battery_pct: s.battery_pct,
                    signal_dbm: s.signal_dbm,
                    uptime_s: s.uptime_s,
                    firmware: format!(
                        "{}.{}.{}",
                        s.firmware.major, s.firmware.minor, s.firmware.patch
                    ),
                    key_fingerprint: s.key_fingerprint.to_string(),
                },
            )])
        }
        // Acknowledgements of downlinks carry no measurement; the downlink service reads them.
        (Body::Ack(_), _) => Ok(Vec::new()),
        _ => Err(unexpected()),
    }
}

/// Deepest nesting of arrays and objects in `bytes`, stopping early past `limit`. Strings are
/// skipped so brackets inside them do not count.
fn json_depth_exceeds(bytes: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn json_report(
    info: &DeviceInfo,
    profile: &Profile,
    payload: &[u8],
    now_ms: i64,
) -> Result<Vec<Reading>, Rejection> {
    let Some(mapping) = &profile.json else {
        return Err(reject(
            "unknown_device",
            format!("profile {} has no JSON mapping", profile.kind),
        ));
    };
    if payload.len() > mapping.max_payload_bytes {
        return Err(reject(
            "oversized",
            format!(
                "{} bytes of JSON, the profile allows {}",
                payload.len(),
                mapping.max_payload_bytes
            ),
        ));
    }
    if json_depth_exceeds(payload, mapping.max_depth) {
        return Err(reject(
            "too_deep",
            format!("JSON nested deeper than {} levels", mapping.max_depth),
        ));
    }
    let doc: Json = serde_json::from_slice(payload)
        .map_err(|e| reject("malformed_json", format!("not JSON: {e}")))?;
    let id = doc
        .pointer(&mapping.device_id)
        .ok_or_else(|| {
            reject(
                "missing_field",
                format!("no device id at {}", mapping.device_id),
            )
        })?
        .as_str()
        .ok_or_else(|| {
            reject(
                "wrong_type",
                format!("device id at {} is not a string", mapping.device_id),
            )
        })?;
    if id != &*info.id {
        return Err(reject(
            "device_mismatch",
            format!(
                "a payload of device \"{id}\" was published on the topic of \"{}\"",
                info.id
            ),
        ));
    }
    let (time_ms, unsynced) = match &mapping.timestamp {
        None => (now_ms, true),
        Some(ptr) => {
            let ts = doc
                .pointer(ptr)
                .ok_or_else(|| reject("missing_field", format!("no timestamp at {ptr}")))?
                .as_f64()
                .ok_or_else(|| {
                    reject("wrong_type", format!("timestamp at {ptr} is not a number"))
                })?;
            let ms = match mapping.timestamp_unit {
                device_profiles::profile::TimestampUnit::S => ts * 1000.0,
                device_profiles::profile::TimestampUnit::Ms => ts,
            };
            if !(0.0..=1.0e15).contains(&ms) {
                return Err(reject(
                    "out_of_range",
                    format!("timestamp {ts} is not a plausible time"),
                ));
            }
            (ms as i64, false)
        }
    };
    let mut out = Vec::with_capacity(profile.fields.len());
    for f in &profile.fields {
        let Some(ptr) = &f.pointer else { continue };
        let Some(v) = doc.pointer(ptr) else {
            return Err(reject("missing_field", format!("no {} at {ptr}", f.name)));
        };
        let value = match (v, &f.map) {
            (Json::Number(n), _) => n.as_f64().unwrap_or(f64::NAN),
            (Json::String(s), Some(map)) => *map.get(s).ok_or_else(|| {
                reject(
                    "out_of_range",
                    format!(
                        "{} \"{s}\" is not one of {:?}",
                        f.name,
                        map.keys().collect::<Vec<_>>()
                    ),
                )
            })?,
            _ => {
                return Err(reject(
                    "wrong_type",
                    format!("{} at {ptr} is {v}, not a number", f.name),
                ));
            }
        };
        check_range(profile, &f.name, value)?;
        out.push(Reading {
            device: info.id.clone(),
            zone: info.zone.clone(),
            kind: info.kind.clone(),
            time_ms,
            received_ms: now_ms,
            unsynced_clock: unsynced,
            origin: None,
            measurement: Measurement::Value {
                field: f.name.clone().into(),
                value,
                urgent: false,
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_and_junk_does_not() {
        let t = parse_topic("cs/v1/360702/uhf-rfid-gate/gz-s4-g1/up").unwrap();
        assert_eq!(
            (t.zone, t.kind, t.device, t.stream),
            ("360702", "uhf-rfid-gate", "gz-s4-g1", Stream::Up)
        );
        assert!(parse_topic("cs/v1/360702/uhf-rfid-gate/gz-s4-g1/down").is_none());
        assert!(parse_topic("cs/v1/360702/uhf-rfid-gate/gz-s4-g1/up/extra").is_none());
        assert!(parse_topic("cs/v2/360702/k/d/up").is_none());
    }

    #[test]
    fn json_depth_ignores_brackets_in_strings() {
        assert!(!json_depth_exceeds(br#"{"a": "[[[[[[[[[["}"#, 2));
        assert!(json_depth_exceeds(br#"{"a": [[[1]]]}"#, 3));
        assert!(!json_depth_exceeds(br#"{"a": [[1]]}"#, 3));
        assert!(!json_depth_exceeds(br#"{"a": "\"[[[["}"#, 1));
    }
}

#[cfg(test)]
mod verifier_tests {
    use std::sync::Arc;

    use device_profiles::Catalog;
    use wire::{Body, Header, Quantity, Timestamp};

    use super::*;
    use crate::traffic::{demo_key, demo_keys};

    const NOW: i64 = 1_800_000_000_000;
    const TOPIC: &str = "cs/v1/360702/water-pressure/gz-p1-press/up";

    fn setup() -> (Verifier, Registry) {
        let catalog = Arc::new(Catalog::ganzhou().unwrap());
        let keys = demo_keys(&catalog);
        let registry = Registry::new(&catalog, &keys, &[]);
        (
            Verifier::new(&catalog, keys, VerifySection::default()),
            registry,
        )
    }

    fn pressure_frame(sequence: u32, timestamp: Timestamp) -> Vec<u8> {
        let mut readings = heapless::Vec::new();
        readings
            .push(wire::PipeReading {
                quantity: Quantity::Pressure,
                value: 0.3,
            })
            .unwrap();
        let body = Body::PipeReadings(wire::PipeReadings {
            trigger: wire::Trigger::Periodic,
            readings,
        });
        let header = Header {
            device_id: "gz-p1-press",
            boot_epoch: 1,
            sequence,
            timestamp,
        };
        wire::frame::seal_to_vec(&header, &body, &demo_key("gz-p1-press")).unwrap()
    }

    #[test]
    fn an_unsynced_node_gets_the_receive_time_and_a_flag() {
        let (v, mut reg) = setup();
        let r = v
            .report(
                &mut reg,
                TOPIC,
                &pressure_frame(0, Timestamp::Unsynced { uptime_ms: 5 }),
                NOW,
            )
            .unwrap();
        assert_eq!((r[0].time_ms, r[0].unsynced_clock), (NOW, true));
        let r = v
            .report(
                &mut reg,
                TOPIC,
                &pressure_frame(
                    1,
                    Timestamp::Synced {
                        unix_ms: (NOW - 5000) as u64,
                    },
                ),
                NOW,
            )
            .unwrap();
        assert_eq!((r[0].time_ms, r[0].unsynced_clock), (NOW - 5000, false));
    }

    #[test]
    fn a_clock_ahead_of_the_skew_and_an_old_report_are_refused_and_change_nothing() {
        let (v, mut reg) = setup();
        let ahead = pressure_frame(
            0,
            Timestamp::Synced {
                unix_ms: (NOW + 61_000) as u64,
            },
        );
        assert_eq!(
            v.report(&mut reg, TOPIC, &ahead, NOW).unwrap_err().reason,
            "clock_skew"
        );
        let old = pressure_frame(
            1,
            Timestamp::Synced {
                unix_ms: (NOW - 8 * 24 * 3600 * 1000) as u64,
            },
        );
        assert_eq!(
            v.report(&mut reg, TOPIC, &old, NOW).unwrap_err().reason,
            "stale"
        );
        let d = reg.get("gz-p1-press").unwrap();
        assert_eq!(
            (d.state.accepted, d.state.rejected, d.state.ledger.started),
            (0, 2, false)
        );
        // The refused sequence numbers are still usable: nothing was recorded for them.
        v.report(
            &mut reg,
            TOPIC,
            &pressure_frame(
                0,
                Timestamp::Synced {
                    unix_ms: NOW as u64,
                },
            ),
            NOW,
        )
        .unwrap();
    }

    #[test]
    fn the_status_topic_sets_presence_and_junk_is_refused() {
        let (v, mut reg) = setup();
        let status = "cs/v1/360702/water-pressure/gz-p1-press/status";
        v.status(&mut reg, status, b"offline").unwrap();
        assert_eq!(
            reg.get("gz-p1-press").unwrap().presence(NOW),
            crate::registry::Presence::Offline
        );
        v.status(&mut reg, status, b"online").unwrap();
        assert_eq!(
            reg.get("gz-p1-press").unwrap().presence(NOW),
            crate::registry::Presence::Online
        );
        assert_eq!(
            v.status(&mut reg, status, b"maybe").unwrap_err().reason,
            "bad_status"
        );
    }

    #[test]
    fn silence_longer_than_the_profile_allows_means_offline() {
        let (v, mut reg) = setup();
        v.report(
            &mut reg,
            TOPIC,
            &pressure_frame(
                0,
                Timestamp::Synced {
                    unix_ms: NOW as u64,
                },
            ),
            NOW,
        )
        .unwrap();
        let d = reg.get("gz-p1-press").unwrap();
        // water-pressure: every 300 s, offline after 2 intervals.
        assert_eq!(d.presence(NOW + 600_000), crate::registry::Presence::Online);
        assert_eq!(
            d.presence(NOW + 600_001),
            crate::registry::Presence::Offline
        );
        assert_eq!(
            reg.get("gz-p2-press").unwrap().presence(NOW),
            crate::registry::Presence::Unknown
        );
    }
}
