//! Scale (DESIGN.md): partitions by district, and replicas of one partition. Replicas are
//! identical gateways on one broker, each with its
//! own session and store. Operator actions taken on one reach the other through the retained
//! subject states, with the same names and times, so both consoles (and both outboxes) agree.

use std::time::Duration;

use wire::Quantity;

use crate::support::*;
use system_tests::services::Mosquitto;

const PASSWORD: &str = "右转看见通天岩-2026";

/// The config of replica `name` of the partition 章贡区 (`gateway run` in `dir`, keys in
/// `dir/keys.toml`) on the broker at `broker`, sending to `am`, with `sinks` (TOML sections)
/// appended; the config file and its HTTP port.
fn replica_config(
    dir: &std::path::Path,
    name: &str,
    broker: u16,
    am: &system_tests::services::Alertmanager,
    sinks: &str,
) -> (std::path::PathBuf, u16) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let port = system_tests::services::free_port();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"gw-{name}\"\npartition = \"zhanggong\"\nreplica = true\n\n\
             [site]\nprofiles = \"{}\"\nsite = \"{}\"\nkeys = \"keys.toml\"\n\n\
             [store]\npath = \"{name}.db\"\n\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {broker}\nkeep_alive_s = 5\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [alerts.alertmanager]\nurl = \"{}\"\nresend_s = 10\n\n[modbus]\nenabled = false\n\n{sinks}",
            root.join("device-profiles/profiles").display(),
            root.join("device-profiles/sites/ganzhou.toml").display(),
            am.url(),
        ),
    )
    .unwrap();
    (config, port)
}

/// The sum of the samples of a gateway process's `/metrics` (on `port`) whose line starts with
/// `name`: every label set of a metric when `name` ends in `{`.
async fn metric(port: u16, name: &str) -> f64 {
    let addr = ([127, 0, 0, 1], port).into();
    let (_, text) = system_tests::http::get(addr, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_assignment_and_comment_on_one_replica_show_on_the_other() {
    let broker = Mosquitto::start();
    let a = start_gateway("replica-a", broker.port, 10).await;
    let b = start_gateway("replica-b", broker.port, 10).await;
    wait_for("both subscribed", Duration::from_secs(10), || async {
        a.metrics().broker_connected.get() == 1 && b.metrics().broker_connected.get() == 1
    })
    .await;
    gateway::auth::login::add(
        &a.store(),
        ("wang.li", gateway::auth::Role::Operator, PASSWORD),
        "test",
        0,
    )
    .unwrap()
    .unwrap();
    let (watcher, mut stream) = client("replica-watch", broker.port, true).await;
    watcher
        .subscribe(
            "cs/v1/alerts/events",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    let (node, _) = client("replica-node", broker.port, true).await;
    let t = gateway::clock::now_ms();
    let frame = frame_at("gz-t1-gas", 5, 1, t, &pipe(Quantity::Gas, 23.0));
    publish(&node, &up_topic("gz-t1-gas"), frame).await;
    wait_for(
        "the alert on both replicas",
        Duration::from_secs(10),
        || async {
            open_alert(&a, "pipe.gas_high").is_some() && open_alert(&b, "pipe.gas_high").is_some()
        },
    )
    .await;
    let id = open_alert(&a, "pipe.gas_high").unwrap().id;
    assert_eq!(
        open_alert(&b, "pipe.gas_high").unwrap().id,
        id,
        "one id on both"
    );

    let operator = log_in(a.http_addr(), "wang.li", PASSWORD).await;
    let path = |what: &str| format!("/api/v1/alerts/{id}/{what}");
    for (what, body) in [
        ("ack", r#"{"note": "通风已启动"}"#),
        ("assign", r#"{"to": "wang.li"}"#),
        ("comment", r#"{"text": "燃气公司已到场"}"#),
    ] {
        let (status, body) = operator.post(&path(what), body).await;
        assert_eq!(status, 200, "{what}: {body}");
    }
    let on_a = open_alert(&a, "pipe.gas_high").unwrap();
    wait_for(
        "the operator's actions on the other replica",
        Duration::from_secs(2),
        || async { open_alert(&b, "pipe.gas_high").as_ref() == Some(&on_a) },
    )
    .await;
    assert_eq!(on_a.ack.as_ref().unwrap().by, "wang.li");
    // Both outboxes hold the same events, with the same times.
    let events = |gw: &gateway::Gateway| {
        gw.store()
            .recent_alert_events(100)
            .unwrap()
            .into_iter()
            .map(|(_, e)| (e.kind, e.at_ms, e.alert))
            .collect::<Vec<_>>()
    };
    wait_for(
        "the same outbox on both",
        Duration::from_secs(2),
        || async { events(&a) == events(&b) },
    )
    .await;
    assert_eq!(
        events(&a).len(),
        4,
        "raised, acknowledged, assigned, commented"
    );
    // A subscriber gets each event from both replicas under one event_id.
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    while seen.len() < 4 || seen.values().any(|n| *n < 2) {
        let (_, body) = tokio::time::timeout(Duration::from_secs(5), stream.recv())
            .await
            .expect("both replicas' events on cs/v1/alerts/events")
            .unwrap();
        let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
        *seen
            .entry(event["event_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    let acked = on_a.ack.as_ref().unwrap().at_ms;
    assert!(
        seen.contains_key(&format!("{id}/acknowledged/{acked}")),
        "{seen:?}"
    );
    a.stop().await;
    b.stop().await;
}

/// The Prometheus HA model with real processes: two replicas of one partition (`gateway run`,
/// each with its own session and store and the same partition label) on one Mosquitto, each
/// sending to its own member of a two-node Alertmanager cluster that notifies a webhook. One
/// replica is SIGKILLed mid-episode and restarted: the receiver gets exactly one notification
/// when the tunnel's gas alarm is raised and one when it resolves; a frame replayed after the
/// restart is rejected by both replicas; both stores end with the same alert events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_pair_behind_an_alertmanager_cluster_notifies_once_through_a_sigkill() {
    use system_tests::http::Webhook;
    use system_tests::services::Alertmanager;
    let broker = Mosquitto::start();
    let hook = Webhook::start(false).await;
    let (am1, am2) = Alertmanager::start_pair(&format!("http://{}/hook", hook.addr));
    let dir = tempfile::tempdir().unwrap();
    let device = "gz-t1-gas";
    std::fs::write(
        dir.path().join("keys.toml"),
        device_profiles::keys::entry(device, &device_profiles::demo::key(device)),
    )
    .unwrap();
    let replica =
        |name: &str, am: &Alertmanager| replica_config(dir.path(), name, broker.port, am, "");
    let (config_a, port_a) = replica("a", &am1);
    let (config_b, port_b) = replica("b", &am2);
    let subscribed =
        |port: u16| async move { metric(port, "citysense_broker_connected ").await == 1.0 };
    let mut a = crate::store_durability::spawn_gateway(&config_a, port_a);
    let mut b = crate::store_durability::spawn_gateway(&config_b, port_b);
    wait_for(
        "both replicas subscribed",
        Duration::from_secs(10),
        || async { subscribed(port_a).await && subscribed(port_b).await },
    )
    .await;

    let notifications = |status: &'static str| {
        let hook = hook.clone();
        move || {
            hook.accepted
                .lock()
                .unwrap()
                .iter()
                .filter(|n| n["status"] == status)
                .filter(|n| n["commonLabels"]["alertname"] == "pipe.gas_high")
                .count()
        }
    };
    let (firing, resolved) = (notifications("firing"), notifications("resolved"));
    let (node, _) = client("pair-node", broker.port, true).await;
    let t0 = gateway::clock::now_ms();
    let raise = frame_at(device, 9, 1, t0, &pipe(Quantity::Gas, 23.0));
    publish(&node, &up_topic(device), raise.clone()).await;
    wait_for("the alarm notified", Duration::from_secs(20), || async {
        firing() >= 1
    })
    .await;

    // Replica a dies mid-episode; the gas clears while it is down; it comes back.
    a.kill().unwrap();
    a.wait().unwrap();
    let clear = frame_at(device, 9, 2, t0 + 1_000, &pipe(Quantity::Gas, 2.0));
    publish(&node, &up_topic(device), clear).await;
    wait_for(
        "the resolution notified",
        Duration::from_secs(20),
        || async { resolved() >= 1 },
    )
    .await;
    a = crate::store_durability::spawn_gateway(&config_a, port_a);
    wait_for(
        "the restarted replica caught up",
        Duration::from_secs(20),
        || async {
            metric(port_a, "citysense_alerts_active{").await == 0.0
                && metric(
                    port_a,
                    "citysense_readings_accepted_total{category=\"pipe\"}",
                )
                .await
                    >= 1.0
        },
    )
    .await;
    // A frame replayed after the restart is refused by both.
    publish(&node, &up_topic(device), raise).await;
    for port in [port_a, port_b] {
        wait_for("the replay refused", Duration::from_secs(10), || async {
            metric(
                port,
                "citysense_messages_rejected_total{reason=\"replayed\"}",
            )
            .await
                >= 1.0
        })
        .await;
    }
    // Both Alertmanagers have had their chance to notify again (group interval 1 s, the second
    // member's 2 s wait for the first's log): no second notification of either transition.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        (firing(), resolved()),
        (1, 1),
        "{:#?}",
        hook.accepted.lock().unwrap()
    );

    for child in [&mut a, &mut b] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let events = |name: &str| {
        let (store, _) =
            gateway::store::Store::open(&dir.path().join(format!("{name}.db"))).unwrap();
        let mut e: Vec<_> = store
            .recent_alert_events(100)
            .unwrap()
            .into_iter()
            .map(|(_, e)| (e.alert.id, e.kind.name(), e.at_ms))
            .collect();
        e.sort();
        e
    };
    assert_eq!(
        events("a"),
        events("b"),
        "both replicas recorded the same alert events"
    );
    drop((am1, am2));
}

/// Two partitions on two brokers writing to one VictoriaMetrics: the gateway of 章贡区 on one
/// Mosquitto and the gateway of 南康区 on another. Each partition's points equal those of its
/// run alone, and VictoriaMetrics holds both partitions' series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_partitions_on_two_brokers_each_give_what_they_give_alone() {
    use gateway::point::Point;
    use gateway::store::Table;
    use std::sync::Arc;
    use system_tests::load_frames::{SECOND_ZONE, split_report, split_site};
    use system_tests::services::VictoriaMetrics;
    const DEVICES: usize = 200;
    const ROUNDS: u32 = 6;
    let dir = tempfile::tempdir().unwrap();
    let catalog = Arc::new(split_site(dir.path(), DEVICES));
    let keys = gateway::keys::Keys::load(&dir.path().join("keys.toml")).unwrap();
    let t0 = (gateway::clock::now_ms() - 30 * 60_000) / 60_000 * 60_000;
    // A half's reports: a minute apart per logger, the loggers spread over the minute.
    let half = |second: bool| -> Vec<(String, Vec<u8>)> {
        let loggers = match second {
            false => 0..DEVICES / 2,
            true => DEVICES / 2..DEVICES,
        };
        (0..ROUNDS)
            .flat_map(|r| {
                loggers.clone().map(move |d| {
                    let at = t0 + i64::from(r) * 60_000 + d as i64 * 250;
                    split_report(d, DEVICES, r, at)
                })
            })
            .collect()
    };
    // One partition: a gateway serving `zone` on `broker`, sent its half; its points once every
    // reading is committed.
    let partition = |name: &'static str, zone: &'static str, broker: u16, vm: Option<String>| {
        let (catalog, keys) = (catalog.clone(), keys.clone());
        async move {
            start_gateway_on(catalog, keys, name, broker, move |s| {
                s.zones = vec![zone.to_owned()];
                s.influxdb = vm.map(|url| gateway::sink::influxdb::InfluxSection {
                    url,
                    ..crate::support::sink_to_url_defaults()
                });
            })
            .await
        }
    };
    let feed = |gw: &gateway::Gateway, broker: u16, frames: Vec<(String, Vec<u8>)>| {
        let store = gw.store();
        let subscribed = gw.metrics().broker_connected.clone();
        async move {
            wait_for("subscribed", Duration::from_secs(10), || async {
                subscribed.get() == 1
            })
            .await;
            let n = frames.len() as i64;
            let (node, _) = client(&format!("feed-{broker}"), broker, true).await;
            for (topic, frame) in frames {
                publish(&node, &topic, frame).await;
            }
            wait_for(
                "every reading committed",
                Duration::from_secs(30),
                || async { store.last_id(Table::Readings).unwrap() == n },
            )
            .await;
            let mut points: Vec<Point> = store
                .points_after(0, i64::MAX, 1_000_000)
                .unwrap()
                .into_iter()
                .map(|(_, p)| p)
                .collect();
            points.sort_by(|a, b| (&a.tags, a.time_ms).cmp(&(&b.tags, b.time_ms)));
            points
        }
    };

    // Each partition alone.
    let mut alone = Vec::new();
    for (second, zone) in [(false, "360702"), (true, SECOND_ZONE)] {
        let broker = Mosquitto::start();
        let gw = partition("alone", zone, broker.port, None).await;
        alone.push(feed(&gw, broker.port, half(second)).await);
        gw.stop().await;
    }
    assert!(
        alone.iter().all(|p| !p.is_empty()),
        "windows closed in each partition"
    );

    // Both at once, on two brokers, into one VictoriaMetrics.
    let vm = VictoriaMetrics::start();
    let (b1, b2) = (Mosquitto::start(), Mosquitto::start());
    let g1 = partition("zhanggong", "360702", b1.port, Some(vm.url())).await;
    let g2 = partition("nankang", SECOND_ZONE, b2.port, Some(vm.url())).await;
    let (p1, p2) = tokio::join!(
        feed(&g1, b1.port, half(false)),
        feed(&g2, b2.port, half(true))
    );
    assert_eq!(p1, alone[0], "章贡区 gives what it gives alone");
    assert_eq!(p2, alone[1], "南康区 gives what it gives alone");
    // VictoriaMetrics holds both partitions' mains (LA0 in 章贡区, LA1 in 南康区).
    for (gw, asset) in [(&g1, "LA0"), (&g2, "LA1")] {
        let m = gw.metrics().clone();
        wait_for(
            "every point in VictoriaMetrics",
            Duration::from_secs(30),
            || async { m.sink_pending.with_label_values(&["influxdb"]).get() == 0 },
        )
        .await;
        let addr: std::net::SocketAddr = vm.url().trim_start_matches("http://").parse().unwrap();
        let query = format!("/api/v1/series?match[]=pipe_mean{{asset=\"{asset}\"}}");
        wait_for(
            "the partition's series searchable in VictoriaMetrics",
            Duration::from_secs(15),
            || async {
                system_tests::http::get(addr, &query)
                    .await
                    .1
                    .contains(asset)
            },
        )
        .await;
    }
    g1.stop().await;
    g2.stop().await;
}

/// Every series of a VictoriaMetrics: labels → time → value (after a flush).
async fn export_all(
    vm: &system_tests::services::VictoriaMetrics,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<i64, f64>> {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", vm.port).parse().unwrap();
    let _ = system_tests::http::get(addr, "/internal/force_flush").await;
    // {__name__=~".+"}
    let (status, body) = system_tests::http::get(
        addr,
        "/api/v1/export?match[]=%7B__name__%3D%7E%22.%2B%22%7D",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut out: std::collections::BTreeMap<String, std::collections::BTreeMap<i64, f64>> =
        Default::default();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let labels: std::collections::BTreeMap<String, String> =
            serde_json::from_value(v["metric"].clone()).unwrap();
        let series = out.entry(format!("{labels:?}")).or_default();
        let (ts, vals) = (
            v["timestamps"].as_array().unwrap(),
            v["values"].as_array().unwrap(),
        );
        for (t, x) in ts.iter().zip(vals) {
            series.insert(t.as_i64().unwrap(), x.as_f64().unwrap());
        }
    }
    out
}

/// The HA claim end to end with the simulator: the tunnel gas-leak scenario (raised, escalated,
/// resolved) played once against a single gateway, and once against a replica pair (`gateway
/// run` processes with their own sessions and stores, each sending to its member of a
/// two-node Alertmanager cluster in front of a webhook, both writing to one VictoriaMetrics).
/// One replica is SIGKILLed mid-episode and restarted. The receiver gets exactly one
/// notification per transition, and the pair's VictoriaMetrics holds the same series and
/// values as the single gateway's (compared by export).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_through_a_replica_pair_with_one_sigkilled_equals_a_single_gateway() {
    use simulator::run::{RunOptions, run};
    use simulator::scenario::Scenario;
    use system_tests::http::Webhook;
    use system_tests::services::{Alertmanager, VictoriaMetrics};
    let scenario = Scenario::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../simulator/scenarios/gas-leak-tunnel.toml"),
    )
    .unwrap();
    let options = |port: u16, gateway: String, token: String, acceleration: f64| RunOptions {
        keys: None,
        mqtt_host: "127.0.0.1".into(),
        mqtt_port: port,
        gateway,
        acceleration: Some(acceleration),
        seed: 7,
        settle: Duration::from_secs(10),
        progress: false,
        token: Some(token),
    };

    // The single gateway, in its own VictoriaMetrics.
    let single_vm = VictoriaMetrics::start();
    {
        let broker = Mosquitto::start();
        let sink = sink_to(&single_vm);
        let gw = start_gateway_settings("single", broker.port, |s| s.influxdb = Some(sink)).await;
        let url = format!("http://{}", gw.http_addr());
        let token = system_tests::http::TEST_TOKEN.to_owned();
        let outcome = run(
            &catalog(),
            &scenario,
            &options(broker.port, url, token, 2400.0),
        )
        .await
        .unwrap();
        assert!(outcome.passed, "{}", outcome.report);
        let m = gw.metrics().clone();
        wait_for(
            "the single gateway's points written",
            Duration::from_secs(30),
            || async { m.sink_pending.with_label_values(&["influxdb"]).get() == 0 },
        )
        .await;
        gw.stop().await;
    }

    // The pair.
    let broker = Mosquitto::start();
    let pair_vm = VictoriaMetrics::start();
    let hook = Webhook::start(false).await;
    let (am1, am2) = Alertmanager::start_pair(&format!("http://{}/hook", hook.addr));
    // On the build's disk, not a tmpfs: the test reads the bytes the replicas wrote to storage.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let pki = system_tests::pki::Pki::generate(dir.path(), "platform");
    let platform = system_tests::platform::MockPlatform::start(
        &pki,
        system_tests::platform::Answer::Accept {
            reject_subject: None,
        },
    )
    .await;
    let keys: String = device_profiles::demo::keys(&catalog())
        .map(|(id, key)| device_profiles::keys::entry(id, &key))
        .collect();
    std::fs::write(dir.path().join("keys.toml"), keys).unwrap();
    let sinks = format!(
        "[influxdb]\nurl = \"{}\"\norg = \"ganzhou\"\nbucket = \"citysense\"\nflush_ms = 200\n\n\
         [city_platform]\nflush_ms = 100\n[city_platform.raw]\nenabled = true\n\
         [city_platform.https]\nurl = \"{}\"\nca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\ntimeout_ms = 2000\n",
        pair_vm.url(),
        platform.url,
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display(),
    );
    let replica =
        |name: &str, am: &Alertmanager| replica_config(dir.path(), name, broker.port, am, &sinks);
    let (config_a, port_a) = replica("a", &am1);
    let (config_b, port_b) = replica("b", &am2);
    let mut a = crate::store_durability::spawn_gateway(&config_a, port_a);
    let mut b = crate::store_durability::spawn_gateway(&config_b, port_b);
    // A read token on replica b, for the simulator's oracle.
    let made = std::process::Command::new(crate::gateway_ingest::gateway_binary())
        .args(["tokens", "add", "simulator", "--scope", "read", "--config"])
        .arg(&config_b)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let token = String::from_utf8_lossy(&made.stdout).trim().to_owned();
    wait_for(
        "both replicas subscribed",
        Duration::from_secs(10),
        || async {
            metric(port_a, "citysense_broker_connected ").await == 1.0
                && metric(port_b, "citysense_broker_connected ").await == 1.0
        },
    )
    .await;
    let notified = |severity: &'static str, status: &'static str| {
        let hook = hook.clone();
        move || {
            hook.accepted
                .lock()
                .unwrap()
                .iter()
                .filter(|n| n["status"] == status)
                .filter(|n| n["commonLabels"]["alertname"] == "pipe.gas_high")
                .filter(|n| n["commonLabels"]["severity"] == severity)
                .count()
        }
    };
    // The scenario at 60× (its episode spans seconds, so Alertmanager sees each transition
    // apart), with replica a SIGKILLed as soon as the alarm is notified and started again.
    let url = format!("http://127.0.0.1:{port_b}");
    let (catalog, opts) = (catalog(), options(broker.port, url, token, 60.0));
    let raised = notified("alarm", "firing");
    let kill_and_restart = async {
        wait_for("the alarm notified", Duration::from_secs(60), || async {
            raised() >= 1
        })
        .await;
        a.kill().unwrap();
        a.wait().unwrap();
        crate::store_durability::spawn_gateway(&config_a, port_a)
    };
    let (outcome, restarted) = tokio::join!(run(&catalog, &scenario, &opts), kill_and_restart);
    let (outcome, mut a) = (outcome.unwrap(), restarted);
    assert!(outcome.passed, "{}", outcome.report);
    wait_for(
        "the restarted replica caught up and wrote its points",
        Duration::from_secs(30),
        || async {
            metric(port_a, "citysense_alerts_active{").await == 0.0
                && metric(port_a, "citysense_sink_pending{sink=\"influxdb\"}").await == 0.0
                && metric(port_b, "citysense_sink_pending{sink=\"influxdb\"}").await == 0.0
                && metric(port_a, "citysense_city_platform_pending_records{").await == 0.0
                && metric(port_b, "citysense_city_platform_pending_records{").await == 0.0
        },
    )
    .await;
    // Each member had its chance to notify again (group interval 1 s, the second member's 2 s
    // wait for the first's log): one notification per transition, however many replicas.
    let resolved_critical = notified("critical", "resolved");
    wait_for(
        "the resolution notified",
        Duration::from_secs(20),
        || async { resolved_critical() >= 1 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let counts: Vec<usize> = [
        ("alarm", "firing"),
        ("alarm", "resolved"),
        ("critical", "firing"),
        ("critical", "resolved"),
    ]
    .into_iter()
    .map(|(severity, status)| notified(severity, status)())
    .collect();
    assert_eq!(counts, [1, 1, 1, 1], "{:#?}", hook.accepted.lock().unwrap());
    // What the replica wrote to storage is counted (/proc/self/io).
    assert!(metric(port_b, "citysense_store_bytes_written_total").await > 0.0);
    for child in [&mut a, &mut b] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // The platform got every record from both replicas under one id, saying the same.
    let owed = |name: &str| {
        let (store, _) =
            gateway::store::Store::open(&dir.path().join(format!("{name}.db"))).unwrap();
        crate::city_platform::owed_records(&store, &format!("gw-{name}"))
    };
    let (owed_a, owed_b) = (owed("a"), owed("b"));
    assert_eq!(owed_a, owed_b, "the replicas owe the same records");
    let received = platform.received();
    assert!(received.violations.is_empty(), "{:?}", received.violations);
    let ids = crate::city_platform::unique_ids(&received.records);
    for (stream, owed) in &owed_a {
        assert!(!owed.is_empty(), "{stream}");
        assert_eq!(&ids[*stream], owed, "{stream}: one record per id");
    }
    // The pair's time series are the single gateway's.
    let (single, pair) = (export_all(&single_vm).await, export_all(&pair_vm).await);
    assert!(single.len() > 10, "{single:?}");
    assert_eq!(single, pair);
    drop((am1, am2));
}
