//! Wire frames to readings: the frame's layout, device, key and tag, the replay window, the
//! timestamp, then the body's readings (firmware/wire).

use std::borrow::Cow;

use device_profiles::{Category, Profile};
use wire::{Body, Frame, FrameError, Timestamp};

use crate::reading::{Measurement, Reading, Tag};
use crate::registry::{Device, DeviceInfo};

use super::verify::check_range;
use super::{Rejection, reject};

impl super::Verifier {
    pub(super) fn wire_report(
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
        // While a rotation is under way, a frame under the new key means the node took it (the
        // key being sent is looked up only then: most frames verify with the current one).
        let mut verified = frame.verify_prepared(key);
        if verified.is_err()
            && let Some((_, _, next)) = self.keys.next(&info.id)
            && let Ok(v) = Frame::new_checked(payload)
                .map_err(frame_error)?
                .verify_prepared(next)
        {
            self.tell(crate::keys::KeyNews::SignsWithNext {
                device: info.id.as_ref().into(),
            });
            verified = Ok(v);
        }
        let message = verified
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
        if let Body::Ack(a) = &message.body {
            self.tell(crate::keys::KeyNews::Answered {
                device: info.id.as_ref().into(),
                sequence: a.sequence,
                outcome: a.outcome,
            });
        }
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
                info.category.name(),
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
        // Acknowledgements of downlinks carry no measurement; the key rotation service reads
        // them (`housekeeping/rotation.rs`).
        (Body::Ack(_), _) => Ok(Vec::new()),
        _ => Err(unexpected()),
    }
}
