//! The gateway's Modbus source against the simulator's slave: the pipe RTU of the Ganzhou site
//! polled over TCP, its values decoded into the pipe aggregates, a pipe alert raised end to end,
//! and recovery from a late reply, exceptions and a dead slave.

use std::time::Duration;

use simulator::modbus::{Fault, Slave, serve_tcp};
use system_tests::services::Mosquitto;

use crate::support::*;

fn rtu_slave(pressure: f64) -> Slave {
    let map = catalog().profiles["modbus-pipe-rtu"]
        .modbus
        .clone()
        .unwrap();
    Slave::new(
        1,
        &map,
        &[
            ("pressure", pressure),
            ("flow", 204.5),
            ("total_volume", 123_456_789.0),
            ("well_level", 1.95),
            ("temperature", -2.5),
            ("pump_running", 1.0),
        ],
    )
}

fn metric(text: &str, name: &str, label: &str) -> f64 {
    simulator::run::metric_sum(text, name, Some(("device", label)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_rtu_feeds_the_pipeline_raises_a_pipe_alert_and_recovers_from_faults() {
    let broker = Mosquitto::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let slave = rtu_slave(0.31);
    let server = tokio::spawn(serve_tcp(listener, slave.clone()));
    // Low pressure raises at once here (the profile holds it 5 minutes).
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"pipe.pressure_low\"\ncategory = \"pipe\"\nsource = \"reading\"\nfield = \"pressure\"\nkinds = [\"modbus-pipe-rtu\", \"water-pressure\"]\nside = \"below\"\ngrades = [{ name = \"alarm\", at = 0.14 }]\nclear_margin = 0.02\n",
    )
    .unwrap();
    let gw = start_gateway_settings("modbus", broker.port, |s| {
        s.modbus.enabled = true;
        s.modbus.interval_s = Some(1);
        s.modbus.timeout_ms = 300;
        s.modbus.breaker_after = 2;
        s.modbus.breaker_open_s = 1;
        s.modbus
            .endpoints
            .insert("gz-p3-rtu".into(), format!("tcp://{addr}"));
        s.alerts.rule_files = vec![rules.clone()];
        s.alerts.mqtt = false;
    })
    .await;
    let http = gw.http_addr();
    // Decoded values reach the store: every type of the map.
    wait_for("polled readings", Duration::from_secs(10), || async {
        accepted(&gw, "gz-p3-rtu") >= 2
    })
    .await;
    let (_, body) = system_tests::http::get(http, "/api/v1/devices/gz-p3-rtu").await;
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    let recent = d["recent_readings"].as_array().expect("recent readings");
    let value = |field: &str| {
        recent
            .iter()
            .rev()
            .find(|r| r["measurement"]["field"] == field)
            .and_then(|r| r["measurement"]["value"].as_f64())
            .unwrap_or(f64::NAN)
    };
    assert!((value("pressure") - 0.31).abs() < 1e-6, "{body}");
    assert!((value("flow") - 204.5).abs() < 1e-9, "{body}");
    assert_eq!(value("total_volume"), 123_456_789.0);
    assert!((value("well_level") - 1.95).abs() < 1e-9);
    assert!((value("temperature") + 2.5).abs() < 1e-9);
    assert_eq!(value("pump_running"), 1.0);

    // The pressure falls: a pipe alert on the RTU's asset, end to end.
    slave.set("pressure", 0.10);
    wait_for(
        "a low-pressure alert from the polled RTU",
        Duration::from_secs(10),
        || async {
            let (_, body) = system_tests::http::get(http, "/api/v1/alerts").await;
            body.contains("\"rule\":\"pipe.pressure_low\"")
                && body.contains("\"status\":\"firing\"")
        },
    )
    .await;

    // An exception is counted by code; polling goes on.
    slave.set_fault(Fault::Exception(
        tokio_modbus::ExceptionCode::ServerDeviceBusy,
    ));
    wait_for("the exception counted", Duration::from_secs(10), || async {
        let m = system_tests::http::get(http, "/metrics").await.1;
        m.contains("citysense_modbus_exceptions_total{code=\"0x06\",device=\"gz-p3-rtu\"}")
            && m.contains("citysense_modbus_errors_total{device=\"gz-p3-rtu\",kind=\"retry\"}")
    })
    .await;
    // A late reply: the request times out, the connection is replaced, and the next polls
    // read fresh values (never the late answer to an earlier request).
    slave.set_fault(Fault::Slow(Duration::from_millis(600)));
    wait_for("a timeout counted", Duration::from_secs(10), || async {
        let m = system_tests::http::get(http, "/metrics").await.1;
        m.contains("citysense_modbus_errors_total{device=\"gz-p3-rtu\",kind=\"timeout\"}")
    })
    .await;
    slave.set_fault(Fault::None);
    slave.set("pressure", 0.33);
    let before = accepted(&gw, "gz-p3-rtu");
    wait_for("polling recovered", Duration::from_secs(10), || async {
        accepted(&gw, "gz-p3-rtu") >= before + 2
    })
    .await;
    // A dead slave: the breaker opens, and closes once it answers again.
    server.abort();
    wait_for("the breaker opens", Duration::from_secs(15), || async {
        let m = system_tests::http::get(http, "/metrics").await.1;
        metric(&m, "citysense_modbus_breaker_open", "gz-p3-rtu") == 1.0
    })
    .await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let server = tokio::spawn(serve_tcp(listener, slave.clone()));
    wait_for("the breaker closes", Duration::from_secs(15), || async {
        let m = system_tests::http::get(http, "/metrics").await.1;
        metric(&m, "citysense_modbus_breaker_open", "gz-p3-rtu") == 0.0
    })
    .await;
    server.abort();
    gw.stop().await;
}

/// Two linked pseudo-terminals: what is written to one's port comes out of the other's.
fn pty_pair() -> (
    std::path::PathBuf,
    std::path::PathBuf,
    Vec<tokio::task::JoinHandle<()>>,
    Vec<std::os::fd::OwnedFd>,
) {
    let a = system_tests::raw_pty();
    let b = system_tests::raw_pty();
    let (pa, pb) = (
        nix::unistd::ttyname(&a.slave).unwrap(),
        nix::unistd::ttyname(&b.slave).unwrap(),
    );
    let file = |fd: std::os::fd::OwnedFd| std::fs::File::from(fd);
    let (ma, mb) = (file(a.master), file(b.master));
    let (ra, rb) = (ma.try_clone().unwrap(), mb.try_clone().unwrap());
    let copy = |from: std::fs::File, to: std::fs::File| {
        tokio::spawn(async move {
            let mut from = tokio::fs::File::from_std(from);
            let mut to = tokio::fs::File::from_std(to);
            let mut buf = [0u8; 256];
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0 || to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
                    return;
                }
            }
        })
    };
    let tasks = vec![copy(ra, mb), copy(rb, ma)];
    (pa, pb, tasks, vec![a.slave, b.slave])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rtus_share_an_rs485_line_and_a_dead_one_does_not_stall_the_other() {
    let broker = Mosquitto::start();
    let (line, port, bridge, _keep) = pty_pair();
    let first = rtu_slave(0.31);
    let map = catalog().profiles["modbus-pipe-rtu"]
        .modbus
        .clone()
        .unwrap();
    let second = Slave::new(
        2,
        &map,
        &[
            ("pressure", 0.27),
            ("flow", 10.0),
            ("total_volume", 1.0),
            ("well_level", 2.0),
            ("temperature", 20.0),
            ("pump_running", 0.0),
        ],
    );
    let line2 = line.clone();
    let bus = simulator::modbus::Bus(vec![first.clone(), second.clone()]);
    let server =
        tokio::spawn(async move { simulator::modbus::serve_rtu_bus(&line2, 9600, bus).await });
    // The Ganzhou site with a second RTU (unit 2) on the same line.
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site.toml");
    let mut text = std::fs::read_to_string(device_profiles::GANZHOU_SITE).unwrap();
    text.push_str("\n[[device]]\nid = \"gz-p4-rtu\"\nprofile = \"modbus-pipe-rtu\"\nzone = \"360702\"\nmodbus = { url = \"rtu:///dev/null\", unit_id = 2 }\n\n[[pipe_asset]]\nid = \"P4\"\nname = \"水东泵站\"\nzone = \"360702\"\nkind = \"pump_station\"\ndevices = [\"gz-p4-rtu\"]\n");
    std::fs::write(&site, text).unwrap();
    let catalog = std::sync::Arc::new(
        device_profiles::Catalog::load(std::path::Path::new(device_profiles::PROFILES_DIR), &site)
            .unwrap(),
    );
    let keys = gateway::keys::Keys::demo(&catalog);
    let url = format!("rtu://{}?baud=9600", port.display());
    let mut modbus = gateway::source::modbus::ModbusSection {
        interval_s: Some(1),
        timeout_ms: 400,
        breaker_after: 2,
        breaker_open_s: 2,
        ..Default::default()
    };
    modbus.endpoints.insert("gz-p3-rtu".into(), url.clone());
    modbus.endpoints.insert("gz-p4-rtu".into(), url);
    let gw = start_gateway_on(catalog, keys, "bus", broker.port, |s| s.modbus = modbus).await;
    let http = gw.http_addr();
    wait_for(
        "both RTUs polled over the shared line",
        Duration::from_secs(15),
        || async { accepted(&gw, "gz-p3-rtu") >= 2 && accepted(&gw, "gz-p4-rtu") >= 2 },
    )
    .await;
    // Unit 2 dies: its breaker opens, unit 1 keeps its one-second period.
    second.set_fault(Fault::Silence);
    wait_for(
        "the dead RTU's breaker opens",
        Duration::from_secs(15),
        || async {
            let m = system_tests::http::get(http, "/metrics").await.1;
            metric(&m, "citysense_modbus_breaker_open", "gz-p4-rtu") == 1.0
        },
    )
    .await;
    // Three more polls of the live one within 6 s: its one-second period holds.
    let before = accepted(&gw, "gz-p3-rtu");
    wait_for(
        "the live RTU keeps its period",
        Duration::from_secs(6),
        || async { accepted(&gw, "gz-p3-rtu") >= before + 3 },
    )
    .await;
    server.abort();
    for t in bridge {
        t.abort();
    }
    gw.stop().await;
}
