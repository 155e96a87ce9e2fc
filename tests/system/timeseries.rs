//! Time series end to end: an accelerated hour of Ganzhou reports through a real Mosquitto and
//! the gateway into a real VictoriaMetrics (InfluxDB v2 write API), with hand-computed values;
//! and VictoriaMetrics stopped mid-ingest and restarted, with every point arriving once.

use std::collections::BTreeMap;
use std::time::Duration;

use gateway::Gateway;
use system_tests::services::{Mosquitto, VictoriaMetrics};
use wire::{
    Body, Direction, GateEvent, GateEvents, LaneInterval, Quantity, TagHash, TrafficInterval,
};

use crate::support::*;

const MINUTE: i64 = 60_000;
const HOUR_MINUTES: i64 = 60;

/// The first minute of the accelerated hour: aligned to 5 minutes, 90 minutes ago, and moved
/// back when the hour would cross 通天岩's closing time (18:00, UTC+8), where its occupancy and
/// daily entries start again.
/// The duty officer's count at 通天岩 just before `t0`: nobody inside (the hour starts mid-day,
/// when the gateway would not know the occupancy otherwise).
async fn nobody_in_s4(gw: &Gateway, t0: i64) {
    let (status, body) = system_tests::http::post(
        gw.http_addr(),
        "/api/v1/areas/S4/occupancy",
        &format!(r#"{{"count": 0, "at_ms": {}}}"#, t0 - 1),
    )
    .await;
    assert_eq!(status, 202, "{body}");
}

fn start_of_hour() -> i64 {
    const DAY: i64 = 24 * 3600 * 1000;
    let now = gateway::clock::now_ms();
    let mut t0 = (now - 90 * MINUTE).div_euclid(5 * MINUTE) * 5 * MINUTE;
    let closing = 18 * 3600 * 1000 - 8 * 3600 * 1000; // 18:00 local in UTC ms of day
    let business_day = |t: i64| (t - closing).div_euclid(DAY);
    let end = t0 + (HOUR_MINUTES + 3) * MINUTE;
    if business_day(t0) != business_day(end) {
        t0 = business_day(end) * DAY + closing - 3 * 3600 * 1000;
    }
    t0
}

/// Publishes the hour: P1 pressure every 30 s, R1 lanes 1–4 every 30 s, ten visitors a minute
/// through S4's entry gate.
async fn publish_hour(node: &rumqttc::v5::AsyncClient, t0: i64, minutes: std::ops::Range<i64>) {
    for m in minutes {
        for half in 0..2i64 {
            let k = (2 * m + half) as u32;
            let t = t0 + m * MINUTE + half * 30_000;
            let pressure = 0.30 + 0.01 * (k % 4) as f32;
            publish(
                node,
                &up_topic("gz-p1-press"),
                frame_at("gz-p1-press", 1, k, t, &pipe(Quantity::Pressure, pressure)),
            )
            .await;
            let mut lanes = heapless::Vec::new();
            for lane in 1..=4 {
                lanes
                    .push(LaneInterval {
                        lane,
                        vehicles: 5,
                        occupancy_permille: 100,
                        mean_speed_dkmh: Some(300),
                    })
                    .unwrap();
            }
            let traffic = Body::TrafficInterval(TrafficInterval {
                interval_s: 30,
                lanes,
            });
            publish(
                node,
                &up_topic("gz-r1-d1"),
                frame_at("gz-r1-d1", 1, k, t, &traffic),
            )
            .await;
        }
        let mut events = heapless::Vec::new();
        for v in 0..10u32 {
            let mut tag = [0u8; 8];
            tag[..4].copy_from_slice(&(m as u32).to_le_bytes());
            tag[4..].copy_from_slice(&v.to_le_bytes());
            events
                .push(GateEvent {
                    tag: TagHash(tag),
                    direction: Direction::Entry,
                    offset_ms: v * 1000,
                })
                .unwrap();
        }
        let gate = Body::GateEvents(GateEvents { events });
        publish(
            node,
            &up_topic("gz-s4-g1"),
            frame_at("gz-s4-g1", 1, m as u32, t0 + m * MINUTE + 5_000, &gate),
        )
        .await;
    }
}

/// Each device reports its status two minutes after the hour: every window of the hour closes
/// (a window closes once the devices that feed it have passed it).
async fn close_windows(node: &rumqttc::v5::AsyncClient, t0: i64) {
    let t = t0 + (HOUR_MINUTES + 3) * MINUTE;
    for (i, device) in ["gz-p1-press", "gz-r1-d1", "gz-s4-g1"].iter().enumerate() {
        let sequence = 100_000 + i as u32;
        let frame = frame_at(device, 1, sequence, t, &heartbeat());
        publish(node, &up_topic(device), frame).await;
    }
}

/// Waits until the sink delivered every stored point.
async fn wait_delivered(gw: &Gateway, what: &str) {
    wait_for(what, Duration::from_secs(60), || async {
        let m = gw.metrics();
        m.sink_pending.with_label_values(&["influxdb"]).get() == 0
            && m.sink_written.with_label_values(&["influxdb"]).get() > 0
    })
    .await;
    // One more flush period: the pending gauge is read before a batch is written.
    wait_for(what, Duration::from_secs(60), || async {
        let store = gw.store();
        store.cursor("influxdb").unwrap() == store.last_point_id().unwrap()
    })
    .await;
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Samples of one series from VictoriaMetrics: time → value.
async fn export(vm: &VictoriaMetrics, selector: &str) -> BTreeMap<i64, f64> {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", vm.port).parse().unwrap();
    let _ = system_tests::http::get(addr, "/internal/force_flush").await;
    let (status, body) = system_tests::http::get(
        addr,
        &format!("/api/v1/export?match[]={}", encode(selector)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (ts, vals) = (
            v["timestamps"].as_array().unwrap(),
            v["values"].as_array().unwrap(),
        );
        for (t, x) in ts.iter().zip(vals) {
            let prev = out.insert(t.as_i64().unwrap(), x.as_f64().unwrap());
            assert!(prev.is_none(), "{selector}: two samples at {t}");
        }
    }
    out
}

/// A broker, a VictoriaMetrics, and a connected gateway with a file store writing to it.
async fn gateway_into_victoria_metrics(
    name: &str,
) -> (Mosquitto, VictoriaMetrics, tempfile::TempDir, Gateway) {
    let broker = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let store_dir = tempfile::tempdir().unwrap();
    let (sink, db) = (sink_to(&vm), store_dir.path().join("gw.db"));
    let gw = start_gateway_settings(name, broker.port, |s| {
        s.influxdb = Some(sink);
        s.store_path = db;
    })
    .await;
    wait_for("gateway connected", Duration::from_secs(10), || async {
        gw.metrics().broker_connected.get() == 1
    })
    .await;
    (broker, vm, store_dir, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accelerated_hour_reaches_victoria_metrics_with_the_expected_values() {
    let (broker, vm, _store_dir, gw) = gateway_into_victoria_metrics("vm-hour").await;
    let (node, _) = client("vm-hour-node", broker.port, true).await;
    let t0 = start_of_hour();
    nobody_in_s4(&gw, t0).await;
    publish_hour(&node, t0, 0..HOUR_MINUTES).await;
    close_windows(&node, t0).await;
    wait_for("the hour processed", Duration::from_secs(30), || async {
        accepted(&gw, "gz-s4-g1") == HOUR_MINUTES as u64 + 1
    })
    .await;
    // Accepted is counted as a batch is gathered; its points are stored when it is committed
    // (up to store.commit_interval_ms later): wait for the heartbeats that close the last
    // windows to be in the store before asking whether every stored point was delivered.
    wait_for(
        "the closing heartbeats committed",
        Duration::from_secs(30),
        || async {
            let devices: Vec<std::sync::Arc<str>> = ["gz-p1-press", "gz-r1-d1", "gz-s4-g1"]
                .into_iter()
                .map(std::sync::Arc::from)
                .collect();
            let closing = t0 + (HOUR_MINUTES + 3) * MINUTE;
            gw.store()
                .readings_of(&devices, closing, i64::MAX, 60_000)
                .is_ok_and(|r| r.iter().filter(|r| r.time_ms >= closing).count() == 3)
        },
    )
    .await;
    wait_delivered(&gw, "every point in VictoriaMetrics").await;

    // Pipe P1: readings 0.30, 0.31, 0.32, 0.33, ... two per minute.
    let mean = export(&vm, r#"pipe_mean{asset="P1",field="pressure"}"#).await;
    assert_eq!(mean.len(), HOUR_MINUTES as usize, "one point per minute");
    let first = t0 + MINUTE; // a window's point carries its end
    assert!((mean[&first] - 0.305).abs() < 1e-6, "{}", mean[&first]); // (0.30 + 0.31) / 2
    assert!((mean[&(first + MINUTE)] - 0.325).abs() < 1e-6); // (0.32 + 0.33) / 2
    let max = export(&vm, r#"pipe_max{asset="P1"}"#).await;
    assert!((max[&(first + MINUTE)] - 0.33).abs() < 1e-6);

    // Traffic R1 (arterial, free flow 50 km/h): 4 lanes × 5 vehicles × 2 intervals at 30 km/h.
    let one_minute = r#"{segment="R1",bin="1m"}"#;
    let volume = export(&vm, &format!("traffic_volume{one_minute}")).await;
    assert_eq!(volume.len(), HOUR_MINUTES as usize);
    assert!(volume.values().all(|v| *v == 40.0), "{volume:?}");
    assert_eq!(
        export(&vm, &format!("traffic_flow_vph{one_minute}")).await[&first],
        2400.0
    );
    assert_eq!(
        export(&vm, &format!("traffic_grade{one_minute}")).await[&first],
        3.0
    ); // 轻度: 20 < 30 ≤ 30
    let tpi = export(&vm, &format!("traffic_tpi{one_minute}")).await[&first];
    assert!(
        (tpi - (4.0 + 2.0 * (50.0 / 30.0 - 1.0 - 0.5) / 0.3)).abs() < 1e-6,
        "{tpi}"
    ); // r = 2/3
    let five = export(&vm, r#"traffic_volume{segment="R1",bin="5m",lane=""}"#).await;
    assert!(five.values().all(|v| *v == 200.0), "{five:?}");
    let lane = export(&vm, r#"traffic_volume{segment="R1",bin="5m",lane="2"}"#).await;
    assert!(
        !lane.is_empty() && lane.values().all(|v| *v == 50.0),
        "{lane:?}"
    ); // 5 × 10 intervals

    // Crowd S4: ten entries a minute through an entry gate; occupancy accumulates.
    let mut entries = export(&vm, r#"crowd_entries{area="S4"}"#).await;
    // The window before the hour holds the duty officer's count.
    assert_eq!(entries.remove(&t0), Some(0.0));
    assert_eq!(entries.len(), HOUR_MINUTES as usize);
    assert!(entries.values().all(|v| *v == 10.0));
    let occupancy = export(&vm, r#"crowd_occupancy{area="S4"}"#).await;
    assert_eq!(occupancy[&(t0 + HOUR_MINUTES * MINUTE)], 600.0);
    let ratio = export(&vm, r#"crowd_occupancy_ratio{area="S4"}"#).await;
    assert!((ratio[&(t0 + HOUR_MINUTES * MINUTE)] - 600.0 / 6000.0).abs() < 1e-9);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn victoria_metrics_stopped_mid_ingest_gets_every_point_exactly_once() {
    let (broker, mut vm, _store_dir, gw) = gateway_into_victoria_metrics("vm-restart").await;
    let (node, _) = client("vm-restart-node", broker.port, true).await;
    let t0 = start_of_hour();
    nobody_in_s4(&gw, t0).await;
    publish_hour(&node, t0, 0..20).await;
    wait_for("some points delivered", Duration::from_secs(30), || async {
        gw.metrics()
            .sink_written
            .with_label_values(&["influxdb"])
            .get()
            > 0
    })
    .await;
    vm.stop();
    publish_hour(&node, t0, 20..HOUR_MINUTES).await;
    close_windows(&node, t0).await;
    wait_for(
        "the sink noticed the outage",
        Duration::from_secs(30),
        || async {
            gw.metrics()
                .sink_errors
                .with_label_values(&["influxdb", "transient"])
                .get()
                > 0
        },
    )
    .await;
    vm.restart();
    wait_delivered(&gw, "the backlog delivered after the restart").await;
    for selector in [
        r#"pipe_mean{asset="P1"}"#,
        r#"traffic_volume{segment="R1",bin="1m"}"#,
        r#"crowd_entries{area="S4"}"#,
    ] {
        let mut samples = export(&vm, selector).await;
        // The window before the hour holds the duty officer's count at 通天岩.
        samples.retain(|t, _| *t > t0);
        assert_eq!(
            samples.len(),
            HOUR_MINUTES as usize,
            "{selector}: every window once"
        );
    }
    gw.stop().await;
}
