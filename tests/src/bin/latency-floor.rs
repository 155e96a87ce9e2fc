//! The floor under publish → alert latency on this machine: a consumer that does only what any
//! gateway must, put in the gateway's place on the same rig (`deploy/bench/soak.sh --floor`).
//!
//! ```text
//! latency-floor --mqtt 127.0.0.1:1883 --listen 127.0.0.1:8080 --mode relay|durable [--dir DIR]
//! ```
//!
//! Both modes subscribe to the load's reports as the gateway does (MQTT 5, QoS 1, manual
//! acknowledgements, TCP_NODELAY), verify and decode the probe's frames, and publish a raised
//! event on `cs/v1/alerts/events` (QoS 1) for each alarming one, in the shape the load's
//! watcher pairs with its probe.
//!
//! - `relay`: the event is published as soon as its report is decoded; every report is
//!   acknowledged at once. Nothing is kept.
//! - `durable`: reports are gathered into batches while the batch before is being synced, as
//!   the gateway's pipeline gathers them; each batch's frames are appended to one file and
//!   `fdatasync`'d, and only then are its events published and its reports acknowledged. This
//!   is the least any design that keeps RELIABILITY.md's "accepted means durable" (and so
//!   publishes an alert only once the report that raised it is kept) can do: one small append
//!   and one sync per batch, against the gateway's SQLite commit of readings, points and alert
//!   state.
//!
//! For the load's bookkeeping it serves `GET /readyz` and `GET /metrics` with
//! `citysense_mqtt_messages_received_total{stream="up"}` (reports received) and
//! `citysense_readings_accepted_total` (reports acknowledged).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: failing loudly is right

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Publish};
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use simulator::load_site::{PROBE_SUBJECT, ZONE};
use tokio::sync::mpsc;
use wire::{Body, Quantity};

const EVENTS: &str = "cs/v1/alerts/events";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Relay,
    Durable,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    acknowledged: AtomicU64,
}

const USAGE: &str = concat!(
    "usage: latency-floor --mqtt HOST:PORT --listen ADDR --mode relay|durable [--dir DIR]\n",
    "  relay    publish each probe's alert as soon as its report is decoded\n",
    "  durable  append each batch of reports to DIR/reports and fdatasync it first (DIR: .)",
);

fn arguments() -> Result<(String, u16, String, Mode, PathBuf), String> {
    let (mut mqtt, mut listen, mut mode, mut dir) = (None, None, None, PathBuf::from("."));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--mqtt" => mqtt = Some(value()?),
            "--listen" => listen = Some(value()?),
            "--mode" => {
                mode = Some(match value()?.as_str() {
                    "relay" => Mode::Relay,
                    "durable" => Mode::Durable,
                    m => return Err(format!("unknown mode {m}: relay or durable")),
                });
            }
            "--dir" => dir = PathBuf::from(value()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let mqtt = mqtt.ok_or("--mqtt is required")?;
    let (host, port) = mqtt
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
        .ok_or(format!("--mqtt {mqtt}: expected HOST:PORT"))?;
    let listen = listen.ok_or("--listen is required")?;
    let mode = mode.ok_or("--mode is required")?;
    Ok((host, port, listen, mode, dir))
}

/// The probe's gas value, if `p` is an alarming probe report (verified with its demo key).
fn alarming_gas(p: &Publish) -> Option<f32> {
    let topic = std::str::from_utf8(&p.topic).ok()?;
    if !topic.contains("/tunnel-gas/") {
        return None;
    }
    let frame = wire::Frame::new_checked(&p.payload).ok()?;
    let key = device_profiles::demo::key(frame.device_id());
    let message = frame.verify(&key).ok()?.decode().ok()?;
    let Body::PipeReadings(r) = message.body else {
        return None;
    };
    r.readings
        .iter()
        .find(|r| r.quantity == Quantity::Gas && r.value >= 20.0)
        .map(|r| r.value)
}

async fn raise(client: &AsyncClient, gas: f32) {
    let event = serde_json::json!({
        "kind": "raised",
        "alert": { "subject": PROBE_SUBJECT, "value": f64::from(gas) },
    });
    client
        .publish(EVENTS, QoS::AtLeastOnce, false, event.to_string())
        .await
        .expect("the client's request queue is open");
}

/// Appends a batch's frames to the file and syncs it.
fn keep(mut file: &std::fs::File, batch: &[Publish]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(batch.iter().map(|p| p.payload.len() + 2).sum());
    for p in batch {
        bytes.extend_from_slice(&(p.payload.len() as u16).to_le_bytes());
        bytes.extend_from_slice(&p.payload);
    }
    file.write_all(&bytes)?;
    file.sync_data()
}

/// Publishes the batch's events and acknowledges its reports.
async fn settle(client: &AsyncClient, batch: &[Publish], counters: &Counters) {
    for p in batch {
        if let Some(gas) = alarming_gas(p) {
            raise(client, gas).await;
        }
    }
    for p in batch {
        client
            .ack(p)
            .await
            .expect("the client's request queue is open");
    }
    counters
        .acknowledged
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
}

/// Relay: each report settled as it comes.
async fn relay(
    client: AsyncClient,
    mut inbound: mpsc::UnboundedReceiver<Publish>,
    c: Arc<Counters>,
) {
    while let Some(p) = inbound.recv().await {
        settle(&client, std::slice::from_ref(&p), &c).await;
    }
}

/// Durable: a batch gathers while the one before is synced on a blocking thread.
async fn durable(
    client: AsyncClient,
    mut inbound: mpsc::UnboundedReceiver<Publish>,
    c: Arc<Counters>,
    dir: PathBuf,
) {
    let path = dir.join("reports");
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display())),
    );
    let mut gathering: Vec<Publish> = Vec::new();
    let mut syncing: Option<tokio::task::JoinHandle<Vec<Publish>>> = None;
    loop {
        tokio::select! {
            biased;
            done = async { syncing.as_mut().expect("guarded").await }, if syncing.is_some() => {
                syncing = None;
                let batch = done.expect("the sync thread does not panic");
                settle(&client, &batch, &c).await;
            }
            p = inbound.recv() => match p {
                Some(p) => gathering.push(p),
                None => return,
            },
        }
        while let Ok(p) = inbound.try_recv() {
            gathering.push(p);
        }
        if syncing.is_none() && !gathering.is_empty() {
            let batch = std::mem::take(&mut gathering);
            let file = file.clone();
            syncing = Some(tokio::task::spawn_blocking(move || {
                keep(&file, &batch).expect("the floor's file takes its append and sync");
                batch
            }));
        }
    }
}

async fn metrics(c: Arc<Counters>) -> String {
    format!(
        "citysense_mqtt_messages_received_total{{stream=\"up\"}} {}\ncitysense_readings_accepted_total {}\n",
        c.received.load(Ordering::Relaxed),
        c.acknowledged.load(Ordering::Relaxed)
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (host, port, listen, mode, dir) = match arguments() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("latency-floor: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    let counters = Arc::new(Counters::default());
    let mut o = MqttOptions::new(format!("latency-floor-{mode:?}"), host.as_str(), port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_start(true)
        .set_manual_acks(true)
        .set_receive_maximum(Some(gateway::net::mqtt::RECEIVE_MAXIMUM))
        .set_outgoing_inflight_upper_limit(gateway::net::mqtt::OUTGOING_INFLIGHT);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    o.set_network_options(net);
    let (client, mut eventloop) = AsyncClient::new(o, 16 * 1024);
    let (tx, inbound) = mpsc::unbounded_channel();
    let (subscribed_tx, mut subscribed) = mpsc::channel(1);
    let filter = Filter::new(format!("cs/v1/{ZONE}/+/+/up"), QoS::AtLeastOnce);
    let (sub, received) = (client.clone(), counters.clone());
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    sub.subscribe_many([filter.clone()])
                        .await
                        .expect("queue open");
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    let _ = subscribed_tx.try_send(());
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    received.received.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.send(p);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("latency-floor: broker {e}; reconnecting");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed.recv())
        .await
        .unwrap_or_else(|_| panic!("broker {host}:{port} did not take the subscription"));
    let worker = match mode {
        Mode::Relay => tokio::spawn(relay(client, inbound, counters.clone())),
        Mode::Durable => tokio::spawn(durable(client, inbound, counters.clone(), dir)),
    };
    let app = axum::Router::new()
        .route("/readyz", axum::routing::get(|| async { "ready\n" }))
        .route(
            "/metrics",
            axum::routing::get(move || metrics(counters.clone())),
        );
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {listen}: {e}"));
    eprintln!("latency-floor: {mode:?}, broker {host}:{port}, http {listen}");
    tokio::select! {
        served = axum::serve(listener, app) => served.expect("http serves"),
        _ = worker => {}
    }
}
