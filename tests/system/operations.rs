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
