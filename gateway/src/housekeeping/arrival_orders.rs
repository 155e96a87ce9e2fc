//! The aggregates do not depend on the order readings arrive in: the same readings (the gates of
//! a scenic area, a road segment's detectors, a pipe asset) delivered in event-time order, and
//! delivered in random orders with one device's backlog of up to an hour, duplicates and
//! gateway restarts in between, end with the same points. Each run goes through what the
//! gateway does: a real local store, the corrections read from it, the replay at a restart, and
//! the alert engine (restored from the store at a restart).
//!
//! The alert transitions are the same too, apart from retrospective events, for every subject
//! the lagging device does not feed (here a low pressure on P1 and a congestion on R1 rise and
//! fall). Those it feeds cannot be: while the device is silent beyond its offline threshold its
//! units' windows close without it, and what operators were shown live then is what the rules
//! saw; the corrected data reaches the rules as the current state and as retrospective events.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use device_profiles::Catalog;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use super::{replay_recent, resume_corrections};
use crate::aggregate::Aggregators;
use crate::aggregate::correct::Due;
use crate::alert::rule::{DefaultsTuning, defaults};
use crate::alert::{Changes, Engine};
use crate::point::{FieldValue, Point};
use crate::reading::{Measurement, Reading, Tag};
use crate::store::Store;

const MINUTE: i64 = 60_000;
/// 2026-10-01 10:00 +08:00: 通天岩 (S4) is open, so an operator counts it first.
const T0: i64 = 1_790_820_000_000;
const SPAN_MIN: i64 = 100;
const GATES: [&str; 4] = ["gz-s4-g1", "gz-s4-g2", "gz-s4-g3", "gz-s4-g4"];
const DETECTORS: [&str; 2] = ["gz-r1-d1", "gz-r1-d2"];
const PRESSURE: &str = "gz-p1-press";

/// The readings one message carries (a detector's lanes, a gate's passage): they arrive
/// together, in their order.
type Frame = Vec<Reading>;

/// A reading's device, frame and part of the frame: what the sequence ledger tells apart.
type ReadingId = (Arc<str>, Option<(u32, u32)>, i64);

/// An alert transition: rule, subject, kind, event time, severity.
type Transition = (String, String, &'static str, i64, String);

/// A window's point as the sinks end up with it: the last one emitted for its series and time.
type Final = BTreeMap<(String, Vec<(String, String)>, i64), Vec<(String, FieldValue)>>;

fn reading(device: &str, kind: &str, t: i64, seq: u32, m: Measurement) -> Reading {
    Reading {
        device: device.into(),
        zone: "360702".into(),
        kind: kind.into(),
        time_ms: t,
        received_ms: t,
        unsynced_clock: false,
        origin: Some((1, seq)),
        measurement: m,
    }
}

/// A hundred minutes of one area's gates (passages, tags read again, heartbeats), a segment's
/// detectors and a pressure sensor, as frames in event-time order.
fn field_day(rng: &mut StdRng) -> Vec<Frame> {
    let mut frames: Vec<(i64, Frame)> = Vec::new();
    let mut seq = 0u32;
    let mut next = || {
        seq += 1;
        seq
    };
    for (g, gate) in GATES.iter().enumerate() {
        let mut recent: Vec<(i64, u64)> = Vec::new();
        for minute in 0..SPAN_MIN {
            let t0 = T0 + minute * MINUTE;
            frames.push((
                t0 + g as i64,
                vec![reading(
                    gate,
                    "uhf-rfid-gate",
                    t0 + g as i64,
                    next(),
                    Measurement::Status {
                        battery_pct: None,
                        signal_dbm: -60,
                        uptime_s: 1,
                        firmware: "1.0.0".into(),
                        key_fingerprint: "0".into(),
                    },
                )],
            ));
            let mut seconds: Vec<i64> = (0..rng.random_range(0..8))
                .map(|_| rng.random_range(1..60) * 1000 + 10 + g as i64)
                .collect();
            seconds.sort_unstable();
            seconds.dedup();
            for s in seconds {
                let t = t0 + s;
                // One in five reads is a tag this gate read in the last minute or so.
                let tag = match recent.iter().rev().find(|(at, _)| t - at < 90_000) {
                    Some(&(_, tag)) if rng.random_bool(0.2) => tag,
                    _ => rng.random(),
                };
                recent.push((t, tag));
                let entry = rng.random_bool(0.6);
                frames.push((
                    t,
                    vec![reading(
                        gate,
                        "uhf-rfid-gate",
                        t,
                        next(),
                        Measurement::Passage {
                            tag: Tag::from(tag),
                            entry,
                        },
                    )],
                ));
            }
        }
    }
    for (d, detector) in DETECTORS.iter().enumerate() {
        for half in 0..SPAN_MIN * 2 {
            let t = T0 + half * 30_000 + 100 + d as i64;
            // Congested from minute 50 to 70.
            let jam = (100..140).contains(&half);
            let frame = (1..=2)
                .map(|lane| {
                    let vehicles = rng.random_range(1..20);
                    let (occupancy_pct, speed) = match jam {
                        true => (50.0, 8.0),
                        false => (rng.random_range(0.0..40.0), rng.random_range(10.0..60.0)),
                    };
                    reading(
                        detector,
                        "traffic-loop",
                        t,
                        next(),
                        Measurement::Lane {
                            lane,
                            vehicles,
                            occupancy_pct,
                            speed_kmh: Some(speed),
                            interval_s: 30,
                        },
                    )
                })
                .collect();
            frames.push((t, frame));
        }
    }
    for minute in 0..SPAN_MIN {
        let t = T0 + minute * MINUTE + 200;
        frames.push((
            t,
            vec![reading(
                PRESSURE,
                "water-pressure",
                t,
                next(),
                Measurement::Value {
                    field: "pressure".into(),
                    // Low (below 0.14 MPa) from minute 30 to 40.
                    value: match minute {
                        30..40 => 0.1,
                        _ => rng.random_range(0.2..0.4),
                    },
                    urgent: false,
                },
            )],
        ));
    }
    frames.sort_by_key(|(t, f)| (*t, f[0].device.clone()));
    frames.into_iter().map(|(_, f)| f).collect()
}

/// The operator's count before the run, and every device's heartbeat ten minutes after it:
/// the same in every run, so the same windows close.
fn bookends() -> (Frame, Frame) {
    let count = reading(
        "S4",
        "operator",
        T0 - MINUTE,
        0,
        Measurement::Occupancy { count: 0 },
    );
    let end = T0 + (SPAN_MIN + 10) * MINUTE;
    let devices = GATES
        .iter()
        .map(|d| (*d, "uhf-rfid-gate"))
        .chain(DETECTORS.iter().map(|d| (*d, "traffic-loop")))
        .chain([(PRESSURE, "water-pressure")]);
    let heartbeats = devices
        .enumerate()
        .map(|(i, (d, kind))| {
            reading(
                d,
                kind,
                end,
                u32::MAX - i as u32,
                Measurement::Status {
                    battery_pct: None,
                    signal_dbm: -60,
                    uptime_s: 1,
                    firmware: "1.0.0".into(),
                    key_fingerprint: "0".into(),
                },
            )
        })
        .collect();
    (vec![count], heartbeats)
}

/// A gateway reduced to its data path: verify (the sequence ledger drops frames seen before),
/// correct and aggregate, commit; and a restart that replays the store.
struct Gateway {
    catalog: Catalog,
    store: Store,
    aggregators: Aggregators,
    engine: Engine,
    /// Every alert transition: rule, subject, kind, when, severity.
    transitions: Vec<Transition>,
    seen: HashSet<ReadingId>,
    /// The gateway's clock: the newest event time delivered (a backlog is received late).
    now: i64,
    points: Final,
}

impl Gateway {
    fn new() -> Gateway {
        let catalog = Catalog::ganzhou().unwrap();
        let aggregators = Aggregators::new(&catalog);
        Gateway {
            store: Store::open(Path::new(":memory:")).unwrap().0,
            aggregators,
            engine: engine(&catalog),
            transitions: Vec::new(),
            catalog,
            seen: HashSet::new(),
            now: i64::MIN,
            points: Final::new(),
        }
    }

    fn deliver(&mut self, frames: &[Frame]) {
        let newest = frames.iter().flatten().map(|r| r.time_ms).max();
        self.now = self.now.max(newest.unwrap_or(i64::MIN));
        let now = self.now;
        let readings: Vec<Reading> = frames
            .iter()
            .flatten()
            .filter(|r| self.seen.insert((r.device.clone(), r.origin, part(r))))
            .map(|r| Reading {
                received_ms: now + 100,
                ..r.clone()
            })
            .collect();
        let store = &self.store;
        let mut points = self
            .aggregators
            .correct(Due::Settled, |devices, since| {
                store.readings_of(devices, since, i64::MAX, 60_000)
            })
            .unwrap();
        points.extend(self.aggregators.ingest(&readings));
        self.engine.on_readings(&readings);
        self.engine.on_points(&points);
        let changes = self.engine.take_changes();
        self.transitions.extend(changes.events.iter().map(|e| {
            let a = &e.alert;
            let (rule, subject) = (a.rule.clone(), a.subject.clone());
            (rule, subject, e.kind.name(), e.at_ms, a.severity.clone())
        }));
        self.commit(&readings, points, &changes);
    }

    fn commit(&mut self, readings: &[Reading], points: Vec<Point>, changes: &Changes) {
        let pending = self.aggregators.corrections_to_record();
        let pending = pending.map(|p| serde_json::to_string(&p).unwrap());
        self.store
            .accept_with(readings, &points, &[], changes, pending.as_deref())
            .unwrap();
        for p in points {
            self.points
                .insert((p.measurement.clone(), p.tags.clone(), p.time_ms), p.fields);
        }
    }

    fn restart(&mut self) {
        self.aggregators = Aggregators::new(&self.catalog);
        self.engine = engine(&self.catalog);
        let dropped = self.engine.restore(self.store.alert_states().unwrap());
        assert!(dropped.is_empty());
        replay_recent(&self.store, &mut self.aggregators, i64::MIN, 60_000).unwrap();
        // The points it commits are read back below, as the sinks would.
        let before = self
            .store
            .points_after(0, i64::MAX, usize::MAX)
            .unwrap()
            .len();
        resume_corrections(&self.store, &mut self.aggregators, 60_000).unwrap();
        let points = self.store.points_after(0, i64::MAX, usize::MAX).unwrap();
        for (_, p) in points.into_iter().skip(before) {
            self.points
                .insert((p.measurement.clone(), p.tags.clone(), p.time_ms), p.fields);
        }
    }

    /// Delivers the closing heartbeats and runs what corrections wait.
    fn finish(mut self, heartbeats: &Frame) -> Run {
        self.deliver(std::slice::from_ref(heartbeats));
        self.deliver(&[]);
        let store = &self.store;
        let points = self
            .aggregators
            .correct(Due::All, |devices, since| {
                store.readings_of(devices, since, i64::MAX, 60_000)
            })
            .unwrap();
        self.commit(&[], points, &Changes::default());
        Run {
            points: self.points,
            too_late: self.aggregators.counts.too_late,
            transitions: self.transitions,
        }
    }
}

/// How a run ended.
struct Run {
    points: Final,
    too_late: u64,
    transitions: Vec<Transition>,
}

fn engine(catalog: &Catalog) -> Engine {
    Engine::new(catalog, defaults(catalog, &DefaultsTuning::default()), 3600)
}

/// Tells apart the readings of one frame (they share its sequence number).
fn part(r: &Reading) -> i64 {
    match &r.measurement {
        Measurement::Lane { lane, .. } => i64::from(*lane),
        _ => 0,
    }
}

/// In event-time order, a few seconds of reports per batch.
fn in_order(frames: &[Frame]) -> Run {
    let (count, heartbeats) = bookends();
    let mut g = Gateway::new();
    g.deliver(&[count]);
    for batch in frames.chunk_by(|a, b| b[0].time_ms - a[0].time_ms < 5_000) {
        g.deliver(batch);
    }
    g.finish(&heartbeats)
}

/// One device's reports of up to an hour held back and flushed in order when its link comes
/// back, batches of random sizes in shuffled order, one report in twenty delivered twice, and
/// restarts in between.
fn disordered(frames: &[Frame], rng: &mut StdRng) -> (Run, &'static str) {
    let devices: Vec<&str> = GATES
        .iter()
        .chain(&DETECTORS)
        .chain(&[PRESSURE])
        .copied()
        .collect();
    let lagging = *devices.choose(rng).unwrap();
    let down = T0 + rng.random_range(0..SPAN_MIN - 10) * MINUTE;
    let up = down + rng.random_range(5..=60) * MINUTE;
    let (mut held, mut live): (Vec<Frame>, Vec<Frame>) = frames
        .iter()
        .cloned()
        .partition(|f| &*f[0].device == lagging && (down..up).contains(&f[0].time_ms));
    // The backlog comes a little after the link, oldest first, in chunks, between live reports.
    let flush_at = live
        .iter()
        .position(|f| f[0].time_ms >= up + rng.random_range(0..3) * MINUTE)
        .unwrap_or(live.len());
    let mut at = flush_at;
    while !held.is_empty() {
        let n = rng.random_range(1..=held.len().min(200));
        let chunk: Vec<Frame> = held.drain(..n).collect();
        let len = chunk.len();
        live.splice(at..at, chunk);
        at += len + rng.random_range(0..20);
        at = at.min(live.len());
    }
    let (count, heartbeats) = bookends();
    let mut g = Gateway::new();
    g.deliver(&[count]);
    let restarts: Vec<usize> = (0..2).map(|_| rng.random_range(0..live.len())).collect();
    let mut i = 0;
    while i < live.len() {
        let n = rng.random_range(1..=64).min(live.len() - i);
        let mut batch: Vec<Frame> = live[i..i + n].to_vec();
        batch.shuffle(rng);
        let twice: Vec<Frame> = batch
            .iter()
            .filter(|_| rng.random_bool(0.05))
            .cloned()
            .collect();
        batch.extend(twice);
        g.deliver(&batch);
        if restarts.iter().any(|r| (i..i + n).contains(r)) {
            g.restart();
        }
        i += n;
    }
    (g.finish(&heartbeats), lagging)
}

/// The subjects whose points `device` feeds (and itself): their transitions may differ.
fn fed_by(device: &str) -> Vec<&'static str> {
    let mut fed = match device {
        d if d.starts_with("gz-s4-") => vec!["S4"],
        d if d.starts_with("gz-r1-") => vec!["R1"],
        _ => vec!["P1"],
    };
    fed.extend(
        GATES
            .iter()
            .chain(&DETECTORS)
            .chain(&[PRESSURE])
            .filter(|d| **d == device),
    );
    fed
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_points_are_the_same_whatever_order_the_readings_arrive_in(seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        let frames = field_day(&mut rng);
        let expected = in_order(&frames);
        prop_assert!(expected.points.len() > 400, "{} points", expected.points.len());
        let (got, lagging) = disordered(&frames, &mut rng);
        prop_assert_eq!(got.too_late, 0);
        let differ: Vec<_> = expected
            .points
            .iter()
            .filter(|(k, v)| got.points.get(*k) != Some(*v))
            .map(|(k, v)| (k, v, got.points.get(k)))
            .collect();
        prop_assert!(differ.is_empty(), "{} of {} differ, first: {:#?}", differ.len(), expected.points.len(), &differ[..differ.len().min(3)]);
        prop_assert_eq!(expected.points.len(), got.points.len());
        // The alert transitions of every subject the lagging device does not feed.
        let fed = fed_by(lagging);
        // Each (rule, subject)'s in their order (batches interleave subjects differently).
        let compared = |run: &Run| -> Vec<Transition> {
            let mut t: Vec<Transition> = run
                .transitions
                .iter()
                .filter(|t| t.2 != "retrospective" && !fed.contains(&t.1.as_str()))
                .cloned()
                .collect();
            t.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            t
        };
        let (want, have) = (compared(&expected), compared(&got));
        prop_assert!(!want.is_empty(), "the low pressure or the jam raises something");
        prop_assert_eq!(want, have, "{} lagged", lagging);
    }
}
