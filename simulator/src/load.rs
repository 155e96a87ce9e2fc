//! `simulator load`: as many devices as the machine allows, at a given rate, against a
//! gateway; what was published, what the gateway processed (its own counters), losses, and the
//! latency from a triggering publish to the alert on `cs/v1/alerts/events`.
//!
//! The devices are pressure loggers of a generated site (`ld-000001` …), written by
//! [`crate::load_site::write_site`] for the gateway to load. Each device is a real `node::Node` (sealing and
//! sequence numbers); its frames are sealed as they are sent. A probe device on a connection of
//! its own ([`crate::probe`]) reports four times a second, raising and resolving a gas alarm in
//! turn, to measure the alert latency under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use node::lifecycle::Node;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use serde::Serialize;
use wire::{Quantity, Trigger};

use crate::clock::now_ms;
use crate::load_site::{ZONE, boot, client, config, device_id};
use crate::probe::Probe;
use crate::run::GatewayApi;

/// The load is published in a burst every millisecond (`rate / 1000` reports), as near to
/// reports arriving one by one as the timer goes. With a burst every 10 ms, 110 reports at
/// 11,000 a second, the probe's report often came right behind a burst and waited for it.
const PACING: Duration = Duration::from_millis(1);

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Broker host.
    pub mqtt_host: String,
    /// Broker port.
    pub mqtt_port: u16,
    /// The gateway's HTTP base URL.
    pub gateway: String,
    /// Devices publishing.
    pub devices: usize,
    /// Frames per second, all devices together.
    pub rate: f64,
    /// How long.
    pub duration: Duration,
    /// Broker connections the devices share (ignored with `per_device`).
    pub connections: usize,
    /// One connection per device.
    pub per_device: bool,
    /// QoS of the reports.
    pub qos: QoS,
    /// Show a progress bar.
    pub progress: bool,
}

/// What a load run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Devices.
    pub devices: usize,
    /// Connections.
    pub connections: usize,
    /// Target rate, frames/s.
    pub target_rate: f64,
    /// Seconds of publishing.
    pub seconds: f64,
    /// Frames published (handed to the client and, at QoS 1, acknowledged by the broker).
    pub published: u64,
    /// Achieved publish rate, frames/s.
    pub publish_rate: f64,
    /// Reports the gateway received in that time (its `citysense_mqtt_messages_received_total{stream="up"}`).
    pub gateway_received: u64,
    /// Readings it accepted (`citysense_readings_accepted_total`; two per load report:
    /// pressure and flow).
    pub gateway_readings: u64,
    /// The gateway's processed rate, frames/s.
    pub gateway_rate: f64,
    /// Published but not received: lost on the way (or still queued when measured).
    pub lost: i64,
    /// `gateway_received / published`.
    pub ratio: f64,
    /// Alert latency samples.
    pub alert_samples: usize,
    /// Publish → alert, p50, ms.
    pub alert_p50_ms: f64,
    /// Publish → alert, p99, ms.
    pub alert_p99_ms: f64,
    /// Publish → alert, the slowest sample, ms.
    pub alert_max_ms: f64,
    /// Publish → the broker's delivery of the probe's report to a subscriber beside the
    /// gateway (the probe's client and the broker), p50, ms.
    pub alert_to_broker_p50_ms: f64,
    /// The same, p99, ms.
    pub alert_to_broker_p99_ms: f64,
    /// That delivery → the alert (the gateway, and the broker on the way back), p50, ms.
    pub alert_from_broker_p50_ms: f64,
    /// The same, p99, ms.
    pub alert_from_broker_p99_ms: f64,
}

/// Connections set up at the same time.
const CONNECTING_AT_ONCE: usize = 200;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs the load and measures it.
pub async fn load(opts: &LoadOptions) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(
        opts.devices > 0 && opts.rate > 0.0,
        "need devices and a rate above 0"
    );
    // Only /metrics, which is open.
    let gateway = GatewayApi::new(&opts.gateway, None)?;
    let received_before = gateway
        .metric(
            "citysense_mqtt_messages_received_total",
            Some(("stream", "up")),
        )
        .await?;
    let accepted_before = gateway
        .metric("citysense_readings_accepted_total", None)
        .await?;
    let connections = if opts.per_device {
        opts.devices
    } else {
        opts.connections.clamp(1, opts.devices)
    };
    let acked = Arc::new(AtomicU64::new(0));
    // Client ids unique per run: a second run in the same process must not take over the
    // connections of the first.
    let run_id: u32 = rand::random();
    // Connections are set up a few hundred at a time: one after the other, ten thousand of them
    // take minutes (each waits for its CONNACK).
    let mut connecting = tokio::task::JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTING_AT_ONCE));
    for c in 0..connections {
        let id = format!("sim-load-{run_id:08x}-{c}");
        let (host, port, acked) = (opts.mqtt_host.clone(), opts.mqtt_port, acked.clone());
        let permits = permits.clone();
        // A device alone on its connection has little in flight; shared ones carry the rate.
        let inflight = if opts.per_device { 16 } else { 1000 };
        connecting.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            anyhow::Ok((c, client(&host, port, &id, inflight, acked).await?))
        });
    }
    let mut clients: Vec<(usize, AsyncClient)> = Vec::with_capacity(connections);
    while let Some(joined) = connecting.join_next().await {
        clients.push(joined??);
    }
    clients.sort_by_key(|(c, _)| *c);
    let clients: Vec<AsyncClient> = clients.into_iter().map(|(_, c)| c).collect();
    // The probe and its watcher: connections of their own, on a thread of their own.
    let probe = Probe::start(&opts.mqtt_host, opts.mqtt_port, run_id, opts.duration).await?;
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as u32;
    let mut nodes: Vec<Node<4>> = (0..opts.devices)
        .map(|i| config(&device_id(i), "water-pressure").map(|c| boot(c, epoch)))
        .collect::<anyhow::Result<_>>()?;
    let topics: Vec<String> = (0..opts.devices)
        .map(|i| format!("cs/v1/{ZONE}/water-pressure/{}/up", device_id(i)))
        .collect();
    for n in &mut nodes {
        let now = now_ms();
        n.set_clock(now as u64, 0);
    }
    let bar = opts.progress.then(|| {
        let b = indicatif::ProgressBar::new(opts.duration.as_secs());
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} s  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let started = Instant::now();
    let boot = Instant::now();
    let per_tick = opts.rate * PACING.as_secs_f64();
    let (mut owed, mut sent, mut device) = (0.0, 0u64, 0usize);
    let mut interval = tokio::time::interval(PACING);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while started.elapsed() < opts.duration {
        interval.tick().await;
        owed += per_tick;
        let uptime = boot.elapsed().as_millis() as u64;
        while owed >= 1.0 {
            owed -= 1.0;
            let n = &mut nodes[device];
            let body = node::pipe::report(
                Trigger::Periodic,
                &[(Quantity::Pressure, 0.30), (Quantity::Flow, 200.0)],
            );
            if n.report(&body, uptime, false).is_ok()
                && let Some(q) = n.queue.pop()
            {
                let c = &clients[if opts.per_device {
                    device
                } else {
                    device % connections
                }];
                if c.publish(topics[device].as_str(), opts.qos, false, q.frame.to_vec())
                    .await
                    .is_ok()
                {
                    sent += 1;
                }
            }
            device = (device + 1) % opts.devices;
        }
        if let Some(b) = &bar {
            b.set_position(started.elapsed().as_secs());
            b.set_message(format!("{sent} published"));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(b) = bar {
        b.finish();
    }
    // The probe's run (it waited for its own acknowledgements); then the broker's
    // acknowledgements of the QoS 1 reports; then the gateway's drain.
    let probe = probe.finish().await?;
    let probes = probe.published;
    let expected_acks = if opts.qos == QoS::AtLeastOnce {
        sent
    } else {
        0
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) < expected_acks && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut received = 0.0;
    let mut stable = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let r = gateway
            .metric(
                "citysense_mqtt_messages_received_total",
                Some(("stream", "up")),
            )
            .await?
            - received_before;
        if r == received {
            stable += 1;
            if stable >= 4 {
                break;
            }
        } else {
            stable = 0;
        }
        received = r;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let accepted = gateway
        .metric("citysense_readings_accepted_total", None)
        .await?
        - accepted_before;
    let gateway_received = (received as u64).saturating_sub(probes);
    Ok(LoadReport {
        devices: opts.devices,
        connections,
        target_rate: opts.rate,
        seconds,
        published: sent,
        publish_rate: sent as f64 / seconds,
        gateway_received,
        gateway_readings: (accepted as u64).saturating_sub(probes),
        gateway_rate: gateway_received as f64 / seconds,
        lost: sent as i64 - gateway_received as i64,
        ratio: gateway_received as f64 / sent.max(1) as f64,
        alert_samples: probe.total.len(),
        alert_p50_ms: percentile(&probe.total, 0.5),
        alert_p99_ms: percentile(&probe.total, 0.99),
        alert_max_ms: probe.total.last().copied().unwrap_or(f64::NAN),
        alert_to_broker_p50_ms: percentile(&probe.to_broker, 0.5),
        alert_to_broker_p99_ms: percentile(&probe.to_broker, 0.99),
        alert_from_broker_p50_ms: percentile(&probe.from_broker, 0.5),
        alert_from_broker_p99_ms: percentile(&probe.from_broker, 0.99),
    })
}
