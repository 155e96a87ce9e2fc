//! Where a tracked device's memory goes, without I/O: the gateway's registry, aggregators and
//! rule engine (the parts that hold per-device state) fed `--reports` reports a minute apart
//! from each of `--devices` generated pressure loggers, verified with real frames, then dropped
//! one by one to read each part's live heap. Complements `throughput --parts memory`, which
//! measures the whole gateway behind a real broker.
//!
//! `cargo run --release -p system-tests --bin memory-by-part -- --devices 100000 --reports 12`

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: failing loudly is the point

use std::alloc::System;
use std::sync::Arc;

use device_profiles::Catalog;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use system_tests::load_frames::logger_report;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live heap bytes.
fn live() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

fn main() {
    let (mut devices, mut reports) = (10_000usize, 12usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match flag.as_str() {
            "--devices" => devices = value().parse().expect("--devices N"),
            "--reports" => reports = value().parse().expect("--reports N"),
            "--help" | "-h" => {
                println!("memory-by-part [--devices N (10000)] [--reports R (12)]");
                return;
            }
            other => panic!("unknown argument {other} (try --help)"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let site = simulator::load_site::write_site(dir.path(), devices, "127.0.0.1:1883").unwrap();
    let catalog = Arc::new(
        Catalog::load(std::path::Path::new(device_profiles::PROFILES_DIR), &site).unwrap(),
    );
    let keys = gateway::keys::Keys::load(&dir.path().join("keys.toml")).unwrap();
    let verifier = gateway::decode::Verifier::new(&catalog, keys.clone(), Default::default());
    let now = gateway::clock::now_ms();
    let start = now - reports as i64 * 60_000;

    let before = live();
    let mut registry = gateway::registry::Registry::new(&catalog, &keys, &[]);
    let mut aggregators = gateway::aggregate::Aggregators::new(&catalog);
    let rules = gateway::load_rules(&catalog, &Default::default()).unwrap();
    let mut engine = gateway::alert::Engine::new(&catalog, rules, 3600);
    let at_start = live();
    for round in 0..reports {
        let t = start + round as i64 * 60_000;
        let frames: Vec<(String, Vec<u8>)> = (0..devices)
            .map(|d| logger_report(d, 1, round as u32, t + d as i64 * 60_000 / devices as i64))
            .collect();
        for chunk in frames.chunks(gateway::pipeline::MAX_BATCH) {
            let mut readings = Vec::new();
            for (topic, payload) in chunk {
                readings.extend(
                    verifier
                        .report(&mut registry, topic, payload, now)
                        .unwrap()
                        .readings,
                );
            }
            let points = aggregators.ingest(&readings);
            engine.on_readings(&readings);
            engine.on_points(&points);
            let _ = engine.take_changes();
        }
        engine.on_presence(t + 60_000, &registry);
        let _ = engine.take_changes();
    }
    let after = live();
    let per = |bytes: i64| bytes as f64 / devices as f64;
    let a = live();
    drop(engine);
    let b = live();
    drop(aggregators);
    let c = live();
    drop(registry);
    let d = live();
    println!("{devices} devices, {reports} reports each a minute apart:");
    println!(
        "  at start (site facts, rules' context): {:.0} B per device",
        per(at_start - before)
    );
    println!(
        "  state added by the reports:            {:.0} B per device",
        per(after - at_start)
    );
    println!(
        "  held at the end: rule engine {:.0}, aggregators {:.0}, registry {:.0} B per device",
        per(a - b),
        per(b - c),
        per(c - d)
    );
}
