//! Built-in traffic for `gateway demo`: every device of the site reporting real, signed wire
//! frames (and the third-party cover its JSON) over MQTT, at a demo cadence, with values around
//! the nominal figures of DOMAIN.md §7. The simulator replaces this for scenarios and load.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use device_profiles::site::GateDirection;
use device_profiles::{Catalog, Category, Encoding};
use rand::{Rng, SeedableRng};
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::watch;
use wire::body::{MAX_GATE_EVENTS, MAX_LANES};
use wire::{
    Body, DeviceKey, DeviceStatus, Direction, FirmwareVersion, GateCounts, GateEvent, GateEvents,
    Header, LaneInterval, PipeReading, PipeReadings, Quantity, TagHash, Timestamp, TrafficInterval,
    Trigger,
};

use crate::clock::now_ms;

#[derive(Debug)]
struct Node {
    id: String,
    topic: String,
    kind: String,
    category: Category,
    encoding: Encoding,
    fields: Vec<Quantity>,
    lanes: Vec<u8>,
    free_flow_kmh: f64,
    gate: Option<GateDirection>,
    /// The area and the choke points its gate bounds: what its passages count for.
    subjects: Vec<String>,
    key: DeviceKey,
    boot_epoch: u32,
    sequence: u32,
    every: Duration,
    next_due_ms: i64,
    started_ms: i64,
}

/// Runs the built-in traffic until `shutdown`.
pub async fn run(client: AsyncClient, catalog: Arc<Catalog>, mut shutdown: watch::Receiver<bool>) {
    let site = &catalog.site;
    let start = now_ms();
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut nodes: Vec<Node> = Vec::new();
    for d in &site.devices {
        let Some(p) = catalog.profiles.get(&d.profile) else {
            continue;
        };
        if p.encoding == Encoding::Modbus {
            continue; // polled, not publishing
        }
        let detector = site.road_segments.iter().find_map(|r| {
            r.detectors
                .iter()
                .find(|x| x.device == d.id)
                .map(|x| (r, x))
        });
        // Demo cadence: fast enough to see every device within half a minute.
        let every = Duration::from_secs(u64::from(p.report_interval_s).clamp(3, 15));
        nodes.push(Node {
            id: d.id.clone(),
            topic: format!("cs/v1/{}/{}/{}/up", d.zone, p.kind, d.id),
            kind: p.kind.clone(),
            category: p.category,
            encoding: p.encoding,
            fields: p
                .fields
                .iter()
                .filter_map(|f| Quantity::from_name(&f.name))
                .collect(),
            lanes: detector.map(|(_, x)| x.lanes.clone()).unwrap_or_default(),
            free_flow_kmh: detector.map_or(50.0, |(r, _)| f64::from(r.free_flow_kmh)),
            gate: site
                .gates
                .iter()
                .find(|g| g.device == d.id)
                .map(|g| g.direction),
            subjects: site
                .gates
                .iter()
                .filter(|g| g.device == d.id)
                .flat_map(|g| {
                    std::iter::once(g.area.clone()).chain(
                        site.scenic_areas
                            .iter()
                            .flat_map(|a| &a.choke_points)
                            .filter(|c| c.gates.contains(&g.id))
                            .map(|c| c.id.clone()),
                    )
                })
                .collect(),
            key: device_profiles::demo::key(&d.id),
            // Real nodes persist and increment their boot epoch; a demo run starting now is a
            // new boot, newer than any before it in the demo's store.
            boot_epoch: (start / 1000) as u32,
            sequence: 0,
            every,
            next_due_ms: start + rng.random_range(0..every.as_millis() as i64),
            started_ms: start,
        });
        let status = format!("cs/v1/{}/{}/{}/status", d.zone, p.kind, d.id);
        let _ = client
            .publish(status, QoS::AtLeastOnce, true, "online")
            .await;
    }
    tracing::info!(devices = nodes.len(), "built-in traffic started");
    // Visitors the feed has let into each area and choke point: no more leave than entered, so
    // its own traffic never drifts.
    let mut inside: HashMap<String, u32> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        for node in nodes.iter_mut().filter(|n| n.next_due_ms <= now) {
            node.next_due_ms = now + node.every.as_millis() as i64;
            let payload = match node.encoding {
                Encoding::Json => cover_json(node, now, &mut rng),
                _ => frame(node, now, &mut rng, &mut inside),
            };
            if client
                .try_publish(node.topic.clone(), QoS::AtLeastOnce, false, payload)
                .is_err()
            {
                tracing::debug!(device = %node.id, "demo traffic: client queue full, report skipped");
            }
        }
    }
}

fn frame(
    node: &mut Node,
    now: i64,
    rng: &mut impl Rng,
    inside: &mut HashMap<String, u32>,
) -> Vec<u8> {
    let body = if node.sequence.is_multiple_of(10) {
        Body::Status(DeviceStatus {
            battery_pct: Some(rng.random_range(60..=100)),
            signal_dbm: rng.random_range(-95..=-60),
            uptime_s: node.sequence * node.every.as_secs() as u32,
            firmware: FirmwareVersion {
                major: 0,
                minor: 1,
                patch: 0,
            },
            key_fingerprint: node.key.fingerprint(),
        })
    } else {
        measurement(node, (now - node.started_ms) / 1000, rng, inside)
    };
    let header = Header {
        device_id: &node.id,
        boot_epoch: node.boot_epoch,
        sequence: node.sequence,
        timestamp: Timestamp::Synced {
            unix_ms: now as u64,
        },
    };
    node.sequence += 1;
    wire::frame::seal_to_vec(&header, &body, &node.key).unwrap_or_default()
}

/// The demo's rehearsed incidents, repeating every [`INCIDENT_CYCLE_S`] seconds so that alerts
/// fire and resolve within minutes of start: gas in the 章贡 utility tunnel (T1) at 22% LEL
/// from second 20 to 100 (alarm at once), and the manhole cover on M1 lifted to 12° from second
/// 40 to 130 (alarm once held for 30 s).
fn incident(device: &str, q: Quantity, elapsed_s: i64) -> Option<f32> {
    let t = elapsed_s.rem_euclid(INCIDENT_CYCLE_S);
    match (device, q) {
        ("gz-t1-gas", Quantity::Gas) if (20..100).contains(&t) => Some(22.0),
        ("gz-m1-cover", Quantity::Tilt) if (40..130).contains(&t) => Some(12.0),
        _ => None,
    }
}

/// The incidents repeat this often.
const INCIDENT_CYCLE_S: i64 = 240;

/// Lets up to `wanted` visitors out of the subjects of `node` (no more than are inside any of
/// them) and `entries` in; returns how many left.
fn pass(node: &Node, inside: &mut HashMap<String, u32>, entries: u32, wanted: u32) -> u32 {
    let room = node
        .subjects
        .iter()
        .map(|s| inside.get(s).copied().unwrap_or(0))
        .min()
        .unwrap_or(0);
    let exits = wanted.min(room);
    for s in &node.subjects {
        let n = inside.entry(s.clone()).or_default();
        *n = *n - exits + entries;
    }
    exits
}

fn measurement(
    node: &Node,
    elapsed_s: i64,
    rng: &mut impl Rng,
    inside: &mut HashMap<String, u32>,
) -> Body {
    match node.category {
        Category::Crowd if node.kind == "people-counter" => {
            let entries = rng.random_range(5..60);
            let exits = pass(node, inside, entries, rng.random_range(5..50));
            Body::GateCounts(GateCounts {
                interval_s: node.every.as_secs() as u16,
                entries,
                exits,
            })
        }
        Category::Crowd => {
            let mut events = heapless::Vec::<GateEvent, MAX_GATE_EVENTS>::new();
            for i in 0..rng.random_range(0..8u32) {
                let wants_out = match node.gate {
                    Some(GateDirection::Exit) => true,
                    Some(GateDirection::Both) => rng.random_bool(0.4),
                    _ => false,
                };
                let direction = if wants_out && pass(node, inside, 0, 1) == 1 {
                    Direction::Exit
                } else if wants_out {
                    continue; // nobody inside to leave
                } else {
                    pass(node, inside, 1, 0);
                    Direction::Entry
                };
                let _ = events.push(GateEvent {
                    tag: TagHash(rng.random()),
                    direction,
                    offset_ms: i * 300,
                });
            }
            Body::GateEvents(GateEvents { events })
        }
        Category::Traffic => {
            let mut lanes = heapless::Vec::<LaneInterval, MAX_LANES>::new();
            for &lane in &node.lanes {
                let vehicles = rng.random_range(2..12u16);
                let speed = node.free_flow_kmh * rng.random_range(0.6..1.05);
                let _ = lanes.push(LaneInterval {
                    lane,
                    vehicles,
                    occupancy_permille: vehicles * rng.random_range(8..20),
                    mean_speed_dkmh: Some((speed * 10.0) as u16),
                });
            }
            Body::TrafficInterval(TrafficInterval {
                interval_s: 30,
                lanes,
            })
        }
        Category::Pipe => {
            let mut readings = heapless::Vec::new();
            let mut trigger = Trigger::Periodic;
            for &q in &node.fields {
                if let Some(value) = incident(&node.id, q, elapsed_s) {
                    trigger = Trigger::Threshold;
                    let _ = readings.push(PipeReading { quantity: q, value });
                    continue;
                }
                let value = match q {
                    Quantity::Pressure => rng.random_range(0.27..0.33),
                    Quantity::Flow => rng.random_range(150.0..260.0),
                    Quantity::WellLevel => rng.random_range(1.5..2.5),
                    Quantity::RoadWater => 0.0,
                    Quantity::Gas => rng.random_range(0.0..2.0),
                    Quantity::Oxygen => rng.random_range(20.6..21.0),
                    Quantity::HydrogenSulfide => rng.random_range(0.0..1.0),
                    Quantity::Tilt => rng.random_range(0.0..1.0),
                };
                let _ = readings.push(PipeReading { quantity: q, value });
            }
            Body::PipeReadings(PipeReadings { trigger, readings })
        }
    }
}

fn cover_json(node: &Node, now: i64, rng: &mut impl Rng) -> Vec<u8> {
    serde_json::json!({
        "device_id": node.id,
        "tilt": (rng.random_range(0.0..1.5f64) * 10.0).round() / 10.0,
        "battery": rng.random_range(70..=90),
        "status": "normal",
        "ts": now / 1000,
    })
    .to_string()
    .into_bytes()
}
