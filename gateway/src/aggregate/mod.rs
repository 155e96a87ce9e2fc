//! Aggregation: verified [`Reading`]s in, [`Point`]s out, by event time.
//!
//! | measurement | subject (tags) | window | fields |
//! |---|---|---|---|
//! | `crowd` | `area`, `zone` (choke points: `area`, `choke_point`, `zone`) | 1 min | `entries`, `exits`, `occupancy`, `occupancy_ratio`, `daily_entries`, `daily_ratio`, `inflow_per_min`, `outflow_per_min`, `drift`, `forecast_ratio` (occupancy + 30 min of smoothed net inflow, over capacity) |
//! | `traffic` | `segment`, `zone`, `class`, `bin` (`1m`, `5m`), `lane` (5 min only) | 1 and 5 min | `volume`, `flow_vph`, `occupancy_pct`, `speed_kmh`, `grade`, `tpi`, `speed_ratio` (1 min: speed over the previous 15 minutes' mean) |
//! | `pipe` | `asset`, `zone`, `field` | 1 min | `last`, `min`, `max`, `mean`, `count`, `rate_per_min` |
//! | `device_health` | `device`, `zone`, `kind` | 5 min | `reports`, `battery_pct`, `signal_dbm` |
//!
//! Plain state, no clock and no I/O: time comes from the readings (STYLE.md §6). Points carry
//! the end of their window as timestamp, so a re-emitted window overwrites its earlier point.
//!
//! # Time
//! - **Event time** only: a reading counts in the window its node stamped, whenever it arrives.
//! - **Per-device progress** ([`progress`]): a unit (an area with its choke points, a road
//!   segment, a pipe asset's field, a device's health) closes a window once each of its live
//!   devices has reported past it; a device silent beyond its profile's offline threshold, or
//!   never heard, holds nothing open.
//! - **Corrections** ([`correct`]): data for a closed window (a backlog, a rehearsal, reports
//!   out of order) recomputes its unit from the raw readings the store keeps, once the backlog
//!   has come, and every window from the first one touched is emitted again as a revision,
//!   with what the unit carries (occupancy, daily entries, the speed baseline) recomputed.
//!   Only data older than the raw retention before the newest data of its own units is
//!   `too_late`: a rehearsal of a past day beside live devices is not.
//! - A batch is taken in event-time order, then device order; one device's readings of one
//!   instant keep theirs: in-order delivery, any other order and a replay of the store end with
//!   the same points (the property test in `housekeeping/arrival_orders.rs`).
//!
//! # Layout
//! - [`crowd`], [`traffic`], [`pipe`], [`health`]: one aggregator each, with its windows, what
//!   a reading adds and the points a closed window gives; [`Aggregators`] offers each reading
//!   to its device's health and to the aggregator of its place.
//! - [`progress`]: how far each unit's devices have reported; [`correct`]: corrections.
//! - [`window`]: event-time windows.
//! - [`grade`]: congestion grades and the traffic performance index.

pub mod correct;
pub mod crowd;
pub mod grade;
pub mod health;
pub mod pipe;
pub mod progress;
pub mod traffic;
pub mod window;

// Keys are ids of known devices and subjects (never raw input): a fast hasher is safe.
use rustc_hash::FxHashMap as HashMap;
use serde::Deserialize;
use std::borrow::Cow;
use std::sync::Arc;

use device_profiles::Catalog;
use device_profiles::site::GateDirection;

use crate::point::Point;
use crate::reading::{Measurement, Reading};
use correct::Corrections;
use pipe::PipeKey;
use progress::Progress;

pub(crate) const MINUTE: i64 = 60_000;
pub(crate) const DAY: i64 = 24 * 3600 * 1000;
/// A tag read again at the same gate within this time is the same passage.
pub const DEDUPE_MS: i64 = MINUTE;
/// Raw readings are kept this long by default: late data up to this old is corrected.
pub const RAW_RETENTION_MS: i64 = 24 * 3_600_000;

#[derive(Debug, Clone)]
enum Place {
    Gate {
        /// The area's unit.
        unit: usize,
        /// The area, then every choke point the gate bounds (shared: a place is copied for every
        /// reading).
        subjects: Arc<[Arc<str>]>,
        gate: Arc<str>,
        direction: GateDirection,
    },
    Detector {
        unit: usize,
        segment: Arc<str>,
    },
    Asset {
        asset: Arc<str>,
    },
}

/// A device of the site: where its readings go, its health unit and its offline threshold.
#[derive(Debug, Clone)]
struct Device {
    /// Its number in the site (what the units' progress keeps).
    no: u32,
    place: Option<Place>,
    health: usize,
    /// A pipe device's fields heard, with their units.
    fields: Vec<(Cow<'static, str>, usize)>,
    offline_ms: i64,
}

/// What one set of devices feeds (see [`progress`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum UnitKey {
    /// A scenic area and its choke points.
    Area(Arc<str>),
    /// A road segment.
    Segment(Arc<str>),
    /// A field of a pipe asset (boxed: every device has a health unit, and the key of each
    /// is as large as the largest variant).
    Pipe(Box<PipeKey>),
    /// A device's health.
    Health(Arc<str>),
}

#[derive(Debug, Clone)]
struct Unit {
    key: UnitKey,
    progress: Progress,
    /// The devices (and, for an area, the subjects operators count) a correction reads; a
    /// device's health reads the device (none kept: one unit per device).
    sources: Option<Arc<[Arc<str>]>>,
    /// Listed in `Aggregators::due`.
    due: bool,
}

/// Whether a reading at `t` for the units `fed` is older than `retention_ms` before the newest
/// reading of any of them. Its raw neighbours in those units are gone, so no correction could
/// count it exactly. The newest is per unit, not the gateway's: a rehearsal of a past day
/// beside live devices moves units the live data does not feed, and a backlog is measured
/// against the devices it shares its windows with.
fn too_late(
    units: &[Unit],
    fed: impl IntoIterator<Item = usize>,
    t: i64,
    retention_ms: i64,
) -> bool {
    let newest = fed
        .into_iter()
        .map(|u| units[u].progress.newest())
        .max()
        .unwrap_or(i64::MIN);
    t < newest.saturating_sub(retention_ms)
}

/// The order readings are aggregated in: event time, then device (detectors reporting on the
/// same interval boundary sum their floats in one order however they arrived); one device's
/// readings of one instant (a frame's) keep their order (a stable sort).
#[inline]
fn event_order(a: &Reading, b: &Reading) -> std::cmp::Ordering {
    a.time_ms.cmp(&b.time_ms).then_with(|| {
        if Arc::ptr_eq(&a.device, &b.device) {
            std::cmp::Ordering::Equal
        } else {
            a.device.cmp(&b.device)
        }
    })
}

/// The unit of a pipe asset's field, made when the field is first heard.
fn pipe_unit(
    pipe_units: &mut HashMap<PipeKey, usize>,
    units: &mut Vec<Unit>,
    asset_devices: &HashMap<Arc<str>, Arc<[Arc<str>]>>,
    key: &PipeKey,
) -> usize {
    if let Some(&u) = pipe_units.get(key) {
        return u;
    }
    units.push(Unit {
        key: UnitKey::Pipe(Box::new(key.clone())),
        progress: Progress::default(),
        sources: asset_devices.get(&key.0).cloned(),
        due: false,
    });
    pipe_units.insert(key.clone(), units.len() - 1);
    units.len() - 1
}

/// Aggregation tunables (`[aggregate]` in the config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSection {
    /// A ticket tag read again at the same gate within this many seconds is the same passage.
    #[serde(default = "default_dedupe")]
    pub tag_dedupe_s: u32,
    /// A reading received more than this many seconds after its event time is marked late in
    /// what the city platform is sent. Aggregates count late data whatever its delay (within
    /// `store.raw_retention_h`): see the crate docs on corrections.
    #[serde(default = "default_lateness")]
    pub allowed_lateness_s: u32,
}

impl Default for AggregateSection {
    fn default() -> Self {
        AggregateSection {
            tag_dedupe_s: default_dedupe(),
            allowed_lateness_s: default_lateness(),
        }
    }
}

impl AggregateSection {
    /// The aggregators' settings, for raw readings kept `raw_retention_ms`.
    pub fn settings(&self, raw_retention_ms: i64) -> AggregateSettings {
        AggregateSettings {
            tag_dedupe_ms: i64::from(self.tag_dedupe_s) * 1000,
            raw_retention_ms,
            late_after_ms: i64::from(self.allowed_lateness_s) * 1000,
        }
    }
}

fn default_dedupe() -> u32 {
    60
}
fn default_lateness() -> u32 {
    120
}

/// Tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregateSettings {
    /// A tag read again at the same gate within this many ms is the same passage.
    pub tag_dedupe_ms: i64,
    /// How long the local store keeps raw readings: late data up to this old is corrected,
    /// older data is counted `too_late`.
    pub raw_retention_ms: i64,
    /// A reading received more than this many ms after its event time is marked late in what
    /// the city platform is sent.
    pub late_after_ms: i64,
}

impl Default for AggregateSettings {
    fn default() -> Self {
        AggregateSettings {
            tag_dedupe_ms: DEDUPE_MS,
            raw_retention_ms: RAW_RETENTION_MS,
            late_after_ms: i64::from(default_lateness()) * 1000,
        }
    }
}

/// Counters the gateway exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AggregateCounts {
    /// Readings older than the raw retention before the newest reading of the units they feed
    /// when they came: kept raw, not aggregated.
    pub too_late: u64,
    /// Repeated tag reads at one gate counted once.
    pub duplicate_passages: u64,
    /// Occupancy would have gone below zero or above 1.5 × capacity.
    pub drift: u64,
    /// Corrections run: a unit's windows recomputed from the raw readings.
    pub corrections: u64,
    /// Raw readings read again by corrections.
    pub corrected_readings: u64,
}

/// Every aggregator of one gateway.
#[derive(Debug)]
pub struct Aggregators {
    devices: HashMap<Arc<str>, Device>,
    units: Vec<Unit>,
    /// The unit of each area (by area id) and of each pipe asset's field.
    area_units: HashMap<Arc<str>, usize>,
    pipe_units: HashMap<PipeKey, usize>,
    /// Pipe assets' devices, for the sources of their fields' units.
    asset_devices: HashMap<Arc<str>, Arc<[Arc<str>]>>,
    /// Units whose watermark entered a new minute: drained after the batch.
    due: Vec<usize>,
    corrections: Corrections,
    utc_offset_ms: i64,
    crowds: crowd::Crowds,
    traffic: traffic::Traffic,
    pipes: pipe::Pipes,
    health: health::Health,
    /// Counters.
    pub counts: AggregateCounts,
    settings: AggregateSettings,
}

impl Aggregators {
    /// Aggregators for the site of `catalog`, with default settings.
    pub fn new(catalog: &Catalog) -> Aggregators {
        Self::with_settings(catalog, AggregateSettings::default())
    }

    /// Aggregators for the site of `catalog`.
    pub fn with_settings(catalog: &Catalog, settings: AggregateSettings) -> Aggregators {
        let site = &catalog.site;
        let mut units: Vec<Unit> = Vec::new();
        let mut unit = |key: UnitKey, sources: Option<Vec<Arc<str>>>| {
            units.push(Unit {
                key,
                progress: Progress::default(),
                sources: sources.map(Arc::from),
                due: false,
            });
            units.len() - 1
        };
        let mut area_units = HashMap::default();
        let mut places: HashMap<Arc<str>, Place> = HashMap::default();
        for a in &site.scenic_areas {
            let gates: Vec<_> = site.gates.iter().filter(|g| g.area == a.id).collect();
            let sources = gates
                .iter()
                .map(|g| g.device.as_str())
                .chain(std::iter::once(a.id.as_str()))
                .chain(a.choke_points.iter().map(|c| c.id.as_str()))
                .map(Arc::from)
                .collect();
            let u = unit(UnitKey::Area(a.id.as_str().into()), Some(sources));
            area_units.insert(Arc::from(a.id.as_str()), u);
            for g in gates {
                places.insert(
                    Arc::from(g.device.as_str()),
                    Place::Gate {
                        unit: u,
                        subjects: std::iter::once(g.area.as_str())
                            .chain(
                                a.choke_points
                                    .iter()
                                    .filter(|c| c.gates.contains(&g.id))
                                    .map(|c| c.id.as_str()),
                            )
                            .map(Arc::from)
                            .collect(),
                        gate: g.id.as_str().into(),
                        direction: g.direction,
                    },
                );
            }
        }
        for r in &site.road_segments {
            let sources = r.detectors.iter().map(|d| Arc::from(d.device.as_str()));
            let u = unit(
                UnitKey::Segment(r.id.as_str().into()),
                Some(sources.collect()),
            );
            for d in &r.detectors {
                places.insert(
                    Arc::from(d.device.as_str()),
                    Place::Detector {
                        unit: u,
                        segment: r.id.as_str().into(),
                    },
                );
            }
        }
        let mut asset_devices = HashMap::default();
        for p in &site.pipe_assets {
            let devices: Arc<[Arc<str>]> =
                p.devices.iter().map(|d| Arc::from(d.as_str())).collect();
            asset_devices.insert(Arc::from(p.id.as_str()), devices);
            for d in &p.devices {
                places.insert(
                    Arc::from(d.as_str()),
                    Place::Asset {
                        asset: p.id.as_str().into(),
                    },
                );
            }
        }
        let mut devices = HashMap::default();
        for d in &site.devices {
            let id: Arc<str> = d.id.as_str().into();
            let offline_ms = catalog.profiles.get(&d.profile).map_or(i64::MAX, |p| {
                i64::from(p.report_interval_s) * i64::from(p.offline_after_intervals) * 1000
            });
            let health = unit(UnitKey::Health(id.clone()), None);
            let no = u32::try_from(devices.len()).unwrap_or(u32::MAX);
            devices.insert(
                id.clone(),
                Device {
                    no,
                    place: places.remove(&id),
                    health,
                    fields: Vec::new(),
                    offline_ms,
                },
            );
        }
        Aggregators {
            devices,
            units,
            area_units,
            pipe_units: HashMap::default(),
            asset_devices,
            due: Vec::new(),
            corrections: Corrections::default(),
            utc_offset_ms: site.site.utc_offset.ms(),
            crowds: crowd::Crowds::new(site),
            traffic: traffic::Traffic::new(site),
            pipes: pipe::Pipes::default(),
            health: health::Health::default(),
            counts: AggregateCounts::default(),
            settings,
        }
    }

    /// Adds readings and returns the points of the windows that closed. A batch is taken in
    /// event-time order, so a buffered hour delivered at once aggregates as it would have live.
    /// A reading for a window already closed asks for a correction ([`Aggregators::correct`]).
    pub fn ingest(&mut self, readings: &[Reading]) -> Vec<Point> {
        let mut ordered: Vec<&Reading> = readings.iter().collect();
        ordered.sort_by(|a, b| event_order(a, b));
        for r in ordered {
            self.add(r);
        }
        self.drain_due()
    }

    /// Offers `r` to its device's health and to the aggregator of its place, then moves the
    /// device's progress in every unit it feeds: any report, a status too, shows how far the
    /// device has reported. A reading older than the raw retention before the newest of those
    /// units is only counted `too_late`.
    fn add(&mut self, r: &Reading) {
        let Aggregators {
            devices,
            units,
            area_units,
            pipe_units,
            asset_devices,
            due,
            corrections,
            crowds,
            traffic,
            pipes,
            health,
            counts,
            settings,
            ..
        } = self;
        if let Measurement::Occupancy { count } = r.measurement {
            // An operator's count names its area or choke point as the device: no progress.
            let Some(&u) = crowds.group_of(&r.device).and_then(|g| area_units.get(g)) else {
                return;
            };
            if too_late(units, [u], r.time_ms, settings.raw_retention_ms) {
                counts.too_late += 1;
                return;
            }
            let wm = units[u].progress.watermark();
            if crowds.count(r, &r.device, count, wm).is_err() {
                corrections.late(u, r.time_ms);
            }
            return;
        }
        let Some(device) = devices.get_mut(&r.device) else {
            return;
        };
        let place_unit = match &device.place {
            Some(Place::Gate { unit, .. } | Place::Detector { unit, .. }) => Some(*unit),
            _ => None,
        };
        let fed = std::iter::once(device.health)
            .chain(place_unit)
            .chain(device.fields.iter().map(|(_, u)| *u));
        if too_late(units, fed, r.time_ms, settings.raw_retention_ms) {
            counts.too_late += 1;
            return;
        }
        let wm = units[device.health].progress.watermark();
        if health.report(r, wm).is_err() {
            corrections.late(device.health, r.time_ms);
        }
        let fed = match (&device.place, &r.measurement) {
            (
                Some(Place::Gate {
                    unit,
                    subjects,
                    gate,
                    direction,
                }),
                Measurement::Passage { tag, entry },
            ) => {
                let wm = units[*unit].progress.watermark();
                let added = crowds.passage(
                    r,
                    (subjects, gate, *direction),
                    (*tag, *entry),
                    settings.tag_dedupe_ms,
                    wm,
                    counts,
                );
                Some((*unit, added))
            }
            (
                Some(Place::Gate { unit, subjects, .. }),
                Measurement::Counts { entries, exits, .. },
            ) => {
                let wm = units[*unit].progress.watermark();
                Some((*unit, crowds.counts(r, subjects, (*entries, *exits), wm)))
            }
            (
                Some(Place::Detector { unit, segment }),
                Measurement::Lane {
                    lane,
                    vehicles,
                    occupancy_pct,
                    speed_kmh,
                    ..
                },
            ) => {
                let wm = units[*unit].progress.watermark();
                let added = traffic.lane(
                    r,
                    segment,
                    *lane,
                    (*vehicles, *occupancy_pct, *speed_kmh),
                    wm,
                );
                Some((*unit, added))
            }
            (Some(Place::Asset { asset }), Measurement::Value { field, value, .. }) => {
                let key = (asset.clone(), field.clone());
                let u = match device.fields.iter().find(|(f, _)| f == field) {
                    Some(&(_, u)) => u,
                    None => {
                        let u = pipe_unit(pipe_units, units, asset_devices, &key);
                        device.fields.push((field.clone(), u));
                        u
                    }
                };
                let wm = units[u].progress.watermark();
                Some((u, pipes.value(r, &key, *value, wm)))
            }
            _ => None,
        };
        if let Some((u, Err(_))) = fed {
            corrections.late(u, r.time_ms);
        }
        let offline = device.offline_ms;
        let fed = std::iter::once(device.health)
            .chain(place_unit)
            .chain(device.fields.iter().map(|(_, u)| *u));
        for u in fed {
            let unit = &mut units[u];
            // Out of order for its device: in-order delivery would have added the windows'
            // readings in another order (a tag's dedupe, the longest gap, float sums).
            if unit.progress.is_behind(device.no, r.time_ms) {
                corrections.late(u, r.time_ms);
            }
            if unit.progress.advance(device.no, r.time_ms, offline) && !unit.due {
                unit.due = true;
                due.push(u);
            }
        }
    }

    /// The points of the windows closed in the units listed as due.
    fn drain_due(&mut self) -> Vec<Point> {
        let mut out = Vec::new();
        for u in std::mem::take(&mut self.due) {
            self.units[u].due = false;
            self.drain_unit(u, &mut out);
        }
        out
    }

    /// The points of unit `u`'s windows closed at its watermark.
    fn drain_unit(&mut self, u: usize, out: &mut Vec<Point>) {
        let unit = &mut self.units[u];
        let wm = unit.progress.watermark();
        unit.progress.drained();
        match &unit.key {
            UnitKey::Area(area) => self.crowds.drain(
                area,
                wm,
                (
                    self.utc_offset_ms,
                    self.settings.tag_dedupe_ms,
                    self.settings.raw_retention_ms,
                ),
                &mut self.counts,
                out,
            ),
            UnitKey::Segment(segment) => self.traffic.drain(segment, wm, out),
            UnitKey::Pipe(key) => self.pipes.drain(key, wm, out),
            UnitKey::Health(device) => self.health.drain(device, wm, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::FieldValue;
    use crate::reading::Tag;

    fn catalog() -> Catalog {
        Catalog::ganzhou().unwrap()
    }

    fn reading(device: &str, kind: &str, time_ms: i64, m: Measurement) -> Reading {
        Reading {
            device: device.into(),
            zone: "360702".into(),
            kind: kind.into(),
            time_ms,
            received_ms: time_ms,
            unsynced_clock: false,
            origin: None,
            measurement: m,
        }
    }

    /// A status report: `device` has reported up to `t`.
    fn status(device: &str, t: i64) -> Reading {
        reading(
            device,
            "uhf-rfid-gate",
            t,
            Measurement::Status {
                battery_pct: None,
                signal_dbm: -60,
                uptime_s: 1,
                firmware: "1.0.0".into(),
                key_fingerprint: "0".into(),
            },
        )
    }

    fn field<'a>(p: &'a Point, name: &str) -> &'a FieldValue {
        &p.fields
            .iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("{name} in {p:?}"))
            .1
    }

    // 2026-10-01 10:00 +08:00.
    const T0: i64 = 1_790_820_000_000;

    /// Aggregators whose `areas` start known: an operator counted 0 visitors in each at `at`
    /// (the tests begin mid-day, when the occupancy is otherwise unknown).
    fn counted(areas: &[&str], at: i64) -> Aggregators {
        let mut a = Aggregators::new(&catalog());
        let counts: Vec<Reading> = areas
            .iter()
            .map(|area| reading(area, "operator", at, Measurement::Occupancy { count: 0 }))
            .collect();
        a.ingest(&counts);
        a
    }

    /// The crowd points after the window of `at` (that window holds the operator's count).
    fn crowd_after(points: &[Point], at: i64) -> Vec<&Point> {
        let end = (at.div_euclid(MINUTE) + 1) * MINUTE;
        points
            .iter()
            .filter(|p| p.measurement == "crowd" && p.time_ms > end)
            .collect()
    }

    #[test]
    fn a_tag_read_twenty_times_at_one_gate_counts_once() {
        let mut a = counted(&["S4"], T0 - 2 * MINUTE);
        let reads: Vec<Reading> = (0..20)
            .map(|i| {
                reading(
                    "gz-s4-g1",
                    "uhf-rfid-gate",
                    T0 + i * 500,
                    Measurement::Passage {
                        tag: Tag::from(0xaa),
                        entry: true,
                    },
                )
            })
            .collect();
        assert!(crowd_after(&a.ingest(&reads), T0 - 2 * MINUTE).is_empty());
        let points = a.ingest(&[
            reading(
                "gz-s4-g3",
                "uhf-rfid-gate",
                T0 + 3 * MINUTE,
                Measurement::Passage {
                    tag: Tag::from(0xbb),
                    entry: false,
                },
            ),
            status("gz-s4-g1", T0 + 3 * MINUTE),
        ]);
        let crowd = crowd_after(&points, T0 - 2 * MINUTE);
        assert_eq!(crowd.len(), 1);
        assert_eq!(field(crowd[0], "entries"), &FieldValue::Int(1));
        assert_eq!(field(crowd[0], "occupancy"), &FieldValue::Int(1));
        assert_eq!(a.counts.duplicate_passages, 19);
        // S4-G3 is an exit gate: its passage is an exit whatever the reader said.
    }

    #[test]
    fn occupancy_never_goes_below_zero_and_drift_is_flagged() {
        let mut a = counted(&["S4"], T0 - 2 * MINUTE);
        let exits: Vec<Reading> = (0..3)
            .map(|i| {
                reading(
                    "gz-s4-g3",
                    "uhf-rfid-gate",
                    T0 + i,
                    Measurement::Passage {
                        tag: Tag::from(i as u64),
                        entry: false,
                    },
                )
            })
            .collect();
        a.ingest(&exits);
        let points = a.ingest(&[status("gz-s4-g3", T0 + 2 * MINUTE)]);
        let crowd = crowd_after(&points, T0 - 2 * MINUTE)[0];
        assert_eq!(field(crowd, "occupancy"), &FieldValue::Int(0));
        assert_eq!(field(crowd, "drift"), &FieldValue::Bool(true));
        assert_eq!(a.counts.drift, 1);
    }

    #[test]
    fn a_choke_point_counts_the_passages_of_its_gates_against_its_own_capacity() {
        let mut a = counted(&["S3", "S3-bridge"], T0 - 2 * MINUTE);
        // 古浮桥: S3-G1 and S3-G2 bound the bridge deck (capacity 600) and the area S3.
        let pass = |d: &str, t: i64, tag: u64, entry: bool| {
            reading(
                d,
                "uhf-rfid-gate",
                t,
                Measurement::Passage {
                    tag: Tag::from(tag),
                    entry,
                },
            )
        };
        a.ingest(&[
            pass("gz-s3-g1", T0, 0xa, true),
            pass("gz-s3-g1", T0 + 1, 0xb, true),
            pass("gz-s3-g2", T0 + 2, 0xa, false),
        ]);
        let points = a.ingest(&[
            pass("gz-s3-g2", T0 + 2 * MINUTE, 0xf, true),
            status("gz-s3-g1", T0 + 2 * MINUTE),
        ]);
        let points: Vec<Point> = crowd_after(&points, T0 - 2 * MINUTE)
            .into_iter()
            .cloned()
            .collect();
        let deck = points
            .iter()
            .find(|p| p.tags.contains(&("choke_point".into(), "S3-bridge".into())))
            .unwrap();
        assert_eq!(field(deck, "occupancy"), &FieldValue::Int(1));
        assert_eq!(
            field(deck, "occupancy_ratio"),
            &FieldValue::Float(1.0 / 600.0)
        );
        assert!(
            deck.fields.iter().all(|(k, _)| k != "daily_ratio"),
            "no daily capacity on a choke point"
        );
        let area = points
            .iter()
            .find(|p| p.measurement == "crowd" && p.tags.len() == 2)
            .unwrap();
        assert_eq!(area.tags[0], ("area".into(), "S3".into()));
        assert_eq!(field(area, "occupancy"), &FieldValue::Int(1));
    }

    #[test]
    fn the_tag_dedupe_window_is_configurable() {
        let settings = AggregateSettings {
            tag_dedupe_ms: 1000,
            ..AggregateSettings::default()
        };
        let mut a = Aggregators::with_settings(&catalog(), settings);
        let pass = |t: i64| {
            reading(
                "gz-s4-g1",
                "uhf-rfid-gate",
                T0 + t,
                Measurement::Passage {
                    tag: Tag::from(0xaa),
                    entry: true,
                },
            )
        };
        a.ingest(&[pass(0), pass(500), pass(5000)]);
        assert_eq!(
            a.counts.duplicate_passages, 1,
            "the read 5 s later is a new passage with a 1 s window"
        );
    }

    #[test]
    fn the_crowd_day_starts_again_at_closing_time() {
        // 通天岩 (S4) closes at 18:00 local = 10:00 UTC. T0 is 10:00 local; closing is 8 h later.
        let closing = T0 + 8 * 3600 * 1000;
        let mut a = counted(&["S4"], closing - 5 * MINUTE);
        let pass = |t: i64, tag: u64| {
            reading(
                "gz-s4-g1",
                "uhf-rfid-gate",
                t,
                Measurement::Passage {
                    tag: Tag::from(tag),
                    entry: true,
                },
            )
        };
        let mut points = a.ingest(&[pass(closing - 30_000, 0xa)]);
        points.extend(a.ingest(&[pass(closing + 30_000, 0xb)]));
        points.extend(a.ingest(&[pass(closing + 3 * MINUTE, 0xc)]));
        let crowd = crowd_after(&points, closing - 5 * MINUTE);
        assert_eq!(crowd.len(), 2);
        assert_eq!(field(crowd[0], "occupancy"), &FieldValue::Int(1));
        assert_eq!(
            field(crowd[1], "occupancy"),
            &FieldValue::Int(1),
            "a new day after closing"
        );
        assert_eq!(field(crowd[1], "daily_entries"), &FieldValue::Int(1));
    }

    #[test]
    fn device_health_counts_frames_gaps_and_completeness() {
        let mut a = Aggregators::new(&catalog());
        let frame = |seq: u32, t: i64| Reading {
            origin: Some((1, seq)),
            ..reading(
                "gz-p1-press",
                "water-pressure",
                t,
                Measurement::Value {
                    field: "pressure".into(),
                    value: 0.3,
                    urgent: false,
                },
            )
        };
        // Sequences 0, 1, 3 (2 lost) in one 5-minute window, and one more frame's second reading.
        a.ingest(&[
            frame(0, T0),
            frame(1, T0 + 60_000),
            frame(1, T0 + 60_000),
            frame(3, T0 + 180_000),
        ]);
        let points = a.ingest(&[frame(4, T0 + 8 * MINUTE)]);
        let h = points
            .iter()
            .find(|p| p.measurement == "device_health")
            .unwrap();
        assert_eq!(field(h, "reports"), &FieldValue::Int(3));
        assert_eq!(field(h, "max_gap_s"), &FieldValue::Float(120.0));
        assert_eq!(field(h, "completeness"), &FieldValue::Float(0.75));
    }

    #[test]
    fn traffic_bins_compute_flow_speed_grade_and_tpi() {
        let mut a = Aggregators::new(&catalog());
        // R1 (arterial, free flow 50): two 30 s intervals on two lanes, 10 vehicles each at 25 km/h.
        let mut rs = Vec::new();
        for t in [T0 + 30_000, T0 + 59_000] {
            for lane in [1, 2] {
                rs.push(reading(
                    "gz-r1-d1",
                    "traffic-loop",
                    t,
                    Measurement::Lane {
                        lane,
                        vehicles: 10,
                        occupancy_pct: 20.0,
                        speed_kmh: Some(25.0),
                        interval_s: 30,
                    },
                ));
            }
        }
        a.ingest(&rs);
        let points = a.ingest(&[reading(
            "gz-r1-d1",
            "traffic-loop",
            T0 + 2 * MINUTE,
            Measurement::Lane {
                lane: 1,
                vehicles: 0,
                occupancy_pct: 0.0,
                speed_kmh: None,
                interval_s: 30,
            },
        )]);
        let p = points
            .iter()
            .find(|p| p.measurement == "traffic" && p.tags.contains(&("bin".into(), "1m".into())))
            .unwrap();
        assert_eq!(field(p, "volume"), &FieldValue::Int(40));
        assert_eq!(field(p, "flow_vph"), &FieldValue::Float(2400.0));
        assert_eq!(field(p, "speed_kmh"), &FieldValue::Float(25.0));
        assert_eq!(
            field(p, "grade"),
            &FieldValue::Int(grade::Grade::Light as i64)
        ); // 20 < 25 ≤ 30
        assert_eq!(field(p, "tpi"), &FieldValue::Float(grade::tpi(50.0, 25.0))); // r = 1.0
    }

    #[test]
    fn late_data_waits_for_its_backlog_then_one_correction_re_emits_every_window_after_it() {
        // gz-s4-g1 and gz-s4-g3 count 通天岩. g3 loses its link for ten minutes: once it is five
        // minutes (its offline threshold) behind, it no longer holds the windows, and its
        // backlog, when it comes, is late.
        let mut stored: Vec<Reading> = Vec::new();
        let mut a = counted(&["S4"], T0 - 2 * MINUTE);
        let mut deliver = |a: &mut Aggregators, rs: Vec<Reading>| {
            stored.extend(rs.iter().cloned());
            let mut points = a.ingest(&rs);
            let stored = stored.clone();
            let read = |devices: &[Arc<str>], since: i64| {
                Ok::<_, ()>(
                    stored
                        .iter()
                        .filter(|r| devices.contains(&r.device) && r.time_ms >= since)
                        .cloned()
                        .collect(),
                )
            };
            points.extend(a.correct(correct::Due::Settled, read).unwrap());
            points
        };
        let mut points = Vec::new();
        for m in 0..12 {
            let t = T0 + m * MINUTE;
            let mut rs = vec![gate("gz-s4-g1", t, 0x100 + m as u64, true)];
            if m < 2 {
                rs.push(gate("gz-s4-g3", t + 1, 0x200 + m as u64, false));
            }
            points.extend(deliver(&mut a, rs));
        }
        let before: Vec<&Point> = crowd_after(&points, T0 - 2 * MINUTE);
        assert_eq!(
            before.last().map(|p| p.time_ms),
            Some(T0 + 6 * MINUTE),
            "windows close five minutes behind the newest gate while g3 is silent"
        );
        assert_eq!(field(before[0], "occupancy"), &FieldValue::Int(0));
        // The backlog: g3's exits of minutes 2..10, in two batches; one correction after both.
        let backlog: Vec<Reading> = (2..10)
            .map(|m| gate("gz-s4-g3", T0 + m * MINUTE + 1, 0x200 + m as u64, false))
            .collect();
        assert!(crowd_after(&deliver(&mut a, backlog[..4].to_vec()), T0).is_empty());
        assert_eq!(a.counts.corrections, 0, "the backlog is still coming");
        // Minutes 6 to 8 were still open: they close as usual. This batch brings no late data:
        // the backlog has come, and one correction re-emits every window from minute 2 on.
        let again = deliver(&mut a, backlog[4..].to_vec());
        assert_eq!((a.counts.corrections, a.counts.too_late), (1, 0));
        let area: Vec<&Point> = crowd_after(&again, T0)
            .into_iter()
            .filter(|p| p.tags.len() == 2)
            .collect();
        let ends: Vec<i64> = area.iter().map(|p| (p.time_ms - T0) / MINUTE).collect();
        assert_eq!(ends, vec![7, 8, 9, 3, 4, 5, 6, 7, 8, 9]);
        let revised = &area[3..];
        assert!(revised.iter().all(|p| p.quality.late), "revisions");
        // Each minute one in and one out: the occupancy stays 0 where it went below before.
        let occupancy: Vec<&FieldValue> = revised.iter().map(|p| field(p, "occupancy")).collect();
        assert_eq!(occupancy, vec![&FieldValue::Int(0); 7]);
        assert_eq!(field(revised[6], "daily_entries"), &FieldValue::Int(9));
        assert_eq!(a.counts.drift, 0);
    }

    #[test]
    fn too_late_is_measured_against_the_readings_own_units_not_the_newest_data_heard() {
        // A rehearsal of 通天岩 two days back while 方特 (S3) and a pressure logger report live:
        // the rehearsal's windows close by its own gates and nothing is too late.
        let mut a = counted(&["S4"], T0 - 2 * MINUTE);
        let live = T0 + 2 * DAY;
        a.ingest(&[
            gate("gz-s3-g1", live, 0x900, true),
            reading(
                "gz-p1-press",
                "pipe-pressure",
                live,
                Measurement::Value {
                    field: Cow::Borrowed("pressure"),
                    value: 0.3,
                    urgent: false,
                },
            ),
        ]);
        let mut points = Vec::new();
        for m in 0..4 {
            let t = T0 + m * MINUTE;
            points.extend(a.ingest(&[
                gate("gz-s4-g1", t, 0x100 + m as u64, true),
                gate("gz-s4-g3", t + 1, 0x200 + m as u64, false),
            ]));
        }
        assert_eq!(
            a.counts.too_late, 0,
            "the rehearsal is not late for its units"
        );
        assert_eq!(
            crowd_after(&points, T0 - 2 * MINUTE)
                .iter()
                .filter(|p| p.tags.len() == 2)
                .count(),
            3,
            "minutes 0 to 2 closed by 通天岩's own gates"
        );
        // A gate of 通天岩 whose backlog is more than the raw retention behind the other gates
        // of its area is too late: their raw readings of that time are gone.
        let far = T0 + 3 * MINUTE - RAW_RETENTION_MS - MINUTE;
        let before = a.counts;
        a.ingest(&[
            gate("gz-s4-g2", far, 0x300, true),
            gate("gz-s4-g2", T0 + 3 * MINUTE, 0x301, true),
        ]);
        assert_eq!(a.counts.too_late, before.too_late + 1, "only the old one");
        assert_eq!(a.counts.corrections, before.corrections);
    }

    #[test]
    fn pipe_windows_give_last_min_max_mean_and_rate() {
        let mut a = Aggregators::new(&catalog());
        let values = [(0, 0.30), (20_000, 0.28), (40_000, 0.20)];
        let rs: Vec<Reading> = values
            .iter()
            .map(|(dt, v)| {
                reading(
                    "gz-p1-press",
                    "water-pressure",
                    T0 + dt,
                    Measurement::Value {
                        field: "pressure".into(),
                        value: *v,
                        urgent: false,
                    },
                )
            })
            .collect();
        a.ingest(&rs);
        let points = a.ingest(&[reading(
            "gz-p1-press",
            "water-pressure",
            T0 + 90_000,
            Measurement::Value {
                field: "pressure".into(),
                value: 0.2,
                urgent: false,
            },
        )]);
        let p = points.iter().find(|p| p.measurement == "pipe").unwrap();
        assert_eq!(field(p, "last"), &FieldValue::Float(0.20));
        assert_eq!(field(p, "min"), &FieldValue::Float(0.20));
        assert_eq!(field(p, "max"), &FieldValue::Float(0.30));
        assert_eq!(field(p, "count"), &FieldValue::Int(3));
        let FieldValue::Float(rate) = field(p, "rate_per_min") else {
            panic!()
        };
        assert!((rate - (-0.15)).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn replaying_in_one_batch_gives_the_same_points_as_live_delivery() {
        let mut rs = Vec::new();
        for i in 0..600 {
            let t = T0 + i * 6_000;
            rs.push(reading(
                "gz-p1-press",
                "water-pressure",
                t,
                Measurement::Value {
                    field: "pressure".into(),
                    value: 0.3 + (i % 7) as f64 / 100.0,
                    urgent: false,
                },
            ));
            rs.push(reading(
                "gz-s4-g1",
                "uhf-rfid-gate",
                t,
                Measurement::Passage {
                    tag: Tag::from(i as u64),
                    entry: true,
                },
            ));
            rs.push(reading(
                "gz-r2-d1",
                "traffic-geomagnetic",
                t,
                Measurement::Lane {
                    lane: 1,
                    vehicles: (i % 5) as u16,
                    occupancy_pct: 10.0,
                    speed_kmh: Some(40.0),
                    interval_s: 30,
                },
            ));
        }
        let mut live = Aggregators::new(&catalog());
        let mut live_points: Vec<String> = rs
            .chunks(3)
            .flat_map(|c| live.ingest(c))
            .map(|p| p.line())
            .collect();
        let mut replay = Aggregators::new(&catalog());
        let mut replay_points: Vec<String> =
            replay.ingest(&rs).into_iter().map(|p| p.line()).collect();
        live_points.sort();
        replay_points.sort();
        assert!(!live_points.is_empty());
        assert_eq!(live_points, replay_points);
    }

    fn gate(device: &str, t: i64, tag: u64, entry: bool) -> Reading {
        reading(
            device,
            "uhf-rfid-gate",
            t,
            Measurement::Passage {
                tag: Tag::from(tag),
                entry,
            },
        )
    }

    fn has(p: &Point, name: &str) -> bool {
        p.fields.iter().any(|(k, _)| k == name)
    }

    #[test]
    fn a_start_in_opening_hours_leaves_occupancy_unknown_without_drift_until_an_operator_counts() {
        // 通天岩 (S4) is open 07:00–18:00; T0 is 10:00 local: visitors are inside already.
        let mut a = Aggregators::new(&catalog());
        let exits: Vec<Reading> = (0..5)
            .map(|i| gate("gz-s4-g3", T0 + i, i as u64, false))
            .collect();
        let mut points = a.ingest(&exits);
        points.extend(a.ingest(&[
            gate("gz-s4-g1", T0 + 3 * MINUTE, 0x10, true),
            status("gz-s4-g3", T0 + 3 * MINUTE),
        ]));
        let unknown = points.iter().find(|p| p.measurement == "crowd").unwrap();
        assert_eq!(
            field(unknown, "exits"),
            &FieldValue::Int(5),
            "exits still count"
        );
        assert_eq!(field(unknown, "occupancy_known"), &FieldValue::Bool(false));
        for absent in ["occupancy", "occupancy_ratio", "drift", "forecast_ratio"] {
            assert!(!has(unknown, absent), "{absent} while unknown: {unknown:?}");
        }
        assert_eq!(a.counts.drift, 0, "no drift while unknown");
        // The duty officer counts 120 inside at 10:05; then 3 leave in the next minute.
        let count = reading(
            "S4",
            "operator",
            T0 + 5 * MINUTE + 10_000,
            Measurement::Occupancy { count: 120 },
        );
        let mut points = a.ingest(&[count]);
        let leaving: Vec<Reading> = (0..3)
            .map(|i| gate("gz-s4-g3", T0 + 6 * MINUTE + i, 0x20 + i as u64, false))
            .collect();
        points.extend(a.ingest(&leaving));
        points.extend(a.ingest(&[
            gate("gz-s4-g1", T0 + 9 * MINUTE, 0x30, true),
            status("gz-s4-g3", T0 + 9 * MINUTE),
        ]));
        let crowd: Vec<&Point> = points.iter().filter(|p| p.measurement == "crowd").collect();
        let at = |end: i64| {
            crowd
                .iter()
                .find(|p| p.time_ms == end)
                .unwrap_or_else(|| panic!("no point ending {end}: {crowd:?}"))
        };
        let counted = at(T0 + 6 * MINUTE);
        assert_eq!(field(counted, "occupancy"), &FieldValue::Int(120));
        assert!(!has(counted, "occupancy_known"));
        assert_eq!(
            field(at(T0 + 7 * MINUTE), "occupancy"),
            &FieldValue::Int(117)
        );
        assert_eq!(a.counts.drift, 0);
    }

    #[test]
    fn a_start_before_opening_counts_from_an_empty_area_and_still_flags_drift() {
        let mut a = Aggregators::new(&catalog());
        // 06:30 local, before 通天岩 opens: the area is empty.
        let early = T0 - 3 * 3600 * 1000 - 30 * MINUTE;
        let mut points = a.ingest(&[gate("gz-s4-g1", early, 0x1, true)]);
        points.extend(a.ingest(&[gate("gz-s4-g3", early + MINUTE, 0x2, false)]));
        points.extend(a.ingest(&[gate("gz-s4-g3", early + MINUTE + 1, 0x3, false)]));
        points.extend(a.ingest(&[
            gate("gz-s4-g1", early + 4 * MINUTE, 0x4, true),
            status("gz-s4-g3", early + 4 * MINUTE),
        ]));
        let crowd: Vec<&Point> = points.iter().filter(|p| p.measurement == "crowd").collect();
        assert_eq!(field(crowd[0], "occupancy"), &FieldValue::Int(1));
        // One more exit than entries: a gate that misses entries is a real drift.
        assert_eq!(field(crowd[1], "drift"), &FieldValue::Bool(true));
        assert_eq!(a.counts.drift, 1);
    }

    #[test]
    fn an_unknown_occupancy_becomes_known_at_the_closing_time_reset() {
        let closing = T0 + 8 * 3600 * 1000;
        let mut a = Aggregators::new(&catalog());
        let mut points = a.ingest(&[gate("gz-s4-g3", closing - 30_000, 0x1, false)]);
        points.extend(a.ingest(&[gate("gz-s4-g1", closing + 30_000, 0x2, true)]));
        points.extend(a.ingest(&[
            gate("gz-s4-g1", closing + 3 * MINUTE, 0x3, true),
            status("gz-s4-g3", closing + 3 * MINUTE),
        ]));
        let crowd: Vec<&Point> = points.iter().filter(|p| p.measurement == "crowd").collect();
        assert_eq!(crowd.len(), 2, "{crowd:?}");
        assert_eq!(field(crowd[0], "occupancy_known"), &FieldValue::Bool(false));
        assert_eq!(
            field(crowd[1], "occupancy"),
            &FieldValue::Int(1),
            "after closing the area starts empty"
        );
    }
}
