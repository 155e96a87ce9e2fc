//! The device registry: every device of the served zones, what it is, and what the gateway
//! knows of it (online state, last seen, battery, signal, firmware, completeness ledger).
//!
//! Built from the site file and the keys file. A device is *online* while it has reported
//! within `offline_after_intervals × report_interval_s` of its profile and its retained status
//! topic does not say `offline`; it is *unknown* until it is first heard.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustc_hash::FxHashMap;

use device_profiles::{Catalog, Category, Encoding};
use serde::Serialize;

use crate::keys::Keys;
use crate::ledger::Ledger;

/// Static facts about one device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    /// Device id.
    pub id: Arc<str>,
    /// District code.
    pub zone: Arc<str>,
    /// Profile kind.
    pub kind: Arc<str>,
    /// Crowd, traffic or pipe.
    #[serde(serialize_with = "ser_category")]
    pub category: Category,
    /// How it reports.
    #[serde(serialize_with = "ser_encoding")]
    pub encoding: Encoding,
    /// Expected report interval, seconds.
    pub report_interval_s: u32,
    /// Silence longer than this many milliseconds means offline.
    pub offline_after_ms: i64,
    /// Whether the keys file has a key for it (wire devices need one).
    pub has_key: bool,
}

fn ser_category<S: serde::Serializer>(c: &Category, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.name())
}

fn ser_encoding<S: serde::Serializer>(e: &Encoding, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match e {
        Encoding::Wire => "wire",
        Encoding::Json => "json",
        Encoding::Modbus => "modbus",
    })
}

/// What the broker's retained status topic last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusTopic {
    /// `online`.
    Online,
    /// `offline` (the node's last will, or a clean shutdown).
    Offline,
}

/// Online state as the API and metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Never heard since the gateway started.
    Unknown,
    /// Reporting.
    Online,
    /// Silent too long, or said so on its status topic.
    Offline,
}

/// What the gateway has learnt about a device.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceState {
    /// Last accepted report, Unix ms.
    pub last_seen_ms: Option<i64>,
    /// The retained status topic.
    pub status_topic: Option<StatusTopic>,
    /// From the last status report.
    pub battery_pct: Option<u8>,
    /// From the last status report.
    pub signal_dbm: Option<i8>,
    /// From the last status report.
    pub firmware: Option<String>,
    /// From the last status report.
    pub key_fingerprint: Option<String>,
    /// Reports accepted.
    pub accepted: u64,
    /// Reports rejected (all reasons).
    pub rejected: u64,
    /// Sequence numbers: replay window and completeness.
    pub ledger: Ledger,
}

/// One device: facts and state.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    /// Static facts.
    #[serde(flatten)]
    pub info: DeviceInfo,
    /// Learnt state.
    #[serde(flatten)]
    pub state: DeviceState,
}

impl Device {
    /// Online, offline or unknown at `now_ms`.
    pub fn presence(&self, now_ms: i64) -> Presence {
        match (self.state.last_seen_ms, self.state.status_topic) {
            (_, Some(StatusTopic::Offline)) => Presence::Offline,
            (Some(seen), _) if now_ms - seen <= self.info.offline_after_ms => Presence::Online,
            (Some(_), _) => Presence::Offline,
            (None, Some(StatusTopic::Online)) => Presence::Online,
            (None, None) => Presence::Unknown,
        }
    }
}

/// All served devices.
#[derive(Debug, Clone)]
pub struct Registry {
    /// Every device, sorted by id.
    devices: Vec<Device>,
    /// Where each device is in `devices`: one hash lookup for every message.
    index: FxHashMap<Arc<str>, usize>,
    zones: Vec<Arc<str>>,
    /// The position in `zones` of each device's zone, by position in `devices`.
    zone_of: Vec<usize>,
    /// Which build this is: positions in `devices` hold until the registry is rebuilt.
    generation: u64,
}

/// Registries built so far: each gets the next number as its generation.
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

/// Counts for the devices gauge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PresenceCounts {
    /// Reporting.
    pub online: usize,
    /// Silent or said offline.
    pub offline: usize,
    /// Never heard.
    pub unknown: usize,
}

impl Registry {
    /// Builds the registry of the devices in `zones` (every zone when empty).
    pub fn new(catalog: &Catalog, keys: &Keys, zones: &[String]) -> Registry {
        let mut devices = BTreeMap::new();
        for d in &catalog.site.devices {
            if !zones.is_empty() && !zones.contains(&d.zone) {
                continue;
            }
            let Some(profile) = catalog.profiles.get(&d.profile) else {
                continue; // the catalog was validated: every device's profile exists
            };
            let interval_ms = i64::from(profile.report_interval_s) * 1000;
            let info = DeviceInfo {
                id: d.id.as_str().into(),
                zone: d.zone.as_str().into(),
                kind: profile.kind.as_str().into(),
                category: profile.category,
                encoding: profile.encoding,
                report_interval_s: profile.report_interval_s,
                offline_after_ms: interval_ms * i64::from(profile.offline_after_intervals),
                has_key: keys.get(&d.id).is_some(),
            };
            devices.insert(
                info.id.clone(),
                Device {
                    info,
                    state: DeviceState::default(),
                },
            );
        }
        let devices: Vec<Device> = devices.into_values().collect();
        let index = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.info.id.clone(), i))
            .collect();
        let mut zones: Vec<Arc<str>> = devices.iter().map(|d| d.info.zone.clone()).collect();
        zones.sort();
        zones.dedup();
        let zone_of = devices
            .iter()
            .map(|d| zones.binary_search(&d.info.zone).unwrap_or_default())
            .collect();
        Registry {
            devices,
            index,
            zones,
            zone_of,
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The registry of a reloaded catalog and keys: devices still in the site keep their state
    /// (last seen, ledger, counters); new ones start unheard; removed ones are gone.
    pub fn reloaded(&self, catalog: &Catalog, keys: &Keys, zones: &[String]) -> Registry {
        let mut next = Registry::new(catalog, keys, zones);
        for d in &mut next.devices {
            if let Some(old) = self.get(&d.info.id) {
                d.state = old.state.clone();
            }
        }
        next
    }

    /// The served zone with this code.
    pub fn zone(&self, code: &str) -> Option<Arc<str>> {
        self.zones.iter().find(|z| &***z == code).cloned()
    }

    /// The served zones.
    pub fn zones(&self) -> &[Arc<str>] {
        &self.zones
    }

    /// A device by id.
    pub fn get(&self, id: &str) -> Option<&Device> {
        self.index.get(id).and_then(|&i| self.devices.get(i))
    }

    /// Where a device is in [`Registry::devices`].
    pub fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// A device by id, to update.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Device> {
        let i = *self.index.get(id)?;
        self.devices.get_mut(i)
    }

    /// Every device, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Device> {
        self.devices.iter()
    }

    /// Every device, by id: the positions a [`Survey`] names.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// Which build of the registry this is: positions in [`Registry::devices`] stay valid as
    /// long as it is the same (a reload builds a new one).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Restores persisted ledgers (replay windows and completeness) of known devices.
    pub fn restore_ledgers(&mut self, ledgers: Vec<(String, Ledger)>) {
        for (device, ledger) in ledgers {
            if let Some(d) = self.get_mut(device.as_str()) {
                d.state.ledger = ledger;
            }
        }
    }

    /// Online, offline and unknown counts at `now_ms`.
    pub fn presence_counts(&self, now_ms: i64) -> PresenceCounts {
        let mut c = PresenceCounts::default();
        for d in &self.devices {
            match d.presence(now_ms) {
                Presence::Online => c.online += 1,
                Presence::Offline => c.offline += 1,
                Presence::Unknown => c.unknown += 1,
            }
        }
        c
    }

    /// One pass over every device at `now_ms`: devices by presence in each served district,
    /// the reports missing over all devices, and the devices whose presence is not the one in
    /// `seen` (which it then holds).
    pub fn survey(&self, now_ms: i64, seen: &mut Seen) -> Survey {
        seen.follow(self);
        let mut by_zone: Vec<(Arc<str>, PresenceCounts)> = self
            .zones
            .iter()
            .map(|z| (z.clone(), PresenceCounts::default()))
            .collect();
        let (mut missing, mut changed) = (0, Vec::new());
        for (i, d) in self.devices.iter().enumerate() {
            let presence = d.presence(now_ms);
            let c = &mut by_zone[self.zone_of[i]].1;
            match presence {
                Presence::Online => c.online += 1,
                Presence::Offline => c.offline += 1,
                Presence::Unknown => c.unknown += 1,
            }
            missing += d.state.ledger.missing();
            if std::mem::replace(&mut seen.presence[i], presence) != presence {
                changed.push(i);
            }
        }
        Survey {
            by_zone,
            missing,
            changed,
        }
    }
}

/// What a [`Registry::survey`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    /// Devices by presence in each served district.
    pub by_zone: Vec<(Arc<str>, PresenceCounts)>,
    /// Reports expected but never received, over all devices.
    pub missing: u64,
    /// Positions of the devices whose presence changed since the survey before.
    pub changed: Vec<usize>,
}

/// The presence of every device as the last survey found it, by position; it follows the
/// registry through a reload by device id, so a reload changes no one's presence.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    generation: Option<u64>,
    ids: Vec<Arc<str>>,
    presence: Vec<Presence>,
}

impl Seen {
    /// Lines the positions up with `registry`'s, carrying each device's presence over by id
    /// when the registry was rebuilt (never heard: unknown).
    fn follow(&mut self, registry: &Registry) {
        if self.generation == Some(registry.generation) {
            return;
        }
        let before: FxHashMap<&Arc<str>, Presence> =
            self.ids.iter().zip(self.presence.iter().copied()).collect();
        let presence = registry
            .devices
            .iter()
            .map(|d| before.get(&d.info.id).copied().unwrap_or(Presence::Unknown))
            .collect();
        self.presence = presence;
        self.ids = registry.devices.iter().map(|d| d.info.id.clone()).collect();
        self.generation = Some(registry.generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_survey_counts_by_district_and_names_only_the_devices_whose_presence_changed() {
        let catalog = Catalog::ganzhou().unwrap();
        let keys = Keys::demo(&catalog);
        let mut registry = Registry::new(&catalog, &keys, &[]);
        let (n, t) = (registry.len(), 1_795_744_800_000);
        assert!(registry.zones().len() > 1, "a site of several districts");
        let mut seen = Seen::default();
        let first = registry.survey(t, &mut seen);
        assert!(first.changed.is_empty(), "never heard is no change");
        let unknown: usize = first.by_zone.iter().map(|(_, c)| c.unknown).sum();
        assert_eq!(unknown, n);

        // Every third device reports; one of them then says it is offline.
        let heard: Vec<usize> = (0..n).step_by(3).collect();
        for &i in &heard {
            registry.devices[i].state.last_seen_ms = Some(t);
        }
        let s = registry.survey(t + 1_000, &mut seen);
        assert_eq!(s.changed, heard);
        for (zone, c) in &s.by_zone {
            let online = heard
                .iter()
                .filter(|&&i| registry.devices[i].info.zone == *zone)
                .count();
            assert_eq!((c.online, c.offline), (online, 0), "{zone}");
        }
        assert!(registry.survey(t + 2_000, &mut seen).changed.is_empty());
        registry.devices[heard[1]].state.status_topic = Some(StatusTopic::Offline);
        assert_eq!(
            registry.survey(t + 3_000, &mut seen).changed,
            vec![heard[1]]
        );

        // A reload carries every device's presence over: nothing changed.
        let reloaded = registry.reloaded(&catalog, &keys, &[]);
        assert_ne!(reloaded.generation(), registry.generation());
        let s = reloaded.survey(t + 4_000, &mut seen);
        assert!(s.changed.is_empty(), "{:?}", s.changed);
        // Silence past the offline time is a change, once.
        let late = t
            + heard
                .iter()
                .map(|&i| reloaded.devices[i].info.offline_after_ms)
                .max()
                .unwrap()
            + 1;
        let s = reloaded.survey(late, &mut seen);
        let expected: Vec<usize> = heard.iter().copied().filter(|&i| i != heard[1]).collect();
        assert_eq!(s.changed, expected);
        let offline: usize = s.by_zone.iter().map(|(_, c)| c.offline).sum();
        assert_eq!(offline, heard.len());
        assert!(reloaded.survey(late + 1_000, &mut seen).changed.is_empty());
    }
}
