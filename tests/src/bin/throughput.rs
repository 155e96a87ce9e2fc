//! Throughput: the gateway with every stage on (verify, decode, aggregate, rules, fsync'd local
//! store, InfluxDB sink into a real VictoriaMetrics) against the rate at which the same
//! Mosquitto delivers the same stream to `mosquitto_sub -t 'cs/v1/#' > /dev/null`, at QoS 0 and
//! QoS 1, with 1 and 4 publisher connections, interleaved, median of the rounds.
//!
//! ```text
//! cargo run --release -p system-tests --bin throughput -- [--messages N] [--devices D]
//!     [--rounds R] [--report FILE]
//! ```
//!
//! Frames are signed before the clock starts (pressure loggers of a generated site, one water
//! main per hundred), so the publisher never limits the measurement by sealing. The gateway runs
//! on a tokio runtime of its own (two worker threads), not on the publishers'. A run's rate is
//! messages over the time from the first publish to the last message received (baseline:
//! `mosquitto_sub -C N` exits) or committed (gateway: `citysense_readings_accepted_total`).
//! Sequence gaps are the gateway's own `citysense_ledger_missing_reports`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: failing loudly is right

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use device_profiles::Catalog;
use gateway::sink::influxdb::InfluxSection;
use gateway::{Gateway, Settings};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use system_tests::load_frames::logger_report;
use system_tests::services::{Mosquitto, VictoriaMetrics, require};

/// Counts heap bytes, so memory per device is live heap, not resident pages the allocator keeps.
#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not freed, this process.
fn live_heap() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

struct Args {
    messages: usize,
    devices: usize,
    rounds: usize,
    memory: Vec<usize>,
    visibility_samples: usize,
    connections: usize,
    parts: Vec<String>,
    report: Option<PathBuf>,
}

/// The parts of a run, in order.
const PARTS: [&str; 4] = ["throughput", "visibility", "memory", "connections"];

fn args() -> Args {
    let mut a = Args {
        messages: 100_000,
        devices: 1000,
        rounds: 3,
        memory: vec![10_000, 100_000],
        visibility_samples: 30,
        connections: 10_000,
        parts: PARTS.map(String::from).to_vec(),
        report: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match flag.as_str() {
            "--messages" => a.messages = value().parse().expect("--messages N"),
            "--devices" => a.devices = value().parse().expect("--devices D"),
            "--rounds" => a.rounds = value().parse().expect("--rounds R"),
            "--report" => a.report = Some(value().into()),
            "--visibility-samples" => {
                a.visibility_samples = value().parse().expect("--visibility-samples N")
            }
            "--connections" => a.connections = value().parse().expect("--connections N"),
            "--parts" => {
                a.parts = value().split(',').map(String::from).collect();
                if let Some(p) = a.parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    panic!("unknown part {p}: the parts are {}", PARTS.join(","));
                }
            }
            "--memory" => {
                a.memory = value()
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(|n| n.parse().expect("--memory N[,N...]"))
                    .collect()
            }
            "--help" | "-h" => {
                println!(
                    "throughput [--parts throughput,visibility,memory,connections] [--messages N (100000)] [--devices D (1000)] [--rounds R (3)] [--visibility-samples N (30)] [--memory N,N (10000,100000)] [--connections N (10000)] [--report FILE.json]\n\npublish → alert latency under load: deploy/bench/soak.sh --rate R [--nodelay] (gateway and load in processes of their own; deploy/bench/run.sh runs it at half the QoS 1 ceiling measured here)"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other} (try --help)"),
        }
    }
    a
}

/// `messages` signed frames round-robin over `devices`, boot epoch `epoch`, 1 ms apart and
/// ending now.
fn frames(devices: usize, messages: usize, epoch: u32) -> Vec<(String, Vec<u8>)> {
    let start = gateway::clock::now_ms() - messages as i64;
    (0..messages)
        .map(|k| logger_report(k % devices, epoch, (k / devices) as u32, start + k as i64))
        .collect()
}

/// A connected publisher and its event loop, which ends once the client disconnects (a client
/// left connected would keep its request queue, tens of MB after a burst, for the whole run).
async fn publisher(port: u16, id: String) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(60))
        .set_outgoing_inflight_upper_limit(1000);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    o.set_network_options(net);
    let (c, mut eventloop) = AsyncClient::new(o, 100_000);
    let (up_tx, mut up_rx) = tokio::sync::mpsc::channel(1);
    let running = tokio::spawn(async move {
        // After DISCONNECT is queued, poll until the broker closes the connection: the frames
        // still buffered are flushed on the way.
        let mut disconnecting = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    let _ = up_tx.try_send(());
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => disconnecting = true,
                Ok(_) => {}
                Err(_) if disconnecting => break,
                Err(rumqttc::v5::ConnectionError::RequestsDone) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    up_rx.recv().await;
    (c, running)
}

/// Publishes `frames` over `connections` connections, as fast as the clients go; returns once
/// every frame is written and the connections are closed.
async fn publish_all(
    port: u16,
    frames: &Arc<Vec<(String, Vec<u8>)>>,
    connections: usize,
    qos: QoS,
) {
    let mut clients = Vec::new();
    for c in 0..connections {
        clients.push(publisher(port, format!("bench-pub-{}-{c}", rand::random::<u32>())).await);
    }
    let mut tasks = Vec::new();
    for (c, (client, running)) in clients.into_iter().enumerate() {
        let frames = frames.clone();
        tasks.push(tokio::spawn(async move {
            for (topic, payload) in frames.iter().skip(c).step_by(connections) {
                client
                    .publish(topic.as_str(), qos, false, payload.clone())
                    .await
                    .unwrap();
            }
            // Queued after the frames: the event loop writes them all, then disconnects.
            client.disconnect().await.unwrap();
            running.await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn qos_of(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Messages per second Mosquitto delivers to `mosquitto_sub`.
async fn baseline(
    broker: &Mosquitto,
    frames: &Arc<Vec<(String, Vec<u8>)>>,
    pubs: usize,
    q: u8,
) -> f64 {
    let n = frames.len();
    let mut sub = Command::new(require("mosquitto_sub", "mosquitto-clients"))
        .args(["-V", "mqttv5", "-h", "127.0.0.1", "-p"])
        .arg(broker.port.to_string())
        .args(["-t", "cs/v1/#", "-q", &q.to_string(), "-C", &n.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // mosquitto_sub gives no signal once subscribed; half a second is ample on loopback.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    publish_all(broker.port, frames, pubs, qos_of(q)).await;
    let deadline = started + Duration::from_secs(120);
    loop {
        if let Some(status) = sub.try_wait().unwrap() {
            assert!(status.success(), "mosquitto_sub failed");
            return n as f64 / started.elapsed().as_secs_f64();
        }
        if Instant::now() > deadline {
            let _ = sub.kill();
            return 0.0;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

struct GatewayRun {
    rate: f64,
    accepted: u64,
    gaps: i64,
    points: i64,
}

fn settings(broker: &Mosquitto, vm: &VictoriaMetrics, store: &std::path::Path) -> Settings {
    let id = format!("bench-{}", rand::random::<u32>());
    Settings {
        influxdb: Some(InfluxSection {
            url: vm.url(),
            org: "bench".into(),
            bucket: "bench".into(),
            batch_lines: 5000,
            flush_ms: gateway::sink::influxdb::DEFAULT_FLUSH_MS,
            timeout_ms: 10_000,
            gzip: true,
            token: String::new(),
        }),
        ..system_tests::bench::gateway_settings(broker, store, &id)
    }
}

/// A gateway with every stage on, subscribed.
async fn started(
    broker: &Mosquitto,
    vm: &VictoriaMetrics,
    catalog: &Arc<Catalog>,
    keys: &gateway::keys::Keys,
    store: &std::path::Path,
) -> Gateway {
    let gw = Gateway::start(settings(broker, vm, store), catalog.clone(), keys.clone())
        .await
        .unwrap();
    subscribed(&gw).await;
    gw
}

/// Waits until the gateway is connected with its subscription granted.
async fn subscribed(gw: &Gateway) {
    while gw.metrics().broker_connected.get() != 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Reports per device in the memory run, a minute apart in event time: eleven minutes cover the
/// longest window a default rule or aggregate keeps (the 10-minute road-water rise, the
/// 5-minute device-health window), so what is measured is the steady state.
const MEMORY_REPORTS: u32 = 12;

/// Live heap bytes per tracked device, for a gateway on a site of `devices` loggers: the site,
/// catalog and registry (static facts, ledgers: allocated at start for every site device), and
/// what [`MEMORY_REPORTS`] reports from each add (latest values, windows, rule history, alert
/// state). Resident memory of the whole process alongside.
struct Memory {
    static_per_device: f64,
    state_per_device: f64,
    rss_per_device: f64,
}

async fn memory_per_device(broker: &Mosquitto, vm: &VictoriaMetrics, devices: usize) -> Memory {
    let dir = tempfile::tempdir().unwrap();
    let site = simulator::load_site::write_site(dir.path(), devices, "127.0.0.1:1883").unwrap();
    let (heap0, rss0) = (live_heap(), rss());
    let catalog = Arc::new(
        Catalog::load(std::path::Path::new(device_profiles::PROFILES_DIR), &site).unwrap(),
    );
    let keys = gateway::keys::Keys::load(&dir.path().join("keys.toml")).unwrap();
    let gw = started(broker, vm, &catalog, &keys, dir.path()).await;
    let heap1 = live_heap();
    let start = gateway::clock::now_ms() - i64::from(MEMORY_REPORTS) * 60_000;
    for round in 0..MEMORY_REPORTS {
        let t = start + i64::from(round) * 60_000;
        let frames = Arc::new(
            (0..devices)
                .map(|d| logger_report(d, 1, round, t + d as i64 * 60_000 / devices as i64))
                .collect::<Vec<_>>(),
        );
        publish_all(broker.port, &frames, 1, QoS::AtLeastOnce).await;
        let want = devices as u64 * u64::from(round + 1);
        while gw.metrics().readings.with_label_values(&["pipe"]).get() < want {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (heap2, rss2) = (live_heap(), rss());
    gw.stop().await;
    let per = |bytes: i64| bytes.max(0) as f64 / devices as f64;
    Memory {
        static_per_device: per(heap1 - heap0),
        state_per_device: per(heap2 - heap1),
        rss_per_device: per(rss2 as i64 - rss0 as i64),
    }
}

/// Publish → point visible in VictoriaMetrics: one logger reports a minute apart in event time
/// (past minutes), so each report closes the previous minute's window of its water main; the
/// time from publishing it until `/api/v1/export` returns that window's `pipe_last` sample
/// (polled every 10 ms, no forced flush) is one sample. The gateway writes a committed point at
/// once, but at most one write every `influxdb.flush_ms` (the default, 200 ms); the next report
/// is published right after a sample is seen, so it comes soon after a write and waits out the
/// rest of that gap when VictoriaMetrics was quick to show the sample (the worst phase).
/// Returns the first point of the new series apart, then the samples.
async fn visibility(broker: &Mosquitto, vm: &VictoriaMetrics, samples: usize) -> (f64, Vec<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let site = simulator::load_site::write_site(dir.path(), 1, "127.0.0.1:1883").unwrap();
    let catalog = Arc::new(
        Catalog::load(std::path::Path::new(device_profiles::PROFILES_DIR), &site).unwrap(),
    );
    let keys = gateway::keys::Keys::load(&dir.path().join("keys.toml")).unwrap();
    let gw = started(broker, vm, &catalog, &keys, dir.path()).await;
    let (client, running) =
        publisher(broker.port, format!("bench-vis-{}", rand::random::<u32>())).await;
    let vm_addr: std::net::SocketAddr = format!("127.0.0.1:{}", vm.port).parse().unwrap();
    let minute = 60_000;
    let base = (gateway::clock::now_ms() / minute - samples as i64 - 2) * minute;
    let epoch = rand::random::<u16>() as u32 + 10;
    let publish = |k: usize| {
        let (topic, payload) = logger_report(0, epoch, k as u32, base + k as i64 * minute + 1_000);
        let client = client.clone();
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    };
    publish(0).await;
    // Sample 0 creates the series: VictoriaMetrics indexes a new series before it can be found,
    // which takes seconds once per series; it is reported apart.
    let mut out = Vec::with_capacity(samples + 1);
    for k in 1..=samples + 1 {
        let end = base + k as i64 * minute;
        let started = Instant::now();
        publish(k).await;
        let query = format!(
            "/api/v1/export?match[]=pipe_last%7Basset%3D%22LA0%22%7D&start={}&end={}",
            end / 1000 - 1,
            end / 1000 + 1
        );
        loop {
            let (status, body) = system_tests::http::get(vm_addr, &query).await;
            if status == 200 && body.contains(&format!("{end}")) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the point of the window ending at {end} never became visible"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        out.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    client.disconnect().await.unwrap();
    running.await.unwrap();
    gw.stop().await;
    let first = out.remove(0);
    (first, out)
}

/// The `q` quantile of `v` (sorted in place).
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

/// The rig at connection scale: `devices` simulated loggers, one broker connection each,
/// publishing at `rate` for 20 s against a gateway with every stage on (`simulator load
/// --connection-per-device`).
async fn connection_scale(
    broker: &Mosquitto,
    vm: &VictoriaMetrics,
    devices: usize,
    rate: f64,
) -> simulator::load::LoadReport {
    let dir = tempfile::tempdir().unwrap();
    let site = simulator::load_site::write_site(dir.path(), devices, "127.0.0.1:1883").unwrap();
    let catalog = Arc::new(
        Catalog::load(std::path::Path::new(device_profiles::PROFILES_DIR), &site).unwrap(),
    );
    let keys = gateway::keys::Keys::load(&dir.path().join("keys.toml")).unwrap();
    let gw = started(broker, vm, &catalog, &keys, dir.path()).await;
    let connecting = Instant::now();
    let report = simulator::load::load(&simulator::load::LoadOptions {
        mqtt_host: "127.0.0.1".into(),
        mqtt_port: broker.port,
        gateway: format!("http://{}", gw.http_addr()),
        devices,
        rate,
        duration: Duration::from_secs(20),
        connections: devices,
        per_device: true,
        qos: QoS::AtLeastOnce,
        progress: false,
    })
    .await
    .unwrap();
    println!(
        "connections: {devices} connected and published for 20 s in {:.0} s in all",
        connecting.elapsed().as_secs_f64()
    );
    gw.stop().await;
    report
}

/// Raises this process's open-file limit to its hard limit (the broker, started after, inherits
/// it): a connection per device needs a descriptor each on both ends.
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

async fn through_gateway(
    broker: &Mosquitto,
    vm: &VictoriaMetrics,
    catalog: &Arc<Catalog>,
    keys: &gateway::keys::Keys,
    frames: &Arc<Vec<(String, Vec<u8>)>>,
    pubs: usize,
    q: u8,
) -> GatewayRun {
    let n = frames.len() as u64;
    let store = tempfile::tempdir().unwrap();
    // The gateway on a runtime of its own, as in the field where it is a process of its own:
    // the publishers' tasks do not take turns with its tasks on the same worker threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gateway")
        .enable_all()
        .build()
        .unwrap();
    let (settings, catalog, keys) = (
        settings(broker, vm, store.path()),
        catalog.clone(),
        keys.clone(),
    );
    let gw = runtime
        .spawn(async move { Gateway::start(settings, catalog, keys).await.unwrap() })
        .await
        .unwrap();
    subscribed(&gw).await;
    let accepted = |gw: &Gateway| gw.metrics().readings.with_label_values(&["pipe"]).get();
    let started = Instant::now();
    publish_all(broker.port, frames, pubs, qos_of(q)).await;
    // Until every reading is committed, or nothing moved for three seconds (QoS 0 losses).
    let (mut last, mut moved) = (0, Instant::now());
    let mut done_at = Instant::now();
    loop {
        let a = accepted(&gw);
        if a != last {
            (last, moved, done_at) = (a, Instant::now(), Instant::now());
        }
        if a >= n || moved.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let run = GatewayRun {
        rate: last as f64 / done_at.duration_since(started).as_secs_f64(),
        accepted: last,
        gaps: gw.metrics().ledger_missing.get(),
        points: gw.store().last_point_id().unwrap(),
    };
    runtime.spawn(gw.stop()).await.unwrap();
    runtime.shutdown_background();
    run
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // The gateway's heap as it runs in the field (`gateway::heap`).
    gateway::heap::limit_arenas();
    tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(run());
}

async fn run() {
    let a = args();
    raise_file_limit();
    let dir = tempfile::tempdir().unwrap();
    let site = simulator::load_site::write_site(dir.path(), a.devices, "127.0.0.1:1883").unwrap();
    let catalog = Arc::new(
        Catalog::load(std::path::Path::new(device_profiles::PROFILES_DIR), &site).unwrap(),
    );
    let keys = gateway::keys::Keys::load(&dir.path().join("keys.toml")).unwrap();
    let broker = Mosquitto::start();
    // In memory, as the city's server is not on the gateway's disk (see
    // `VictoriaMetrics::start_in_memory`); the gateway's store stays on the disk.
    let vm = VictoriaMetrics::start_in_memory();
    println!(
        "throughput: {} messages of {} devices per run, {} rounds, Mosquitto on 127.0.0.1:{}, VictoriaMetrics on {}",
        a.messages,
        a.devices,
        a.rounds,
        broker.port,
        vm.url()
    );
    let part = |name: &str| a.parts.iter().any(|p| p == name);
    let mut rows = Vec::new();
    let mut epoch = 1u32;
    let qos_runs = if part("throughput") {
        &[0u8, 1][..]
    } else {
        &[]
    };
    for &q in qos_runs {
        for pubs in [1usize, 4] {
            let (mut base, mut gw_rates, mut worst_gaps, mut lost, mut points) =
                (Vec::new(), Vec::new(), 0i64, 0u64, 0i64);
            for _ in 0..a.rounds {
                epoch += 1;
                let f = Arc::new(frames(a.devices, a.messages, epoch));
                base.push(baseline(&broker, &f, pubs, q).await);
                epoch += 1;
                let f = Arc::new(frames(a.devices, a.messages, epoch));
                let g = through_gateway(&broker, &vm, &catalog, &keys, &f, pubs, q).await;
                gw_rates.push(g.rate);
                worst_gaps = worst_gaps.max(g.gaps);
                lost = lost.max(a.messages as u64 - g.accepted);
                points = points.max(g.points);
            }
            let (b, g) = (median(base), median(gw_rates));
            println!(
                "qos{q} publishers {pubs}: mosquitto_sub {b:>9.0} msg/s   gateway {g:>9.0} msg/s   ratio {:.2}   gaps {worst_gaps}   lost {lost}   points {points}",
                g / b
            );
            rows.push(serde_json::json!({
                "qos": q, "publishers": pubs, "baseline_msg_s": b, "gateway_msg_s": g,
                "ratio": g / b, "gaps": worst_gaps, "lost": lost, "points_per_run": points,
            }));
        }
    }
    let mut visible = serde_json::Value::Null;
    if part("visibility") {
        let (first, mut ms) = visibility(&broker, &vm, a.visibility_samples).await;
        let (p50, p99) = (quantile(&mut ms, 0.5), quantile(&mut ms, 0.99));
        println!(
            "visibility: publish → point visible in VictoriaMetrics p50 {p50:.0} ms, p99 {p99:.0} ms, max {:.0} ms ({} samples, influxdb.flush_ms {}); the first point of a new series {first:.0} ms",
            ms[ms.len() - 1],
            ms.len(),
            gateway::sink::influxdb::DEFAULT_FLUSH_MS
        );
        visible = serde_json::json!({
            "p50_ms": p50, "p99_ms": p99, "samples": ms.len(), "new_series_ms": first,
        });
    }
    let mut memory = Vec::new();
    let memory_runs = if part("memory") { &a.memory[..] } else { &[] };
    for &devices in memory_runs {
        let m = memory_per_device(&broker, &vm, devices).await;
        println!(
            "memory at {devices} devices (live heap): {:.0} B per device for the site, catalog and registry, {:.0} B per device of state after {MEMORY_REPORTS} reports each; resident {:.0} B per device",
            m.static_per_device, m.state_per_device, m.rss_per_device
        );
        memory.push(serde_json::json!({
            "devices": devices, "static_bytes_per_device": m.static_per_device,
            "state_bytes_per_device": m.state_per_device, "rss_bytes_per_device": m.rss_per_device,
        }));
    }
    for r in &rows {
        println!(
            "throughput ratio qos{} {}pub: {:.2}",
            r["qos"],
            r["publishers"],
            r["ratio"].as_f64().unwrap()
        );
    }
    let mut scale = serde_json::Value::Null;
    if part("connections") {
        let r = connection_scale(&broker, &vm, a.connections, 2_000.0).await;
        println!(
            "connections: {} devices on {} connections, published {} at {:.0}/s, gateway received {}, lost {}",
            r.devices, r.connections, r.published, r.publish_rate, r.gateway_received, r.lost
        );
        scale = serde_json::json!({
            "devices": r.devices, "connections": r.connections, "published": r.published,
            "rate": r.publish_rate, "received": r.gateway_received, "lost": r.lost,
        });
    }
    if let Some(p99) = visible["p99_ms"].as_f64() {
        println!("visibility p99 publish → point in VictoriaMetrics: {p99:.0} ms");
    }
    for m in &memory {
        println!(
            "memory per tracked device at {}: {:.0} B of state (+ {:.0} B of site and registry)",
            m["devices"],
            m["state_bytes_per_device"].as_f64().unwrap_or(0.0),
            m["static_bytes_per_device"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(path) = a.report {
        let all = serde_json::json!({
            "throughput": rows, "visibility": visible, "memory": memory,
            "connections": scale,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&all).unwrap()).unwrap();
    }
}
