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
