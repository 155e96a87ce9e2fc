//! Diversion advice (分流疏导): what an alert of a full scenic area or a jammed road says to do
//! next, from the site file and the latest aggregates.
//!
//! - A scenic area at 橙 or 红 (a crowd rule on `occupancy_ratio`), or whose forecast reached its
//!   grade (a crowd rule on `forecast_ratio`), names the areas to send visitors to: its
//!   `neighbours` first, in the site file's order, then the other areas within
//!   [`RADIUS_KM`], nearest first; only those below [`BELOW`] of their capacity by a value at
//!   most [`FRESH_MS`] old, at most [`MAX_DESTINATIONS`]. Each comes with its occupancy and
//!   its distance: the route the site file gives for a neighbour (walking or driving), or the
//!   straight line (walking below [`WALK_KM`], driving beyond). The area's access
//!   roads follow, with their congestion grade: the roads to keep visitors off.
//! - A road segment at 严重拥堵 (a traffic rule on `grade` at 5) names its `alternatives` with
//!   their grade.
//!
//! The advice is part of the alert: its events carry it (MQTT, webhook, Alertmanager
//! annotations, the city platform), and it is brought up to date as the aggregates change
//! without an event of its own, so an operator's console shows the current advice while the
//! notifiers are not re-sent for every change.

use std::fmt::Write as _;
use std::sync::Arc;

use device_profiles::Catalog;
use device_profiles::site::LatLon;
// Keys are subjects of the site (never raw input): a fast hasher is safe.
use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};

use crate::point::{FieldValue, Point};

/// Areas below this share of their capacity can take visitors.
pub const BELOW: f64 = 0.6;
/// Areas further than this (straight line) are not proposed unless they are neighbours.
pub const RADIUS_KM: f64 = 30.0;
/// At most this many destinations.
pub const MAX_DESTINATIONS: usize = 3;
/// An occupancy older than this (event time, against the alert's value) is not current.
pub const FRESH_MS: i64 = 30 * 60_000;
/// Closer than this, visitors walk.
pub const WALK_KM: f64 = 2.0;
/// The congestion grade from which a segment names its alternatives (严重拥堵).
pub const JAMMED: f64 = 5.0;

/// An area to send visitors to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    /// Scenic area id.
    pub area: String,
    /// Its name.
    pub name: String,
    /// Its occupancy against its instantaneous capacity.
    pub occupancy_ratio: f64,
    /// Straight-line distance from the full area, km (unknown without both locations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_km: Option<f64>,
    /// `walk` or `drive` (with a distance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The distance is the straight line between the two areas (no route in the site file).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub straight_line: bool,
}

/// A road segment and how it flows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Road {
    /// Segment id.
    pub segment: String,
    /// Its name.
    pub name: String,
    /// Its latest 5-minute congestion grade (1 畅通 … 5 严重拥堵), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grade: Option<u8>,
    /// The grade for people.
    pub label: String,
}

/// What to do about an alert's subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advice {
    /// Areas to send visitors to, best first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub divert_to: Vec<Destination>,
    /// Roads to keep visitors off (the full area's access roads).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid: Vec<Road>,
    /// Segments that can carry a jammed segment's traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<Road>,
    /// One line for people.
    pub text: String,
}

#[derive(Debug, Clone, Default)]
struct Area {
    name: String,
    location: Option<LatLon>,
    /// Neighbours with the route people take, when the site file gives one.
    neighbours: Vec<(Arc<str>, Option<Route>)>,
    access_roads: Vec<Arc<str>>,
}

/// A route from the site file: km, and `walk` or `drive` when it says.
type Route = (f64, Option<String>);

#[derive(Debug, Clone, Default)]
struct Segment {
    name: String,
    alternatives: Vec<Arc<str>>,
}

/// The places advice speaks of, and how full and how jammed they are now.
#[derive(Debug, Clone, Default)]
pub(super) struct Situation {
    /// Scenic areas in the site file's order.
    areas: Vec<(Arc<str>, Area)>,
    segments: HashMap<Arc<str>, Segment>,
    /// Latest occupancy ratio per area: (event time, value).
    occupancy: HashMap<Arc<str>, (i64, f64)>,
    /// Latest 5-minute congestion grade per segment.
    grades: HashMap<Arc<str>, (i64, f64)>,
}

fn grade_label(grade: Option<u8>) -> &'static str {
    match grade {
        Some(1) => "畅通",
        Some(2) => "基本畅通",
        Some(3) => "轻度拥堵",
        Some(4) => "中度拥堵",
        Some(5) => "严重拥堵",
        _ => "无数据",
    }
}

/// Great-circle distance, km.
fn distance_km(a: LatLon, b: LatLon) -> f64 {
    let (la1, lo1, la2, lo2) = (
        a.0.to_radians(),
        a.1.to_radians(),
        b.0.to_radians(),
        b.1.to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

fn tag<'a>(p: &'a Point, name: &str) -> Option<&'a str> {
    p.tags
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn number(p: &Point, name: &str) -> Option<f64> {
    p.fields
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| match v {
            FieldValue::Float(f) => Some(*f),
            FieldValue::Int(i) => Some(*i as f64),
            _ => None,
        })
}

impl Situation {
    pub(super) fn new(catalog: &Catalog) -> Situation {
        let site = &catalog.site;
        Situation {
            areas: site
                .scenic_areas
                .iter()
                .map(|a| {
                    (
                        Arc::from(a.id.as_str()),
                        Area {
                            name: a.name.clone(),
                            location: a.location,
                            neighbours: a
                                .neighbours
                                .iter()
                                .map(|n| {
                                    let route = match n {
                                        device_profiles::site::Neighbour::Area(_) => None,
                                        device_profiles::site::Neighbour::Route {
                                            distance_km,
                                            mode,
                                            ..
                                        } => Some((*distance_km, mode.clone())),
                                    };
                                    (Arc::from(n.area()), route)
                                })
                                .collect(),
                            access_roads: a
                                .access_roads
                                .iter()
                                .map(|r| r.as_str().into())
                                .collect(),
                        },
                    )
                })
                .collect(),
            segments: site
                .road_segments
                .iter()
                .map(|r| {
                    (
                        Arc::from(r.id.as_str()),
                        Segment {
                            name: r.name.clone(),
                            alternatives: r
                                .alternatives
                                .iter()
                                .map(|a| a.as_str().into())
                                .collect(),
                        },
                    )
                })
                .collect(),
            ..Situation::default()
        }
    }

    /// Takes over what `before` has seen (a reload rebuilds the site, not the situation).
    pub(super) fn carry_over(&mut self, before: &mut Situation) {
        self.occupancy = std::mem::take(&mut before.occupancy);
        self.grades = std::mem::take(&mut before.grades);
    }

    /// Takes in an aggregate: an area's occupancy, a segment's 5-minute grade.
    pub(super) fn observe(&mut self, p: &Point) {
        let (latest, subject, value) = match p.measurement.as_str() {
            "crowd" if tag(p, "choke_point").is_none() => (
                &mut self.occupancy,
                tag(p, "area"),
                number(p, "occupancy_ratio"),
            ),
            "traffic" if tag(p, "bin") == Some("5m") && tag(p, "lane").is_none() => {
                (&mut self.grades, tag(p, "segment"), number(p, "grade"))
            }
            _ => return,
        };
        let (Some(subject), Some(value)) = (subject, value) else {
            return;
        };
        match latest.get_mut(subject) {
            Some(seen) if seen.0 > p.time_ms => {}
            Some(seen) => *seen = (p.time_ms, value),
            None => {
                latest.insert(subject.into(), (p.time_ms, value));
            }
        }
    }

    /// The advice for an alert of `field` on `subject` at `value` and `severity`, as of
    /// `now_ms` (event time), if the alert calls for one.
    pub(super) fn advise(
        &self,
        field: &str,
        subject: &str,
        severity: &str,
        value: f64,
        now_ms: i64,
    ) -> Option<Advice> {
        match field {
            "occupancy_ratio" if matches!(severity, "orange" | "red") => {
                self.diversion(subject, now_ms)
            }
            "forecast_ratio" => self.diversion(subject, now_ms),
            "grade" if value >= JAMMED => self.detour(subject),
            _ => None,
        }
    }

    fn road(&self, segment: &Arc<str>) -> Road {
        let grade = self
            .grades
            .get(segment)
            .map(|(_, g)| g.round().clamp(0.0, 255.0) as u8);
        Road {
            segment: segment.to_string(),
            name: self
                .segments
                .get(segment)
                .map_or_else(|| segment.to_string(), |s| s.name.clone()),
            grade,
            label: grade_label(grade).to_owned(),
        }
    }

    fn diversion(&self, subject: &str, now_ms: i64) -> Option<Advice> {
        let (_, full) = self.areas.iter().find(|(id, _)| &**id == subject)?;
        let distance = |other: &Area| match (full.location, other.location) {
            (Some(a), Some(b)) => Some(distance_km(a, b)),
            _ => None,
        };
        // (area id, area, distance km, mode from the site file, straight line)
        type Candidate<'a> = (&'a Arc<str>, &'a Area, Option<f64>, Option<String>, bool);
        let mut nearby: Vec<Candidate<'_>> = self
            .areas
            .iter()
            .filter(|(id, _)| &**id != subject && !full.neighbours.iter().any(|(n, _)| n == id))
            .map(|(id, a)| (id, a, distance(a), None, true))
            .filter(|(_, _, d, _, _)| d.is_some_and(|d| d <= RADIUS_KM))
            .collect();
        nearby.sort_by(|a, b| a.2.partial_cmp(&b.2).unwrap_or(std::cmp::Ordering::Equal));
        let neighbours = full.neighbours.iter().filter_map(|(n, route)| {
            let (id, a) = self.areas.iter().find(|(id, _)| id == n)?;
            Some(match route {
                Some((km, mode)) => (id, a, Some(*km), mode.clone(), false),
                None => (id, a, distance(a), None, true),
            })
        });
        let divert_to: Vec<Destination> = neighbours
            .chain(nearby)
            .filter_map(|(id, a, d, mode, straight_line)| {
                let &(at, ratio) = self.occupancy.get(id)?;
                (ratio < BELOW && now_ms - at <= FRESH_MS).then(|| Destination {
                    area: id.to_string(),
                    name: a.name.clone(),
                    occupancy_ratio: ratio,
                    distance_km: d.map(|d| (d * 10.0).round() / 10.0),
                    mode: mode.or_else(|| {
                        d.map(|d| if d < WALK_KM { "walk" } else { "drive" }.to_owned())
                    }),
                    straight_line: straight_line && d.is_some(),
                })
            })
            .take(MAX_DESTINATIONS)
            .collect();
        let avoid: Vec<Road> = full.access_roads.iter().map(|r| self.road(r)).collect();
        let mut text = String::from("分流：");
        if divert_to.is_empty() {
            let _ = write!(
                text,
                "附近景区均在 {:.0}% 以上或无数据，暂无去处",
                BELOW * 100.0
            );
        }
        for (i, d) in divert_to.iter().enumerate() {
            let _ = write!(
                text,
                "{}{}（在园 {:.0}%",
                if i > 0 { "、" } else { "" },
                d.name,
                d.occupancy_ratio * 100.0
            );
            if let (Some(km), Some(mode)) = (d.distance_km, &d.mode) {
                let how = if mode == "walk" { "步行" } else { "驾车" };
                let line = if d.straight_line { "直线" } else { "" };
                let _ = write!(text, "，{line}约 {km:.1} km，{how}");
            }
            text.push('）');
        }
        if !avoid.is_empty() {
            text.push_str("；避开 ");
            push_roads(&mut text, &avoid);
        }
        Some(Advice {
            divert_to,
            avoid,
            alternatives: Vec::new(),
            text,
        })
    }

    fn detour(&self, subject: &str) -> Option<Advice> {
        let segment = self.segments.get(subject)?;
        if segment.alternatives.is_empty() {
            return None;
        }
        let alternatives: Vec<Road> = segment.alternatives.iter().map(|r| self.road(r)).collect();
        let mut text = String::from("替代路线：");
        push_roads(&mut text, &alternatives);
        Some(Advice {
            divert_to: Vec::new(),
            avoid: Vec::new(),
            alternatives,
            text,
        })
    }
}

fn push_roads(text: &mut String, roads: &[Road]) {
    for (i, r) in roads.iter().enumerate() {
        let _ = write!(
            text,
            "{}{}（{}）",
            if i > 0 { "、" } else { "" },
            r.name,
            r.label
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::engine::tests::crowd_point as crowd;

    fn traffic(segment: &str, minute: i64, grade: i64) -> Point {
        Point {
            measurement: "traffic".into(),
            tags: vec![
                ("segment".into(), segment.into()),
                ("zone".into(), "360702".into()),
                ("class".into(), "arterial".into()),
                ("bin".into(), "5m".into()),
            ],
            fields: vec![("grade".into(), FieldValue::Int(grade))],
            time_ms: minute * 60_000,
            quality: Default::default(),
        }
    }

    fn ganzhou() -> Situation {
        Situation::new(&Catalog::ganzhou().unwrap())
    }

    #[test]
    fn a_full_area_names_its_neighbour_below_sixty_percent_with_distance_and_roads_to_avoid() {
        let mut s = ganzhou();
        for p in [
            crowd("S4", 10, 0.9),
            crowd("S5", 10, 0.45),
            traffic("R2", 10, 4),
        ] {
            s.observe(&p);
        }
        let a = s
            .advise("occupancy_ratio", "S4", "orange", 0.9, 10 * 60_000)
            .unwrap();
        assert_eq!(a.divert_to.len(), 1, "{a:?}");
        let d = &a.divert_to[0];
        assert_eq!((d.area.as_str(), d.occupancy_ratio), ("S5", 0.45));
        // The site file gives the route by road for this neighbour.
        assert_eq!(d.distance_km, Some(13.5));
        assert!(!d.straight_line);
        assert_eq!(d.mode.as_deref(), Some("drive"));
        assert_eq!(a.avoid[0].segment, "R2");
        assert_eq!(a.avoid[0].label, "中度拥堵");
        assert!(
            a.text
                .starts_with("分流：方特东方欲晓（在园 45%，约 13.5 km，驾车）"),
            "{}",
            a.text
        );
        assert!(
            a.text.ends_with("；避开 长征大道–南河大桥（中度拥堵）"),
            "{}",
            a.text
        );
        // Yellow calls for no diversion; the forecast rule does at its grade.
        assert!(
            s.advise("occupancy_ratio", "S4", "yellow", 0.8, 0)
                .is_none()
        );
        assert!(
            s.advise("forecast_ratio", "S4", "yellow", 0.8, 600_000)
                .is_some()
        );
    }

    #[test]
    fn full_stale_or_far_areas_are_not_proposed_and_neighbours_come_first() {
        let mut s = ganzhou();
        // S1's neighbours are S2 then S3; S3 is fuller than 60%; S6 (瑞金) is far.
        for p in [
            crowd("S1", 100, 0.95),
            crowd("S2", 100, 0.5),
            crowd("S3", 100, 0.7),
            crowd("S4", 100, 0.1),
            crowd("S6", 100, 0.0),
            crowd("S5", 10, 0.1), // stale
        ] {
            s.observe(&p);
        }
        let a = s
            .advise("occupancy_ratio", "S1", "red", 0.95, 100 * 60_000)
            .unwrap();
        let ids: Vec<&str> = a.divert_to.iter().map(|d| d.area.as_str()).collect();
        assert_eq!(ids, ["S2", "S4"]);
        // A neighbour without a route: the straight line, walking.
        assert_eq!(a.divert_to[0].mode.as_deref(), Some("walk"));
        assert!(a.divert_to[0].straight_line);
        assert!(
            a.text.contains("八境台·宋城墙（在园 50%，直线约"),
            "{}",
            a.text
        );
        // An older point does not replace a newer one.
        s.observe(&crowd("S2", 50, 0.99));
        let a = s
            .advise("occupancy_ratio", "S1", "red", 0.95, 100 * 60_000)
            .unwrap();
        assert_eq!(a.divert_to[0].area, "S2");
    }

    #[test]
    fn a_jammed_segment_names_its_alternatives_with_their_grade() {
        let mut s = ganzhou();
        s.observe(&traffic("R1", 5, 2));
        let a = s.advise("grade", "R2", "alarm", 5.0, 0).unwrap();
        let alts: Vec<(&str, &str)> = a
            .alternatives
            .iter()
            .map(|r| (r.segment.as_str(), r.label.as_str()))
            .collect();
        assert_eq!(alts, [("R1", "基本畅通"), ("R5", "无数据")]);
        assert_eq!(
            a.text,
            "替代路线：红旗大道（基本畅通）、新世纪大桥（无数据）"
        );
        assert!(s.advise("grade", "R2", "warning", 4.0, 0).is_none());
    }
}
