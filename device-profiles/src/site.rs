//! Sites: the city as the gateway, simulator and nodectl see it.
//!
//! A site file lists districts (GB/T 2260 codes, used as MQTT zones), devices (id, profile,
//! zone), and where each device sits: at a scenic-area gate, on a road-segment detector, or on
//! a pipe asset. Every device sits in exactly one place, and every place names devices that
//! exist and whose profile fits it.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::profile::{Category, Profile};

/// The whole site file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Who the site is.
    pub site: SiteInfo,
    /// The districts (zones) this site covers.
    #[serde(rename = "district")]
    pub districts: Vec<District>,
    /// Every device in the site.
    #[serde(default, rename = "device")]
    pub devices: Vec<Device>,
    /// Scenic areas with capacities.
    #[serde(default, rename = "scenic_area")]
    pub scenic_areas: Vec<ScenicArea>,
    /// Counted gates of the scenic areas.
    #[serde(default, rename = "gate")]
    pub gates: Vec<Gate>,
    /// Road segments with detectors.
    #[serde(default, rename = "road_segment")]
    pub road_segments: Vec<RoadSegment>,
    /// Pipes, wells, tunnels and covers with their sensors.
    #[serde(default, rename = "pipe_asset")]
    pub pipe_assets: Vec<PipeAsset>,
    /// Public holidays and local events, with their capacity caps ([`crate::calendar`]).
    #[serde(default, rename = "calendar")]
    pub calendar: Vec<crate::calendar::Entry>,
    /// Grids with their responsible units and duty rosters ([`crate::grid`]).
    #[serde(default, rename = "grid")]
    pub grids: Vec<crate::grid::Grid>,
}

/// The site's identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteInfo {
    /// Short id, e.g. "ganzhou".
    pub id: String,
    /// Name for people, e.g. "赣州".
    pub name: String,
    /// GB/T 2260 code of the city (e.g. 360700); every district code starts with its first 4 digits.
    pub region: String,
    /// Local time offset, e.g. "+08:00" (opening hours and daily counts are local).
    pub utc_offset: UtcOffset,
}

/// A local time offset as written (`+08:00`) and as a number; checked when the site loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UtcOffset {
    text: String,
    ms: Option<i64>,
}

impl UtcOffset {
    /// Parses `±HH:MM`; anything else is kept as written and refused by the site's check.
    pub fn parse(text: &str) -> UtcOffset {
        let ms = match text.as_bytes() {
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]
                if [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()) =>
            {
                let d = |a: &u8, b: &u8| i64::from((a - b'0') * 10 + (b - b'0'));
                let ms = (d(h1, h2) * 3600 + d(m1, m2) * 60) * 1000;
                Some(if *sign == b'-' { -ms } else { ms })
            }
            _ => None,
        };
        UtcOffset {
            text: text.to_owned(),
            ms,
        }
    }

    /// The offset in milliseconds (local = UTC + this). 0 for an offset the check refused,
    /// which a loaded site never holds.
    pub fn ms(&self) -> i64 {
        self.ms.unwrap_or(0)
    }

    /// Whether it was a valid `±HH:MM`.
    pub fn is_valid(&self) -> bool {
        self.ms.is_some()
    }
}

impl std::fmt::Display for UtcOffset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for UtcOffset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UtcOffset, D::Error> {
        Ok(UtcOffset::parse(&String::deserialize(d)?))
    }
}

/// A district: the `{zone}` of MQTT topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct District {
    /// GB/T 2260 code, six digits.
    pub code: String,
    /// Name, e.g. "章贡区".
    pub name: String,
}

/// One device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Unique id: in topics and frames, so 1–32 of `[A-Za-z0-9._-]`.
    pub id: String,
    /// The profile (device kind).
    pub profile: String,
    /// The district code the device reports under.
    pub zone: String,
    /// For Modbus devices: where the gateway polls it.
    #[serde(default)]
    pub modbus: Option<ModbusEndpoint>,
}

/// How the gateway reaches a Modbus device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusEndpoint {
    /// `tcp://host:port` or `rtu:///dev/ttyX?baud=9600`.
    pub url: String,
    /// Unit (slave) id, overriding the profile's.
    #[serde(default)]
    pub unit_id: Option<u8>,
}

/// A scenic area (景区) with its LB/T 034-2014 capacities.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenicArea {
    /// Unique id, e.g. "S4".
    pub id: String,
    /// Name, e.g. "通天岩".
    pub name: String,
    /// District code.
    pub zone: String,
    /// Instantaneous and daily capacity.
    pub capacity: Capacity,
    /// Opening hours, local time.
    pub hours: Hours,
    /// Median visit length, minutes (for the simulator and the predictive warning).
    pub median_dwell_min: u32,
    /// Road segments that lead to the area (crowd–traffic coupling; the roads a diversion
    /// advice says to avoid).
    #[serde(default)]
    pub access_roads: Vec<String>,
    /// Scenic areas to send visitors to when this one is full (分流疏导), first choice first:
    /// an id (`"S5"`, the straight-line distance is used), or the route as people take it
    /// (`{ area = "S5", distance_km = 13.5, mode = "drive" }`). Others within the diversion
    /// radius follow, nearest first.
    #[serde(default)]
    pub neighbours: Vec<Neighbour>,
    /// Choke points inside the area with their own capacity (浮桥, wall stairs, glass bridge).
    #[serde(default, rename = "choke_point")]
    pub choke_points: Vec<ChokePoint>,
    /// Where it is (its main entrance), for the console's map.
    #[serde(default)]
    pub location: Option<LatLon>,
}

/// A neighbour of a scenic area, for diversion advice.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Neighbour {
    /// Its id: the distance is the straight line between the two locations.
    Area(String),
    /// Its id with the route's length and how people go.
    Route {
        /// Scenic area id.
        area: String,
        /// Walking or driving distance, km.
        distance_km: f64,
        /// `walk` or `drive` (by the distance when absent: walking under 2 km).
        #[serde(default)]
        mode: Option<String>,
    },
}

impl Neighbour {
    /// The neighbour's area id.
    pub fn area(&self) -> &str {
        match self {
            Neighbour::Area(a) | Neighbour::Route { area: a, .. } => a,
        }
    }
}

/// A place on the map: latitude and longitude in degrees (WGS-84; GCJ-02 from Chinese maps is
/// off by a few hundred metres, which a schematic map does not show), written `[lat, lon]`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
pub struct LatLon(pub f64, pub f64);

impl LatLon {
    /// Why it is not a place on Earth, if it is not.
    fn problem(&self) -> Option<String> {
        let LatLon(lat, lon) = *self;
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            return Some(format!(
                "[{lat}, {lon}] is not [latitude, longitude] in degrees (latitude -90..90, longitude -180..180)"
            ));
        }
        None
    }
}

/// Instantaneous (瞬时) and daily (日) capacity, in visitors.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Most visitors present at once.
    pub instantaneous: u32,
    /// Most visitors over one day's opening hours.
    pub daily: u32,
}

/// Opening hours as "HH:MM" local time; `close` may be "24:00".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hours {
    /// Opening time.
    pub open: String,
    /// Closing time.
    pub close: String,
}

impl Hours {
    /// Minutes after midnight of opening and closing.
    pub fn minutes(&self) -> Option<(u32, u32)> {
        Some((parse_hhmm(&self.open)?, parse_hhmm(&self.close)?))
    }
}

fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
}

/// How a gate's passages are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateDirection {
    /// Every passage is an entry.
    Entry,
    /// Every passage is an exit.
    Exit,
    /// The reader reports the direction of each passage.
    Both,
}

/// A counted gate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Unique id, e.g. "S4-G1".
    pub id: String,
    /// The scenic area it counts for.
    pub area: String,
    /// The reader or counter at the gate.
    pub device: String,
    /// Which passages it counts.
    pub direction: GateDirection,
}

/// A choke point inside a scenic area.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChokePoint {
    /// Unique id.
    pub id: String,
    /// Name, e.g. "东河古浮桥".
    pub name: String,
    /// Most visitors on it at once.
    pub capacity: u32,
    /// Gates of the area that bound it.
    pub gates: Vec<String>,
}

/// Road class by the grading table of DOMAIN.md §2.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoadClass {
    /// 快速路.
    Expressway,
    /// 主干路.
    Arterial,
    /// 次干路.
    Secondary,
    /// 支路.
    Branch,
}

/// A road segment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoadSegment {
    /// Unique id, e.g. "R1".
    pub id: String,
    /// Name, e.g. "红旗大道".
    pub name: String,
    /// District code.
    pub zone: String,
    /// Class, which picks the congestion grading.
    pub class: RoadClass,
    /// Lanes, both directions.
    pub lanes: u8,
    /// Length in metres.
    pub length_m: u32,
    /// Free-flow speed, km/h.
    pub free_flow_kmh: u32,
    /// Capacity per lane, vehicles per hour.
    pub lane_capacity_vph: u32,
    /// Detectors on the segment.
    #[serde(default, rename = "detector")]
    pub detectors: Vec<Detector>,
    /// Its two ends, for the console's map.
    #[serde(default)]
    pub ends: Option<[LatLon; 2]>,
    /// Segments that carry its traffic when it is jammed (严重拥堵), first choice first.
    #[serde(default)]
    pub alternatives: Vec<String>,
}

/// A traffic detector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detector {
    /// The device.
    pub device: String,
    /// The lanes it watches (1-based from the kerb).
    pub lanes: Vec<u8>,
    /// For paired geomagnetic sensors: distance between the pair, for speed, in metres.
    #[serde(default)]
    pub spacing_m: Option<f64>,
}

/// What kind of pipe asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PipeAssetKind {
    /// Pressurised water supply main.
    WaterMain,
    /// Drainage well or sewer (内涝 monitoring).
    DrainageWell,
    /// Utility tunnel gas compartment (综合管廊).
    UtilityTunnel,
    /// A manhole cover.
    Manhole,
    /// A pump station.
    PumpStation,
}

/// A pipe asset.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipeAsset {
    /// Unique id, e.g. "P1".
    pub id: String,
    /// Name.
    pub name: String,
    /// District code.
    pub zone: String,
    /// What it is.
    pub kind: PipeAssetKind,
    /// Sensors on it.
    pub devices: Vec<String>,
    /// Assets on the same network that confirm a burst (pressure drop seen by a neighbour).
    #[serde(default)]
    pub neighbours: Vec<String>,
    /// Where it is, for the console's map.
    #[serde(default)]
    pub location: Option<LatLon>,
}

/// A problem for each place that is not on Earth.
fn check_places<'a>(places: impl Iterator<Item = &'a LatLon>, path: &str, p: &mut Problems) {
    for place in places {
        if let Some(problem) = place.problem() {
            p.push((path.to_owned(), problem));
        }
    }
}

fn is_district_code(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_device_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= wire::MAX_DEVICE_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Problems as `(path, reason)`.
type Problems = Vec<(String, String)>;

impl Site {
    /// The device with this id.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.id == id)
    }

    /// Every subject (scenic area with its gates, road segment with its detectors, pipe asset
    /// with its sensors) that lies partly inside the districts `served` and partly outside: a
    /// gateway serving `served` would see only part of its devices (an area's occupancy from
    /// half its gates). One line per subject, naming the districts on each side. Subjects
    /// wholly outside belong to another partition and are not named; no `served` means all.
    pub fn straddling(&self, served: &[String]) -> Vec<String> {
        if served.is_empty() {
            return Vec::new();
        }
        let zone_of = |device: &str| self.device(device).map(|d| d.zone.as_str());
        let mut out = Vec::new();
        let mut judge = |what: &str, id: &str, zone: &str, devices: Vec<&str>| {
            let mut zones: Vec<&str> = std::iter::once(zone)
                .chain(devices.iter().filter_map(|d| zone_of(d)))
                .collect();
            zones.sort_unstable();
            zones.dedup();
            let (inside, outside): (Vec<&str>, Vec<&str>) =
                zones.iter().partition(|z| served.iter().any(|s| s == *z));
            if !inside.is_empty() && !outside.is_empty() {
                out.push(format!(
                    "{what} \"{id}\" straddles the served districts: it has devices in {} (served) and {} (not served); serve all of them in one gateway, or move the subject",
                    inside.join(", "),
                    outside.join(", ")
                ));
            }
        };
        for a in &self.scenic_areas {
            let gates = self.gates.iter().filter(|g| g.area == a.id);
            judge(
                "scenic area",
                &a.id,
                &a.zone,
                gates.map(|g| g.device.as_str()).collect(),
            );
        }
        for r in &self.road_segments {
            let detectors = r.detectors.iter().map(|d| d.device.as_str()).collect();
            judge("road segment", &r.id, &r.zone, detectors);
        }
        for a in &self.pipe_assets {
            judge(
                "pipe asset",
                &a.id,
                &a.zone,
                a.devices.iter().map(String::as_str).collect(),
            );
        }
        out
    }

    /// Checks references, uniqueness and values against the loaded profiles.
    pub(crate) fn check(&self, profiles: &BTreeMap<String, Profile>) -> Problems {
        let mut p = Problems::new();
        self.check_info(&mut p);
        let devices = self.check_devices(profiles, &mut p);
        let mut placed: HashMap<&str, String> = HashMap::new();
        let mut place = |p: &mut Problems, device: &str, path: String, want: Category, at: &str| {
            let Some((i, profile)) = devices.get(device) else {
                p.push((
                    path,
                    format!("{at} names device \"{device}\", which is not in [[device]]"),
                ));
                return;
            };
            if let Some(prev) = placed.get(device) {
                p.push((
                    path,
                    format!("device \"{device}\" is placed twice: at {prev} and at {at}"),
                ));
                return;
            }
            placed.insert(self.devices[*i].id.as_str(), at.to_owned());
            if let Some(profile) = profile
                && profile.category != want
            {
                p.push((
                    path,
                    format!("{at}: device \"{device}\" has profile \"{}\" ({:?}), which does not belong here", profile.kind, profile.category),
                ));
            }
        };
        let mut ids: HashMap<String, String> = HashMap::new();
        let mut unique = |p: &mut Problems, id: &str, path: String, what: &str| {
            if let Some(prev) = ids.insert(id.to_owned(), path.clone()) {
                p.push((
                    path,
                    format!("{what} id \"{id}\" is already used (by {prev})"),
                ));
            }
        };
        let roads: Vec<&str> = self.road_segments.iter().map(|r| r.id.as_str()).collect();
        for (i, a) in self.scenic_areas.iter().enumerate() {
            let path = format!("scenic_area[{i}]");
            unique(&mut p, &a.id, format!("{path}.id"), "scenic area");
            self.check_zone(&a.zone, format!("{path}.zone"), &mut p);
            check_places(a.location.iter(), &format!("{path}.location"), &mut p);
            if a.capacity.instantaneous == 0 {
                p.push((
                    format!("{path}.capacity.instantaneous"),
                    format!(
                        "scenic area \"{}\": instantaneous capacity must be greater than 0",
                        a.id
                    ),
                ));
            }
            if a.capacity.daily < a.capacity.instantaneous {
                p.push((
                    format!("{path}.capacity.daily"),
                    format!("scenic area \"{}\": daily capacity ({}) cannot be below the instantaneous capacity ({})", a.id, a.capacity.daily, a.capacity.instantaneous),
                ));
            }
            match a.hours.minutes() {
                None => p.push((
                    format!("{path}.hours"),
                    format!(
                        "scenic area \"{}\": hours must be \"HH:MM\" (close may be \"24:00\")",
                        a.id
                    ),
                )),
                Some((o, c)) if o >= c => p.push((
                    format!("{path}.hours.close"),
                    format!(
                        "scenic area \"{}\": closes ({}) before it opens ({})",
                        a.id, a.hours.close, a.hours.open
                    ),
                )),
                Some(_) => {}
            }
            if a.median_dwell_min == 0 {
                p.push((
                    format!("{path}.median_dwell_min"),
                    format!(
                        "scenic area \"{}\": median_dwell_min must be greater than 0",
                        a.id
                    ),
                ));
            }
            for (j, n) in a.neighbours.iter().enumerate() {
                let id = n.area();
                if id == a.id || !self.scenic_areas.iter().any(|o| o.id == id) {
                    p.push((
                        format!("{path}.neighbours[{j}]"),
                        format!(
                            "scenic area \"{}\": neighbour \"{id}\" is not another [[scenic_area]]",
                            a.id
                        ),
                    ));
                }
                if let Neighbour::Route {
                    distance_km, mode, ..
                } = n
                    && (*distance_km <= 0.0
                        || !distance_km.is_finite()
                        || mode.as_deref().is_some_and(|m| m != "walk" && m != "drive"))
                {
                    p.push((
                        format!("{path}.neighbours[{j}]"),
                        format!(
                            "scenic area \"{}\": the route to \"{id}\" needs distance_km above 0 and mode \"walk\" or \"drive\"",
                            a.id
                        ),
                    ));
                }
            }
            for (j, r) in a.access_roads.iter().enumerate() {
                if !roads.contains(&r.as_str()) {
                    p.push((
                        format!("{path}.access_roads[{j}]"),
                        format!(
                            "scenic area \"{}\": access road \"{r}\" is not a [[road_segment]]",
                            a.id
                        ),
                    ));
                }
            }
            if !self.gates.iter().any(|g| g.area == a.id) {
                p.push((
                    path.clone(),
                    format!(
                        "scenic area \"{}\" has no [[gate]]: nothing would count its visitors",
                        a.id
                    ),
                ));
            }
            for (j, c) in a.choke_points.iter().enumerate() {
                let cpath = format!("{path}.choke_point[{j}]");
                unique(&mut p, &c.id, format!("{cpath}.id"), "choke point");
                if c.capacity == 0 {
                    p.push((
                        format!("{cpath}.capacity"),
                        format!("choke point \"{}\": capacity must be greater than 0", c.id),
                    ));
                }
                for (k, g) in c.gates.iter().enumerate() {
                    if !self.gates.iter().any(|x| &x.id == g && x.area == a.id) {
                        p.push((format!("{cpath}.gates[{k}]"), format!("choke point \"{}\" names gate \"{g}\", which is not a gate of \"{}\"", c.id, a.id)));
                    }
                }
            }
        }
        for (i, g) in self.gates.iter().enumerate() {
            let path = format!("gate[{i}]");
            unique(&mut p, &g.id, format!("{path}.id"), "gate");
            if !self.scenic_areas.iter().any(|a| a.id == g.area) {
                p.push((
                    format!("{path}.area"),
                    format!(
                        "gate \"{}\" names scenic area \"{}\", which is not a [[scenic_area]]",
                        g.id, g.area
                    ),
                ));
            }
            place(
                &mut p,
                &g.device,
                format!("{path}.device"),
                Category::Crowd,
                &format!("gate \"{}\"", g.id),
            );
        }
        for (i, r) in self.road_segments.iter().enumerate() {
            let path = format!("road_segment[{i}]");
            unique(&mut p, &r.id, format!("{path}.id"), "road segment");
            self.check_zone(&r.zone, format!("{path}.zone"), &mut p);
            check_places(r.ends.iter().flatten(), &format!("{path}.ends"), &mut p);
            for (key, v) in [
                ("lanes", u32::from(r.lanes)),
                ("length_m", r.length_m),
                ("free_flow_kmh", r.free_flow_kmh),
                ("lane_capacity_vph", r.lane_capacity_vph),
            ] {
                if v == 0 {
                    p.push((
                        format!("{path}.{key}"),
                        format!("road segment \"{}\": {key} must be greater than 0", r.id),
                    ));
                }
            }
            if r.free_flow_kmh > 130 || r.lane_capacity_vph > 2500 {
                p.push((format!("{path}.free_flow_kmh"), format!("road segment \"{}\": free flow above 130 km/h or lane capacity above 2500 veh/h is not an urban road", r.id)));
            }
            for (j, alt) in r.alternatives.iter().enumerate() {
                if alt == &r.id || !roads.contains(&alt.as_str()) {
                    p.push((
                        format!("{path}.alternatives[{j}]"),
                        format!(
                            "road segment \"{}\": alternative \"{alt}\" is not another [[road_segment]]",
                            r.id
                        ),
                    ));
                }
            }
            for (j, d) in r.detectors.iter().enumerate() {
                let dpath = format!("{path}.detector[{j}]");
                place(
                    &mut p,
                    &d.device,
                    format!("{dpath}.device"),
                    Category::Traffic,
                    &format!("a detector on \"{}\"", r.id),
                );
                if d.lanes.is_empty() {
                    p.push((
                        format!("{dpath}.lanes"),
                        format!("detector \"{}\" watches no lane", d.device),
                    ));
                }
                for (k, lane) in d.lanes.iter().enumerate() {
                    if *lane == 0 || *lane > r.lanes {
                        p.push((
                            format!("{dpath}.lanes[{k}]"),
                            format!(
                                "detector \"{}\": lane {lane} is not one of the {} lanes of \"{}\"",
                                d.device, r.lanes, r.id
                            ),
                        ));
                    }
                }
                if let Some(s) = d.spacing_m
                    && !(s.is_finite() && s > 0.0 && s < 100.0)
                {
                    p.push((
                        format!("{dpath}.spacing_m"),
                        format!(
                            "detector \"{}\": spacing_m must be between 0 and 100 m",
                            d.device
                        ),
                    ));
                }
            }
        }
        let assets: Vec<&str> = self.pipe_assets.iter().map(|a| a.id.as_str()).collect();
        for (i, a) in self.pipe_assets.iter().enumerate() {
            let path = format!("pipe_asset[{i}]");
            unique(&mut p, &a.id, format!("{path}.id"), "pipe asset");
            self.check_zone(&a.zone, format!("{path}.zone"), &mut p);
            check_places(a.location.iter(), &format!("{path}.location"), &mut p);
            for (j, d) in a.devices.iter().enumerate() {
                place(
                    &mut p,
                    d,
                    format!("{path}.devices[{j}]"),
                    Category::Pipe,
                    &format!("pipe asset \"{}\"", a.id),
                );
            }
            for (j, n) in a.neighbours.iter().enumerate() {
                if n == &a.id || !assets.contains(&n.as_str()) {
                    p.push((
                        format!("{path}.neighbours[{j}]"),
                        format!(
                            "pipe asset \"{}\": neighbour \"{n}\" is not another [[pipe_asset]]",
                            a.id
                        ),
                    ));
                }
            }
        }
        for (i, d) in self.devices.iter().enumerate() {
            if !placed.contains_key(d.id.as_str())
                && devices
                    .get(d.id.as_str())
                    .is_some_and(|(first, _)| *first == i)
            {
                p.push((
                    format!("device[{i}].id"),
                    format!(
                        "device \"{}\" is not placed at any gate, detector or pipe asset",
                        d.id
                    ),
                ));
            }
        }
        let capped: Vec<&str> = self
            .scenic_areas
            .iter()
            .flat_map(|a| {
                std::iter::once(a.id.as_str()).chain(a.choke_points.iter().map(|c| c.id.as_str()))
            })
            .collect();
        let mut gridded: HashMap<&str, &str> = HashMap::new();
        for (i, g) in self.grids.iter().enumerate() {
            let path = format!("grid[{i}]");
            unique(&mut p, &g.id, format!("{path}.id"), "grid");
            if !crate::grid::is_phone(&g.head.phone) {
                p.push((
                    format!("{path}.head.phone"),
                    format!(
                        "grid \"{}\": \"{}\" is not a phone number",
                        g.id, g.head.phone
                    ),
                ));
            }
            for (j, s) in g.subjects.iter().enumerate() {
                let known = self.scenic_areas.iter().any(|a| a.id == *s)
                    || capped.contains(&s.as_str())
                    || roads.contains(&s.as_str())
                    || self.pipe_assets.iter().any(|a| a.id == *s)
                    || self.devices.iter().any(|d| d.id == *s);
                if !known {
                    p.push((
                        format!("{path}.subjects[{j}]"),
                        format!(
                            "grid \"{}\": \"{s}\" is not a scenic area, choke point, road segment, pipe asset or device",
                            g.id
                        ),
                    ));
                } else if let Some(other) = gridded.insert(s.as_str(), g.id.as_str()) {
                    p.push((
                        format!("{path}.subjects[{j}]"),
                        format!("grid \"{}\": \"{s}\" is in grid \"{other}\" already", g.id),
                    ));
                }
            }
            for (j, d) in g.duty.iter().enumerate() {
                for (key, reason) in d.problems() {
                    p.push((
                        format!("{path}.duty[{j}].{key}"),
                        format!("grid \"{}\", duty of {}: {reason}", g.id, d.name),
                    ));
                }
            }
        }
        for (i, e) in self.calendar.iter().enumerate() {
            unique(&mut p, &e.id, format!("calendar[{i}].id"), "calendar entry");
            for (key, reason) in e.problems(&capped) {
                p.push((
                    format!("calendar[{i}].{key}"),
                    format!("calendar entry \"{}\": {reason}", e.id),
                ));
            }
        }
        p
    }

    /// The grid of `subject`: the one that lists it, or for a choke point the grid of its
    /// area.
    pub fn grid_of(&self, subject: &str) -> Option<&crate::grid::Grid> {
        let listed = |s: &str| {
            self.grids
                .iter()
                .find(|g| g.subjects.iter().any(|x| x == s))
        };
        listed(subject).or_else(|| {
            let area = self
                .scenic_areas
                .iter()
                .find(|a| a.choke_points.iter().any(|c| c.id == subject))?;
            listed(&area.id)
        })
    }

    /// The calendar entries in force on the local date `date` (`YYYY-MM-DD`), in the file's
    /// order.
    pub fn calendar_on(&self, date: &str) -> Vec<&crate::calendar::Entry> {
        self.calendar.iter().filter(|e| e.covers(date)).collect()
    }

    fn check_info(&self, p: &mut Problems) {
        if !is_district_code(&self.site.region) {
            p.push((
                "site.region".into(),
                format!(
                    "region \"{}\" is not a six-digit GB/T 2260 code",
                    self.site.region
                ),
            ));
        }
        if !self.site.utc_offset.is_valid() {
            p.push((
                "site.utc_offset".into(),
                format!(
                    "utc_offset \"{}\" must look like \"+08:00\"",
                    self.site.utc_offset
                ),
            ));
        }
        for (i, d) in self.districts.iter().enumerate() {
            if !is_district_code(&d.code) {
                p.push((
                    format!("district[{i}].code"),
                    format!("district code \"{}\" is not six digits (GB/T 2260)", d.code),
                ));
            } else if d.code[..4] != self.site.region.get(..4).unwrap_or_default()[..] {
                p.push((
                    format!("district[{i}].code"),
                    format!("district {} is not in region {}", d.code, self.site.region),
                ));
            }
            if self.districts[..i].iter().any(|e| e.code == d.code) {
                p.push((
                    format!("district[{i}].code"),
                    format!("district {} is listed twice", d.code),
                ));
            }
        }
    }

    /// Checks each device and returns its index and profile by id (first occurrence).
    fn check_devices<'a>(
        &'a self,
        profiles: &'a BTreeMap<String, Profile>,
        p: &mut Problems,
    ) -> HashMap<&'a str, (usize, Option<&'a Profile>)> {
        let mut by_id: HashMap<&str, (usize, Option<&Profile>)> = HashMap::new();
        for (i, d) in self.devices.iter().enumerate() {
            let path = format!("device[{i}]");
            if !is_device_id(&d.id) {
                p.push((format!("{path}.id"), format!("device id \"{}\" must be 1–32 characters of A-Z, a-z, 0-9, '.', '_' and '-' (it is part of MQTT topics)", d.id)));
            }
            let profile = profiles.get(&d.profile);
            if profile.is_none() {
                let known: Vec<&str> = profiles.keys().map(String::as_str).collect();
                p.push((
                    format!("{path}.profile"),
                    format!(
                        "device \"{}\" names profile \"{}\", which does not exist (known: {})",
                        d.id,
                        d.profile,
                        known.join(", ")
                    ),
                ));
            }
            self.check_zone(&d.zone, format!("{path}.zone"), p);
            if let Some(profile) = profile {
                let polled = profile.encoding == crate::profile::Encoding::Modbus;
                if polled && d.modbus.is_none() {
                    p.push((
                        path.clone(),
                        format!(
                            "device \"{}\" has a Modbus profile but no modbus = {{ url = ... }}",
                            d.id
                        ),
                    ));
                }
                if !polled && d.modbus.is_some() {
                    p.push((
                        format!("{path}.modbus"),
                        format!(
                            "device \"{}\": modbus applies only to devices with a Modbus profile",
                            d.id
                        ),
                    ));
                }
            }
            if let Some(m) = &d.modbus
                && !(m.url.starts_with("tcp://") || m.url.starts_with("rtu://"))
            {
                p.push((
                    format!("{path}.modbus.url"),
                    format!(
                        "device \"{}\": Modbus url \"{}\" must start with tcp:// or rtu://",
                        d.id, m.url
                    ),
                ));
            }
            if let Some((first, _)) = by_id.get(d.id.as_str()) {
                p.push((
                    format!("{path}.id"),
                    format!("device id \"{}\" is already used by device[{first}]", d.id),
                ));
            } else {
                by_id.insert(&d.id, (i, profile));
            }
        }
        by_id
    }

    fn check_zone(&self, zone: &str, path: String, p: &mut Problems) {
        if !self.districts.iter().any(|d| d.code == zone) {
            p.push((
                path,
                format!("zone \"{zone}\" is not one of the site's [[district]] codes"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_utc_offset_is_held_as_milliseconds_and_junk_is_kept_for_the_check() {
        assert_eq!(UtcOffset::parse("+08:00").ms(), 8 * 3_600_000);
        assert_eq!(
            UtcOffset::parse("-03:30").ms(),
            -(3 * 3600 + 30 * 60) * 1000
        );
        let junk = UtcOffset::parse("8h");
        assert!(!junk.is_valid());
        assert_eq!(junk.to_string(), "8h");
    }
}
