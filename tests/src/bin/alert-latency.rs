//! Alert latency: from the MQTT publish of a triggering report to the alert on
//! `cs/v1/alerts/events`, through a real Mosquitto and the whole gateway (verify, decode,
//! aggregate, rules, fsync'd commit of readings and alert state, outbox, MQTT notifier with
//! PUBACK).
//!
//! ```text
//! cargo run --release -p system-tests --bin alert-latency -- [--samples N]
//! ```
//!
//! Each sample publishes one signed tunnel-gas report that either raises (22% LEL) or resolves
//! (2% LEL) `pipe.gas_high` on T1, waits for the event, and records the time between. Runs
//! against a stock Mosquitto and one with `set_tcp_nodelay true` (as in deploy/mosquitto), and
//! prints p50, p90, p99 and max for each.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: failing loudly is right

use std::sync::Arc;
use std::time::{Duration, Instant};

use device_profiles::Catalog;
use gateway::Gateway;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use system_tests::services::Mosquitto;
use tokio::sync::mpsc;
use wire::{Body, Header, PipeReading, PipeReadings, Quantity, Timestamp, Trigger};

const DEVICE: &str = "gz-t1-gas";
const TOPIC: &str = "cs/v1/360702/tunnel-gas/gz-t1-gas/up";

fn frame(sequence: u32, gas: f32) -> Vec<u8> {
    let mut readings = heapless::Vec::new();
    readings
        .push(PipeReading {
            quantity: Quantity::Gas,
            value: gas,
        })
        .unwrap();
    let header = Header {
        device_id: DEVICE,
        boot_epoch: 1,
        sequence,
        timestamp: Timestamp::Synced {
            unix_ms: gateway::clock::now_ms() as u64,
        },
    };
    let body = Body::PipeReadings(PipeReadings {
        trigger: Trigger::Threshold,
        readings,
    });
    wire::frame::seal_to_vec(&header, &body, &device_profiles::demo::key(DEVICE)).unwrap()
}

async fn connect(port: u16, id: &str) -> (AsyncClient, mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    o.set_network_options(net);
    let (client, mut eventloop) = AsyncClient::new(o, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    let (up_tx, mut up_rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    let _ = up_tx.try_send(());
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let _ = tx.send(p.payload.to_vec());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    up_rx.recv().await;
    (client, rx)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn measure(broker: &Mosquitto, samples: usize, label: &str) -> Vec<f64> {
    let store = tempfile::tempdir().unwrap();
    let catalog = Arc::new(Catalog::ganzhou().unwrap());
    let settings =
        system_tests::bench::gateway_settings(broker, store.path(), &format!("bench-{label}"));
    let keys = gateway::keys::Keys::demo(&catalog);
    let gw = Gateway::start(settings, catalog, keys).await.unwrap();
    let (watcher, mut events) = connect(broker.port, &format!("bench-watch-{label}")).await;
    watcher
        .subscribe("cs/v1/alerts/events", QoS::AtMostOnce)
        .await
        .unwrap();
    let (node, _) = connect(broker.port, &format!("bench-node-{label}")).await;
    // Until the gateway's subscription is in place a report may find nobody: the warm-up
    // publishes again after a short wait.
    let mut latencies = Vec::with_capacity(samples);
    let (mut sequence, mut raise, mut done) = (0, true, 0);
    let warmup = 20;
    while done < samples + warmup {
        sequence += 1;
        let gas = if raise { 22.0 } else { 2.0 };
        let payload = frame(sequence, gas);
        let sent = Instant::now();
        node.publish(TOPIC, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        let limit = Duration::from_secs(if done < warmup { 2 } else { 10 });
        let body = match tokio::time::timeout(limit, events.recv()).await {
            Ok(body) => body.unwrap(),
            Err(_) if done < warmup => continue,
            Err(_) => panic!("no alert event within {limit:?}"),
        };
        let elapsed = sent.elapsed().as_secs_f64() * 1000.0;
        let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let want = if raise { "raised" } else { "resolved" };
        assert_eq!(event["kind"], want, "{event}");
        if done >= warmup {
            latencies.push(elapsed);
        }
        raise = !raise;
        done += 1;
    }
    gw.stop().await;
    latencies
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut samples = 500;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--samples" => {
                samples = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--samples N")
            }
            "--help" | "-h" => {
                println!(
                    "alert-latency [--samples N]: publish → alert on cs/v1/alerts/events through Mosquitto and the gateway"
                );
                return;
            }
            other => panic!("unknown argument {other} (try --help)"),
        }
    }
    println!(
        "alert latency, publish → cs/v1/alerts/events, {samples} samples each (after 20 warm-up)"
    );
    println!(
        "{:<36} {:>8} {:>8} {:>8} {:>8}",
        "broker", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    let stock = Mosquitto::start();
    let nodelay = Mosquitto::start_with_listeners(tempfile::tempdir().unwrap(), |port| {
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true")
    });
    for (label, broker) in [("stock", &stock), ("nodelay", &nodelay)] {
        let mut l = measure(broker, samples, label).await;
        l.sort_by(f64::total_cmp);
        println!(
            "{:<36} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            format!("mosquitto ({label})"),
            percentile(&l, 0.5),
            percentile(&l, 0.9),
            percentile(&l, 0.99),
            l[l.len() - 1]
        );
    }
}
