#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
use device_profiles::Catalog;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use std::alloc::System;
use std::sync::Arc;
use wire::{Body, Header, PipeReading, PipeReadings, Quantity, Timestamp, Trigger};
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;
fn live() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}
fn main() {
    let devices: usize = std::env::args()
        .nth(1)
        .map_or(10_000, |s| s.parse().unwrap());
    let rounds: usize = std::env::args().nth(2).map_or(8, |s| s.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let site = simulator::load::write_site(dir.path(), devices, "127.0.0.1:1883").unwrap();
    let catalog = Arc::new(
        Catalog::load(std::path::Path::new(device_profiles::PROFILES_DIR), &site).unwrap(),
    );
    let keys = gateway::keys::Keys::load(&dir.path().join("keys.toml")).unwrap();
    let now = gateway::pipeline::now_ms() - rounds as i64 * 60_000;
    let mut frames = Vec::new();
    for r in 0..rounds {
        for d in 0..devices {
            let id = simulator::load::device_id(d);
            let mut readings = heapless::Vec::new();
            let _ = readings.push(PipeReading {
                quantity: Quantity::Pressure,
                value: 0.30 + 0.001 * (d % 7) as f32,
            });
            let header = Header {
                device_id: &id,
                boot_epoch: 1,
                sequence: r as u32,
                timestamp: Timestamp::Synced {
                    unix_ms: (now + r as i64 * 60_000 + d as i64) as u64,
                },
            };
            let body = Body::PipeReadings(PipeReadings {
                trigger: Trigger::Periodic,
                readings,
            });
            frames.push((
                format!("cs/v1/360702/water-pressure/{id}/up"),
                wire::frame::seal_to_vec(&header, &body, &gateway::traffic::demo_key(&id)).unwrap(),
            ));
        }
    }
    let v = gateway::verify::Verifier::new(catalog.clone(), keys.clone(), Default::default());
    let h0 = live();
    let mut registry = gateway::registry::Registry::new(&catalog, &keys, &[]);
    let h1 = live();
    let mut agg = gateway::aggregate::Aggregators::new(&catalog);
    let rules = gateway::load_rules(&catalog, &Default::default()).unwrap();
    let mut engine = gateway::alert::Engine::new(&catalog, rules, 3600);
    let h2 = live();
    let mut points = 0;
    for chunk in frames.chunks(512) {
        let mut readings = Vec::new();
        for (t, p) in chunk {
            readings.extend(
                v.report(&mut registry, t, p, now + rounds as i64 * 60_000)
                    .unwrap(),
            );
        }
        let pts = agg.ingest(&readings);
        points += pts.len();
        engine.on_readings(&readings);
        engine.on_points(&pts);
        let _ = engine.take_changes();
        engine.on_presence(now + rounds as i64 * 60_000, &registry);
        let _ = engine.take_changes();
    }
    println!(
        "size_of SubjectState {}",
        std::mem::size_of::<gateway::alert::SubjectState>()
    );
    let h3 = live();
    let per = |x: i64| x as f64 / devices as f64;
    println!("devices {devices} rounds {rounds} points {points}");
    println!(
        "registry at start {:.0} B/device; aggregators+engine at start {:.0}",
        per(h1 - h0),
        per(h2 - h1)
    );
    println!("growth {:.0} B/device", per(h3 - h2));
    let z = live();
    drop(v);
    let a = live();
    println!("verifier {:.0}", per(z - a));
    drop(engine);
    let b = live();
    drop(agg);
    let c = live();
    drop(registry);
    let d = live();
    println!(
        "after all dropped: {:.0} B/device above start",
        per(live() - h0)
    );
    println!(
        "engine {:.0}, aggregators {:.0}, registry {:.0} B/device",
        per(a - b),
        per(b - c),
        per(c - d)
    );
}
