//! Road traffic per segment and lane (GA/T 115-2020, DOMAIN.md §3): volume, flow, occupancy,
//! speed, the congestion grade and TPI in 1- and 5-minute bins, and the 1-minute speed against
//! the segment's previous 15 minutes (the incident baseline).

use std::collections::VecDeque;
use std::sync::Arc;

// Keys are ids of known devices and subjects (never raw input): a fast hasher is safe.
use device_profiles::Site;
use device_profiles::site::RoadClass;
use rustc_hash::FxHashMap as HashMap;

use super::window::{Closed, ExactSum, TooLate, Windows};
use super::{MINUTE, grade};
use crate::point::{FieldValue, Point, Quality};
use crate::reading::Reading;

/// The incident baseline: mean speed of the segment's previous 1-minute bins over this span.
pub(super) const BASELINE_MS: i64 = 15 * MINUTE;

/// The bins of a segment: `1m` and `5m` for the whole segment, `5m` for each lane.
const BINS: [(&str, i64); 2] = [("1m", MINUTE), ("5m", 5 * MINUTE)];

#[derive(Debug, Clone)]
struct SegmentInfo {
    zone: Arc<str>,
    class: RoadClass,
    free_flow_kmh: f64,
}

#[derive(Debug, Default, Clone)]
struct TrafficWindow {
    vehicles: u64,
    occupancy_sum: ExactSum,
    occupancy_n: u64,
    speed_weighted: ExactSum,
    speed_vehicles: u64,
}

/// One segment's windows.
#[derive(Debug)]
struct SegmentWindows {
    /// The whole segment in 1- and 5-minute bins.
    segment: [Windows<TrafficWindow>; 2],
    /// Each lane in 5-minute bins.
    lanes: Vec<(u8, Windows<TrafficWindow>)>,
    /// Speeds of recent 1-minute bins `(window end, km/h)`: the incident baseline.
    speeds: VecDeque<(i64, f64)>,
}

impl Default for SegmentWindows {
    fn default() -> Self {
        SegmentWindows {
            segment: BINS.map(|(_, size)| Windows::new(size)),
            lanes: Vec::new(),
            speeds: VecDeque::new(),
        }
    }
}

/// The traffic of a site's road segments.
#[derive(Debug, Default)]
pub(super) struct Traffic {
    segments: HashMap<Arc<str>, SegmentInfo>,
    windows: HashMap<Arc<str>, SegmentWindows>,
}

impl Traffic {
    /// The road segments of `site`.
    pub(super) fn new(site: &Site) -> Traffic {
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
        }
        Traffic {
            segments,
            ..Traffic::default()
        }
    }

    /// One lane's counts of a period on `segment`.
    #[inline]
    pub(super) fn lane(
        &mut self,
        r: &Reading,
        segment: &Arc<str>,
        lane: u8,
        (vehicles, occupancy_pct, speed_kmh): (u16, f64, Option<f64>),
        wm: i64,
    ) -> Result<(), TooLate> {
        let s = match self.windows.get_mut(segment) {
            Some(s) => s,
            None => self.windows.entry(segment.clone()).or_default(),
        };
        let at = match s.lanes.iter().position(|(l, _)| *l == lane) {
            Some(at) => at,
            None => {
                s.lanes.push((lane, Windows::new(5 * MINUTE)));
                s.lanes.len() - 1
            }
        };
        let [one, five] = &mut s.segment;
        for windows in [one, five, &mut s.lanes[at].1] {
            let w = windows.get_mut_from(r.time_ms, r.unsynced_clock, wm)?;
            w.vehicles += u64::from(vehicles);
            w.occupancy_sum.add(occupancy_pct);
            w.occupancy_n += 1;
            if let Some(s) = speed_kmh
                && vehicles > 0
            {
                w.speed_weighted.add(s * f64::from(vehicles));
                w.speed_vehicles += u64::from(vehicles);
            }
        }
        Ok(())
    }

    /// Clears `segment`'s windows and speed baseline from `from` on, for a correction.
    pub(super) fn reset(&mut self, segment: &Arc<str>, from: i64) {
        if let Some(s) = self.windows.get_mut(segment) {
            for w in s
                .segment
                .iter_mut()
                .chain(s.lanes.iter_mut().map(|l| &mut l.1))
            {
                w.clear_from(from);
            }
            s.speeds.retain(|(end, _)| *end <= from);
        }
    }

    /// The points of `segment`'s windows closed at watermark `wm`.
    pub(super) fn drain(&mut self, segment: &Arc<str>, wm: i64, out: &mut Vec<Point>) {
        let (Some(info), Some(s)) = (self.segments.get(segment), self.windows.get_mut(segment))
        else {
            return;
        };
        let [one, five] = &mut s.segment;
        let bins = [("1m", None, one), ("5m", None, five)];
        let lanes = s.lanes.iter_mut().map(|(l, w)| ("5m", Some(*l), w));
        for (bin, lane, windows) in bins.into_iter().chain(lanes) {
            for closed in windows.drain_closed(wm) {
                out.push(point(info, segment, (bin, lane), closed, &mut s.speeds));
            }
        }
    }
}

/// The point of one closed window; a 1-minute segment bin moves the speed baseline.
fn point(
    info: &SegmentInfo,
    segment: &str,
    (bin, lane): (&str, Option<u8>),
    closed: Closed<'_, TrafficWindow>,
    speeds: &mut VecDeque<(i64, f64)>,
) -> Point {
    let (start, end, w) = (closed.start, closed.end, closed.state);
    let hours = (end - start) as f64 / 3_600_000.0;
    let occupancy = if w.occupancy_n > 0 {
        w.occupancy_sum.value() / w.occupancy_n as f64
    } else {
        0.0
    };
    let speed = (w.speed_vehicles > 0).then(|| w.speed_weighted.value() / w.speed_vehicles as f64);
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
    if let (Some(s), "1m", None) = (speed, bin, lane) {
        speeds.retain(|(e, _)| *e < end && *e >= end - BASELINE_MS);
        if speeds.len() >= 3 {
            let baseline = speeds.iter().map(|(_, v)| v).sum::<f64>() / speeds.len() as f64;
            if baseline > 0.0 {
                fields.push(("speed_ratio".into(), FieldValue::Float(s / baseline)));
            }
        }
        speeds.push_back((end, s));
    }
    if let Some(s) = speed {
        fields.push(("speed_kmh".into(), FieldValue::Float(s)));
        fields.push((
            "tpi".into(),
            FieldValue::Float(grade::tpi(info.free_flow_kmh, s)),
        ));
    }
    let mut tags = vec![
        ("segment".into(), segment.to_owned()),
        ("zone".into(), info.zone.to_string()),
        ("class".into(), format!("{:?}", info.class).to_lowercase()),
        ("bin".into(), bin.to_owned()),
    ];
    if let Some(lane) = lane {
        tags.push(("lane".into(), lane.to_string()));
    }
    Point {
        measurement: "traffic".into(),
        tags,
        fields,
        time_ms: end,
        quality: Quality {
            late: closed.late,
            unsynced_clock: closed.unsynced_clock,
            estimated: speed.is_none() && w.vehicles > 0,
        },
    }
}
