//! Crowds per scenic area and choke point (LB/T 034-2014): entries and exits per minute from
//! the gates' passages (a tag read again at the same gate within the dedupe time of its last
//! read is the same passage) or counts, occupancy and daily entries carried from window to window and started
//! again at closing time, the drift flag, and the 30-minute forecast.
//!
//! **The occupancy baseline.** A gateway whose first window of an area comes during opening
//! hours (a start or a lost store mid-day) does not know how many visitors are inside: exits of
//! visitors it never saw enter would drive the count below zero. Until the closing-time reset,
//! or an operator's count (`Measurement::Occupancy`, `POST /api/v1/areas/{id}/occupancy`), the
//! area's points carry `occupancy_known = false` and neither occupancy, its ratio, the forecast
//! nor a drift flag; entries and exits still count, and a count set later becomes the occupancy
//! at the end of its window, which the windows after it move. A first window outside opening
//! hours starts from an empty area.

use std::collections::VecDeque;
use std::sync::Arc;

// Keys are ids of known devices and subjects (never raw input): a fast hasher is safe.
use device_profiles::Site;
use device_profiles::site::GateDirection;
use rustc_hash::FxHashMap as HashMap;

use super::window::{Closed, TooLate, Windows};
use super::{AggregateCounts, DAY, MINUTE};
use crate::point::{FieldValue, Point, Quality};
use crate::reading::{Reading, Tag};

/// The crowd forecast looks this many minutes ahead (DOMAIN.md §6.1).
const FORECAST_MIN: f64 = 30.0;
/// Weight of the latest minute in the smoothed net inflow (about a five-minute average).
const FORECAST_SMOOTHING: f64 = 0.2;

#[derive(Debug, Clone)]
struct AreaInfo {
    /// The area whose group it is in (itself for an area).
    group: Arc<str>,
    /// `area` (and `choke_point`) and `zone` tags of its points.
    tags: Vec<(String, String)>,
    /// Opening time, milliseconds after local midnight (0 for areas open all day).
    open_ms: i64,
    /// Closing time, milliseconds after local midnight: the crowd's day ends there.
    close_ms: i64,
    instantaneous: f64,
    daily: f64,
}

#[derive(Debug, Default, Clone)]
struct CrowdWindow {
    entries: u64,
    exits: u64,
    /// An operator's count in this window: the occupancy at its end.
    count: Option<u32>,
}

/// What a crowd carries from window to window: occupancy and daily entries after the last
/// emitted window, which local day, and the smoothed inflow.
#[derive(Debug, Clone, Copy)]
struct Carried {
    occupancy: i64,
    daily_entries: u64,
    day: i64,
    last_emitted_end: i64,
    /// Net inflow per minute, smoothed over about five minutes: the crowd forecast.
    net_per_min: f64,
    /// Whether the occupancy is known: not when the first window came during opening hours
    /// (visitors who entered before the gateway heard them are inside), until the closing-time
    /// reset or an operator's count. `None` before the first window.
    known: Option<bool>,
}

impl Default for Carried {
    fn default() -> Self {
        Carried {
            occupancy: 0,
            daily_entries: 0,
            day: i64::MIN,
            last_emitted_end: i64::MIN,
            net_per_min: 0.0,
            known: None,
        }
    }
}

#[derive(Debug)]
struct Crowd {
    windows: Windows<CrowdWindow>,
    carried: Carried,
    /// The carried state after each emitted window, for the raw retention: a correction starts
    /// again from the one before its first window.
    history: VecDeque<(i64, Carried)>,
}

/// An area with its choke points, and the gates that bound them: one unit of progress and of
/// corrections.
#[derive(Debug, Default)]
struct Group {
    /// The area first, then its choke points.
    subjects: Vec<Arc<str>>,
    gates: Vec<Arc<str>>,
}

/// The crowds of a site's areas and choke points.
#[derive(Debug, Default)]
pub(super) struct Crowds {
    areas: HashMap<Arc<str>, AreaInfo>,
    groups: HashMap<Arc<str>, Group>,
    crowd: HashMap<Arc<str>, Crowd>,
    /// Each gate's recent tags and when they were read.
    recent_tags: HashMap<Arc<str>, HashMap<Tag, i64>>,
}

impl Crowds {
    /// The scenic areas and choke points of `site`.
    pub(super) fn new(site: &Site) -> Crowds {
        let mut areas = HashMap::default();
        let mut groups = HashMap::default();
        for a in &site.scenic_areas {
            let (open_ms, close_ms) = a.hours.minutes().map_or((0, DAY), |(open, close)| {
                (i64::from(open) * MINUTE, i64::from(close) * MINUTE)
            });
            areas.insert(
                Arc::from(a.id.as_str()),
                AreaInfo {
                    group: a.id.as_str().into(),
                    tags: vec![
                        ("area".into(), a.id.clone()),
                        ("zone".into(), a.zone.clone()),
                    ],
                    open_ms,
                    close_ms,
                    instantaneous: f64::from(a.capacity.instantaneous),
                    daily: f64::from(a.capacity.daily),
                },
            );
            for c in &a.choke_points {
                areas.insert(
                    Arc::from(c.id.as_str()),
                    AreaInfo {
                        group: a.id.as_str().into(),
                        tags: vec![
                            ("area".into(), a.id.clone()),
                            ("choke_point".into(), c.id.clone()),
                            ("zone".into(), a.zone.clone()),
                        ],
                        open_ms,
                        close_ms,
                        instantaneous: f64::from(c.capacity),
                        daily: 0.0,
                    },
                );
            }
            groups.insert(
                Arc::from(a.id.as_str()),
                Group {
                    subjects: std::iter::once(a.id.as_str())
                        .chain(a.choke_points.iter().map(|c| c.id.as_str()))
                        .map(Arc::from)
                        .collect(),
                    gates: site
                        .gates
                        .iter()
                        .filter(|g| g.area == a.id)
                        .map(|g| Arc::from(g.id.as_str()))
                        .collect(),
                },
            );
        }
        Crowds {
            areas,
            groups,
            ..Crowds::default()
        }
    }

    #[inline]
    fn windows(&mut self, area: &Arc<str>) -> &mut Windows<CrowdWindow> {
        &mut self
            .crowd
            .entry(area.clone())
            .or_insert_with(|| Crowd {
                windows: Windows::new(MINUTE),
                carried: Carried::default(),
                history: VecDeque::new(),
            })
            .windows
    }

    /// Whether `tag` read at `gate` at `t` belongs to a passage already counted: read there
    /// within the dedupe time of its last read (a visitor lingering at the gate is one
    /// passage). Remembers the read either way. Only the last read of a tag matters, so a
    /// correction that reads the dedupe time before its first window decides as live did.
    #[inline]
    fn seen(&mut self, gate: &Arc<str>, tag: Tag, t: i64, dedupe_ms: i64) -> bool {
        let tags = match self.recent_tags.get_mut(gate) {
            Some(tags) => tags,
            None => self.recent_tags.entry(gate.clone()).or_default(),
        };
        match tags.get_mut(&tag) {
            Some(last) => {
                let again = (t - *last).abs() < dedupe_ms;
                *last = (*last).max(t);
                again
            }
            None => {
                tags.insert(tag, t);
                false
            }
        }
    }

    /// The area whose group `subject` (an area or a choke point) is in.
    pub(super) fn group_of(&self, subject: &str) -> Option<&Arc<str>> {
        self.areas.get(subject).map(|a| &a.group)
    }

    /// A passage before a correction's first window: only remembered for the dedupe.
    pub(super) fn prime(&mut self, gate: &Arc<str>, tag: Tag, t: i64, dedupe_ms: i64) {
        self.seen(gate, tag, t, dedupe_ms);
    }

    /// Starts `area` and its choke points again at `start`, the first window of a correction:
    /// each with what it carried after the window before, no windows from `start` on, and its
    /// gates' recent tags forgotten (the correction's readings remember them again).
    pub(super) fn reset(&mut self, area: &Arc<str>, start: i64) {
        let Some(group) = self.groups.get(area) else {
            return;
        };
        for gate in &group.gates {
            self.recent_tags.remove(gate);
        }
        for subject in group.subjects.clone() {
            self.windows(&subject);
            let Some(c) = self.crowd.get_mut(&subject) else {
                continue;
            };
            while c.history.back().is_some_and(|(end, _)| *end > start) {
                c.history.pop_back();
            }
            c.carried = c.history.back().map_or_else(Carried::default, |h| h.1);
            c.windows.clear_from(start);
        }
    }

    /// One visitor through `gate` (ticket `tag`), counted for each of `subjects`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(super) fn passage(
        &mut self,
        r: &Reading,
        (subjects, gate, direction): (&[Arc<str>], &Arc<str>, GateDirection),
        (tag, entry): (Tag, bool),
        dedupe_ms: i64,
        wm: i64,
        counts: &mut AggregateCounts,
    ) -> Result<(), TooLate> {
        if self.seen(gate, tag, r.time_ms, dedupe_ms) {
            counts.duplicate_passages += 1;
            return Ok(());
        }
        let is_entry = match direction {
            GateDirection::Entry => true,
            GateDirection::Exit => false,
            GateDirection::Both => entry,
        };
        for subject in subjects {
            let w = self
                .windows(subject)
                .get_mut_from(r.time_ms, r.unsynced_clock, wm)?;
            if is_entry {
                w.entries += 1
            } else {
                w.exits += 1
            }
        }
        Ok(())
    }

    /// A gate's counts of a period, for each of `subjects`.
    #[inline]
    pub(super) fn counts(
        &mut self,
        r: &Reading,
        subjects: &[Arc<str>],
        (entries, exits): (u32, u32),
        wm: i64,
    ) -> Result<(), TooLate> {
        for subject in subjects {
            let w = self
                .windows(subject)
                .get_mut_from(r.time_ms, r.unsynced_clock, wm)?;
            w.entries += u64::from(entries);
            w.exits += u64::from(exits);
        }
        Ok(())
    }

    /// An operator's count of the visitors inside `area` at the reading's time: the occupancy at
    /// the end of that window, which later windows' entries and exits then move.
    #[inline]
    pub(super) fn count(
        &mut self,
        r: &Reading,
        area: &Arc<str>,
        count: u32,
        wm: i64,
    ) -> Result<(), TooLate> {
        if !self.areas.contains_key(area) {
            return Ok(());
        }
        let w = self
            .windows(area)
            .get_mut_from(r.time_ms, r.unsynced_clock, wm)?;
        w.count = Some(count);
        Ok(())
    }

    /// The points of the windows of `area` and its choke points closed at watermark `wm`;
    /// forgets tags older than the dedupe time and carried states older than `keep_ms`.
    pub(super) fn drain(
        &mut self,
        area: &Arc<str>,
        wm: i64,
        (offset, dedupe, keep_ms): (i64, i64, i64),
        counts: &mut AggregateCounts,
        out: &mut Vec<Point>,
    ) {
        let Some(group) = self.groups.get(area) else {
            return;
        };
        for gate in &group.gates {
            if let Some(tags) = self.recent_tags.get_mut(gate) {
                tags.retain(|_, t| wm - *t < dedupe);
            }
        }
        for subject in &group.subjects {
            let (Some(c), Some(info)) = (self.crowd.get_mut(subject), self.areas.get(subject))
            else {
                continue;
            };
            for closed in c.windows.drain_closed(wm) {
                let point = emit(info, &mut c.carried, closed, offset, counts);
                if point.time_ms > c.history.back().map_or(i64::MIN, |h| h.0) {
                    c.history.push_back((point.time_ms, c.carried));
                }
                out.push(point);
            }
            while c.history.len() > 1 && c.history.front().is_some_and(|h| h.0 < wm - keep_ms) {
                c.history.pop_front();
            }
        }
    }
}

/// The point of one closed window, moving what `c` carries when the window is new.
fn emit(
    info: &AreaInfo,
    c: &mut Carried,
    closed: Closed<'_, CrowdWindow>,
    offset: i64,
    counts: &mut AggregateCounts,
) -> Point {
    let (end, w) = (closed.end, closed.state);
    // Windows close in order, each once: data for a closed window is a correction, which starts
    // the area again from the state before it (`Crowds::reset`).
    // The crowd's day ends at closing time: occupancy and daily entries start again (24-hour
    // areas close at midnight).
    let day = (end - 1 + offset - info.close_ms).div_euclid(DAY);
    if day != c.day {
        (c.occupancy, c.daily_entries, c.day) = (0, 0, day);
        c.net_per_min = 0.0;
        // The first window: known only outside opening hours (the area is empty). A
        // closing-time reset: known.
        let local = (end - 1 + offset).rem_euclid(DAY);
        let open = local >= info.open_ms && local < info.close_ms;
        c.known = Some(c.known.is_some() || !open);
    }
    let fresh = end > c.last_emitted_end;
    let raw = match w.count {
        Some(n) if fresh => {
            c.known = Some(true);
            i64::from(n)
        }
        _ => c.occupancy + w.entries as i64 - w.exits as i64,
    };
    let known = c.known == Some(true);
    let drift = known && (raw < 0 || raw as f64 > 1.5 * info.instantaneous);
    if drift {
        counts.drift += 1;
    }
    if fresh {
        c.occupancy = raw.max(0);
        c.daily_entries += w.entries;
        c.last_emitted_end = end;
        let net = w.entries as f64 - w.exits as f64;
        c.net_per_min = FORECAST_SMOOTHING * net + (1.0 - FORECAST_SMOOTHING) * c.net_per_min;
    }
    let forecast = (c.occupancy as f64 + c.net_per_min * FORECAST_MIN).max(0.0);
    let mut fields = Vec::with_capacity(10);
    fields.extend([
        ("entries".into(), FieldValue::Int(w.entries as i64)),
        ("exits".into(), FieldValue::Int(w.exits as i64)),
        ("inflow_per_min".into(), FieldValue::Float(w.entries as f64)),
        ("outflow_per_min".into(), FieldValue::Float(w.exits as f64)),
        (
            "daily_entries".into(),
            FieldValue::Int(c.daily_entries as i64),
        ),
    ]);
    if known {
        fields.extend([
            ("occupancy".into(), FieldValue::Int(c.occupancy)),
            (
                "occupancy_ratio".into(),
                FieldValue::Float(c.occupancy as f64 / info.instantaneous),
            ),
            ("drift".into(), FieldValue::Bool(drift)),
            (
                "forecast_ratio".into(),
                FieldValue::Float(forecast / info.instantaneous),
            ),
        ]);
    } else {
        // Neither an occupancy nor a drift: the gateway does not know who was inside.
        fields.push(("occupancy_known".into(), FieldValue::Bool(false)));
    }
    // Choke points have no daily capacity.
    if info.daily > 0.0 {
        fields.push((
            "daily_ratio".into(),
            FieldValue::Float(c.daily_entries as f64 / info.daily),
        ));
    }
    Point {
        measurement: "crowd".into(),
        tags: info.tags.clone(),
        fields,
        time_ms: end,
        quality: Quality {
            late: closed.late,
            unsynced_clock: closed.unsynced_clock,
            estimated: drift,
        },
    }
}
