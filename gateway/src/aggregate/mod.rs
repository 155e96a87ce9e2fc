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
//! # Layout
//! - [`window`]: event-time windows with allowed lateness.
//! - [`grade`]: congestion grades and the traffic performance index.

pub mod grade;
pub mod window;

// Keys are ids of known devices and subjects (never raw input): a fast hasher is safe.
use rustc_hash::FxHashMap as HashMap;
use serde::Deserialize;
use std::borrow::Cow;
use std::sync::Arc;

use device_profiles::Catalog;
use device_profiles::site::{GateDirection, RoadClass};

use crate::point::{FieldValue, Point, Quality};
use crate::reading::{Measurement, Reading, Tag};
use window::Windows;

const MINUTE: i64 = 60_000;
const DAY: i64 = 24 * 3600 * 1000;
/// How late data may arrive and still update its window.
pub const LATENESS_MS: i64 = 2 * MINUTE;
/// A tag read again at the same gate within this time is the same passage.
pub const DEDUPE_MS: i64 = MINUTE;
/// The crowd forecast looks this many minutes ahead (DOMAIN.md §6.1).
const FORECAST_MIN: f64 = 30.0;
/// Weight of the latest minute in the smoothed net inflow (about a five-minute average).
const FORECAST_SMOOTHING: f64 = 0.2;
/// The incident baseline: mean speed of the segment's previous 1-minute bins over this span.
const BASELINE_MS: i64 = 15 * MINUTE;

#[derive(Debug, Clone)]
enum Place {
    Gate {
        /// The area, then every choke point the gate bounds (shared: a place is copied for every
        /// reading).
        subjects: Arc<[Arc<str>]>,
        gate: Arc<str>,
        direction: GateDirection,
    },
    Detector {
        segment: Arc<str>,
    },
    Asset {
        asset: Arc<str>,
    },
}

#[derive(Debug, Clone)]
struct AreaInfo {
    /// `area` (and `choke_point`) and `zone` tags of its points.
    tags: Vec<(String, String)>,
    /// Closing time, milliseconds after local midnight: the crowd's day ends there.
    close_ms: i64,
    instantaneous: f64,
    daily: f64,
}

#[derive(Debug, Clone)]
struct SegmentInfo {
    zone: Arc<str>,
    class: RoadClass,
    free_flow_kmh: f64,
}

#[derive(Debug, Default, Clone)]
struct CrowdWindow {
    entries: u64,
    exits: u64,
}

#[derive(Debug)]
struct Crowd {
    windows: Windows<CrowdWindow>,
    /// Occupancy and daily entries after the last emitted window, and which local day.
    occupancy: i64,
    daily_entries: u64,
    day: i64,
    last_emitted_end: i64,
    /// Net inflow per minute, smoothed over about five minutes: the crowd forecast.
    net_per_min: f64,
}

#[derive(Debug, Default, Clone)]
struct TrafficWindow {
    vehicles: u64,
    occupancy_sum: f64,
    occupancy_n: u64,
    speed_weighted: f64,
    speed_vehicles: u64,
}

#[derive(Debug, Default, Clone)]
struct PipeWindow {
    first: Option<(i64, f64)>,
    last: Option<(i64, f64)>,
    min: f64,
    max: f64,
    sum: f64,
    n: u64,
}

/// One device's 5-minute health window, in constant space (a series per device).
#[derive(Debug, Default, Clone)]
struct HealthWindow {
    /// Frames and reports without sequence numbers.
    reports: u32,
    /// Frames seen: readings of one frame count once (they arrive together).
    frames: u32,
    /// The frame counted last.
    last_origin: Option<(u32, u32)>,
    /// Boot epoch and the lowest and highest sequence seen in it.
    sequences: Option<(u32, u32, u32)>,
    /// Sequence numbers spanned in earlier epochs.
    span_before: u32,
    /// First and last report time, and the longest gap between reports taken in time order; a
    /// report arriving out of order inside that span leaves the gap as measured (an upper bound).
    first_ms: i64,
    last_ms: i64,
    max_gap_ms: i64,
    battery_pct: Option<u8>,
    signal_dbm: Option<i8>,
}

impl HealthWindow {
    /// Counts a report at `t` (frame `origin`, or none for JSON devices).
    fn report(&mut self, origin: Option<(u32, u32)>, t: i64) {
        if let Some(o) = origin {
            if self.last_origin == Some(o) {
                return;
            }
            self.last_origin = Some(o);
            self.frames += 1;
            let (epoch, seq) = o;
            self.sequences = match self.sequences {
                None => Some((epoch, seq, seq)),
                Some((e, lo, hi)) if e == epoch => Some((e, lo.min(seq), hi.max(seq))),
                Some((e, lo, hi)) if e < epoch => {
                    self.span_before += hi - lo + 1;
                    Some((epoch, seq, seq))
                }
                // A late frame of an earlier epoch: a span of its own.
                current => {
                    self.span_before += 1;
                    current
                }
            };
        }
        if self.reports == 0 {
            (self.first_ms, self.last_ms) = (t, t);
        } else if t >= self.last_ms {
            self.max_gap_ms = self.max_gap_ms.max(t - self.last_ms);
            self.last_ms = t;
        } else if t < self.first_ms {
            self.max_gap_ms = self.max_gap_ms.max(self.first_ms - t);
            self.first_ms = t;
        }
        self.reports += 1;
    }

    /// Frames seen over the sequence numbers they span.
    fn completeness(&self) -> Option<f64> {
        let (_, lo, hi) = self.sequences?;
        let span = self.span_before + (hi - lo + 1);
        Some((f64::from(self.frames) / f64::from(span)).min(1.0))
    }
}

/// A road segment, a bin (`1m`, `5m`) and a lane (`None`: the whole segment).
type TrafficKey = (Arc<str>, &'static str, Option<u8>);
/// One asset's field: its zone and windows.
type PipeSeries = (Arc<str>, Windows<PipeWindow>);
/// One device's zone, kind and windows.
type HealthSeries = (Arc<str>, Arc<str>, Windows<HealthWindow>);

/// Aggregation tunables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSection {
    /// A ticket tag read again at the same gate within this many seconds is the same passage.
    #[serde(default = "default_dedupe")]
    pub tag_dedupe_s: u32,
    /// How late (event time) a reading may arrive and still update its window, in seconds.
    /// Later readings are kept raw and counted, not aggregated.
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
    /// The aggregators' settings.
    pub fn settings(&self) -> AggregateSettings {
        AggregateSettings {
            tag_dedupe_ms: i64::from(self.tag_dedupe_s) * 1000,
            lateness_ms: i64::from(self.allowed_lateness_s) * 1000,
        }
    }
}

fn default_dedupe() -> u32 {
    60
}
fn default_lateness() -> u32 {
    120
}

/// Tunables (`[aggregate]` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregateSettings {
    /// A tag read again at the same gate within this many ms is the same passage.
    pub tag_dedupe_ms: i64,
    /// How late data may arrive and still update its window, in ms.
    pub lateness_ms: i64,
}

impl Default for AggregateSettings {
    fn default() -> Self {
        AggregateSettings {
            tag_dedupe_ms: DEDUPE_MS,
            lateness_ms: LATENESS_MS,
        }
    }
}

/// Counters the gateway exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AggregateCounts {
    /// Readings later than their window's lateness (kept raw, not aggregated).
    pub too_late: u64,
    /// Repeated tag reads at one gate counted once.
    pub duplicate_passages: u64,
    /// Occupancy would have gone below zero or above 1.5 × capacity.
    pub drift: u64,
}

/// Every aggregator of one gateway.
#[derive(Debug)]
pub struct Aggregators {
    places: HashMap<Arc<str>, Place>,
    areas: HashMap<Arc<str>, AreaInfo>,
    segments: HashMap<Arc<str>, SegmentInfo>,
    utc_offset_ms: i64,
    watermark: i64,
    /// The minute of the watermark at the last drain. Every window size is a whole number of
    /// minutes, so windows can only close when the watermark enters a new minute, or when a
    /// reading lands in a window already closed (`late_touch`): only then is every series
    /// visited (a visit per series per batch would cost O(devices) for every batch).
    drained_minute: i64,
    late_touch: bool,
    crowd: HashMap<Arc<str>, Crowd>,
    recent_tags: HashMap<(Arc<str>, Tag), i64>,
    /// By segment, bin and lane (`None`: the whole segment).
    traffic: HashMap<TrafficKey, Windows<TrafficWindow>>,
    /// Speeds of recent 1-minute segment bins `(window end, km/h)`: the incident baseline.
    speeds: HashMap<Arc<str>, std::collections::VecDeque<(i64, f64)>>,
    pipe: HashMap<(Arc<str>, Cow<'static, str>), PipeSeries>,
    health: HashMap<Arc<str>, HealthSeries>,
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
        let mut places = HashMap::default();
        let mut areas = HashMap::default();
        for a in &site.scenic_areas {
            let close_ms = a
                .hours
                .minutes()
                .map_or(DAY, |(_, close)| i64::from(close) * MINUTE);
            areas.insert(
                Arc::from(a.id.as_str()),
                AreaInfo {
                    tags: vec![
                        ("area".into(), a.id.clone()),
                        ("zone".into(), a.zone.clone()),
                    ],
                    close_ms,
                    instantaneous: f64::from(a.capacity.instantaneous),
                    daily: f64::from(a.capacity.daily),
                },
            );
            for c in &a.choke_points {
                areas.insert(
                    Arc::from(c.id.as_str()),
                    AreaInfo {
                        tags: vec![
                            ("area".into(), a.id.clone()),
                            ("choke_point".into(), c.id.clone()),
                            ("zone".into(), a.zone.clone()),
                        ],
                        close_ms,
                        instantaneous: f64::from(c.capacity),
                        daily: 0.0,
                    },
                );
            }
        }
        for g in &site.gates {
            places.insert(
                Arc::from(g.device.as_str()),
                Place::Gate {
                    subjects: std::iter::once(g.area.as_str())
                        .chain(
                            site.scenic_areas
                                .iter()
                                .flat_map(|a| &a.choke_points)
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
        let mut segments = HashMap::default();
        for r in &site.road_segments {
            segments.insert(
                Arc::from(r.id.as_str()),
                SegmentInfo {
                    zone: r.zone.as_str().into(),
                    class: r.class,
                    free_flow_kmh: f64::from(r.free_flow_kmh),
                },
            );
            for d in &r.detectors {
                places.insert(
                    Arc::from(d.device.as_str()),
                    Place::Detector {
                        segment: r.id.as_str().into(),
                    },
                );
            }
        }
        for p in &site.pipe_assets {
            for d in &p.devices {
                places.insert(
                    Arc::from(d.as_str()),
                    Place::Asset {
                        asset: p.id.as_str().into(),
                    },
                );
            }
        }
        Aggregators {
            places,
            areas,
            segments,
            utc_offset_ms: site.site.utc_offset.ms(),
            watermark: i64::MIN,
            drained_minute: i64::MIN,
            late_touch: false,
            crowd: HashMap::default(),
            recent_tags: HashMap::default(),
            traffic: HashMap::default(),
            speeds: HashMap::default(),
            pipe: HashMap::default(),
            health: HashMap::default(),
            counts: AggregateCounts::default(),
            settings,
        }
    }

    /// Adds readings and returns the points of the windows that closed. A batch is taken in
    /// event-time order, so a buffered hour delivered at once aggregates as it would have live.
    pub fn ingest(&mut self, readings: &[Reading]) -> Vec<Point> {
        let mut ordered: Vec<&Reading> = readings.iter().collect();
        ordered.sort_by_key(|r| r.time_ms);
        for r in ordered {
            // Possibly in a closed window: before the start of the watermark's minute.
            self.late_touch |= r.time_ms < self.watermark.div_euclid(MINUTE).saturating_mul(MINUTE);
            if self.add(r).is_err() {
                self.counts.too_late += 1;
            }
            self.watermark = self.watermark.max(r.time_ms);
        }
        let minute = self.watermark.div_euclid(MINUTE);
        if minute == self.drained_minute && !self.late_touch {
            return Vec::new();
        }
        (self.drained_minute, self.late_touch) = (minute, false);
        self.drain()
    }

    fn add(&mut self, r: &Reading) -> Result<(), window::TooLate> {
        let (wm, lateness) = (self.watermark, self.settings.lateness_ms);
        let h = self.health.entry(r.device.clone()).or_insert_with(|| {
            (
                r.zone.clone(),
                r.kind.clone(),
                Windows::new(5 * MINUTE, lateness),
            )
        });
        let hw = h.2.get_mut_from(r.time_ms, r.unsynced_clock, wm)?;
        hw.report(r.origin, r.time_ms);
        if let Measurement::Status {
            battery_pct,
            signal_dbm,
            ..
        } = &r.measurement
        {
            hw.battery_pct = *battery_pct;
            hw.signal_dbm = Some(*signal_dbm);
        }
        let Some(place) = self.places.get(&r.device).cloned() else {
            return Ok(());
        };
        match (place, &r.measurement) {
            (
                Place::Gate {
                    subjects,
                    gate,
                    direction,
                },
                Measurement::Passage { tag, entry },
            ) => {
                let key = (gate, *tag);
                if let Some(seen) = self.recent_tags.get(&key)
                    && (r.time_ms - seen).abs() < self.settings.tag_dedupe_ms
                {
                    self.counts.duplicate_passages += 1;
                    return Ok(());
                }
                self.recent_tags.insert(key, r.time_ms);
                let is_entry = match direction {
                    GateDirection::Entry => true,
                    GateDirection::Exit => false,
                    GateDirection::Both => *entry,
                };
                for subject in subjects.iter() {
                    let w = self.crowd_windows(subject).get_mut_from(
                        r.time_ms,
                        r.unsynced_clock,
                        wm,
                    )?;
                    if is_entry {
                        w.entries += 1
                    } else {
                        w.exits += 1
                    }
                }
            }
            (Place::Gate { subjects, .. }, Measurement::Counts { entries, exits, .. }) => {
                for subject in subjects.iter() {
                    let w = self.crowd_windows(subject).get_mut_from(
                        r.time_ms,
                        r.unsynced_clock,
                        wm,
                    )?;
                    w.entries += u64::from(*entries);
                    w.exits += u64::from(*exits);
                }
            }
            (
                Place::Detector { segment },
                Measurement::Lane {
                    lane,
                    vehicles,
                    occupancy_pct,
                    speed_kmh,
                    ..
                },
            ) => {
                // The segment in 1- and 5-minute bins; each lane in 5-minute bins.
                for (bin, lane) in [("1m", None), ("5m", None), ("5m", Some(*lane))] {
                    let size = if bin == "1m" { MINUTE } else { 5 * MINUTE };
                    let w = self
                        .traffic
                        .entry((segment.clone(), bin, lane))
                        .or_insert_with(|| Windows::new(size, lateness))
                        .get_mut_from(r.time_ms, r.unsynced_clock, wm)?;
                    w.vehicles += u64::from(*vehicles);
                    w.occupancy_sum += occupancy_pct;
                    w.occupancy_n += 1;
                    if let Some(s) = speed_kmh
                        && *vehicles > 0
                    {
                        w.speed_weighted += s * f64::from(*vehicles);
                        w.speed_vehicles += u64::from(*vehicles);
                    }
                }
            }
            (Place::Asset { asset }, Measurement::Value { field, value, .. }) => {
                let entry = self
                    .pipe
                    .entry((asset, field.clone()))
                    .or_insert_with(|| (r.zone.clone(), Windows::new(MINUTE, lateness)));
                let w = entry.1.get_mut_from(r.time_ms, r.unsynced_clock, wm)?;
                if w.n == 0 {
                    (w.min, w.max) = (*value, *value);
                }
                if w.first.is_none_or(|(t, _)| r.time_ms < t) {
                    w.first = Some((r.time_ms, *value));
                }
                if w.last.is_none_or(|(t, _)| r.time_ms >= t) {
                    w.last = Some((r.time_ms, *value));
                }
                w.min = w.min.min(*value);
                w.max = w.max.max(*value);
                w.sum += value;
                w.n += 1;
            }
            _ => {}
        }
        Ok(())
    }

    fn crowd_windows(&mut self, area: &Arc<str>) -> &mut Windows<CrowdWindow> {
        let lateness = self.settings.lateness_ms;
        &mut self
            .crowd
            .entry(area.clone())
            .or_insert_with(|| Crowd {
                windows: Windows::new(MINUTE, lateness),
                occupancy: 0,
                daily_entries: 0,
                day: i64::MIN,
                last_emitted_end: i64::MIN,
                net_per_min: 0.0,
            })
            .windows
    }

    fn drain(&mut self) -> Vec<Point> {
        let wm = self.watermark;
        let mut out = Vec::new();
        let dedupe = self.settings.tag_dedupe_ms;
        self.recent_tags.retain(|_, t| wm - *t < dedupe);
        let offset = self.utc_offset_ms;
        for (subject, c) in &mut self.crowd {
            let Some(info) = self.areas.get(subject) else {
                continue;
            };
            for closed in c.windows.drain_closed(wm) {
                let (end, w) = (closed.end, closed.state);
                // Windows close in order; a late re-emission recomputes from the state after
                // the previous emission, which is what the operators saw then.
                // The crowd's day ends at closing time: occupancy and daily entries start again
                // (24-hour areas close at midnight).
                let day = (end - 1 + offset - info.close_ms).div_euclid(DAY);
                if day != c.day {
                    (c.occupancy, c.daily_entries, c.day) = (0, 0, day);
                    c.net_per_min = 0.0;
                }
                let raw = c.occupancy + w.entries as i64 - w.exits as i64;
                let drift = raw < 0 || raw as f64 > 1.5 * info.instantaneous;
                if drift {
                    self.counts.drift += 1;
                }
                if end > c.last_emitted_end {
                    c.occupancy = raw.max(0);
                    c.daily_entries += w.entries;
                    c.last_emitted_end = end;
                    let net = w.entries as f64 - w.exits as f64;
                    c.net_per_min =
                        FORECAST_SMOOTHING * net + (1.0 - FORECAST_SMOOTHING) * c.net_per_min;
                }
                let forecast = (c.occupancy as f64 + c.net_per_min * FORECAST_MIN).max(0.0);
                let mut fields = vec![
                    ("entries".into(), FieldValue::Int(w.entries as i64)),
                    ("exits".into(), FieldValue::Int(w.exits as i64)),
                    ("inflow_per_min".into(), FieldValue::Float(w.entries as f64)),
                    ("outflow_per_min".into(), FieldValue::Float(w.exits as f64)),
                    ("occupancy".into(), FieldValue::Int(c.occupancy)),
                    (
                        "occupancy_ratio".into(),
                        FieldValue::Float(c.occupancy as f64 / info.instantaneous),
                    ),
                    (
                        "daily_entries".into(),
                        FieldValue::Int(c.daily_entries as i64),
                    ),
                    ("drift".into(), FieldValue::Bool(drift)),
                    (
                        "forecast_ratio".into(),
                        FieldValue::Float(forecast / info.instantaneous),
                    ),
                ];
                // Choke points have no daily capacity.
                if info.daily > 0.0 {
                    fields.push((
                        "daily_ratio".into(),
                        FieldValue::Float(c.daily_entries as f64 / info.daily),
                    ));
                }
                out.push(Point {
                    measurement: "crowd".into(),
                    tags: info.tags.clone(),
                    fields,
                    time_ms: end,
                    quality: Quality {
                        late: closed.late,
                        unsynced_clock: closed.unsynced_clock,
                        estimated: drift,
                    },
                });
            }
        }
        for ((segment, bin, lane), windows) in &mut self.traffic {
            let Some(info) = self.segments.get(segment) else {
                continue;
            };
            for closed in windows.drain_closed(wm) {
                let (start, end, w) = (closed.start, closed.end, closed.state);
                let hours = (end - start) as f64 / 3_600_000.0;
                let occupancy = if w.occupancy_n > 0 {
                    w.occupancy_sum / w.occupancy_n as f64
                } else {
                    0.0
                };
                let speed =
                    (w.speed_vehicles > 0).then(|| w.speed_weighted / w.speed_vehicles as f64);
                let grade = match speed {
                    Some(s) => grade::grade_by_speed(info.class, s),
                    None => grade::grade_by_occupancy(occupancy),
                };
                let mut fields = vec![
                    ("volume".into(), FieldValue::Int(w.vehicles as i64)),
                    (
                        "flow_vph".into(),
                        FieldValue::Float(w.vehicles as f64 / hours),
                    ),
                    ("occupancy_pct".into(), FieldValue::Float(occupancy)),
                    ("grade".into(), FieldValue::Int(grade as i64)),
                ];
                if let (Some(s), "1m", None) = (speed, *bin, lane) {
                    let recent = self.speeds.entry(segment.clone()).or_default();
                    recent.retain(|(e, _)| *e < end && *e >= end - BASELINE_MS);
                    if recent.len() >= 3 {
                        let baseline =
                            recent.iter().map(|(_, v)| v).sum::<f64>() / recent.len() as f64;
                        if baseline > 0.0 {
                            fields.push(("speed_ratio".into(), FieldValue::Float(s / baseline)));
                        }
                    }
                    recent.push_back((end, s));
                }
                if let Some(s) = speed {
                    fields.push(("speed_kmh".into(), FieldValue::Float(s)));
                    fields.push((
                        "tpi".into(),
                        FieldValue::Float(grade::tpi(info.free_flow_kmh, s)),
                    ));
                }
                let mut tags = vec![
                    ("segment".into(), segment.to_string()),
                    ("zone".into(), info.zone.to_string()),
                    ("class".into(), format!("{:?}", info.class).to_lowercase()),
                    ("bin".into(), (*bin).to_owned()),
                ];
                if let Some(lane) = lane {
                    tags.push(("lane".into(), lane.to_string()));
                }
                out.push(Point {
                    measurement: "traffic".into(),
                    tags,
                    fields,
                    time_ms: end,
                    quality: Quality {
                        late: closed.late,
                        unsynced_clock: closed.unsynced_clock,
                        estimated: speed.is_none() && w.vehicles > 0,
                    },
                });
            }
        }
        for ((asset, field), (zone, windows)) in &mut self.pipe {
            for closed in windows.drain_closed(wm) {
                let (end, w) = (closed.end, closed.state);
                let mut fields = vec![
                    ("min".into(), FieldValue::Float(w.min)),
                    ("max".into(), FieldValue::Float(w.max)),
                    ("mean".into(), FieldValue::Float(w.sum / w.n.max(1) as f64)),
                    ("count".into(), FieldValue::Int(w.n as i64)),
                ];
                if let Some((_, last)) = w.last {
                    fields.insert(0, ("last".into(), FieldValue::Float(last)));
                }
                if let (Some((t0, v0)), Some((t1, v1))) = (w.first, w.last)
                    && t1 > t0
                {
                    fields.push((
                        "rate_per_min".into(),
                        FieldValue::Float((v1 - v0) / ((t1 - t0) as f64 / 60_000.0)),
                    ));
                }
                out.push(Point {
                    measurement: "pipe".into(),
                    tags: vec![
                        ("asset".into(), asset.to_string()),
                        ("zone".into(), zone.to_string()),
                        ("field".into(), field.to_string()),
                    ],
                    fields,
                    time_ms: end,
                    quality: Quality {
                        late: closed.late,
                        unsynced_clock: closed.unsynced_clock,
                        estimated: false,
                    },
                });
            }
        }
        for (device, (zone, kind, windows)) in &mut self.health {
            for closed in windows.drain_closed(wm) {
                let (end, w) = (closed.end, closed.state);
                let mut fields = vec![("reports".into(), FieldValue::Int(i64::from(w.reports)))];
                if w.reports > 1 {
                    let gap = w.max_gap_ms as f64 / 1000.0;
                    fields.push(("max_gap_s".into(), FieldValue::Float(gap)));
                }
                if let Some(c) = w.completeness() {
                    fields.push(("completeness".into(), FieldValue::Float(c)));
                }
                if let Some(b) = w.battery_pct {
                    fields.push(("battery_pct".into(), FieldValue::Int(i64::from(b))));
                }
                if let Some(s) = w.signal_dbm {
                    fields.push(("signal_dbm".into(), FieldValue::Int(i64::from(s))));
                }
                out.push(Point {
                    measurement: "device_health".into(),
                    tags: vec![
                        ("device".into(), device.to_string()),
                        ("zone".into(), zone.to_string()),
                        ("kind".into(), kind.to_string()),
                    ],
                    fields,
                    time_ms: end,
                    quality: Quality {
                        late: closed.late,
                        unsynced_clock: closed.unsynced_clock,
                        estimated: false,
                    },
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn field<'a>(p: &'a Point, name: &str) -> &'a FieldValue {
        &p.fields
            .iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("{name} in {p:?}"))
            .1
    }

    // 2026-10-01 10:00 +08:00.
    const T0: i64 = 1_790_820_000_000;

    #[test]
    fn a_tag_read_twenty_times_at_one_gate_counts_once() {
        let mut a = Aggregators::new(&catalog());
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
        assert!(a.ingest(&reads).iter().all(|p| p.measurement != "crowd"));
        let points = a.ingest(&[reading(
            "gz-s4-g3",
            "uhf-rfid-gate",
            T0 + 3 * MINUTE,
            Measurement::Passage {
                tag: Tag::from(0xbb),
                entry: false,
            },
        )]);
        let crowd: Vec<&Point> = points.iter().filter(|p| p.measurement == "crowd").collect();
        assert_eq!(crowd.len(), 1);
        assert_eq!(field(crowd[0], "entries"), &FieldValue::Int(1));
        assert_eq!(field(crowd[0], "occupancy"), &FieldValue::Int(1));
        assert_eq!(a.counts.duplicate_passages, 19);
        // S4-G3 is an exit gate: its passage is an exit whatever the reader said.
    }

    #[test]
    fn occupancy_never_goes_below_zero_and_drift_is_flagged() {
        let mut a = Aggregators::new(&catalog());
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
        let points = a.ingest(&[reading(
            "gz-p1-press",
            "water-pressure",
            T0 + 2 * MINUTE,
            Measurement::Value {
                field: "pressure".into(),
                value: 0.3,
                urgent: false,
            },
        )]);
        let crowd = points.iter().find(|p| p.measurement == "crowd").unwrap();
        assert_eq!(field(crowd, "occupancy"), &FieldValue::Int(0));
        assert_eq!(field(crowd, "drift"), &FieldValue::Bool(true));
        assert_eq!(a.counts.drift, 1);
    }

    #[test]
    fn a_choke_point_counts_the_passages_of_its_gates_against_its_own_capacity() {
        let mut a = Aggregators::new(&catalog());
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
        let points = a.ingest(&[pass("gz-s3-g2", T0 + 2 * MINUTE, 0xf, true)]);
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
        let mut a = Aggregators::new(&catalog());
        // 通天岩 (S4) closes at 18:00 local = 10:00 UTC. T0 is 10:00 local; closing is 8 h later.
        let closing = T0 + 8 * 3600 * 1000;
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
        let crowd: Vec<&Point> = points.iter().filter(|p| p.measurement == "crowd").collect();
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
    fn late_data_re_emits_its_window_while_the_watermark_stays_in_its_minute() {
        let mut a = Aggregators::new(&catalog());
        let pressure = |t: i64, value: f64| {
            reading(
                "gz-p1-press",
                "water-pressure",
                t,
                Measurement::Value {
                    field: "pressure".into(),
                    value,
                    urgent: false,
                },
            )
        };
        a.ingest(&[pressure(T0 + 10_000, 0.30)]);
        let first = a.ingest(&[pressure(T0 + 61_000, 0.30)]);
        assert_eq!(first.iter().filter(|p| p.measurement == "pipe").count(), 1);
        // Same watermark minute, nothing new closes: no points and no visit of every series.
        assert!(a.ingest(&[pressure(T0 + 62_000, 0.31)]).is_empty());
        // A late reading for the closed minute re-emits it at once, marked late.
        let again = a.ingest(&[pressure(T0 + 20_000, 0.10)]);
        let p = again.iter().find(|p| p.measurement == "pipe").unwrap();
        assert_eq!((p.time_ms, p.quality.late), (T0 + 60_000, true));
        assert_eq!(field(p, "min"), &FieldValue::Float(0.10));
    }

    #[test]
    fn device_health_completeness_spans_boot_epochs() {
        let mut w = HealthWindow::default();
        // Epoch 1: sequences 10..=12 with 11 lost; the node reboots: epoch 2, sequences 0 and 1.
        for (origin, t) in [
            ((1, 10), 0),
            ((1, 12), 20_000),
            ((2, 0), 30_000),
            ((2, 1), 40_000),
        ] {
            w.report(Some(origin), T0 + t);
            w.report(Some(origin), T0 + t); // a second reading of the same frame
        }
        assert_eq!((w.reports, w.frames), (4, 4));
        assert_eq!(w.completeness(), Some(4.0 / 5.0));
        assert_eq!(w.max_gap_ms, 20_000);
        // A frame arriving out of order before the first one extends the span it covers.
        w.report(Some((1, 9)), T0 - 30_000);
        assert_eq!(w.max_gap_ms, 30_000);
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
}
