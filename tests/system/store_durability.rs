//! The local store's promise, with the real binary: `gateway run` is SIGKILLed at seeded random
//! moments during ingest, 20 times; every message it acknowledged is in the store afterwards,
//! and once it runs to the end, every report published is there exactly once.

use std::time::Duration;

use gateway::store::Store;
use rand::{Rng, SeedableRng};
use system_tests::proxy::MqttProxy;
use system_tests::services::{Mosquitto, VictoriaMetrics, free_port, port_owned_by};
use wire::Quantity;

use crate::support::*;

const DEVICES: &[(&str, Quantity, f32)] = &[
    ("gz-p1-press", Quantity::Pressure, 0.31),
    ("gz-p2-press", Quantity::Pressure, 0.29),
    ("gz-w1-level", Quantity::WellLevel, 2.1),
    ("gz-t1-gas", Quantity::Gas, 1.2),
];
/// Frames per device per run: within the replay window, so the persisted ledger tells exactly
/// which sequence numbers of the run's boot epoch were accepted.
const PER_RUN: u32 = 50;
const RUNS: u32 = 20;

pub(crate) fn write_config(
    dir: &std::path::Path,
    broker_port: u16,
    http_port: u16,
    vm_url: &str,
) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let keys: String = DEVICES
        .iter()
        .map(|(d, _, _)| device_profiles::keys::entry(d, &device_profiles::demo::key(d)))
        .collect();
    std::fs::write(dir.join("keys.toml"), keys).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"gw-sigkill\"\n\n[site]\nprofiles = \"{}\"\nsite = \"{}\"\nkeys = \"keys.toml\"\n\n\
             [store]\npath = \"gateway.db\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\nkeep_alive_s = 5\n\
             reconnect_min_ms = 50\nreconnect_max_ms = 200\n\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n\
             [influxdb]\nurl = \"{vm_url}\"\norg = \"ganzhou\"\nbucket = \"citysense\"\nflush_ms = 200\n",
            root.join("device-profiles/profiles").display(),
            root.join("device-profiles/sites/ganzhou.toml").display(),
        ),
    )
    .unwrap();
    config
}

pub(crate) fn spawn_gateway(config: &std::path::Path, http_port: u16) -> std::process::Child {
    let mut child = std::process::Command::new(crate::gateway_ingest::gateway_binary())
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !port_owned_by(child.id(), http_port) {
        assert!(
            std::time::Instant::now() < deadline,
            "gateway run did not start listening"
        );
        if let Ok(Some(s)) = child.try_wait() {
            panic!("gateway run exited with {s}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_seeded_random_moments_loses_nothing_that_was_acknowledged() {
    let broker = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let proxy = MqttProxy::start(broker.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = client("sigkill-node", broker.port, false).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xC17_5E45E);
    let mut checked = 0usize;
    let start = (gateway::clock::now_ms() - 30 * 60_000).div_euclid(60_000) * 60_000;
    for run in 1..=RUNS {
        let http = free_port();
        let config = write_config(dir.path(), proxy.port, http, &vm.url());
        let mut gw = spawn_gateway(&config, http);
        // Run `run` is boot epoch `run` of every device.
        for seq in 0..PER_RUN {
            for (d, q, v) in DEVICES {
                // Each run is its own minute of event time, so windows close as runs follow.
                let t = start + i64::from(run) * 60_000 + i64::from(seq) * 1000;
                publish(&node, &up_topic(d), frame_at(d, run, seq, t, &pipe(*q, *v))).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..250))).await;
        gw.kill().unwrap(); // SIGKILL
        gw.wait().unwrap();

        let acked = proxy.acked_payloads();
        let (store, _) = Store::open(&dir.path().join("gateway.db")).unwrap();
        let ledgers = store.ledgers().unwrap();
        for payload in &acked[checked..] {
            let f = wire::Frame::new_checked(payload).unwrap();
            let ledger = &ledgers
                .iter()
                .find(|(d, _)| d == f.device_id())
                .unwrap_or_else(|| panic!("run {run}: no ledger for {}", f.device_id()))
                .1;
            if f.boot_epoch() == ledger.epoch {
                assert_eq!(
                    ledger.was_accepted(f.boot_epoch(), f.sequence()),
                    Some(true),
                    "run {run}: {} epoch {} sequence {} was acknowledged but is not in the store",
                    f.device_id(),
                    f.boot_epoch(),
                    f.sequence()
                );
            } else {
                // An earlier epoch: accepted before this run moved the window on.
                assert!(
                    f.boot_epoch() < ledger.epoch,
                    "run {run}: acknowledged epoch {} ahead of the store",
                    f.boot_epoch()
                );
            }
        }
        checked = acked.len();
    }

    // Let it run to the end: the broker redelivers what was never acknowledged.
    let http = free_port();
    let config = write_config(dir.path(), proxy.port, http, &vm.url());
    let mut gw = spawn_gateway(&config, http);
    let db = dir.path().join("gateway.db");
    wait_for(
        "every report of the last epoch stored",
        Duration::from_secs(60),
        || async {
            let (store, _) = Store::open(&db).unwrap();
            let ledgers = store.ledgers().unwrap();
            DEVICES.iter().all(|(d, _, _)| {
                ledgers.iter().any(|(id, l)| {
                    id == d && l.epoch == RUNS && l.highest == PER_RUN - 1 && l.missing() == 0
                })
            })
        },
    )
    .await;
    // Everything stored reaches the sink: the cursor catches up with the last point, and
    // VictoriaMetrics holds each point once.
    wait_for(
        "the sink delivered every stored point",
        Duration::from_secs(60),
        || async {
            let (store, _) = Store::open(&db).unwrap();
            store.last_point_id().unwrap() > 0
                && store.cursor("influxdb").unwrap() == store.last_point_id().unwrap()
        },
    )
    .await;
    gw.kill().unwrap();
    gw.wait().unwrap();
    let (store, _) = Store::open(&db).unwrap();
    let stored = store.series("pipe", Some("P1"), 0, 1_000_000).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", vm.port).parse().unwrap();
    let _ = system_tests::http::get(addr, "/internal/force_flush").await;
    let (_, body) = system_tests::http::get(
        addr,
        "/api/v1/export?match[]=pipe_mean%7Basset%3D%22P1%22%7D",
    )
    .await;
    let samples: usize = body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["timestamps"]
                .as_array()
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(
        samples,
        stored.len(),
        "every stored P1 point is in VictoriaMetrics, once"
    );
    for (d, _, _) in DEVICES {
        let ledger = store
            .ledgers()
            .unwrap()
            .into_iter()
            .find(|(id, _)| id == d)
            .unwrap()
            .1;
        assert_eq!(
            ledger.received,
            u64::from(RUNS * PER_RUN),
            "{d}: every report accepted once"
        );
        assert_eq!(ledger.missing(), 0, "{d}");
    }
    let stored = store.readings_after(0, 1_000_000).unwrap();
    assert_eq!(
        stored.len(),
        DEVICES.len() * (RUNS * PER_RUN) as usize,
        "one reading per report, no duplicates"
    );
    assert_eq!(store.quarantined().unwrap(), 0);
}
