//! The [`Verifier`]: which device a message is from, its profile and key, and the checks every
//! reading passes, whether it came in a frame, as JSON or from a Modbus poll.

use std::sync::Arc;

use device_profiles::{Catalog, Category, Encoding, Profile};
use rustc_hash::FxHashMap;

use crate::keys::{KeyNews, Keys};
use crate::reading::{Measurement, Reading};
use crate::registry::{Device, Registry, StatusTopic};

use serde::Deserialize;

use super::json::json_report;
use super::topic::{DeviceTopic, Stream, parse_topic};
use super::{Rejection, reject};

/// Frame acceptance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySection {
    /// Reports stamped further than this in the future are rejected (`clock_skew`).
    #[serde(default = "default_skew")]
    pub max_clock_skew_s: u64,
    /// Reports older than this are rejected (`stale`). Nodes queue reports while offline, so
    /// keep it longer than the longest outage you want to recover from.
    #[serde(default = "default_max_age")]
    pub max_age_s: u64,
}

impl Default for VerifySection {
    fn default() -> Self {
        VerifySection {
            max_clock_skew_s: default_skew(),
            max_age_s: default_max_age(),
        }
    }
}

fn default_skew() -> u64 {
    60
}
fn default_max_age() -> u64 {
    7 * 24 * 3600
}

impl VerifySection {
    /// Checks values that types alone cannot; returns `(key, reason)` pairs.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if self.max_clock_skew_s == 0 || self.max_age_s < 60 {
            p.push((
                "verify".into(),
                "max_clock_skew_s must be > 0 and max_age_s at least 60".into(),
            ));
        }
        p
    }
}

/// A report accepted: its readings and the device it came from (found once, for the caller's
/// counters and the devices its batch touched).
#[derive(Debug)]
pub struct Accepted {
    /// The readings it carries.
    pub readings: Vec<Reading>,
    /// The device's id.
    pub device: Arc<str>,
    /// The device's category.
    pub category: Category,
}

/// Verifies and decodes messages against the catalog, keys and registry. A reload or a key
/// rotation replaces it whole (the pipeline holds it in an `ArcSwap`).
#[derive(Debug, Clone)]
pub struct Verifier {
    /// The catalog's profiles by kind, hashed: one lookup per message.
    pub(super) profiles: FxHashMap<Box<str>, Profile>,
    pub(super) keys: Keys,
    pub(super) rules: VerifySection,
    /// Where downlink acknowledgements and frames under a rotated key are told.
    pub(super) news: Option<tokio::sync::mpsc::UnboundedSender<KeyNews>>,
}

impl Verifier {
    /// How far ahead of its receipt a report's event time may be (`max_clock_skew_s`), ms.
    pub fn max_clock_skew_ms(&self) -> i64 {
        i64::try_from(self.rules.max_clock_skew_s.saturating_mul(1000)).unwrap_or(i64::MAX / 2)
    }

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
            news: None,
        }
    }

    /// Tells `news` of downlink acknowledgements and frames signed with a rotated key.
    pub fn with_news(mut self, news: tokio::sync::mpsc::UnboundedSender<KeyNews>) -> Verifier {
        self.news = Some(news);
        self
    }

    /// The same verifier with other keys.
    pub fn with_keys(&self, keys: Keys) -> Verifier {
        Verifier {
            keys,
            ..self.clone()
        }
    }

    /// The keys in force.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The acceptance rules.
    pub fn rules(&self) -> &VerifySection {
        &self.rules
    }

    /// Where key news go, if anywhere.
    pub fn news(&self) -> Option<tokio::sync::mpsc::UnboundedSender<KeyNews>> {
        self.news.clone()
    }

    pub(super) fn tell(&self, news: KeyNews) {
        if let Some(n) = &self.news {
            let _ = n.send(news);
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
    ) -> Result<Accepted, Rejection> {
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
        match self.report_from(device, t, payload, now_ms) {
            Ok(readings) => {
                device.state.accepted += 1;
                device.state.last_seen_ms = Some(now_ms);
                if device.state.status_topic == Some(StatusTopic::Offline) {
                    device.state.status_topic = None;
                }
                Ok(Accepted {
                    readings,
                    device: device.info.id.clone(),
                    category: device.info.category,
                })
            }
            Err(mut r) => {
                device.state.rejected += 1;
                r.zone = registry.zone(t.zone);
                Err(r)
            }
        }
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
    /// Checks the readings a Modbus poll of `device` produced, as published reports are
    /// checked: every value is a field of the device's profile (`unknown_field`) inside its
    /// range (`out_of_range`). Returns the readings that pass and the rejections of the rest;
    /// the device counts as heard.
    pub fn polled(
        &self,
        device: &mut Device,
        readings: Vec<Reading>,
        now_ms: i64,
    ) -> (Vec<Reading>, Vec<Rejection>) {
        let mut rejected = Vec::new();
        let profile = self.profiles.get(&*device.info.kind);
        let readings = readings
            .into_iter()
            .filter(|r| {
                let (Measurement::Value { field, value, .. }, Some(p)) = (&r.measurement, profile)
                else {
                    return true;
                };
                let problem = match p.field(field) {
                    None => Some(reject(
                        "unknown_field",
                        format!("{field} is not a field of {}", device.info.kind),
                    )),
                    Some(_) => out_of_range(p, field, *value),
                };
                rejected.extend(problem.clone());
                problem.is_none()
            })
            .collect();
        device.state.accepted += 1;
        device.state.last_seen_ms = Some(now_ms);
        (readings, rejected)
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

pub(crate) fn out_of_range(profile: &Profile, field: &str, value: f64) -> Option<Rejection> {
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

pub(crate) fn check_range(profile: &Profile, field: &str, value: f64) -> Result<(), Rejection> {
    out_of_range(profile, field, value).map_or(Ok(()), Err)
}

#[cfg(test)]
mod verifier_tests {
    use std::sync::Arc;

    use device_profiles::Catalog;
    use wire::{Body, Header, Quantity, Timestamp};

    use super::*;
    use device_profiles::demo::key as demo_key;

    const NOW: i64 = 1_800_000_000_000;
    const TOPIC: &str = "cs/v1/360702/water-pressure/gz-p1-press/up";

    fn setup() -> (Verifier, Registry) {
        let catalog = Arc::new(Catalog::ganzhou().unwrap());
        let keys = crate::keys::Keys::demo(&catalog);
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
        assert_eq!(
            (r.readings[0].time_ms, r.readings[0].unsynced_clock),
            (NOW, true)
        );
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
        assert_eq!(
            (r.readings[0].time_ms, r.readings[0].unsynced_clock),
            (NOW - 5000, false)
        );
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

    #[test]
    fn polled_readings_pass_the_same_range_check_as_published_ones() {
        let (v, mut registry) = setup();
        let device = registry.get_mut("gz-p1-press").unwrap();
        let polled = |field: &'static str, value: f64| Reading {
            device: "gz-p1-press".into(),
            zone: "360702".into(),
            kind: "water-pressure".into(),
            time_ms: NOW,
            received_ms: NOW,
            unsynced_clock: false,
            origin: None,
            measurement: Measurement::Value {
                field: field.into(),
                value,
                urgent: false,
            },
        };
        let readings = vec![
            polled("pressure", 0.35),
            polled("pressure", 9.0),
            polled("pressure", f64::NAN),
            polled("torque", 1.0),
        ];
        let (kept, rejected) = v.polled(device, readings, NOW);
        assert_eq!(kept, [polled("pressure", 0.35)]);
        let reasons: Vec<&str> = rejected.iter().map(|r| r.reason).collect();
        assert_eq!(reasons, ["out_of_range", "out_of_range", "unknown_field"]);
        assert!(
            rejected[0].detail.contains("0..=1.6"),
            "{}",
            rejected[0].detail
        );
        assert_eq!(device.state.last_seen_ms, Some(NOW), "the device was heard");
    }
}
