//! The simulator's scenarios against a gateway and a real Mosquitto, accelerated; and proof
//! that the oracle fails, with a readable diff, when an expectation is wrong.

use std::path::Path;
use std::time::Duration;

use simulator::run::{Outcome, RunOptions, run};
use simulator::scenario::Scenario;
use system_tests::services::Mosquitto;

use crate::support::*;

fn scenario(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../simulator/scenarios")
        .join(format!("{name}.toml"));
    Scenario::load(&path).unwrap()
}

/// How the tests run a scenario: seed 1, against `gw` on the broker at `broker_port`, with the
/// test token, at `acceleration`.
fn run_options(broker_port: u16, gw: &gateway::Gateway, acceleration: f64) -> RunOptions {
    RunOptions {
        keys: None,
        mqtt_host: "127.0.0.1".into(),
        mqtt_port: broker_port,
        gateway: format!("http://{}", gw.http_addr()),
        acceleration: Some(acceleration),
        seed: 1,
        settle: Duration::from_secs(15),
        progress: false,
        token: Some(system_tests::http::TEST_TOKEN.into()),
    }
}

/// Runs `scenario` against a fresh gateway on a fresh broker.
async fn play(name: &str, s: &Scenario, acceleration: f64) -> Outcome {
    play_keyed(name, s, acceleration, None, None).await
}

/// [`play`] with provisioned keys in the gateway (`gateway_keys`) and in the simulator's nodes
/// (`keys`); `None`: the demo keys.
async fn play_keyed(
    name: &str,
    s: &Scenario,
    acceleration: f64,
    gateway_keys: Option<&std::collections::HashMap<String, wire::DeviceKey>>,
    keys: Option<std::collections::HashMap<String, wire::DeviceKey>>,
) -> Outcome {
    let broker = Mosquitto::start();
    let gw = match gateway_keys {
        None => start_gateway(name, broker.port, 10).await,
        Some(keys) => {
            let mut gateway_keys = gateway::keys::Keys::default();
            for (id, key) in keys {
                gateway_keys.insert(id, key.clone());
            }
            start_gateway_on(catalog(), gateway_keys, name, broker.port, |_| {}).await
        }
    };
    let outcome = run(
        &catalog(),
        s,
        &RunOptions {
            keys,
            ..run_options(broker.port, &gw, acceleration)
        },
    )
    .await
    .unwrap();
    gw.stop().await;
    outcome
}

async fn passes(name: &str, acceleration: f64) {
    let outcome = play(name, &scenario(name), acceleration).await;
    assert!(outcome.passed, "{}", outcome.report);
    assert!(outcome.counts.published > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_golden_week_tongtianyan() {
    passes("golden-week-tongtianyan", 2400.0).await;
}

/// Two nearby areas on a Golden Week morning: the full one's 橙 names the other with its
/// occupancy (the scenario's expectations). Its 红, unacknowledged for 红's time (3 s here),
/// goes to the supervisor: the DingTalk receiver gets the call; an operator acknowledges, and
/// the unit's head is not called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_golden_week_two_areas() {
    use system_tests::http::Webhook;
    let broker = Mosquitto::start();
    let hook = Webhook::start(false).await;
    let (site, keys) = escalating("zg-west-scenic", "red", 3);
    let url = format!("http://{}/robot", hook.addr);
    let gw = start_gateway_on(site, keys, "two-areas", broker.port, |s| {
        s.alerts
            .webhook
            .push(gateway::sink::notify::WebhookSection {
                name: "duty".into(),
                url,
                format: gateway::sink::notify::WebhookFormat::Dingtalk,
                secret_env: None,
                grids: Vec::new(),
                timeout_ms: 2_000,
            });
    })
    .await;
    // The operator: answers the supervisor's call by acknowledging the 红.
    let calls = robot_calls;
    let (watch_hook, alerts, http) = (hook.clone(), gw.alerts().clone(), gw.http_addr());
    let operator = tokio::spawn(async move {
        let mut red_seen = None;
        loop {
            let supervisor_called = calls(&watch_hook)
                .iter()
                .any(|(t, _)| t.contains("无人确认") && t.contains("[红] 通天岩"));
            let red = alerts
                .engine
                .lock()
                .unwrap()
                .open_alerts()
                .into_iter()
                .find(|a| a.subject == "S4" && a.severity == "red" && a.rule == "crowd.occupancy");
            if red.is_some() {
                red_seen.get_or_insert_with(std::time::Instant::now);
            }
            if let (true, Some(red), Some(seen)) = (supervisor_called, red, red_seen) {
                let waited = seen.elapsed();
                let path = format!("/api/v1/alerts/{}/ack", red.id);
                let (status, body) =
                    system_tests::http::post(http, &path, r#"{"note": "已启动分流"}"#).await;
                assert_eq!(status, 200, "{body}");
                return (red.id, waited);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let outcome = run(
        &catalog(),
        &scenario("golden-week-two-areas"),
        &run_options(broker.port, &gw, 2400.0),
    )
    .await
    .unwrap();
    assert!(outcome.passed, "{}", outcome.report);
    let (id, waited) = tokio::time::timeout(Duration::from_secs(20), operator)
        .await
        .expect("the supervisor was never called about the 红")
        .unwrap();
    // The rehearsed 红 happened hours ago in event time; the person on duty still had their
    // 3 s (less the polling's 50 ms) before the supervisor was called.
    assert!(
        waited >= Duration::from_millis(2_500),
        "the supervisor was called {waited:?} after the 红 appeared"
    );
    // The head's turn would come 3 s after the supervisor's: wait past it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let made = calls(&hook);
    let supervisor = made
        .iter()
        .find(|(t, _)| t.contains("无人确认") && t.contains("[红] 通天岩"))
        .unwrap();
    assert!(
        supervisor.0.contains("- 升级至: 值班科长（示例）"),
        "{}",
        supervisor.0
    );
    assert!(
        !made
            .iter()
            .any(|(t, m)| m == "13800000001" && t.contains("[红] 通天岩")),
        "the head was called after the acknowledgement: {made:?}"
    );
    let alert = gw
        .alerts()
        .engine
        .lock()
        .unwrap()
        .open_alerts()
        .into_iter()
        .find(|a| a.id == id);
    if let Some(a) = alert {
        assert_eq!(
            a.escalation.unwrap().step,
            1,
            "no step after the acknowledgement"
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_festival_night_songcheng() {
    passes("festival-night-songcheng", 2400.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_rush_hour_hongqi() {
    passes("rush-hour-hongqi", 2400.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_incident_xinshiji_bridge() {
    passes("incident-xinshiji-bridge", 2400.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_water_main_burst() {
    passes("water-main-burst", 1200.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_gas_leak_tunnel() {
    passes("gas-leak-tunnel", 1200.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_stolen_cover_and_the_oracle_fails_on_a_wrong_expectation() {
    passes("stolen-cover", 1200.0).await;
    // The same run with a wrong expectation (the cover is critical, not an alarm) fails, and
    // says what the gateway did instead.
    let mut wrong = scenario("stolen-cover");
    wrong.expects[0].grade = Some("alarm".into());
    let outcome = play("stolen-cover-wrong", &wrong, 1200.0).await;
    assert!(!outcome.passed, "{}", outcome.report);
    assert!(
        outcome
            .report
            .contains("FAIL  pipe.tilt_high M1 raised alarm×1 between 02:10 and 02:13: saw 0"),
        "{}",
        outcome.report
    );
    assert!(
        outcome
            .report
            .contains("what M1 got: pipe.tilt_high raised critical at 02:1"),
        "{}",
        outcome.report
    );
    assert!(
        outcome
            .report
            .ends_with("FAILED: the gateway did not do what the scenario expects\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_faults() {
    passes("faults", 1200.0).await;
}

/// `simulator load` against a gateway on the generated load site: its figures match the
/// gateway's own counters within 1 %, over shared connections and with one per device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_figures_match_the_gateway_counters() {
    use simulator::load::{LoadOptions, load};
    use simulator::load_site::write_site;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let site = write_site(dir.path(), 300, &format!("127.0.0.1:{}", broker.port)).unwrap();
    let catalog = std::sync::Arc::new(
        device_profiles::Catalog::load(Path::new(device_profiles::PROFILES_DIR), &site).unwrap(),
    );
    let keys = gateway::keys::Keys::load(&dir.path().join("keys.toml")).unwrap();
    let gw = start_gateway_on(catalog, keys, "load", broker.port, |_| {}).await;
    for (devices, per_device, connections) in [(300, false, 2), (60, true, 0)] {
        let r = load(&LoadOptions {
            mqtt_host: "127.0.0.1".into(),
            mqtt_port: broker.port,
            gateway: format!("http://{}", gw.http_addr()),
            devices,
            rate: 400.0,
            duration: Duration::from_secs(3),
            connections,
            per_device,
            qos: rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            progress: false,
        })
        .await
        .unwrap();
        assert!(r.published >= 1000, "{r:?}");
        assert!(
            (r.ratio - 1.0).abs() <= 0.01,
            "published and received differ by more than 1 %: {r:?}"
        );
        assert_eq!(r.gateway_readings, 2 * r.gateway_received, "{r:?}");
        assert_eq!(
            r.connections,
            if per_device { devices } else { connections }
        );
        assert!(r.alert_samples >= 1, "{r:?}");
    }
    gw.stop().await;
}

/// A rehearsal with the keys `nodectl provision` made (here: random ones, the gateway's too)
/// passes; its nodes signing with the demo keys instead are refused by that gateway, and a keys
/// file that lacks a simulated device is named before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehearsal_signs_with_the_keys_file_not_the_demo_keys() {
    use rand::Rng;
    let catalog = catalog();
    let mut rng = rand::rng();
    let keys: std::collections::HashMap<String, wire::DeviceKey> =
        device_profiles::demo::keys(&catalog)
            .map(|(id, _)| (id.to_owned(), wire::DeviceKey::from_bytes(rng.random())))
            .collect();
    let s = scenario("stolen-cover");
    let outcome = play_keyed("keyed", &s, 2400.0, Some(&keys), Some(keys.clone())).await;
    assert!(outcome.passed, "{}", outcome.report);
    let demo = play_keyed("keyed-demo", &s, 2400.0, Some(&keys), None).await;
    assert!(
        !demo.passed,
        "the demo keys are refused by a gateway with provisioned keys: {}",
        demo.report
    );

    let mut missing = keys.clone();
    missing.retain(|id, _| !id.contains("cover"));
    let err = simulator::fleet::Fleet::new(&catalog, &s, 1_790_000_000_000, 1, Some(&missing))
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no key in the keys file"), "{err}");
}

/// What a day ended with for 通天岩 (S4): its last crowd window's end, daily entries and
/// occupancy, as the gateway's store has them and as VictoriaMetrics returns them.
#[derive(Debug, PartialEq)]
struct DayEnd {
    window_end_ms: i64,
    store: (i64, i64),
    victoria_metrics: (f64, f64),
}

/// Plays `s` against a gateway that writes to a VictoriaMetrics, and reads how S4's day ended
/// once every point is delivered; also the gateway's too-late and correction counters.
async fn play_into_victoria_metrics(name: &str, s: &Scenario) -> (DayEnd, u64, u64) {
    use system_tests::services::VictoriaMetrics;
    let broker = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let store_dir = tempfile::tempdir().unwrap();
    let sink = sink_to(&vm);
    let gw = start_gateway_settings(name, broker.port, |settings| {
        settings.influxdb = Some(sink);
        settings.store_path = store_dir.path().join("gw.db");
    })
    .await;
    let outcome = run(&catalog(), s, &run_options(broker.port, &gw, 2400.0))
        .await
        .unwrap();
    assert!(outcome.counts.published > 0, "{}", outcome.report);
    let m = gw.metrics();
    wait_for(
        "every point in VictoriaMetrics",
        Duration::from_secs(30),
        || async { m.sink_pending.with_label_values(&["influxdb"]).get() == 0 },
    )
    .await;
    let addr = gw.http_addr();
    let (_, body) = system_tests::http::get(
        addr,
        "/api/v1/series?measurement=crowd&subject=S4&minutes=100000&limit=100000",
    )
    .await;
    let points: serde_json::Value = serde_json::from_str(&body).unwrap();
    // The area's own series (a choke point's carries `choke_point` too).
    let last = points
        .as_array()
        .unwrap()
        .iter()
        .rfind(|p| p["tags"].as_array().unwrap().len() == 2)
        .unwrap_or_else(|| panic!("no S4 point: {body}"))
        .clone();
    let int = |name: &str| {
        let kv = last["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv[0] == name)
            .unwrap_or_else(|| panic!("{name} in {last}"));
        kv[1]["Int"].as_i64().unwrap()
    };
    let window_end_ms = last["time_ms"].as_i64().unwrap();
    let vm_addr: std::net::SocketAddr = format!("127.0.0.1:{}", vm.port).parse().unwrap();
    let _ = system_tests::http::get(vm_addr, "/internal/force_flush").await;
    let query = async |metric: &str| {
        let (status, body) = system_tests::http::get(
            vm_addr,
            &format!(
                "/api/v1/query?query={metric}%7Barea%3D%22S4%22%2Cchoke_point%3D%22%22%7D&time={}",
                window_end_ms / 1000
            ),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap_or_else(|| panic!("{metric}: {body}"))
            .parse::<f64>()
            .unwrap()
    };
    let day_end = DayEnd {
        window_end_ms,
        store: (int("daily_entries"), int("occupancy")),
        victoria_metrics: (
            query("crowd_daily_entries").await,
            query("crowd_occupancy").await,
        ),
    };
    let counts = (m.aggregate_too_late.get(), m.aggregate_corrections.get());
    gw.stop().await;
    (day_end, counts.0, counts.1)
}

/// One of 通天岩's gates loses its link for twenty minutes at the Golden Week peak: it keeps
/// what it reads and flushes it when it is back. The day ends with the same daily entries and
/// occupancy as the same day without the outage, in the store and in VictoriaMetrics, and
/// nothing was too late: the backlog was corrected into the windows it belongs to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_offline_for_twenty_minutes_at_the_peak_ends_the_day_with_the_same_counts() {
    let plain = scenario("golden-week-tongtianyan");
    let mut outage = plain.clone();
    outage.faults.push(simulator::scenario::Fault {
        kind: simulator::scenario::FaultKind::LinkDown,
        device: "gz-s4-g2".into(),
        at: "09:40".into(),
        until: Some("10:00".into()),
        value: None,
    });
    let (without, with) = tokio::join!(
        play_into_victoria_metrics("peak-plain", &plain),
        play_into_victoria_metrics("peak-outage", &outage),
    );
    assert_eq!(without.1, 0, "too late without the outage");
    assert_eq!(with.1, 0, "too late with the outage");
    assert!(with.2 >= 1, "the backlog was corrected: {with:?}");
    assert_eq!(
        without.0.store.0 as f64, without.0.victoria_metrics.0,
        "{without:?}"
    );
    assert_eq!(
        with.0, without.0,
        "the day's end with and without the outage"
    );
}

/// A rehearsal on a past day beside live data: the Golden Week scenario runs against a gateway
/// that meanwhile hears other devices report live (a pressure logger, a traffic detector, a gate
/// of another area), and passes as it does against an idle gateway. Its readings are hours
/// behind the live ones; each unit's windows close by its own devices' progress. It is played
/// three days back, further than the raw retention (a day) behind the live readings, whatever
/// the time of day the test runs at: only a reading's own units say whether it is too late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehearsal_on_a_past_day_passes_while_other_devices_report_live() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let broker = Mosquitto::start();
    let gw = start_gateway("rehearsal-beside-live", broker.port, 10).await;
    let (node, _) = client("live-devices", broker.port, true).await;
    let stop = Arc::new(AtomicBool::new(false));
    let live = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut k = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let now = gateway::clock::now_ms();
                for (device, body) in [
                    ("gz-p1-press", pipe(wire::Quantity::Pressure, 0.3)),
                    ("gz-s3-g1", heartbeat()),
                ] {
                    publish(&node, &up_topic(device), frame_at(device, 1, k, now, &body)).await;
                }
                k += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            k
        }
    });
    let catalog = catalog();
    let mut rehearsal = scenario("golden-week-tongtianyan");
    rehearsal.time.date = Some(device_profiles::calendar::local_date(
        gateway::clock::now_ms() - 3 * 86_400_000,
        catalog.site.site.utc_offset.ms(),
    ));
    let outcome = run(&catalog, &rehearsal, &run_options(broker.port, &gw, 2400.0))
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let sent = live.await.unwrap();
    assert!(
        sent >= 20,
        "the live devices reported throughout ({sent} rounds)"
    );
    assert!(outcome.passed, "{}", outcome.report);
    let m = gw.metrics();
    assert_eq!(m.aggregate_too_late.get(), 0);
    assert!(
        accepted(&gw, "gz-p1-press") >= u64::from(sent),
        "the live logger was heard"
    );
    gw.stop().await;
}
