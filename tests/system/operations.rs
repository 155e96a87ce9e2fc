//! The gateway under a service manager, with the real binary: `READY=1` once the broker session
//! is up, `WATCHDOG=1` while the pipeline makes progress or is idle, none while a commit is
//! wedged (another process holds the store's write lock with a report waiting), again once it is
//! released, and `STOPPING=1` at SIGTERM: all read from a `NOTIFY_SOCKET` the test owns.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use system_tests::services::{Mosquitto, free_port, port_owned_by};
use wire::Quantity;

use crate::gateway_ingest::gateway_binary;
use crate::store_durability::write_config;
use crate::support::*;

/// The next notification within `limit`, or None.
fn next(socket: &UnixDatagram, limit: Duration) -> Option<String> {
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    socket
        .recv(&mut buf)
        .ok()
        .map(|n| String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

/// Waits for `what` among the notifications, within `limit`.
fn expect(socket: &UnixDatagram, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {what} within {limit:?}");
        if next(socket, left).is_some_and(|n| n.lines().any(|l| l == what)) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_fed_while_the_pipeline_moves_and_starved_while_a_commit_is_wedged() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    // No time-series server: the sink waits, which the watchdog does not mind.
    let config = write_config(dir.path(), broker.port, http, "http://127.0.0.1:9");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    // As systemd starts it: WATCHDOG_PID is the gateway's own pid ($$ survives the exec).
    let mut gw = Command::new("sh")
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" run --config \"$1\"")
        .arg(gateway_binary())
        .arg(&config)
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "1000000")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    expect(&socket, "READY=1", Duration::from_secs(20));
    assert!(
        port_owned_by(gw.id(), http),
        "the gateway itself sent READY"
    );
    // Idle: fed every half period.
    expect(&socket, "WATCHDOG=1", Duration::from_secs(3));
    expect(&socket, "WATCHDOG=1", Duration::from_secs(3));

    // Another process takes the store's write lock; a report comes and cannot be committed.
    let lock = rusqlite::Connection::open(dir.path().join("gateway.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (node, _) = client("watchdog-node", broker.port, true).await;
    let t = gateway::clock::now_ms();
    publish(
        &node,
        &up_topic("gz-p1-press"),
        frame_at("gz-p1-press", 1, 0, t, &pipe(Quantity::Pressure, 0.3)),
    )
    .await;
    // Within half a period of the report it stops; what was sent before is drained.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        next(&socket, Duration::from_millis(100));
    }
    assert_eq!(
        next(&socket, Duration::from_secs(3)),
        None,
        "the watchdog was fed while the commit was wedged"
    );

    // Released: the commit goes through and the feeding starts again.
    lock.execute_batch("COMMIT").unwrap();
    expect(&socket, "WATCHDOG=1", Duration::from_secs(20));

    // A clean stop says so.
    let stopped = Command::new("kill")
        .args(["-TERM", &gw.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    expect(&socket, "STOPPING=1", Duration::from_secs(10));
    gw.wait().unwrap();
}

fn alertmanager_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/alertmanager")
}

/// `amtool` passes the departments' Alertmanager configuration, and every case of
/// `routes.test` (RECEIVER | LABELS) routes where it says.
#[test]
fn every_routing_case_of_the_departments_reaches_its_receiver() {
    let amtool = system_tests::services::require("amtool", "prometheus-alertmanager");
    let dir = alertmanager_dir();
    let check = Command::new(&amtool)
        .args(["check-config", "alertmanager.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let cases = std::fs::read_to_string(dir.join("routes.test")).unwrap();
    let mut checked = 0;
    for line in cases
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (receiver, labels) = line.split_once('|').expect("RECEIVER | LABELS");
        let out = Command::new(&amtool)
            .args(["config", "routes", "test", "--config.file=alertmanager.yml"])
            .arg(format!("--verify.receivers={}", receiver.trim()))
            .args(labels.split_whitespace())
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{line}: routed to {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
        checked += 1;
    }
    assert!(checked >= 10, "{checked} cases");
}

/// The shipped configuration in a real Alertmanager: each department's alert reaches its
/// receiver's webhook, and a lost broker session inhibits the gateway's device-offline alerts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_delivers_each_department_its_alerts_and_inhibits_device_offline() {
    let hook = system_tests::http::Webhook::start(false).await;
    let shipped = std::fs::read_to_string(alertmanager_dir().join("alertmanager.yml")).unwrap();
    let config = shipped
        .replace("http://127.0.0.1:5001", &format!("http://{}", hook.addr))
        .replace("group_wait: 30s", "group_wait: 1s");
    assert_ne!(config, shipped, "the test's webhook and waits went in");
    let am = system_tests::services::Alertmanager::start_config(&config);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", am.port).parse().unwrap();
    let alert =
        |labels: serde_json::Value| serde_json::json!({"labels": labels, "annotations": {}});
    let alerts = serde_json::json!([
        alert(
            serde_json::json!({"alertname": "traffic.congestion", "category": "traffic", "zone": "360703", "subject": "S1", "severity": "alarm", "gateway": "gw-1"})
        ),
        alert(
            serde_json::json!({"alertname": "crowd.occupancy", "category": "crowd", "zone": "360702", "subject": "tongtianyan", "severity": "red", "gateway": "gw-1"})
        ),
        alert(
            serde_json::json!({"alertname": "pipe.burst", "category": "pipe", "zone": "360702", "subject": "P1", "severity": "critical", "gateway": "gw-1"})
        ),
        alert(
            serde_json::json!({"alertname": "pipe.gas_high", "category": "pipe", "zone": "360702", "subject": "gz-t1-gas", "severity": "alarm", "gateway": "gw-1"})
        ),
        alert(
            serde_json::json!({"alertname": "pipe.tilt_high", "category": "pipe", "zone": "360702", "subject": "gz-m1", "severity": "alarm", "gateway": "gw-1"})
        ),
        alert(
            serde_json::json!({"alertname": "CitySenseBrokerDisconnected", "component": "broker", "severity": "critical", "instance": "gw-1:8080", "gateway": "gw-1"})
        ),
        alert(
            serde_json::json!({"alertname": "device.offline", "category": "device", "zone": "360702", "subject": "gz-p1-press", "severity": "warning", "gateway": "gw-1"})
        ),
    ]);
    let (status, body) =
        system_tests::http::post(addr, "/api/v2/alerts", &alerts.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let expected = [
        ("traffic-police-nankang", "traffic.congestion"),
        ("tourism", "crowd.occupancy"),
        ("water", "pipe.burst"),
        ("gas", "pipe.gas_high"),
        ("urban-management", "pipe.tilt_high"),
        ("platform-ops", "CitySenseBrokerDisconnected"),
    ];
    let delivered = || {
        hook.accepted
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| {
                let receiver = b["receiver"].as_str().unwrap_or_default().to_owned();
                b["alerts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |a| {
                        (
                            receiver.clone(),
                            a["labels"]["alertname"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                        )
                    })
            })
            .collect::<std::collections::BTreeSet<(String, String)>>()
    };
    wait_for(
        "every department's receiver got its alert",
        Duration::from_secs(30),
        || async {
            let got = delivered();
            expected
                .iter()
                .all(|(r, a)| got.contains(&((*r).to_owned(), (*a).to_owned())))
        },
    )
    .await;
    let got = delivered();
    assert_eq!(
        got.len(),
        expected.len(),
        "each alert to one receiver only: {got:?}"
    );
    // The device-offline alert is held back by the lost broker session.
    let (_, body) = system_tests::http::get(
        addr,
        "/api/v2/alerts?filter=alertname%3D%22device.offline%22",
    )
    .await;
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let status = &listed[0]["status"];
    assert_eq!(status["state"], "suppressed", "{listed}");
    assert!(
        !status["inhibitedBy"].as_array().unwrap().is_empty(),
        "{listed}"
    );
}
