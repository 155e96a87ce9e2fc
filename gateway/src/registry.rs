//! The device registry: every device of the served zones, what it is, and what the gateway
//! knows of it (online state, last seen, battery, signal, firmware, completeness ledger).
//!
//! Built from the site file and the keys file. A device is *online* while it has reported
//! within `offline_after_intervals × report_interval_s` of its profile and its retained status
//! topic does not say `offline`; it is *unknown* until it is first heard.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::sync::Arc;

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
    s.serialize_str(category_name(*c))
}

fn ser_encoding<S: serde::Serializer>(e: &Encoding, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match e {
        Encoding::Wire => "wire",
        Encoding::Json => "json",
        Encoding::Modbus => "modbus",
    })
}

/// The label used for a category in metrics and the API.
pub fn category_name(c: Category) -> &'static str {
    match c {
        Category::Crowd => "crowd",
        Category::Traffic => "traffic",
        Category::Pipe => "pipe",
    }
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
}

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
        Registry {
            devices,
            index,
            zones,
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

    /// A device by id, to update.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Device> {
        let i = *self.index.get(id)?;
        self.devices.get_mut(i)
    }

    /// Every device, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Device> {
        self.devices.iter()
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

    /// Devices by presence in each served district.
    pub fn presence_by_zone(&self, now_ms: i64) -> Vec<(Arc<str>, PresenceCounts)> {
        let mut by_zone: Vec<(Arc<str>, PresenceCounts)> = self
            .zones
            .iter()
            .map(|z| (z.clone(), PresenceCounts::default()))
            .collect();
        for d in &self.devices {
            if let Some((_, c)) = by_zone.iter_mut().find(|(z, _)| *z == d.info.zone) {
                match d.presence(now_ms) {
                    Presence::Online => c.online += 1,
                    Presence::Offline => c.offline += 1,
                    Presence::Unknown => c.unknown += 1,
                }
            }
        }
        by_zone
    }

    /// Reports expected but never received, over all devices.
    pub fn missing_reports(&self) -> u64 {
        self.devices.iter().map(|d| d.state.ledger.missing()).sum()
    }
}
