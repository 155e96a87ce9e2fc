//! The console under load: what its first load transfers, and how fast the API answers 50
//! people watching while the gateway ingests 1,000 reports a second (issue 23).
//!
//! ```text
//! cargo run --release -p system-tests --bin console-load -- [--viewers 50] [--rate 1000] [--seconds 60]
//! ```
//!
//! 1. **First load**: a gateway on the Ganzhou site; the bytes a browser transfers to open the
//!    console and see the situation (page, script, style gzipped; `whoami`, `situation`,
//!    `alerts` as the page asks for them, gzipped), headers included.
//! 2. **API latency**: a gateway on a generated site of `--rate` pressure loggers (Mosquitto on
//!    a free loopback port). Each viewer logs in, keeps the alert stream open and asks for one
//!    page's data a second, in turn the situation, the alerts and the device list: about 15
//!    times what the console asks (it refreshes every 15 s and on pushed events). Measured
//!    first with no reports (the baseline) and then while the loggers report once a second
//!    each; p50, p99 and max per route, and the ratio of the loaded p99 to the baseline.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: failing loudly is right

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use device_profiles::Catalog;
use gateway::Gateway;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
use system_tests::bench::gateway_settings;
use system_tests::load_frames::logger_report;
use system_tests::services::Mosquitto;

const PASSWORD: &str = "bench-viewer-password";
const ROUTES: [&str; 3] = [
    "/api/v1/situation",
    "/api/v1/alerts?events=200",
    "/api/v1/devices",
];

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

/// A logged-in viewer's HTTP client: its session cookie on every request.
async fn viewer(addr: SocketAddr, name: &str) -> (reqwest::Client, String) {
    // Bodies as sent: no decompression in the client (the Accept-Encoding sent says gzip).
    let http = reqwest::Client::builder().no_gzip().build().unwrap();
    let r = http
        .post(format!("http://{addr}/api/v1/login"))
        .json(&serde_json::json!({"name": name, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{name} logs in");
    let cookie = r.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    (http, cookie)
}

/// Bytes on the wire of a response: status line, headers and body as received.
fn wire_bytes(r: &reqwest::Response, body: usize) -> usize {
    let headers: usize = r
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    "HTTP/1.1 200 OK\r\n\r\n".len() + headers + body
}

async fn first_load(broker: &Mosquitto) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Arc::new(Catalog::ganzhou().unwrap());
    let keys = gateway::keys::Keys::demo(&catalog);
    let gw = Gateway::start(
        gateway_settings(broker, dir.path(), "bench-first"),
        catalog,
        keys,
    )
    .await
    .unwrap();
    let addr = gw.http_addr();
    gateway::auth::login::add(
        &gw.store(),
        ("watcher", gateway::auth::Role::Viewer, PASSWORD),
        "bench",
        0,
    )
    .unwrap()
    .unwrap();
    let (http, cookie) = viewer(addr, "watcher").await;
    let mut rows = Vec::new();
    for path in [
        "/console/",
        "/console/app.js",
        "/console/app.css",
        "/api/v1/whoami",
        "/api/v1/situation",
        "/api/v1/alerts?events=200",
    ] {
        let r = http
            .get(format!("http://{addr}{path}"))
            .header("Accept-Encoding", "gzip")
            .header("Cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let encoding = r
            .headers()
            .get("content-encoding")
            .map_or("identity".to_owned(), |v| v.to_str().unwrap().to_owned());
        let (head, body) = (wire_bytes(&r, 0), r.bytes().await.unwrap().len());
        rows.push((path, encoding, head + body));
    }
    println!("first load of the console (Ganzhou site), bytes on the wire:");
    for (path, encoding, bytes) in &rows {
        println!("  {path:<28} {encoding:<9} {bytes:>7}");
    }
    let total: usize = rows.iter().map(|r| r.2).sum();
    println!("  {:<38} {total:>7}", "total");
    gw.stop().await;
}

type Samples = Arc<Mutex<BTreeMap<&'static str, Vec<f64>>>>;

/// `viewers` people watching for `seconds`: each with the alert stream open, asking for one
/// route a second in turn. Latencies by route, ms.
async fn watch(addr: SocketAddr, viewers: usize, seconds: u64) -> BTreeMap<&'static str, Vec<f64>> {
    let samples: Samples = Arc::default();
    let mut tasks = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    for v in 0..viewers {
        let (http, cookie) = viewer(addr, &format!("viewer{v}")).await;
        let samples = samples.clone();
        tasks.push(tokio::spawn(async move {
            let stream = http
                .get(format!("http://{addr}/api/v1/alerts/stream"))
                .header("Cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(stream.status(), 200);
            // Spread the viewers over the second.
            tokio::time::sleep(Duration::from_millis((v as u64 * 1000) / viewers as u64)).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut i = v;
            while Instant::now() < until {
                tick.tick().await;
                let route = ROUTES[i % ROUTES.len()];
                i += 1;
                let started = Instant::now();
                let r = http
                    .get(format!("http://{addr}{route}"))
                    .header("Cookie", &cookie)
                    .header("Accept-Encoding", "gzip")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{route}");
                r.bytes().await.unwrap();
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                samples.lock().unwrap().entry(route).or_default().push(ms);
            }
            drop(stream);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(samples).unwrap().into_inner().unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// p50, p99, max and count of each route and of all.
fn summary(label: &str, by_route: &BTreeMap<&'static str, Vec<f64>>) -> f64 {
    println!("{label}:");
    let mut all: Vec<f64> = by_route.values().flatten().copied().collect();
    let mut rows: Vec<(&str, Vec<f64>)> = by_route.iter().map(|(k, v)| (*k, v.clone())).collect();
    rows.push(("all routes", std::mem::take(&mut all)));
    let mut p99_all = 0.0;
    for (route, mut v) in rows {
        v.sort_by(f64::total_cmp);
        let (p50, p99, max) = (percentile(&v, 0.5), percentile(&v, 0.99), v[v.len() - 1]);
        println!(
            "  {route:<28} n={:<6} p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  max {max:>7.2} ms",
            v.len()
        );
        p99_all = p99;
    }
    p99_all
}

/// Publishes one report from each of `devices` loggers every second until `stop`; how many.
async fn ingest(port: u16, devices: usize, stop: Arc<std::sync::atomic::AtomicBool>) -> u64 {
    let mut o = MqttOptions::new(
        format!("console-load-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(Some(256 * 1024));
    let (client, mut eventloop) = AsyncClient::new(o, 10_000);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let (mut sent, mut sequence) = (0u64, 0u32);
    let per_tick = devices.div_ceil(100);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // A hundredth of the loggers every 10 ms: each reports once a second.
        for slot in 0..100 {
            tick.tick().await;
            let now = gateway::clock::now_ms();
            for d in (slot * per_tick)..((slot + 1) * per_tick).min(devices) {
                let (topic, frame) = logger_report(d, 1, sequence, now);
                client
                    .publish(topic, QoS::AtLeastOnce, false, frame)
                    .await
                    .unwrap();
                sent += 1;
            }
        }
        sequence += 1;
    }
    sent
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let viewers = arg("--viewers", 50) as usize;
    let rate = arg("--rate", 1000) as usize;
    let seconds = arg("--seconds", 60);
    let broker = Mosquitto::start();
    first_load(&broker).await;

    let dir = tempfile::tempdir().unwrap();
    let site = simulator::load_site::write_site(dir.path(), rate, "127.0.0.1:1883").unwrap();
    let catalog = Arc::new(
        Catalog::load(std::path::Path::new(device_profiles::PROFILES_DIR), &site).unwrap(),
    );
    let keys = gateway::keys::Keys::load(&dir.path().join("keys.toml")).unwrap();
    let gw = Gateway::start(
        gateway_settings(&broker, dir.path(), "bench-load"),
        catalog,
        keys,
    )
    .await
    .unwrap();
    while gw.metrics().broker_connected.get() != 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let store = gw.store();
    for v in 0..viewers {
        let name = format!("viewer{v}");
        gateway::auth::login::add(
            &store,
            (&name, gateway::auth::Role::Viewer, PASSWORD),
            "bench",
            0,
        )
        .unwrap()
        .unwrap();
    }
    let addr = gw.http_addr();
    println!("\n{viewers} viewers, {seconds} s each phase, a site of {rate} pressure loggers");
    let idle = watch(addr, viewers, seconds).await;
    let idle_p99 = summary("no reports (baseline)", &idle);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(ingest(broker.port, rate, stop.clone()));
    let accepted0 = gw.metrics().readings.with_label_values(&["pipe"]).get();
    let started = Instant::now();
    let loaded = watch(addr, viewers, seconds).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.await.unwrap();
    let took = started.elapsed().as_secs_f64();
    let loaded_p99 = summary(&format!("while ingesting {rate} reports/s"), &loaded);
    // Let the last reports land before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let accepted = gw.metrics().readings.with_label_values(&["pipe"]).get() - accepted0;
    println!(
        "reports sent {sent} ({:.0}/s), readings accepted {accepted} ({:.0}/s)",
        sent as f64 / took,
        accepted as f64 / took
    );
    println!(
        "all-route p99: {idle_p99:.2} ms idle, {loaded_p99:.2} ms loaded ({:.2}x)",
        loaded_p99 / idle_p99
    );
    gw.stop().await;
}
