//! Checks that run wherever the node runs: on the host (`cargo test`) and on the emulated
//! Cortex-M4F (`firmware/boards/qemu`), so the node logic and the wire format are proven on the
//! real instruction set, FPU and all. No heap, no panics on failure: each check returns the
//! reason it failed.

use wire::{Body, DeviceKey, Direction, FrameError, Header, Quantity, Timestamp, Trigger};

use crate::config::{BLOCK_LEN, Config, ConfigError, GateRole, Role};
use crate::drivers::TagRead;
use crate::lifecycle::{Node, Uplink};
use crate::pipe::{Watch, WatchState};
use crate::rfid::Gate;
use crate::traffic::{Change, Detector, LaneCounter, Tuning};

/// One check.
pub type Check = (&'static str, fn() -> Result<(), &'static str>);

/// Every check, in order.
pub const CHECKS: &[Check] = &[
    (
        "wire: golden vectors decode, verify and re-seal",
        golden_vectors,
    ),
    ("wire: a flipped byte is refused", forged_frame),
    ("config: block round trip, damage detected", config_block),
    ("node: epochs, sequence, frames verify", node_frames),
    ("node: the offline queue keeps alarms", queue_keeps_alarms),
    ("node: key rotation downlink", key_rotation),
    ("traffic: a passing car counts once", car_passing),
    ("traffic: a parked car counts once", car_parked),
    ("traffic: slow drift is not a car", slow_drift),
    ("traffic: speed from two sensors", two_sensor_speed),
    (
        "rfid: one tag read 20 times is one passage",
        tag_twenty_times,
    ),
    ("pipe: a pressure burst reports at once", pressure_burst),
    (
        "pipe: a cover lifted 1 s is ignored, 60 s reported",
        cover_lift,
    ),
    ("pipe: Modbus RTU request framing", modbus_frame),
];

/// Runs every check; `(passed, failed)` and a line per check through `report`.
pub fn run(mut report: impl FnMut(&str, Result<(), &'static str>)) -> (u32, u32) {
    let (mut passed, mut failed) = (0, 0);
    for (name, check) in CHECKS {
        let r = check();
        if r.is_ok() {
            passed += 1;
        } else {
            failed += 1;
        }
        report(name, r);
    }
    (passed, failed)
}

fn ensure(ok: bool, why: &'static str) -> Result<(), &'static str> {
    if ok { Ok(()) } else { Err(why) }
}

fn golden_vectors() -> Result<(), &'static str> {
    for v in wire::golden::VECTORS {
        let key = DeviceKey::from_bytes(v.key);
        let got = wire::open(v.frame, &key).map_err(|_| "a golden vector does not open")?;
        let want = (v.meaning)();
        ensure(got == want, "a golden vector decodes to something else")?;
        let mut buf = [0u8; wire::MAX_FRAME_LEN];
        let n = wire::seal(&want.header, &want.body, &key, &mut buf)
            .map_err(|_| "a golden meaning does not seal")?;
        ensure(&buf[..n] == v.frame, "re-sealing gives other bytes")?;
    }
    Ok(())
}

fn forged_frame() -> Result<(), &'static str> {
    let v = &wire::golden::VECTORS[0];
    let mut buf = [0u8; wire::MAX_FRAME_LEN];
    buf[..v.frame.len()].copy_from_slice(v.frame);
    buf[v.frame.len() - 20] ^= 0x01;
    let r = wire::open(&buf[..v.frame.len()], &DeviceKey::from_bytes(v.key));
    ensure(
        r.err() == Some(FrameError::BadTag),
        "a forged frame was not refused as bad_tag",
    )
}

fn config() -> Config {
    Config {
        device_id: heapless::String::try_from("gz-m1-cover").unwrap_or_default(),
        zone: heapless::String::try_from("360702").unwrap_or_default(),
        kind: heapless::String::try_from("smart-manhole").unwrap_or_default(),
        key: [0x42; 32],
        broker_host: heapless::String::try_from("10.20.0.5").unwrap_or_default(),
        broker_port: 1883,
        broker_password: heapless::String::new(),
        report_interval_s: 3600,
        status_interval_s: 3600,
        tag_salt: [3; 16],
        role: Role::Pipe,
    }
}

fn config_block() -> Result<(), &'static str> {
    let mut block = [0u8; BLOCK_LEN];
    config().encode(&mut block).map_err(|_| "encode failed")?;
    ensure(Config::decode(&block) == Ok(config()), "round trip differs")?;
    block[30] ^= 0x80;
    ensure(
        Config::decode(&block) == Err(ConfigError::BadCrc),
        "corruption not detected",
    )
}

type Ram = crate::lifecycle::RamStorage;

/// Keeps the last frame published.
struct LastFrame(heapless::Vec<u8, 640>, u32);

impl Uplink for LastFrame {
    type Error = ();
    async fn publish(&mut self, _topic: &str, payload: &[u8]) -> Result<(), ()> {
        self.0 = heapless::Vec::from_slice(payload).map_err(|_| ())?;
        self.1 += 1;
        Ok(())
    }
}

use crate::lifecycle::poll_once as ready;

fn tilt(v: f32) -> Body {
    crate::pipe::report(Trigger::Threshold, &[(Quantity::Tilt, v)])
}

fn node_frames() -> Result<(), &'static str> {
    let mut ram = Ram::default();
    let _first = Node::<4>::boot(config(), &mut ram);
    let mut node = Node::<4>::boot(config(), &mut ram);
    ensure(node.boot_epoch() == 2, "the boot epoch did not advance")?;
    node.report(&tilt(12.5), 1_000, true)
        .map_err(|_| "report failed")?;
    node.report(&tilt(0.5), 2_000, false)
        .map_err(|_| "report failed")?;
    let mut up = LastFrame(heapless::Vec::new(), 0);
    ensure(
        ready(node.flush(&mut up)) == Some(Ok(2)),
        "flush did not publish two",
    )?;
    let m = wire::open(&up.0, &config().device_key()).map_err(|_| "frame does not verify")?;
    ensure(
        m.header.boot_epoch == 2 && m.header.sequence == 1,
        "wrong epoch or sequence",
    )?;
    ensure(m.body == tilt(0.5), "wrong body")
}

fn queue_keeps_alarms() -> Result<(), &'static str> {
    let mut ram = Ram::default();
    let mut node = Node::<2>::boot(config(), &mut ram);
    let _ = node.report(&tilt(35.0), 0, true);
    for i in 1..5 {
        let _ = node.report(&tilt(0.5), i * 1000, false);
    }
    ensure(node.queue.len() == 2, "queue not bounded")?;
    let first = node.queue.front().ok_or("queue empty")?;
    ensure(first.alarm, "the alarm was dropped for routine frames")
}

fn key_rotation() -> Result<(), &'static str> {
    let mut ram = Ram::default();
    let mut node = Node::<4>::boot(config(), &mut ram);
    let old = config().device_key();
    let new = DeviceKey::from_bytes([0x99; 32]);
    let header = Header {
        device_id: "gz-m1-cover",
        boot_epoch: 5,
        sequence: 1,
        timestamp: Timestamp::Synced { unix_ms: 1 },
    };
    let body = Body::Downlink(wire::Downlink::KeyRotation {
        key_id: 1,
        wrapped_key: old.wrap(1, &new),
    });
    let mut buf = [0u8; wire::MAX_FRAME_LEN];
    let n = wire::seal(&header, &body, &old, &mut buf).map_err(|_| "seal failed")?;
    let outcome = node
        .handle_downlink(&buf[..n], 0, &mut ram)
        .map_err(|_| "downlink refused")?;
    ensure(outcome == wire::AckOutcome::Applied, "rotation not applied")?;
    ensure(node.key().as_bytes() == new.as_bytes(), "key not replaced")
}

const EARTH: [i16; 3] = [1200, -300, 4100];

fn field(d: [i16; 3]) -> [i16; 3] {
    [EARTH[0] + d[0], EARTH[1] + d[1], EARTH[2] + d[2]]
}

/// Changes seen over `from..to` (5 ms steps).
fn changes(det: &mut Detector, from: u64, to: u64, f: impl Fn(u64) -> [i16; 3]) -> [u8; 3] {
    let mut counts = [0u8; 3];
    let mut t = from;
    while t < to {
        match det.sample(f(t), t) {
            Some(Change::Arrived) => counts[0] += 1,
            Some(Change::Left) => counts[1] += 1,
            Some(Change::Parked) => counts[2] += 1,
            None => {}
        }
        t += 5;
    }
    counts
}

fn car_passing() -> Result<(), &'static str> {
    let mut det = Detector::new(Tuning::default());
    let c = changes(&mut det, 0, 2_000, |t| {
        if (1_000..1_300).contains(&t) {
            field([250, 90, -400])
        } else {
            EARTH
        }
    });
    ensure(
        c == [1, 1, 0],
        "a passing car is not one arrival and one departure",
    )
}

fn car_parked() -> Result<(), &'static str> {
    let mut det = Detector::new(Tuning::default());
    let c = changes(&mut det, 0, 400_000, |t| {
        if (1_000..300_000).contains(&t) {
            field([300, 120, -500])
        } else {
            EARTH
        }
    });
    ensure(
        c == [1, 0, 1],
        "a parked car is not one arrival, parked, no phantom departure",
    )
}

fn slow_drift() -> Result<(), &'static str> {
    let mut det = Detector::new(Tuning::default());
    let c = changes(&mut det, 0, 600_000, |t| {
        field([(t * 400 / 600_000) as i16, 0, 0])
    });
    ensure(c == [0, 0, 0], "drift was taken for a car")
}

fn two_sensor_speed() -> Result<(), &'static str> {
    let mut lane = LaneCounter::default();
    lane.first_sensor(Change::Arrived, 10_000);
    lane.second_sensor(Change::Arrived, 10_240, 4_000);
    lane.first_sensor(Change::Left, 10_300);
    let li = lane.close(1, 30_000, 30_000);
    ensure(
        li.mean_speed_dkmh == Some(600) && li.vehicles == 1,
        "4 m in 240 ms is not 60.0 km/h",
    )
}

fn tag_twenty_times() -> Result<(), &'static str> {
    let mut gate = Gate::new([1; 16], GateRole::Entry, 3_000);
    let read = TagRead {
        id: heapless::Vec::from_slice(&[0xE2, 0x80, 0x11, 0x05]).map_err(|_| "tag")?,
        antenna: 0,
    };
    for i in 0..20 {
        ensure(
            gate.read(&read, i * 100).is_none(),
            "a batch appeared early",
        )?;
    }
    match gate.due(10_000, 5_000) {
        Some((_, Body::GateEvents(e))) => ensure(
            e.events.len() == 1 && e.events[0].direction == Direction::Entry,
            "twenty reads are not one entry",
        ),
        _ => Err("no batch"),
    }
}

fn watch_series(w: &Watch, series: impl Iterator<Item = (u64, f32)>) -> (Option<u64>, Option<u64>) {
    let mut s = WatchState::default();
    let (mut on, mut off) = (None, None);
    for (t, v) in series {
        match w.check(&mut s, v, t) {
            Some(true) => on = on.or(Some(t)),
            Some(false) => off = off.or(Some(t)),
            None => {}
        }
    }
    (on, off)
}

fn pressure_burst() -> Result<(), &'static str> {
    let low = Watch {
        quantity: Quantity::Pressure,
        high: None,
        low: Some(0.14),
        margin: 0.02,
        hold_ms: 0,
    };
    let series = (0..20u64).map(|i| {
        (
            i * 1_000,
            if i < 10 {
                0.30
            } else {
                0.30 - 0.03 * (i - 9) as f32
            },
        )
    });
    ensure(
        watch_series(&low, series).0 == Some(15_000),
        "the burst was not reported when it crossed",
    )
}

fn cover_lift() -> Result<(), &'static str> {
    let w = Watch {
        quantity: Quantity::Tilt,
        high: Some(10.0),
        low: None,
        margin: 1.0,
        hold_ms: 2_000,
    };
    let lifted = |to: u64| {
        (0..200u64).map(move |i| {
            (
                i * 500,
                if (10_000..to).contains(&(i * 500)) {
                    35.0
                } else {
                    0.5
                },
            )
        })
    };
    ensure(
        watch_series(&w, lifted(11_000)) == (None, None),
        "a 1 s lift was reported",
    )?;
    ensure(
        watch_series(&w, lifted(70_000)) == (Some(12_000), Some(70_000)),
        "a 60 s lift was not",
    )
}

fn modbus_frame() -> Result<(), &'static str> {
    let mut m = crate::drivers::modbus_rtu::ModbusMaster::new(1);
    let req = m.read_holdings(0, 2).map_err(|_| "request failed")?;
    ensure(
        req[..] == [0x01, 0x03, 0x00, 0x00, 0x00, 0x02, 0xC4, 0x0B],
        "wrong RTU frame",
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_self_check_passes_on_the_host() {
        let mut failures = std::vec::Vec::new();
        let (passed, failed) = super::run(|name, r| {
            if let Err(why) = r {
                failures.push(std::format!("{name}: {why}"));
            }
        });
        assert_eq!(failed, 0, "{failures:?}");
        assert_eq!(passed as usize, super::CHECKS.len());
    }
}
