//! The gateway's hot pieces without I/O: frame verification and decoding, each aggregator, rule
//! evaluation, the whole receive path (verify + decode + aggregate + rules, as the pipeline
//! runs it per batch), line-protocol encoding, store commits by batch size, and the cost of a
//! correction (a gate's hour-long backlog recomputed from the store).
//!
//! `cargo bench -p gateway --bench hot_path` (or `deploy/bench/run.sh`). Issue 10's target:
//! the receive path at ≤ 2 µs per message, ≥ 500k frames/s on one core.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is the point

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use device_profiles::Catalog;
use gateway::aggregate::Aggregators;
use gateway::aggregate::correct::Due;
use gateway::alert::Engine;
use gateway::decode::Verifier;
use gateway::decode::VerifySection;
use gateway::keys::Keys;
use gateway::point::{FieldValue, Point, Quality};
use gateway::reading::Reading;
use gateway::registry::Registry;
use gateway::store::Store;
use wire::{
    Body, Direction, GateEvent, GateEvents, Header, LaneInterval, PipeReading, PipeReadings,
    Quantity, TagHash, Timestamp, TrafficInterval, Trigger,
};

/// Messages per pipeline batch in these benchmarks.
const BATCH: usize = 64;

struct Fixture {
    catalog: Arc<Catalog>,
    keys: Keys,
    /// (topic, frame), in publish order: pipe, traffic and gate reports of several devices.
    messages: Vec<(String, Vec<u8>)>,
    start_ms: i64,
}

fn topic(catalog: &Catalog, device: &str) -> String {
    let d = catalog
        .site
        .devices
        .iter()
        .find(|d| d.id == device)
        .unwrap();
    format!("cs/v1/{}/{}/{}/up", d.zone, d.profile, d.id)
}

fn seal(device: &str, sequence: u32, t: i64, body: &Body) -> Vec<u8> {
    let header = Header {
        device_id: device,
        boot_epoch: 1,
        sequence,
        timestamp: Timestamp::Synced { unix_ms: t as u64 },
    };
    wire::frame::seal_to_vec(&header, body, &device_profiles::demo::key(device)).unwrap()
}

/// `n` messages, a report every second per device, ending now.
fn fixture(n: usize) -> Fixture {
    let catalog = Arc::new(Catalog::ganzhou().unwrap());
    let keys = gateway::keys::Keys::demo(&catalog);
    let rounds = n / 4 + 1;
    let start_ms = gateway::clock::now_ms() - rounds as i64 * 1000;
    let topics = ["gz-p1-press", "gz-p2-press", "gz-r1-d1", "gz-s4-g1"].map(|d| topic(&catalog, d));
    let mut messages = Vec::with_capacity(n);
    for k in 0..rounds as u32 {
        let t = start_ms + i64::from(k) * 1000;
        for (i, device) in ["gz-p1-press", "gz-p2-press"].into_iter().enumerate() {
            let mut readings = heapless::Vec::new();
            let _ = readings.push(PipeReading {
                quantity: Quantity::Pressure,
                value: 0.30 + 0.001 * (k % 10) as f32,
            });
            let body = Body::PipeReadings(PipeReadings {
                trigger: Trigger::Periodic,
                readings,
            });
            messages.push((topics[i].clone(), seal(device, k, t, &body)));
        }
        let mut lanes = heapless::Vec::new();
        for lane in 1..=4 {
            let _ = lanes.push(LaneInterval {
                lane,
                vehicles: 5,
                occupancy_permille: 100,
                mean_speed_dkmh: Some(300),
            });
        }
        let body = Body::TrafficInterval(TrafficInterval {
            interval_s: 30,
            lanes,
        });
        messages.push((topics[2].clone(), seal("gz-r1-d1", k, t, &body)));
        let mut events = heapless::Vec::new();
        for v in 0..4u32 {
            let mut tag = [0u8; 8];
            tag[..4].copy_from_slice(&k.to_le_bytes());
            tag[4..].copy_from_slice(&v.to_le_bytes());
            let _ = events.push(GateEvent {
                tag: TagHash(tag),
                direction: Direction::Entry,
                offset_ms: v * 100,
            });
        }
        let body = Body::GateEvents(GateEvents { events });
        messages.push((topics[3].clone(), seal("gz-s4-g1", k, t, &body)));
    }
    messages.truncate(n);
    Fixture {
        catalog,
        keys,
        messages,
        start_ms,
    }
}

fn verifier(f: &Fixture) -> Verifier {
    Verifier::new(&f.catalog, f.keys.clone(), VerifySection::default())
}

fn engine(catalog: &Catalog) -> Engine {
    let rules = gateway::load_rules(catalog, &Default::default()).unwrap();
    Engine::new(catalog, rules, 3600)
}

/// Verifies `messages` into readings (fresh registry: sequence numbers start over).
fn readings_of(f: &Fixture) -> Vec<Reading> {
    let v = verifier(f);
    let mut registry = Registry::new(&f.catalog, &f.keys, &[]);
    let now = gateway::clock::now_ms();
    f.messages
        .iter()
        .flat_map(|(t, p)| v.report(&mut registry, t, p, now).unwrap().readings)
        .collect()
}

/// Runs `iters` messages as passes over the fixture: `pass(n)` starts from fresh state (sequence
/// numbers start over) and returns the time its first `n` messages took.
fn over_the_messages(
    iters: u64,
    total: usize,
    mut pass: impl FnMut(usize) -> Duration,
) -> Duration {
    let (mut spent, mut left) = (Duration::ZERO, iters as usize);
    while left > 0 {
        let n = left.min(total);
        spent += pass(n);
        left -= n;
    }
    spent
}

fn bench(c: &mut Criterion) {
    let f = fixture(100_000);
    let now = gateway::clock::now_ms();

    // Verify and decode: topic, HMAC-SHA256, replay window, postcard body, profile ranges.
    let mut g = c.benchmark_group("verify_decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("per_message", |b| {
        let v = verifier(&f);
        b.iter_custom(|iters| {
            over_the_messages(iters, f.messages.len(), |n| {
                let mut registry = Registry::new(&f.catalog, &f.keys, &[]);
                let started = Instant::now();
                for (t, p) in &f.messages[..n] {
                    std::hint::black_box(v.report(&mut registry, t, p, now).unwrap());
                }
                started.elapsed()
            })
        });
    });
    g.finish();

    // The receive path per message, as the pipeline runs it on a batch.
    let mut g = c.benchmark_group("receive_path");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_decode_aggregate_rules", |b| {
        let v = verifier(&f);
        b.iter_custom(|iters| {
            over_the_messages(iters, f.messages.len(), |n| {
                let mut registry = Registry::new(&f.catalog, &f.keys, &[]);
                let mut aggregators = Aggregators::new(&f.catalog);
                let mut engine = engine(&f.catalog);
                let started = Instant::now();
                for chunk in f.messages[..n].chunks(BATCH) {
                    let mut readings = Vec::with_capacity(chunk.len() * 4);
                    for (t, p) in chunk {
                        readings.extend(v.report(&mut registry, t, p, now).unwrap().readings);
                    }
                    let points = aggregators.ingest(&readings);
                    engine.on_readings(&readings);
                    engine.on_points(&points);
                    std::hint::black_box(engine.take_changes());
                }
                started.elapsed()
            })
        });
    });
    g.finish();

    // Each aggregator on its own readings, per reading.
    let readings = readings_of(&f);
    let mut g = c.benchmark_group("aggregate");
    for (name, kind) in [
        ("pipe", "water-pressure"),
        ("traffic", "traffic-loop"),
        ("crowd", "uhf-rfid-gate"),
    ] {
        let mine: Vec<Reading> = readings
            .iter()
            .filter(|r| &*r.kind == kind)
            .cloned()
            .collect();
        assert!(!mine.is_empty(), "{kind}");
        g.throughput(Throughput::Elements(mine.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched(
                || Aggregators::new(&f.catalog),
                |mut a| {
                    for chunk in mine.chunks(BATCH) {
                        std::hint::black_box(a.ingest(chunk));
                    }
                },
                BatchSize::LargeInput,
            );
        });
    }
    g.finish();

    // Rule evaluation on readings (pipes: every profile threshold, bursts).
    let pipe: Vec<Reading> = readings
        .iter()
        .filter(|r| &*r.kind == "water-pressure")
        .cloned()
        .collect();
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(pipe.len() as u64));
    g.bench_function("on_readings_pipe", |b| {
        b.iter_batched(
            || engine(&f.catalog),
            |mut e| {
                for chunk in pipe.chunks(BATCH) {
                    e.on_readings(chunk);
                }
                std::hint::black_box(e.take_changes());
            },
            BatchSize::LargeInput,
        );
    });
    g.finish();

    // Line protocol of a traffic point.
    let point = Point {
        measurement: "traffic".into(),
        tags: vec![
            ("segment".into(), "R1".into()),
            ("zone".into(), "360702".into()),
            ("class".into(), "arterial".into()),
            ("bin".into(), "1m".into()),
        ],
        fields: vec![
            ("volume".into(), FieldValue::Int(40)),
            ("flow_vph".into(), FieldValue::Float(2400.0)),
            ("occupancy_pct".into(), FieldValue::Float(10.0)),
            ("grade".into(), FieldValue::Int(3)),
            ("speed_kmh".into(), FieldValue::Float(30.0)),
            ("tpi".into(), FieldValue::Float(4.44)),
        ],
        time_ms: f.start_ms,
        quality: Quality::default(),
    };
    let mut g = c.benchmark_group("line_protocol");
    g.throughput(Throughput::Elements(1));
    g.bench_function("traffic_point", |b| {
        let mut out = String::with_capacity(256);
        b.iter(|| {
            out.clear();
            point.write_line(&mut out);
            std::hint::black_box(&out);
        });
    });
    g.finish();

    // Store commits (fsync'd) by batch size, per reading: why the pipeline batches.
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("bench.db")).unwrap();
    let mut g = c.benchmark_group("store_commit");
    g.sample_size(10);
    for size in [1usize, 64, 512] {
        let batch: Vec<Reading> = readings.iter().take(size).cloned().collect();
        g.throughput(Throughput::Elements(size as u64));
        g.bench_function(format!("batch_{size}"), |b| {
            b.iter(|| {
                store.accept(&batch, &[], &[], &Default::default()).unwrap();
            });
        });
    }
    // As the pipeline commits a burst from many devices: each message's device has a ledger
    // that moved in this batch.
    let batch: Vec<Reading> = readings.iter().take(512).cloned().collect();
    let ledger = gateway::ledger::Ledger::default();
    let devices: Vec<String> = (0..512).map(|i| format!("bench-{i:04}")).collect();
    let ledgers: Vec<(&str, &gateway::ledger::Ledger)> =
        devices.iter().map(|d| (d.as_str(), &ledger)).collect();
    g.throughput(Throughput::Elements(512));
    g.bench_function("batch_512_from_512_devices", |b| {
        b.iter(|| {
            store
                .accept(&batch, &[], &ledgers, &Default::default())
                .unwrap();
        });
    });
    g.finish();
}

/// 通天岩 (S4) at Golden Week rates: four gates, 1.5 passages a second each, for an hour ending
/// a minute ago; gz-s4-g3 was offline all that hour and flushes its backlog at the end.
fn golden_week_hour(now: i64) -> (Vec<Reading>, Vec<Reading>) {
    let (start, end) = (now - 61 * 60_000, now - 60_000);
    let (mut live, mut backlog) = (Vec::new(), Vec::new());
    for (g, gate) in ["gz-s4-g1", "gz-s4-g2", "gz-s4-g3", "gz-s4-g4"]
        .iter()
        .enumerate()
    {
        let mut seq = 0;
        let mut t = start + g as i64;
        while t < end {
            seq += 1;
            let r = Reading {
                device: (*gate).into(),
                zone: "360702".into(),
                kind: "uhf-rfid-gate".into(),
                time_ms: t,
                received_ms: t,
                unsynced_clock: false,
                origin: Some((1, seq)),
                measurement: gateway::reading::Measurement::Passage {
                    tag: gateway::reading::Tag::from(u64::from(seq) * 4 + g as u64),
                    entry: seq % 3 != 0,
                },
            };
            match g {
                2 => backlog.push(Reading {
                    received_ms: now,
                    ..r
                }),
                _ => live.push(r),
            }
            t += 667;
        }
    }
    live.sort_by_key(|r| r.time_ms);
    (live, backlog)
}

/// A correction: one gate's hour-long backlog recomputed from the store (its area, the choke
/// points and the gate's health), per correction.
fn correction(c: &mut Criterion) {
    let now = gateway::clock::now_ms();
    let (live, backlog) = golden_week_hour(now);
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(&dir.path().join("bench.db")).unwrap();
    for batch in live.chunks(1024).chain(backlog.chunks(1024)) {
        store.accept(batch, &[], &[], &Default::default()).unwrap();
    }
    let catalog = Catalog::ganzhou().unwrap();
    // The gateway as it is when the backlog has come: corrections pending.
    let pending = || {
        let mut a = Aggregators::new(&catalog);
        for batch in live.chunks(1024).chain(backlog.chunks(1024)) {
            a.ingest(batch);
        }
        assert!(a.corrections_pending());
        a
    };
    let read = |devices: &[Arc<str>], since| store.readings_of(devices, since, i64::MAX, 60_000);
    let mut a = pending();
    let points = a.correct(Due::All, read).unwrap();
    println!(
        "correction: {} readings of a Golden Week hour ({} of them the backlog), {} corrections, {} readings re-read, {} points emitted again",
        live.len() + backlog.len(),
        backlog.len(),
        a.counts.corrections,
        a.counts.corrected_readings,
        points.len()
    );
    let mut g = c.benchmark_group("correction");
    g.sample_size(10);
    g.bench_function("one_hour_backlog_of_one_gate", |b| {
        b.iter_batched(
            pending,
            |mut a| std::hint::black_box(a.correct(Due::All, read).unwrap()),
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = bench, correction
}
criterion_main!(benches);
