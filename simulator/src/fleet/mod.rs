//! The virtual city: visitors, vehicles and pipes, and one virtual node per site device running
//! the real node logic (`node::Node`, the gate, the vehicle detector over the real QMC5883L
//! driver, the ADS1115 transducers, the threshold watches).
//!
//! Time is simulated: [`Fleet::step`] advances one simulated second; what the nodes report is
//! stamped with simulated time, and queued frames are handed to an [`Out`] for publishing.
//!
//! # Layout
//! - [`world`]: the city's demand and physics: arrivals by time of day, traffic, pipe values
//!   under the scenario's events.
//! - [`nodes`]: the virtual nodes and their simulated sensors behind the real drivers.
//! - [`faults`]: the scenario's faults (link down, replayed and forged frames, ...).

use std::collections::{HashMap, VecDeque};

use device_profiles::site::GateDirection;
use device_profiles::{Catalog, Category, Encoding};
use node::config::Role;
use node::drivers::TagRead;
use node::drivers::ads1115::Transducers;
use node::lifecycle::{Node, Persisted, RamStorage};
use node::pipe::{Watch, WatchState};
use node::rfid::Gate;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wire::{Body, DeviceKey, GateCounts, Quantity, Trigger};

use crate::scenario::{EventKind, FaultKind, Scenario};

mod faults;
mod nodes;
mod world;

use crate::hardware::{Inputs, SimAdc};
pub use nodes::{Out, VirtualNode};
use nodes::{QUEUE, Sensing, Uplinked, adc_read, ready, sense_lane};
use world::{Area, arrival_curve, poisson, traffic_curve};

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

impl Fleet {
    /// Builds the fleet of `catalog` for `scenario`, its window starting at `start_ms`.
    pub fn new(
        catalog: &Catalog,
        scenario: &Scenario,
        start_ms: i64,
        seed: u64,
        keys: Option<&HashMap<String, DeviceKey>>,
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
            let key = match keys {
                None => device_profiles::demo::key(&d.id),
                Some(keys) => keys.get(&d.id).cloned().ok_or_else(|| {
                    anyhow::anyhow!(
                        "device {} is simulated but has no key in the keys file (provision it, or leave out --keys for the demo keys)",
                        d.id
                    )
                })?,
            };
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
                        .map(|&number| nodes::lane(number))
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
        // A holiday of the site's calendar brings its own crowd (DOMAIN.md §7).
        let date = device_profiles::calendar::local_date(start_ms, utc_offset_ms);
        let calendar_factor = site
            .calendar_on(&date)
            .iter()
            .filter_map(|e| e.arrival_factor)
            .fold(None, |most: Option<f64>, f| {
                Some(most.map_or(f, |m| m.max(f)))
            });
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
                    factor: c.factor.or(calendar_factor).unwrap_or(1.0),
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

    /// Local minute of day at `t`.
    fn minute_of_day(&self, t: i64) -> f64 {
        world::minute_of_day(t, self.utc_offset_ms)
    }

    /// Whether an event of `kind` on `subject` is on at `t`: its value and the minutes since it
    /// began.
    fn event(&self, kind: EventKind, subject: &str, t: i64) -> Option<(f64, f64)> {
        world::event_on(&self.scenario, kind, subject, self.minute_of_day(t))
    }

    /// Whether a fault of `kind` on `device` is on at `t`: its index and value.
    fn fault(&self, kind: FaultKind, device: &str, t: i64) -> Option<(usize, f64)> {
        faults::fault_on(&self.scenario, kind, device, self.minute_of_day(t))
    }

    /// The physical values at node `i`'s asset at `t` (DOMAIN.md §7.3 plus events).
    fn pipe_values(&mut self, i: usize, t: i64) -> Vec<(Quantity, f32)> {
        let Sensing::Pipe { asset, fields, .. } = &self.nodes[i].sensing else {
            return Vec::new();
        };
        let (asset, fields) = (asset.clone(), fields.clone());
        let m = self.minute_of_day(t);
        let conditions = world::PipeConditions {
            night: !(360.0..1380.0).contains(&m),
            burst: self.event(EventKind::Burst, &asset, t),
            leak: self.event(EventKind::GasLeak, &asset, t),
            cover: self.event(EventKind::Cover, &asset, t),
            storm: self.event(EventKind::Storm, &asset, t),
        };
        fields
            .iter()
            .map(|q| (*q, conditions.value(*q, &mut self.rng)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scenario of S4 on `date`, with or without its own factor.
    fn scenario(date: &str, factor: Option<f64>) -> Scenario {
        let factor = factor.map_or(String::new(), |f| format!("factor = {f}\n"));
        toml::from_str(&format!(
            "name = \"t\"\n[time]\ndate = \"{date}\"\nstart = \"08:00\"\nend = \"09:00\"\nacceleration = 60\n\
             [[crowd]]\narea = \"S4\"\npeak_per_min = 10\n{factor}"
        ))
        .unwrap()
    }

    #[test]
    fn a_holiday_of_the_site_calendar_brings_its_arrival_factor_unless_the_scenario_sets_one() {
        let catalog = Catalog::ganzhou().unwrap();
        let offset = catalog.site.site.utc_offset.ms();
        let factor = |date: &str, own: Option<f64>| {
            let s = scenario(date, own);
            let start = s.start_ms(i64::MAX / 2, offset).unwrap();
            Fleet::new(&catalog, &s, start, 1, None).unwrap().areas["S4"].factor
        };
        assert_eq!(factor("2026-10-02", None), 5.0, "国庆 (national-day-2026)");
        assert_eq!(factor("2026-05-03", None), 4.0, "五一");
        assert_eq!(factor("2026-11-02", None), 1.0, "an ordinary day");
        assert_eq!(
            factor("2026-10-02", Some(2.0)),
            2.0,
            "the scenario's own factor wins"
        );
    }
}
