//! The ingest ceiling of one partition and of two, side by side (issue 24).
//!
//! ```text
//! cargo run --release -p system-tests --bin partitions -- [--devices 2000] [--rounds 10] [--runs 3]
//! ```
//!
//! A load site of `--devices` pressure loggers split in two districts (章贡区 and 南康区, half
//! each). Every logger reports `--rounds` times, a minute apart in event time, pre-signed.
//!
//! - **One partition:** one gateway serves both districts on one Mosquitto.
//! - **Two partitions:** a gateway per district, each on its own Mosquitto.
//!
//! Each district's reports are published as fast as one QoS 1 connection per district takes
//! them. The rate is the reports committed to the gateways' stores (fsync'd, aggregated,
//! evaluated) per second, from the first publish to the last commit. The two set-ups alternate
//! `--runs` times; the median of each is printed, and their ratio.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: failing loudly is right

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::Gateway;
use gateway::store::Table;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
use system_tests::bench::gateway_settings;
use system_tests::load_frames::{SECOND_ZONE, split_report, split_site};
use system_tests::services::Mosquitto;

type Frames = Arc<Vec<(String, Vec<u8>)>>;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

/// Publishes `frames` on one QoS 1 connection to `port` as fast as the broker takes them.
async fn publish(port: u16, frames: Frames) {
    let id = format!("partitions-{}-{port}", rand::random::<u32>());
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(256 * 1024));
    let (client, mut eventloop) = AsyncClient::new(o, 1000);
    let running = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    for (topic, frame) in frames.iter() {
        client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, frame.clone())
            .await
            .unwrap();
    }
    // Queued after the frames: the event loop writes them all, then disconnects.
    client.disconnect().await.unwrap();
    let _ = running.await;
}

async fn committed(gateways: &[&Gateway], want: i64) {
    loop {
        let done: i64 = gateways
            .iter()
            .map(|g| g.store().last_id(Table::Readings).unwrap())
            .sum();
        if done >= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn start(
    catalog: &Arc<device_profiles::Catalog>,
    keys: &gateway::keys::Keys,
    broker: &Mosquitto,
    zones: &[&str],
    store: &std::path::Path,
) -> Gateway {
    let mut s = gateway_settings(broker, store, &format!("bench-{}", rand::random::<u32>()));
    s.zones = zones.iter().map(|z| (*z).to_owned()).collect();
    let gw = Gateway::start(s, catalog.clone(), keys.clone())
        .await
        .unwrap();
    while gw.metrics().broker_connected.get() != 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw
}

/// Reports committed per second, with `partitions` gateways (1 or 2).
async fn run(
    partitions: usize,
    catalog: &Arc<device_profiles::Catalog>,
    keys: &gateway::keys::Keys,
    halves: &[Frames; 2],
) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let total = (halves[0].len() + halves[1].len()) as i64;
    let brokers: Vec<Mosquitto> = (0..partitions).map(|_| Mosquitto::start()).collect();
    let mut gateways = Vec::new();
    if partitions == 1 {
        let store = dir.path().join("one");
        std::fs::create_dir_all(&store).unwrap();
        gateways.push(start(catalog, keys, &brokers[0], &[], &store).await);
    } else {
        for (i, zone) in ["360702", SECOND_ZONE].into_iter().enumerate() {
            let store = dir.path().join(zone);
            std::fs::create_dir_all(&store).unwrap();
            gateways.push(start(catalog, keys, &brokers[i], &[zone], &store).await);
        }
    }
    let started = Instant::now();
    let ports: Vec<u16> = (0..2).map(|i| brokers[i % partitions].port).collect();
    let publishers: Vec<_> = (0..2)
        .map(|i| tokio::spawn(publish(ports[i], halves[i].clone())))
        .collect();
    let refs: Vec<&Gateway> = gateways.iter().collect();
    committed(&refs, total).await;
    let rate = total as f64 / started.elapsed().as_secs_f64();
    for p in publishers {
        p.await.unwrap();
    }
    for g in gateways {
        g.stop().await;
    }
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let devices = arg("--devices", 2000);
    let rounds = arg("--rounds", 10) as u32;
    let runs = arg("--runs", 3);
    let dir = tempfile::tempdir().unwrap();
    let catalog = Arc::new(split_site(dir.path(), devices));
    let keys = gateway::keys::Keys::load(&dir.path().join("keys.toml")).unwrap();
    let t0 = (gateway::clock::now_ms() - i64::from(rounds + 5) * 60_000) / 60_000 * 60_000;
    let half = |loggers: std::ops::Range<usize>| -> Frames {
        let mut frames = Vec::new();
        for r in 0..rounds {
            for d in loggers.clone() {
                let at = t0 + i64::from(r) * 60_000 + (d * 60_000 / devices) as i64;
                frames.push(split_report(d, devices, r, at));
            }
        }
        Arc::new(frames)
    };
    let halves = [half(0..devices / 2), half(devices / 2..devices)];
    println!(
        "{devices} loggers in two districts, {rounds} reports each ({} reports a run), {runs} runs",
        devices * rounds as usize
    );
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let a = run(1, &catalog, &keys, &halves).await;
        let b = run(2, &catalog, &keys, &halves).await;
        println!(
            "run {}: one partition {a:>8.0} reports/s, two partitions {b:>8.0} reports/s",
            i + 1
        );
        one.push(a);
        two.push(b);
    }
    let (one, two) = (median(one), median(two));
    println!(
        "median: one partition {one:.0} reports/s, two partitions {two:.0} reports/s ({:.2}x)",
        two / one
    );
}
