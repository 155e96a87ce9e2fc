//! The virtual city: visitors, vehicles and pipes, and one virtual node per site device running
//! the real node logic (`node::Node`, the gate, the vehicle detector over the real QMC5883L
//! driver, the ADS1115 transducers, the threshold watches).
//!
//! Time is simulated: [`Fleet::step`] advances one simulated second; what the nodes report is
//! stamped with simulated time, and queued frames are handed to an [`Out`] for publishing.

use std::collections::{HashMap, VecDeque};

use device_profiles::site::GateDirection;
use device_profiles::{Catalog, Category, Encoding};
use node::config::Role;
use node::drivers::TagRead;
use node::drivers::ads1115::{Input, Transducers};
use node::drivers::qmc5883l::{Qmc5883l, Range, Rate};
use node::lifecycle::{Node, Persisted, RamStorage};
use node::pipe::{Calibration, Watch, WatchState};
use node::rfid::Gate;
use node::traffic::{Change, Detector, LaneCounter, Tuning};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wire::{Body, DeviceKey, GateCounts, Header, Quantity, Timestamp, Trigger};

use crate::hardware::{Field, Inputs, SimAdc, SimMagnetometer};
use crate::scenario::{EventKind, FaultKind, Scenario, minutes};

/// Frames a node keeps while its link is down.
const QUEUE: usize = 256;
/// Magnetometer samples per simulated second (the detector needs ≥ 3 per vehicle).
const MAG_HZ: u64 = 25;
/// Earth's field at the sensors, LSB at 2 G.
const EARTH: [i16; 3] = [1200, -300, 4100];
/// A car's footprint over a sensor, metres.
const CAR_M: f64 = 4.5;

/// A detected lane: two sensors a known distance apart.
#[derive(Debug)]
struct Lane {
    number: u8,
    sensors: [(Qmc5883l<SimMagnetometer>, Detector, Field); 2],
    counter: LaneCounter,
    /// Vehicles: (time over sensor A, ms; speed, m/s).
    cars: VecDeque<(i64, f64)>,
}

/// What a node senses.
#[derive(Debug)]
enum Sensing {
    /// An RFID gate reader.
    Gate {
        area: String,
        direction: GateDirection,
        gate: Box<Gate>,
    },
    /// A people counter at a gate.
    Counter {
        area: String,
        direction: GateDirection,
        entries: u32,
        exits: u32,
    },
    /// A traffic detector.
    Traffic {
        segment: String,
        lanes: Vec<Lane>,
        spacing_m: f64,
    },
    /// A pipe, well or cover sensor.
    Pipe {
        asset: String,
        fields: Vec<Quantity>,
        adc: Option<(Transducers<SimAdc>, Inputs)>,
        watches: Vec<(Watch, WatchState)>,
    },
}

/// One virtual node.
#[derive(Debug)]
pub struct VirtualNode {
    /// Device id.
    pub id: String,
    /// The `up` topic.
    pub topic: String,
    node: Node<QUEUE>,
    sensing: Sensing,
    report_every_ms: i64,
    next_report_ms: i64,
    next_status_ms: i64,
    /// Frames published lately (for the replay fault).
    recent: VecDeque<Vec<u8>>,
}

/// Where frames go: `publish` returns `false` while the node's link is down.
pub trait Out {
    /// Publishes one frame.
    fn publish(&mut self, topic: &str, frame: Vec<u8>) -> bool;
}

struct Uplinked<'a, O: Out> {
    out: &'a mut O,
    down: bool,
    recent: &'a mut VecDeque<Vec<u8>>,
}

impl<O: Out> node::Uplink for Uplinked<'_, O> {
    type Error = ();
    async fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), ()> {
        if self.down || !self.out.publish(topic, payload.to_vec()) {
            return Err(());
        }
        if self.recent.len() == 16 {
            self.recent.pop_front();
        }
        self.recent.push_back(payload.to_vec());
        Ok(())
    }
}

use node::lifecycle::poll_once as ready;

#[derive(Debug)]
struct Area {
    peak_per_min: f64,
    factor: f64,
    dwell_ms: f64,
    /// When each visitor inside leaves.
    leaving: VecDeque<i64>,
}

/// Counts of what the fleet did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FleetCounts {
    /// Frames sealed by the nodes.
    pub sealed: u64,
    /// Frames handed to the broker.
    pub published: u64,
    /// Old frames sent again (replay fault).
    pub replayed: u64,
    /// Frames signed with a wrong key (forged fault).
    pub forged: u64,
}

/// The virtual city.
#[derive(Debug)]
pub struct Fleet {
    /// Every node.
    pub nodes: Vec<VirtualNode>,
    scenario: Scenario,
    areas: HashMap<String, Area>,
    segments: HashMap<String, (f64, f64, f64)>,
    /// Unix ms of the window's start.
    pub start_ms: i64,
    utc_offset_ms: i64,
    rng: StdRng,
    /// Counters.
    pub counts: FleetCounts,
    faults_done: Vec<bool>,
}

fn poisson(rng: &mut StdRng, lambda: f64) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 30.0 {
        let n = lambda + lambda.sqrt() * rng.random_range(-1.0..1.0) * 1.7;
        return n.max(0.0).round() as u32;
    }
    let (l, mut k, mut p) = ((-lambda).exp(), 0u32, 1.0f64);
    loop {
        p *= rng.random::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

/// Daytime arrivals: peaks at 10–11 h and 14:30–16 h (DOMAIN.md §7), quiet at night.
fn arrival_curve(minute_of_day: f64) -> f64 {
    let bump = |centre: f64, width: f64| (-((minute_of_day - centre) / width).powi(2)).exp();
    (0.15 + bump(630.0, 75.0) + 0.9 * bump(915.0, 70.0)).min(1.0) * day_light(minute_of_day)
}

/// Traffic: morning and evening rush.
fn traffic_curve(minute_of_day: f64) -> f64 {
    let bump = |centre: f64, width: f64| (-((minute_of_day - centre) / width).powi(2)).exp();
    (0.25 + bump(480.0, 60.0) + bump(1080.0, 70.0)).min(1.0)
}

fn day_light(minute_of_day: f64) -> f64 {
    if (360.0..1380.0).contains(&minute_of_day) {
        1.0
    } else {
        0.1
    }
}

impl Fleet {
    /// Builds the fleet of `catalog` for `scenario`, its window starting at `start_ms`.
    pub fn new(
        catalog: &Catalog,
        scenario: &Scenario,
        start_ms: i64,
        seed: u64,
    ) -> anyhow::Result<Fleet> {
        let site = &catalog.site;
        let utc_offset_ms = site.site.utc_offset.ms();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut salt = [0u8; 16];
        rng.fill(&mut salt);
        let mut nodes = Vec::new();
        for d in &site.devices {
            if !scenario.simulates(&d.id) {
                continue;
            }
            let Some(profile) = catalog.profiles.get(&d.profile) else {
                continue;
            };
            if profile.encoding != Encoding::Wire {
                continue; // third-party JSON and Modbus devices run no CitySense firmware
            }
            let key = device_profiles::demo::key(&d.id);
            let p = nodectl::provision(
                catalog,
                &nodectl::Request {
                    device: d.id.clone(),
                    key: Some(hex::encode(key.as_bytes())),
                    broker_host: "127.0.0.1".into(),
                    broker_port: 1883,
                    password: Some("simulated".into()),
                    report_interval_s: None,
                    tag_salt: salt,
                },
            )?;
            // A boot epoch from the wall clock, as if the node had booted many times: a second run
            // against the same gateway is a new boot, not a replay.
            let mut ram = RamStorage(Some(Persisted {
                boot_epoch: (std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()) as u32)
                    .wrapping_add(seed as u32),
                key: p.config.key,
                key_id: 0,
                report_interval_s: p.config.report_interval_s,
            }));
            let mut n = Node::<QUEUE>::boot(p.config.clone(), &mut ram);
            n.set_clock(start_ms as u64, 0);
            let gate = site.gates.iter().find(|g| g.device == d.id);
            let sensing = match (&p.config.role, profile.category) {
                (Role::Gate { direction }, _) => {
                    let g = gate.map(|g| (g.area.clone(), g.direction));
                    let (area, dir) = g.unwrap_or((String::new(), GateDirection::Both));
                    if profile.kind == "people-counter" {
                        Sensing::Counter {
                            area,
                            direction: dir,
                            entries: 0,
                            exits: 0,
                        }
                    } else {
                        let role = *direction;
                        Sensing::Gate {
                            area,
                            direction: dir,
                            gate: Box::new(Gate::new(salt, role, 3_000)),
                        }
                    }
                }
                (Role::Traffic { lanes, spacing_mm }, _) => {
                    let segment = site
                        .road_segments
                        .iter()
                        .find(|r| r.detectors.iter().any(|x| x.device == d.id))
                        .map(|r| r.id.clone())
                        .unwrap_or_default();
                    let lanes = lanes
                        .iter()
                        .map(|&number| {
                            let sensor = || {
                                let field = Field::default();
                                field.set(EARTH);
                                let chip = SimMagnetometer::new(field.clone());
                                let driver = Qmc5883l::new(chip, Rate::Hz200, Range::Gauss2)
                                    .map_err(|_| anyhow::anyhow!("simulated magnetometer"))?;
                                Ok::<_, anyhow::Error>((
                                    driver,
                                    Detector::new(Tuning::default()),
                                    field,
                                ))
                            };
                            Ok(Lane {
                                number,
                                sensors: [sensor()?, sensor()?],
                                counter: LaneCounter::default(),
                                cars: VecDeque::new(),
                            })
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    Sensing::Traffic {
                        segment,
                        lanes,
                        spacing_m: f64::from(*spacing_mm) / 1000.0,
                    }
                }
                (Role::Pipe, Category::Pipe) => {
                    let asset = site
                        .pipe_assets
                        .iter()
                        .find(|a| a.devices.contains(&d.id))
                        .map(|a| a.id.clone())
                        .unwrap_or_else(|| d.id.clone());
                    let fields: Vec<Quantity> = profile
                        .fields
                        .iter()
                        .filter_map(|f| Quantity::from_name(&f.name))
                        .collect();
                    let adc = if fields.contains(&Quantity::Pressure) {
                        let inputs = Inputs::default();
                        Transducers::new(SimAdc::new(inputs.clone()))
                            .ok()
                            .map(|t| (t, inputs))
                    } else {
                        None
                    };
                    let watch = |quantity, high: Option<f32>, low: Option<f32>, margin, hold_ms| {
                        (
                            Watch {
                                quantity,
                                high,
                                low,
                                margin,
                                hold_ms,
                            },
                            WatchState::default(),
                        )
                    };
                    let watches = fields
                        .iter()
                        .filter_map(|q| match q {
                            Quantity::Pressure => Some(watch(*q, None, Some(0.14), 0.02, 0)),
                            Quantity::Gas => Some(watch(*q, Some(20.0), None, 2.0, 0)),
                            Quantity::Tilt => Some(watch(*q, Some(10.0), None, 1.0, 2_000)),
                            Quantity::RoadWater => Some(watch(*q, Some(10.0), None, 2.0, 0)),
                            _ => None,
                        })
                        .collect();
                    Sensing::Pipe {
                        asset,
                        fields,
                        adc,
                        watches,
                    }
                }
                _ => continue,
            };
            let every_s = match &sensing {
                Sensing::Pipe { .. } => scenario.pipes.report_interval_s,
                _ => profile.report_interval_s,
            };
            nodes.push(VirtualNode {
                id: d.id.clone(),
                topic: format!("cs/v1/{}/{}/{}/up", d.zone, profile.kind, d.id),
                node: n,
                sensing,
                report_every_ms: i64::from(every_s.max(1)) * 1000,
                next_report_ms: i64::from(rng.random_range(0..every_s.max(1))) * 1000,
                next_status_ms: 0,
                recent: VecDeque::new(),
            });
        }
        let mut areas = HashMap::new();
        for c in &scenario.crowd {
            let a = site
                .scenic_areas
                .iter()
                .find(|a| a.id == c.area)
                .ok_or_else(|| {
                    anyhow::anyhow!("scenario area \"{}\" is not in the site", c.area)
                })?;
            let dwell = c.dwell_min.unwrap_or(f64::from(a.median_dwell_min)) * 60_000.0;
            let mut leaving = VecDeque::new();
            for _ in 0..c.initial {
                leaving.push_back(start_ms + (rng.random::<f64>() * dwell) as i64);
            }
            leaving.make_contiguous().sort_unstable();
            areas.insert(
                c.area.clone(),
                Area {
                    peak_per_min: c.peak_per_min,
                    factor: c.factor,
                    dwell_ms: dwell,
                    leaving,
                },
            );
        }
        let mut segments = HashMap::new();
        for r in &site.road_segments {
            let t = scenario.traffic.iter().find(|t| t.segment == r.id);
            let demand = t.map_or(
                f64::from(r.lane_capacity_vph) * f64::from(r.lanes) * 0.3,
                |t| t.peak_vph * t.factor,
            );
            let capacity = f64::from(r.lane_capacity_vph) * f64::from(r.lanes);
            segments.insert(
                r.id.clone(),
                (demand, capacity, f64::from(r.free_flow_kmh) / 3.6),
            );
        }
        for t in &scenario.traffic {
            anyhow::ensure!(
                segments.contains_key(&t.segment),
                "scenario segment \"{}\" is not in the site",
                t.segment
            );
        }
        for f in scenario
            .faults
            .iter()
            .filter(|f| f.kind != FaultKind::BrokerOutage)
        {
            anyhow::ensure!(
                nodes.iter().any(|n| n.id == f.device),
                "fault on \"{}\": not a simulated CitySense node",
                f.device
            );
        }
        Ok(Fleet {
            nodes,
            faults_done: vec![false; scenario.faults.len()],
            scenario: scenario.clone(),
            areas,
            segments,
            start_ms,
            utc_offset_ms,
            rng,
            counts: FleetCounts::default(),
        })
    }

    /// Local minute of day at `t`.
    fn minute_of_day(&self, t: i64) -> f64 {
        ((t + self.utc_offset_ms).rem_euclid(86_400_000)) as f64 / 60_000.0
    }

    /// Whether an event of `kind` on `subject` is on at `t`; its value.
    fn event(&self, kind: EventKind, subject: &str, t: i64) -> Option<(f64, f64)> {
        let m = self.minute_of_day(t);
        self.scenario.events.iter().find_map(|e| {
            if e.kind != kind || e.subject != subject {
                return None;
            }
            let from = f64::from(minutes(&e.at).ok()?);
            let until = e
                .until
                .as_deref()
                .and_then(|u| minutes(u).ok())
                .map_or(f64::MAX, f64::from);
            (m >= from && m < until).then(|| (e.value.unwrap_or(1.0), m - from))
        })
    }

    fn fault(&self, kind: FaultKind, device: &str, t: i64) -> Option<(usize, f64)> {
        let m = self.minute_of_day(t);
        self.scenario.faults.iter().enumerate().find_map(|(i, f)| {
            let everyone = kind == FaultKind::BrokerOutage;
            if f.kind != kind || (!everyone && f.device != device) {
                return None;
            }
            let from = f64::from(minutes(&f.at).ok()?);
            let until = f
                .until
                .as_deref()
                .and_then(|u| minutes(u).ok())
                .map_or(from + 1.0, f64::from);
            (m >= from && m < until).then_some((i, f.value.unwrap_or(0.0)))
        })
    }

    /// Advances one simulated second ending at `t` (Unix ms) and publishes what the nodes send.
    pub fn step(&mut self, t: i64, out: &mut impl Out) {
        let uptime = (t - self.start_ms).max(0) as u64;
        let m = self.minute_of_day(t);
        // Visitors: who arrives at and leaves each area this second.
        let mut passages: HashMap<String, (u32, u32)> = HashMap::new();
        let area_ids: Vec<String> = self.areas.keys().cloned().collect();
        for id in area_ids {
            let closed = self.event(EventKind::Closure, &id, t).is_some();
            let surge = self.event(EventKind::Surge, &id, t).map_or(1.0, |(v, _)| v);
            let Some(a) = self.areas.get(&id) else {
                continue;
            };
            let lambda = a.peak_per_min / 60.0 * a.factor * surge * arrival_curve(m);
            let (dwell, n) = (
                a.dwell_ms,
                if closed {
                    0
                } else {
                    poisson(&mut self.rng, lambda)
                },
            );
            let mut leave = Vec::new();
            for _ in 0..n {
                // Stays are exponential with the given median.
                let u: f64 = self.rng.random_range(1e-6..1.0);
                leave.push(t + (-u.ln() * dwell / std::f64::consts::LN_2) as i64);
            }
            let Some(a) = self.areas.get_mut(&id) else {
                continue;
            };
            let mut exits = 0;
            while !closed && a.leaving.front().is_some_and(|&l| l <= t) {
                a.leaving.pop_front();
                exits += 1;
            }
            for l in leave {
                let pos = a.leaving.partition_point(|&x| x <= l);
                a.leaving.insert(pos, l);
            }
            passages.insert(id, (n, exits));
        }
        let segments = self.segments.clone();
        let mut sealed = 0;
        for i in 0..self.nodes.len() {
            // Share the area's passages among its gates.
            let gates_of = |area: &str, dir_in: bool| {
                self.nodes
                    .iter()
                    .filter(|n| match &n.sensing {
                        Sensing::Gate {
                            area: a, direction, ..
                        }
                        | Sensing::Counter {
                            area: a, direction, ..
                        } => {
                            a == area
                                && (*direction == GateDirection::Both
                                    || (*direction == GateDirection::Entry) == dir_in)
                        }
                        _ => false,
                    })
                    .count()
                    .max(1)
            };
            let share = match &self.nodes[i].sensing {
                Sensing::Gate {
                    area, direction, ..
                }
                | Sensing::Counter {
                    area, direction, ..
                } => {
                    let (n_in, n_out) = passages.get(area).copied().unwrap_or_default();
                    let split = |n: u32, gates: usize, rng: &mut StdRng| {
                        let base = n / gates as u32;
                        base + u32::from(rng.random_range(0..gates as u32) < n % gates as u32)
                    };
                    let ins = if *direction != GateDirection::Exit {
                        split(n_in, gates_of(area, true), &mut self.rng)
                    } else {
                        0
                    };
                    let outs = if *direction != GateDirection::Entry {
                        split(n_out, gates_of(area, false), &mut self.rng)
                    } else {
                        0
                    };
                    (ins, outs)
                }
                _ => (0, 0),
            };
            let miss = self
                .fault(FaultKind::RfidMiss, &self.nodes[i].id, t)
                .map_or(0.0, |(_, v)| v);
            let pipe_values = self.pipe_values(i, t);
            let traffic = match &self.nodes[i].sensing {
                Sensing::Traffic { segment, .. } => {
                    let (demand, capacity, vf) =
                        segments.get(segment).copied().unwrap_or((0.0, 1.0, 14.0));
                    let congestion = self
                        .event(EventKind::Congestion, segment, t)
                        .map_or(1.0, |(v, _)| v);
                    // An incident: speed falls to a quarter and the queue behind it makes the
                    // lanes `value` times denser.
                    let incident = self.event(EventKind::Incident, segment, t);
                    let q = demand * traffic_curve(m) * congestion;
                    let x = q / capacity;
                    let mut v = vf / (1.0 + 0.15 * x.powi(4));
                    let mut q = q;
                    if let Some((density, _)) = incident {
                        v *= 0.25;
                        q *= density;
                    }
                    Some((q, v))
                }
                _ => None,
            };
            let rng = &mut self.rng;
            let vn = &mut self.nodes[i];
            match &mut vn.sensing {
                Sensing::Gate {
                    gate, direction, ..
                } => {
                    for (k, entering) in (0..share.0)
                        .map(|k| (k, true))
                        .chain((0..share.1).map(|k| (k, false)))
                    {
                        if rng.random::<f64>() < miss {
                            continue;
                        }
                        let mut id = heapless::Vec::new();
                        for _ in 0..12 {
                            let _ = id.push(rng.random::<u8>());
                        }
                        let at = uptime.saturating_sub(1000) + (k as u64 * 37) % 1000;
                        // Two-antenna gates: outer then inner for an entry.
                        let antennas: &[u8] = match (*direction, entering) {
                            (GateDirection::Both, true) => &[0, 1],
                            (GateDirection::Both, false) => &[1, 0],
                            _ => &[0, 0, 0],
                        };
                        for (j, &antenna) in antennas.iter().enumerate() {
                            let read = TagRead {
                                id: id.clone(),
                                antenna,
                            };
                            if let Some((start, body)) = gate.read(&read, at + j as u64 * 40) {
                                sealed += u64::from(vn.node.report(&body, start, false).is_ok());
                            }
                        }
                    }
                    if let Some((start, body)) = gate.due(uptime, 10_000) {
                        sealed += u64::from(vn.node.report(&body, start, false).is_ok());
                    }
                }
                Sensing::Counter { entries, exits, .. } => {
                    *entries += share.0;
                    *exits += share.1;
                    if t >= vn.next_report_ms + self.start_ms {
                        let body = Body::GateCounts(GateCounts {
                            interval_s: (vn.report_every_ms / 1000) as u16,
                            entries: std::mem::take(entries),
                            exits: std::mem::take(exits),
                        });
                        sealed += u64::from(vn.node.report(&body, uptime, false).is_ok());
                    }
                }
                Sensing::Traffic {
                    lanes, spacing_m, ..
                } => {
                    let (q, v) = traffic.unwrap_or((0.0, 14.0));
                    let per_lane = q / lanes.len().max(1) as f64 / 3600.0;
                    for lane in lanes.iter_mut() {
                        for _ in 0..poisson(rng, per_lane) {
                            let at = t - 1000 + rng.random_range(0..1000);
                            let speed = (v * rng.random_range(0.9..1.1)).max(0.5);
                            lane.cars.push_back((at, speed));
                        }
                        sense_lane(lane, t, *spacing_m, uptime);
                    }
                    if t >= vn.next_report_ms + self.start_ms {
                        let interval = vn.report_every_ms as u64;
                        let l: Vec<wire::LaneInterval> = lanes
                            .iter_mut()
                            .map(|lane| lane.counter.close(lane.number, interval, uptime))
                            .collect();
                        let body = Body::TrafficInterval(node::traffic::interval_report(
                            (interval / 1000) as u16,
                            &l,
                        ));
                        sealed += u64::from(vn.node.report(&body, uptime, false).is_ok());
                    }
                }
                Sensing::Pipe {
                    fields,
                    adc,
                    watches,
                    ..
                } => {
                    let values: Vec<(Quantity, f32)> = fields
                        .iter()
                        .map(|q| {
                            let v = pipe_values
                                .iter()
                                .find(|(x, _)| x == q)
                                .map_or(0.0, |(_, v)| *v);
                            match (q, adc.as_mut()) {
                                // Pressure goes through the real ADS1115 driver: 4–20 mA, 150 Ω.
                                (Quantity::Pressure, Some((adc, inputs))) => {
                                    adc_read(adc, inputs, v).map_or((*q, v), |p| (*q, p))
                                }
                                _ => (*q, v),
                            }
                        })
                        .collect();
                    let mut alarm = None;
                    for (w, state) in watches.iter_mut() {
                        if let Some((_, v)) = values.iter().find(|(q, _)| *q == w.quantity)
                            && let Some(on) = w.check(state, *v, uptime)
                        {
                            alarm = Some(alarm.unwrap_or(false) || on);
                        }
                    }
                    let periodic = t >= vn.next_report_ms + self.start_ms;
                    if alarm.is_some() || periodic {
                        let trigger = if alarm.is_some() {
                            Trigger::Threshold
                        } else {
                            Trigger::Periodic
                        };
                        let body = node::pipe::report(trigger, &values);
                        sealed += u64::from(
                            vn.node
                                .report(&body, uptime, alarm.unwrap_or(false))
                                .is_ok(),
                        );
                    }
                }
            }
            if t >= vn.next_report_ms + self.start_ms {
                vn.next_report_ms += vn.report_every_ms;
            }
            if t >= vn.next_status_ms + self.start_ms {
                vn.next_status_ms += 3_600_000;
                sealed += u64::from(
                    vn.node
                        .report_status(uptime, Some(rng.random_range(60..=100)), -70)
                        .is_ok(),
                );
            }
        }
        self.counts.sealed += sealed;
        self.apply_faults(t, out);
        // Hand queued frames to the broker, unless the node's link is down.
        for i in 0..self.nodes.len() {
            let down = self
                .fault(FaultKind::LinkDown, &self.nodes[i].id, t)
                .is_some()
                || self.fault(FaultKind::BrokerOutage, "", t).is_some();
            let vn = &mut self.nodes[i];
            let before = vn.node.counters.published;
            let mut up = Uplinked {
                out,
                down,
                recent: &mut vn.recent,
            };
            let _ = ready(vn.node.flush(&mut up));
            self.counts.published += u64::from(vn.node.counters.published - before);
        }
    }

    fn apply_faults(&mut self, t: i64, out: &mut impl Out) {
        for i in 0..self.nodes.len() {
            let id = self.nodes[i].id.clone();
            for kind in [FaultKind::Replay, FaultKind::Forged] {
                let Some((f, value)) = self.fault(kind, &id, t) else {
                    continue;
                };
                if self.faults_done[f] {
                    continue;
                }
                self.faults_done[f] = true;
                let vn = &self.nodes[i];
                let n = value.max(1.0) as usize;
                match kind {
                    FaultKind::Replay => {
                        let old: Vec<Vec<u8>> = vn.recent.iter().take(n).cloned().collect();
                        for frame in old {
                            if out.publish(&vn.topic, frame) {
                                self.counts.replayed += 1;
                            }
                        }
                    }
                    _ => {
                        let wrong = DeviceKey::from_bytes([0xEE; 32]);
                        for k in 0..n {
                            let header = Header {
                                device_id: &vn.id,
                                boot_epoch: vn.node.boot_epoch(),
                                sequence: vn.node.sequence() + 10_000 + k as u32,
                                timestamp: Timestamp::Synced { unix_ms: t as u64 },
                            };
                            let body =
                                node::pipe::report(Trigger::Periodic, &[(Quantity::Gas, 0.0)]);
                            if let Ok(frame) = wire::frame::seal_to_vec(&header, &body, &wrong)
                                && out.publish(&vn.topic, frame)
                            {
                                self.counts.forged += 1;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The physical values at node `i`'s asset at `t` (DOMAIN.md §7.3 plus events).
    fn pipe_values(&mut self, i: usize, t: i64) -> Vec<(Quantity, f32)> {
        let Sensing::Pipe { asset, fields, .. } = &self.nodes[i].sensing else {
            return Vec::new();
        };
        let (asset, fields) = (asset.clone(), fields.clone());
        let m = self.minute_of_day(t);
        let night = !(360.0..1380.0).contains(&m);
        let burst = self.event(EventKind::Burst, &asset, t);
        let leak = self.event(EventKind::GasLeak, &asset, t);
        let cover = self.event(EventKind::Cover, &asset, t);
        let storm = self.event(EventKind::Storm, &asset, t);
        let rng = &mut self.rng;
        fields
            .iter()
            .map(|q| {
                let v = match q {
                    Quantity::Pressure => {
                        let base = if night { 0.34 } else { 0.30 } + rng.random_range(-0.01..0.01);
                        // A burst takes 0.12 MPa within 90 s.
                        base - burst.map_or(0.0, |(_, mins)| 0.12 * (mins / 1.5).min(1.0))
                    }
                    Quantity::Flow => {
                        rng.random_range(180.0..220.0)
                            * burst.map_or(1.0, |(_, mins)| 1.0 + 0.8 * (mins / 1.5).min(1.0))
                    }
                    Quantity::Gas => {
                        rng.random_range(0.0..2.0) + leak.map_or(0.0, |(_, mins)| 3.0 * mins)
                    }
                    Quantity::Oxygen => rng.random_range(20.7..20.95),
                    Quantity::HydrogenSulfide => rng.random_range(0.0..1.0),
                    Quantity::Tilt => cover.map_or(rng.random_range(0.0..1.0), |(deg, _)| deg),
                    Quantity::WellLevel => {
                        rng.random_range(1.8..2.0) - storm.map_or(0.0, |(_, mins)| 0.035 * mins)
                    }
                    Quantity::RoadWater => storm.map_or(0.0, |(_, mins)| 0.4 * mins),
                };
                (*q, v.clamp(0.0, 1000.0) as f32)
            })
            .collect()
    }
}

/// Reads a pressure through the ADS1115 and the node's calibration (0–1 MPa over 4–20 mA).
fn adc_read(adc: &mut Transducers<SimAdc>, inputs: &Inputs, mpa: f32) -> Option<f32> {
    // The transducer drives 4–20 mA into 150 Ω.
    inputs.set(0, (4.0 + 16.0 * mpa.clamp(0.0, 1.0)) * 0.150);
    let cal = Calibration::four_to_twenty_ma(0.0, 1.0);
    for _ in 0..3 {
        match adc.read(Input::A0) {
            Ok(raw) => return Some(cal.apply(raw)),
            Err(nb::Error::WouldBlock) => {}
            Err(nb::Error::Other(_)) => return None,
        }
    }
    None
}

/// Senses one second of a lane at `MAG_HZ` through the real driver and detector.
fn sense_lane(lane: &mut Lane, t: i64, spacing_m: f64, uptime_end: u64) {
    let step = 1000 / MAG_HZ as i64;
    let mut ts = t - 1000 + step;
    while ts <= t {
        let uptime = uptime_end.saturating_sub((t - ts) as u64);
        for (s, offset_m) in [(0usize, 0.0), (1, spacing_m)] {
            let over = lane.cars.iter().any(|&(at, v)| {
                let pos = (ts - at) as f64 / 1000.0 * v - offset_m;
                (0.0..CAR_M).contains(&pos)
            });
            let (driver, detector, field) = &mut lane.sensors[s];
            field.set(if over {
                [EARTH[0] + 250, EARTH[1] + 90, EARTH[2] - 400]
            } else {
                EARTH
            });
            if let Ok(Some(sample)) = driver.read()
                && let Some(change) = detector.sample(sample, uptime)
            {
                if s == 0 {
                    lane.counter.first_sensor(change, uptime);
                } else if spacing_m > 0.0 && change == Change::Arrived {
                    lane.counter
                        .second_sensor(change, uptime, (spacing_m * 1000.0) as u32);
                }
            }
        }
        ts += step;
    }
    // Cars past both sensors are gone.
    while lane
        .cars
        .front()
        .is_some_and(|&(at, v)| (t - at) as f64 / 1000.0 * v > CAR_M + spacing_m + 1.0)
    {
        lane.cars.pop_front();
    }
}
