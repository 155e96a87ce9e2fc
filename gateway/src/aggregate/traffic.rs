//! Road traffic per segment and lane (GA/T 115-2020, DOMAIN.md §3): volume, flow, occupancy,
//! speed, the congestion grade and TPI in 1- and 5-minute bins, and the 1-minute speed against
//! the segment's previous 15 minutes (the incident baseline).

use std::collections::VecDeque;
use std::sync::Arc;

// Keys are ids of known devices and subjects (never raw input): a fast hasher is safe.
use device_profiles::Site;
use device_profiles::site::RoadClass;
use rustc_hash::FxHashMap as HashMap;

use super::window::{TooLate, Windows};
use super::{MINUTE, grade};
use crate::point::{FieldValue, Point, Quality};
use crate::reading::Reading;

/// The incident baseline: mean speed of the segment's previous 1-minute bins over this span.
const BASELINE_MS: i64 = 15 * MINUTE;

/// A road segment, a bin (`1m`, `5m`) and a lane (`None`: the whole segment).
type TrafficKey = (Arc<str>, &'static str, Option<u8>);

#[derive(Debug, Clone)]
struct SegmentInfo {
    zone: Arc<str>,
    class: RoadClass,
    free_flow_kmh: f64,
}

#[derive(Debug, Default, Clone)]
struct TrafficWindow {
    vehicles: u64,
    occupancy_sum: f64,
    occupancy_n: u64,
    speed_weighted: f64,
    speed_vehicles: u64,
}

/// The traffic of a site's road segments.
#[derive(Debug, Default)]
pub(super) struct Traffic {
    segments: HashMap<Arc<str>, SegmentInfo>,
    /// By segment, bin and lane (`None`: the whole segment).
    windows: HashMap<TrafficKey, Windows<TrafficWindow>>,
    /// Speeds of recent 1-minute segment bins `(window end, km/h)`: the incident baseline.
    speeds: HashMap<Arc<str>, VecDeque<(i64, f64)>>,
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
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(super) fn lane(
        &mut self,
        r: &Reading,
        segment: &Arc<str>,
        lane: u8,
        (vehicles, occupancy_pct, speed_kmh): (u16, f64, Option<f64>),
        lateness: i64,
        wm: i64,
    ) -> Result<(), TooLate> {
        // The segment in 1- and 5-minute bins; each lane in 5-minute bins.
        for (bin, lane) in [("1m", None), ("5m", None), ("5m", Some(lane))] {
            let size = if bin == "1m" { MINUTE } else { 5 * MINUTE };
            let w = self
                .windows
                .entry((segment.clone(), bin, lane))
                .or_insert_with(|| Windows::new(size, lateness))
                .get_mut_from(r.time_ms, r.unsynced_clock, wm)?;
            w.vehicles += u64::from(vehicles);
            w.occupancy_sum += occupancy_pct;
            w.occupancy_n += 1;
            if let Some(s) = speed_kmh
                && vehicles > 0
            {
                w.speed_weighted += s * f64::from(vehicles);
                w.speed_vehicles += u64::from(vehicles);
            }
        }
        Ok(())
    }

    /// The points of the windows closed at watermark `wm`.
    pub(super) fn drain(&mut self, wm: i64, out: &mut Vec<Point>) {
        for ((segment, bin, lane), windows) in &mut self.windows {
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
    }
}
