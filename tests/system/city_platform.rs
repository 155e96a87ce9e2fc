//! The city platform end to end. A second Mosquitto (TLS, client certificates required) plays
//! the platform behind a proxy that black-holes it for an accelerated hour: every record arrives
//! afterwards, duplicates only with the same id and content, and live data overtakes the
//! backlog. A mock HTTPS platform (axum over rustls) answers 5xx, stalls, refuses, rejects, and
//! shows a certificate from another CA; the data stays stored until it can go. Every record
//! received is checked against the exchange schema.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway::Gateway;
use gateway::net::tls::TlsSection;
use gateway::sink::city_platform::transport::{HttpsSection, UpstreamMqttSection};
use gateway::sink::city_platform::{CityPlatformSection, Dataset, DatasetSection};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;
use system_tests::pki::Pki;
use system_tests::platform::{Answer, ExchangeSchema, MockPlatform};
use system_tests::proxy::MqttProxy;
use system_tests::services::{Mosquitto, free_port};
use wire::{Body, Direction, GateEvent, GateEvents, LaneInterval, Quantity, TagHash};

use crate::support::*;

const MINUTE: i64 = 60_000;

/// A minute-aligned start 100 minutes ago: the hour ends 40 minutes ago, minutes 95–99 are now.
fn start() -> i64 {
    (gateway::clock::now_ms() - 100 * MINUTE).div_euclid(MINUTE) * MINUTE
}

/// Publishes `minutes` (offsets from `t0`): P1 pressure every 30 s (0.70 MPa, over the alarm,
/// in minutes 20–29), R1's four lanes every 30 s and S4's gate (ten entries a minute) while
/// `traffic` is set. Sequence numbers follow the minute, so later calls continue.
async fn publish_minutes(
    node: &rumqttc::v5::AsyncClient,
    t0: i64,
    minutes: std::ops::Range<i64>,
    traffic: bool,
) {
    for m in minutes {
        for half in 0..2i64 {
            let k = (2 * m + half) as u32;
            let t = t0 + m * MINUTE + half * 30_000;
            let pressure = if (20..30).contains(&m) { 0.70 } else { 0.30 };
            let p1 = frame_at("gz-p1-press", 1, k, t, &pipe(Quantity::Pressure, pressure));
            publish(node, &up_topic("gz-p1-press"), p1).await;
            if traffic {
                let mut lanes = heapless::Vec::new();
                for lane in 1..=4 {
                    let _ = lanes.push(LaneInterval {
                        lane,
                        vehicles: 5,
                        occupancy_permille: 100,
                        mean_speed_dkmh: Some(300),
                    });
                }
                let body = Body::TrafficInterval(wire::TrafficInterval {
                    interval_s: 30,
                    lanes,
                });
                publish(
                    node,
                    &up_topic("gz-r1-d1"),
                    frame_at("gz-r1-d1", 1, k, t, &body),
                )
                .await;
            }
        }
        if traffic {
            let mut events = heapless::Vec::new();
            for v in 0..10u32 {
                let mut tag = [0u8; 8];
                tag[..4].copy_from_slice(&(m as u32).to_le_bytes());
                tag[4..].copy_from_slice(&v.to_le_bytes());
                let _ = events.push(GateEvent {
                    tag: TagHash(tag),
                    direction: Direction::Entry,
                    offset_ms: v * 1000,
                });
            }
            let gate = Body::GateEvents(GateEvents { events });
            let t = t0 + m * MINUTE + 5_000;
            let frame = frame_at("gz-s4-g1", 1, m as u32, t, &gate);
            publish(node, &up_topic("gz-s4-g1"), frame).await;
        }
    }
}

/// One P2 reading three minutes after the hour: closes every window of the hour.
async fn close_hour(node: &rumqttc::v5::AsyncClient, t0: i64) {
    let t = t0 + 63 * MINUTE;
    let frame = frame_at("gz-p2-press", 1, 0, t, &pipe(Quantity::Pressure, 0.3));
    publish(node, &up_topic("gz-p2-press"), frame).await;
}

fn section(change: impl FnOnce(&mut CityPlatformSection)) -> CityPlatformSection {
    let mut s = CityPlatformSection {
        region: None,
        flush_ms: 100,
        batch_records: 50,
        catch_up_after: 100,
        retry_max_ms: 500,
        aggregates: DatasetSection::default(),
        alerts: DatasetSection::default(),
        raw: DatasetSection::default(),
        mqtt: None,
        https: None,
    };
    change(&mut s);
    s
}

fn metric(gw: &Gateway, what: &str, d: Dataset) -> i64 {
    let m = gw.metrics();
    match what {
        "forwarded" => m.city_forwarded.with_label_values(&[d.name()]).get() as i64,
        "pending" => m.city_pending.with_label_values(&[d.name()]).get(),
        _ => unreachable!("{what}"),
    }
}

fn errors(gw: &Gateway, d: Dataset, class: &str) -> u64 {
    gw.metrics()
        .city_errors
        .with_label_values(&[d.name(), class])
        .get()
}

/// Every record id the gateway owes the platform, by stream (ids as the gateway's exchange
/// format makes them: from content, so a revised window is one id).
pub(crate) fn owed_records(
    store: &gateway::store::Store,
    gateway_id: &str,
) -> BTreeMap<&'static str, BTreeSet<String>> {
    let x = gateway::sink::city_platform::exchange::Exchange::new(
        &catalog(),
        gateway_id,
        &store.instance().unwrap(),
        "360700",
    );
    let mut out = BTreeMap::new();
    out.insert(
        "aggregates",
        store
            .points_after(0, i64::MAX, 1_000_000)
            .unwrap()
            .into_iter()
            .map(|(seq, p)| x.point("d", seq, &p, None).id)
            .collect(),
    );
    out.insert(
        "alerts",
        store
            .alert_events_after(0, 1_000_000)
            .unwrap()
            .into_iter()
            .map(|(seq, e)| x.alert("d", seq, &e).id)
            .collect(),
    );
    out.insert(
        "raw",
        store
            .readings_after(0, 1_000_000)
            .unwrap()
            .into_iter()
            .map(|(seq, r)| x.reading("d", seq, &r, 0).id)
            .collect(),
    );
    out
}

/// Checks that copies of one id say the same (whichever replica sent them: `source` names the
/// sender, `revision` its row), and returns the ids by stream.
pub(crate) fn unique_ids(
    records: &BTreeMap<String, Vec<Value>>,
) -> BTreeMap<String, BTreeSet<String>> {
    let said = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("source");
            o.remove("revision");
        }
        v
    };
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, copies) in records {
        assert!(
            copies.iter().all(|c| said(c) == said(&copies[0])),
            "{id} arrived twice with different content: {copies:#?}"
        );
        let stream = copies[0]["source"]["stream"].as_str().unwrap().to_owned();
        out.entry(stream).or_default().insert(id.clone());
    }
    out
}

fn seq(r: &Value) -> i64 {
    r["source"]["seq"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_long_upstream_outage_loses_nothing_and_live_data_overtakes_the_backlog() {
    // The platform: TLS with client certificates for gateways, a plain listener for its consumer.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path(), "city");
    let plain = free_port();
    let (ca, cert, key) = (
        pki.ca.clone(),
        pki.server_cert.clone(),
        pki.server_key.clone(),
    );
    let platform = Mosquitto::start_with_listeners(dir, |tls| {
        format!(
            "per_listener_settings true\n\
             listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\nallow_anonymous true\n\
             listener {plain} 127.0.0.1\nallow_anonymous true\n",
            ca.display(),
            cert.display(),
            key.display()
        )
    });
    let link = MqttProxy::start(platform.addr()).await;
    let (consumer, mut inbox) = client("city-consumer", plain, true).await;
    consumer
        .subscribe("citysense/exchange/v1/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    // The subscription is in place once the consumer hears its own probe.
    let probe = "citysense/exchange/v1/probe";
    consumer
        .publish(probe, QoS::AtLeastOnce, false, "probe")
        .await
        .unwrap();
    loop {
        let (topic, _) = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
            .await
            .expect("the consumer's subscription works")
            .unwrap();
        if topic == probe {
            break;
        }
    }
    let schema = ExchangeSchema::load();
    let arrivals: Arc<Mutex<Vec<(Instant, String, Value)>>> = Arc::default();
    let sink = arrivals.clone();
    tokio::spawn(async move {
        while let Some((topic, payload)) = inbox.recv().await {
            let v: Value = serde_json::from_slice(&payload).unwrap_or_default();
            sink.lock().unwrap().push((Instant::now(), topic, v));
        }
    });

    let nodes = Mosquitto::start();
    let store_dir = tempfile::tempdir().unwrap();
    let tls = TlsSection {
        ca: pki.ca.clone(),
        client_cert: Some(pki.client_cert.clone()),
        client_key: Some(pki.client_key.clone()),
    };
    let city = section(|s| {
        // Rate limits make the catch-up last seconds, so live data has to overtake it.
        s.aggregates.max_records_per_s = 50;
        s.raw = DatasetSection {
            enabled: Some(true),
            max_records_per_s: 200,
            ..DatasetSection::default()
        };
        s.mqtt = Some(UpstreamMqttSection {
            host: "127.0.0.1".into(),
            port: link.port,
            username: None,
            password_file: None,
            tls: Some(tls),
            topic_prefix: "citysense/exchange/v1".into(),
            keep_alive_s: 5,
            ack_timeout_ms: 1000,
            password: None,
        });
    });
    let gw = start_gateway_settings("city-mqtt", nodes.port, |s| {
        s.store_path = store_dir.path().join("gw.db");
        s.city_platform = Some(city);
    })
    .await;
    let gateway_id = format!("gw-city-mqtt-{}", std::process::id());
    wait_for("gateway subscribed", Duration::from_secs(10), || async {
        gw.metrics().broker_connected.get() == 1
    })
    .await;
    let (node, _) = client("city-node", nodes.port, true).await;
    let t0 = start();

    // Before the outage: records flow.
    publish_minutes(&node, t0, 0..5, true).await;
    wait_for("records forwarded", Duration::from_secs(30), || async {
        metric(&gw, "forwarded", Dataset::Raw) > 0
            && metric(&gw, "forwarded", Dataset::Aggregates) > 0
    })
    .await;

    // The platform's link goes silent for the rest of the hour.
    link.set_blackhole(true);
    publish_minutes(&node, t0, 5..60, true).await;
    close_hour(&node, t0).await;
    wait_for("the hour stored", Duration::from_secs(60), || async {
        accepted(&gw, "gz-p2-press") == 1
    })
    .await;
    wait_for("the outage noticed", Duration::from_secs(30), || async {
        errors(&gw, Dataset::Raw, "timeout") > 0
            && metric(&gw, "pending", Dataset::Raw) > 1000
            && metric(&gw, "pending", Dataset::Aggregates) > 100
    })
    .await;
    let forwarded_before = metric(&gw, "forwarded", Dataset::Raw);

    // The link comes back; once the backlog moves, live reports arrive.
    link.set_blackhole(false);
    wait_for("catch-up started", Duration::from_secs(30), || async {
        metric(&gw, "forwarded", Dataset::Raw) > forwarded_before
    })
    .await;
    let store = gw.store();
    let backlog = (
        store.last_id(gateway::store::Table::Points).unwrap(),
        store.last_id(gateway::store::Table::Readings).unwrap(),
    );
    assert!(
        gw.metrics()
            .city_catching_up
            .with_label_values(&["raw"])
            .get()
            == 1
    );
    publish_minutes(&node, t0, 95..100, false).await;
    wait_for(
        "every record confirmed",
        Duration::from_secs(90),
        || async {
            Dataset::ALL.iter().all(|d| metric(&gw, "pending", *d) == 0)
                && store.last_id(gateway::store::Table::Readings).unwrap() >= backlog.1 + 10
        },
    )
    .await;
    // Let the consumer receive the last PUBLISHes the broker acknowledged.
    let owed = owed_records(&gw.store(), &gateway_id);
    let got = |arrivals: &[(Instant, String, Value)]| {
        let mut by_id: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (_, topic, v) in arrivals {
            if topic != probe {
                by_id
                    .entry(v["id"].as_str().unwrap_or_default().to_owned())
                    .or_default()
                    .push(v.clone());
            }
        }
        by_id
    };
    wait_for(
        "the consumer has every record",
        Duration::from_secs(30),
        || {
            let n = got(&arrivals.lock().unwrap()).len();
            let want: usize = owed.values().map(BTreeSet::len).sum();
            async move { n >= want }
        },
    )
    .await;

    let arrivals = arrivals.lock().unwrap().clone();
    let by_id = got(&arrivals);
    for copies in by_id.values() {
        schema.check(&copies[0]);
    }
    let ids = unique_ids(&by_id);
    // Records made after the snapshot (a late alert) may arrive too; none that was never owed.
    let owed_now = owed_records(&gw.store(), &gateway_id);
    for (stream, want) in &owed {
        let have = ids.get(*stream).cloned().unwrap_or_default();
        let missing: Vec<&String> = want.difference(&have).collect();
        assert!(missing.is_empty(), "{stream}: never arrived: {missing:?}");
        assert!(
            have.is_subset(&owed_now[stream]),
            "{stream}: records nobody owed"
        );
    }
    assert!(
        owed["aggregates"].len() > 250 && owed["raw"].len() > 1200,
        "the hour: {} points, {} readings",
        owed["aggregates"].len(),
        owed["raw"].len()
    );
    // P1 over 0.6 MPa for ten minutes: raised and resolved during the outage, forwarded after.
    let p1_alerts: Vec<&str> = by_id
        .values()
        .filter(|c| c[0]["measurement"] == "alert" && c[0]["subjects"]["subject"] == "P1")
        .filter_map(|c| c[0]["alert"]["event"].as_str())
        .collect();
    assert!(
        p1_alerts.contains(&"raised") && p1_alerts.contains(&"resolved"),
        "{p1_alerts:?}"
    );
    // Live data overtook the backlog: the first live record came before the last backlog one.
    for (stream, split) in [("aggregates", backlog.0), ("raw", backlog.1)] {
        let times = |live: bool| {
            arrivals.iter().filter(move |(_, _, v)| {
                v["source"]["stream"] == stream && (seq(v) > split) == live
            })
        };
        let first_live = times(true).map(|(t, ..)| *t).min().unwrap();
        let last_backlog = times(false).map(|(t, ..)| *t).max().unwrap();
        assert!(
            first_live < last_backlog,
            "{stream}: live data waited for the backlog ({:?} after it ended)",
            first_live - last_backlog
        );
    }
    for d in Dataset::ALL {
        let age = gw
            .metrics()
            .city_oldest_unsent
            .with_label_values(&[d.name()])
            .get();
        assert_eq!(age, 0.0, "{}: nothing unsent", d.name());
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_connection_stays_up_between_sends() {
    let platform = Mosquitto::start_logging_debug();
    let nodes = Mosquitto::start();
    let city = section(|s| {
        s.raw = DatasetSection {
            enabled: Some(true),
            ..DatasetSection::default()
        };
        // The shortest keepalive, 5 s: the broker drops a connection silent for 7.5 s.
        s.mqtt = Some(UpstreamMqttSection {
            host: "127.0.0.1".into(),
            port: platform.port,
            username: None,
            password_file: None,
            tls: None,
            topic_prefix: "citysense/exchange/v1".into(),
            keep_alive_s: 5,
            ack_timeout_ms: 1000,
            password: None,
        });
    });
    let gw =
        start_gateway_settings("city-quiet", nodes.port, |s| s.city_platform = Some(city)).await;
    let (node, _) = client("city-quiet-node", nodes.port, true).await;
    publish_minutes(&node, start(), 0..1, false).await;
    wait_for("raw records forwarded", Duration::from_secs(30), || async {
        metric(&gw, "forwarded", Dataset::Raw) > 0
    })
    .await;
    // Nothing more to send: the connection pings rather than wait for the broker to drop it.
    let raw_client = format!("gw-city-quiet-{}-city-raw", std::process::id());
    pings_through_a_quiet_spell(&platform, &raw_client).await;
    gw.stop().await;
}

fn https(mock_url: &str, ca: &Pki, client: &Pki) -> HttpsSection {
    HttpsSection {
        url: mock_url.to_owned(),
        ca: Some(ca.ca.clone()),
        client_cert: Some(client.client_cert.clone()),
        client_key: Some(client.client_key.clone()),
        timeout_ms: 500,
        token: None,
    }
}

async fn readyz(gw: &Gateway) -> (u16, String) {
    system_tests::http::get(gw.http_addr(), "/readyz").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_platform_gets_every_record_through_5xx_timeouts_refusals_and_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path(), "platform");
    let mock = MockPlatform::start(&pki, Answer::Status(503)).await;
    let nodes = Mosquitto::start();
    let store_dir = tempfile::tempdir().unwrap();
    let city = section(|s| {
        s.batch_records = 20;
        s.https = Some(https(&mock.url, &pki, &pki));
    });
    let gw = start_gateway_settings("city-https", nodes.port, |s| {
        s.store_path = store_dir.path().join("gw.db");
        s.city_platform = Some(city);
    })
    .await;
    let gateway_id = format!("gw-city-https-{}", std::process::id());
    wait_for("gateway subscribed", Duration::from_secs(10), || async {
        gw.metrics().broker_connected.get() == 1
    })
    .await;
    let (node, _) = client("city-https-node", nodes.port, true).await;
    let t0 = start();
    publish_minutes(&node, t0, 0..40, true).await;
    close_hour(&node, t0).await;
    let cursor = || gw.store().cursor(&Dataset::Aggregates.cursor()).unwrap();

    // 503 with Retry-After: nothing counts as delivered.
    wait_for("5xx seen", Duration::from_secs(30), || async {
        errors(&gw, Dataset::Aggregates, "unavailable") > 0
    })
    .await;
    assert_eq!(cursor(), 0);
    // A platform that does not answer: timeouts.
    mock.answer(Answer::Stall);
    wait_for("timeout seen", Duration::from_secs(30), || async {
        errors(&gw, Dataset::Aggregates, "timeout") > 0
    })
    .await;
    assert_eq!(cursor(), 0);
    // 401: the operator must act; readiness and the sink alert say why.
    mock.answer(Answer::Status(401));
    wait_for("refusal seen", Duration::from_secs(30), || async {
        let (status, body) = readyz(&gw).await;
        status == 503 && body.contains("city_platform:aggregates") && body.contains("401")
    })
    .await;
    wait_for("sink alert raised", Duration::from_secs(30), || async {
        let (_, body) =
            system_tests::http::get(gw.http_addr(), "/api/v1/alerts?category=gateway").await;
        body.contains("city_platform:aggregates")
    })
    .await;
    assert_eq!(cursor(), 0, "nothing dropped while refused");
    assert!(metric(&gw, "pending", Dataset::Aggregates) > 0);

    // Accepted, except batches with a record about 通天岩 (S4; 422): those are split until the
    // S4 records are alone, and dead-lettered.
    mock.answer(Answer::Accept {
        reject_subject: Some("S4".into()),
    });
    wait_for(
        "every record delivered",
        Duration::from_secs(60),
        || async {
            metric(&gw, "pending", Dataset::Aggregates) == 0
                && metric(&gw, "pending", Dataset::Alerts) == 0
        },
    )
    .await;
    let (status, _) = readyz(&gw).await;
    assert_eq!(status, 200, "ready again");

    // Alerts keep coming (the sink alert resolves once the platform accepts again): wait until
    // everything owed so far, but the rejected, has arrived.
    let store = gw.store();
    let dead_ids = |d: Dataset| -> BTreeSet<String> {
        store
            .dead_letters(&d.cursor())
            .unwrap()
            .iter()
            .map(|(_, record, _)| {
                let v: Value = serde_json::from_str(record).unwrap();
                v["id"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let datasets = [Dataset::Aggregates, Dataset::Alerts];
    let delivered = || {
        let ids = unique_ids(&mock.received().records);
        let owed = owed_records(&gw.store(), &gateway_id);
        datasets.iter().all(|d| {
            let want: BTreeSet<String> =
                owed[d.name()].difference(&dead_ids(*d)).cloned().collect();
            ids.get(d.name()).is_some_and(|have| want.is_subset(have))
        })
    };
    wait_for("everything owed delivered", Duration::from_secs(60), || {
        let done = delivered();
        async move { done }
    })
    .await;
    let received = mock.received();
    assert!(received.violations.is_empty(), "{:?}", received.violations);
    let ids = unique_ids(&received.records);
    let owed = owed_records(&gw.store(), &gateway_id);
    for d in datasets {
        let dead = store.dead_letters(&d.cursor()).unwrap();
        for (_, record, reason) in &dead {
            assert!(record.contains("\"S4\""), "{record}");
            assert!(reason.contains("422"), "{reason}");
        }
        let have = ids.get(d.name()).cloned().unwrap_or_default();
        assert!(
            have.is_disjoint(&dead_ids(d)),
            "{}: a rejected record arrived",
            d.name()
        );
        assert!(
            have.is_subset(&owed[d.name()]),
            "{}: records nobody owed",
            d.name()
        );
        if d == Dataset::Aggregates {
            assert!(!dead.is_empty() && !have.is_empty());
        }
    }
    assert!(
        ids["alerts"].len() >= 2,
        "P1's over-pressure alert, raised and resolved"
    );
    assert!(
        received
            .requests
            .iter()
            .any(|(key, status)| *status == 422 && !key.is_empty())
    );
    assert!(errors(&gw, Dataset::Aggregates, "rejected") > 0);
    assert!(errors(&gw, Dataset::Aggregates, "refused") > 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_certificate_from_another_ca_is_refused_clearly_and_the_data_waits() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path(), "platform");
    let stranger = Pki::generate(dir.path(), "stranger");
    let mock = MockPlatform::start(
        &pki,
        Answer::Accept {
            reject_subject: None,
        },
    )
    .await;
    let nodes = Mosquitto::start();
    let store_dir = tempfile::tempdir().unwrap();
    let db = store_dir.path().join("gw.db");
    let launch = |ca: &Pki, name: &'static str| {
        let city = section(|s| s.https = Some(https(&mock.url, ca, &pki)));
        let db = db.clone();
        start_gateway_settings(name, nodes.port, move |s| {
            s.store_path = db;
            s.city_platform = Some(city);
        })
    };
    // The gateway trusts another CA than the one that signed the platform's certificate.
    let gw = launch(&stranger, "city-tls").await;
    wait_for("gateway subscribed", Duration::from_secs(10), || async {
        gw.metrics().broker_connected.get() == 1
    })
    .await;
    let (node, _) = client("city-tls-node", nodes.port, true).await;
    let t0 = start();
    publish_minutes(&node, t0, 0..10, false).await;
    close_hour(&node, t0).await;
    wait_for("the TLS failure named", Duration::from_secs(30), || async {
        let (status, body) = readyz(&gw).await;
        status == 503 && body.contains("TLS") && body.to_lowercase().contains("certificate")
    })
    .await;
    assert!(errors(&gw, Dataset::Aggregates, "tls") > 0);
    assert!(
        mock.received().requests.is_empty(),
        "no request got through"
    );
    let owed_points = gw.store().last_point_id().unwrap();
    assert!(owed_points > 0);
    assert_eq!(gw.store().cursor(&Dataset::Aggregates.cursor()).unwrap(), 0);
    gw.stop().await;

    // Fixed configuration, same store: everything that waited goes.
    let gw = launch(&pki, "city-tls").await;
    wait_for(
        "the waiting points delivered",
        Duration::from_secs(30),
        || async {
            gw.store().cursor(&Dataset::Aggregates.cursor()).unwrap() >= owed_points
                && metric(&gw, "pending", Dataset::Aggregates) == 0
        },
    )
    .await;
    let received = mock.received();
    assert!(received.violations.is_empty(), "{:?}", received.violations);
    let gateway_id = format!("gw-city-tls-{}", std::process::id());
    assert_eq!(
        unique_ids(&received.records)["aggregates"],
        owed_records(&gw.store(), &gateway_id)["aggregates"]
    );
    gw.stop().await;
}

/// Two replicas of one partition forward to one platform: every record arrives from both under
/// one id with the same content, so the platform's idempotency keeps one of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_send_each_record_under_one_id_and_the_platform_keeps_one() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path(), "replicas");
    let mock = MockPlatform::start(
        &pki,
        Answer::Accept {
            reject_subject: None,
        },
    )
    .await;
    let nodes = Mosquitto::start();
    let replica = |name: &'static str| {
        let city = section(|s| {
            s.https = Some(https(&mock.url, &pki, &pki));
            s.raw.enabled = Some(true);
        });
        start_gateway_settings(name, nodes.port, move |s| s.city_platform = Some(city))
    };
    let (a, b) = (replica("replica-a").await, replica("replica-b").await);
    wait_for("both subscribed", Duration::from_secs(10), || async {
        a.metrics().broker_connected.get() == 1 && b.metrics().broker_connected.get() == 1
    })
    .await;
    let (node, _) = client("replicas-node", nodes.port, true).await;
    let t0 = start();
    publish_minutes(&node, t0, 0..20, true).await;
    close_hour(&node, t0).await;
    // Everything committed so far forwarded (the last report is a minute old by then).
    let delivered = |gw: &Gateway| {
        use gateway::store::Table;
        let store = gw.store();
        let done = |d: Dataset, t: Table| {
            let last = store.last_id(t).unwrap();
            last > 0 && store.cursor(&d.cursor()).unwrap() == last
        };
        done(Dataset::Aggregates, Table::Points) && done(Dataset::Raw, Table::Readings)
    };
    let owed = |gw: &Gateway, name: &str| {
        owed_records(&gw.store(), &format!("gw-{name}-{}", std::process::id()))
    };
    // Each replica commits on its own time (a quiet batch waits up to store.commit_interval_ms
    // for others to share its commit): wait until both hold the same records, all delivered.
    wait_for(
        "both replicas committed the same records and delivered them all",
        Duration::from_secs(30),
        || async {
            delivered(&a) && delivered(&b) && owed(&a, "replica-a") == owed(&b, "replica-b")
        },
    )
    .await;
    let received = mock.received();
    assert!(received.violations.is_empty(), "{:?}", received.violations);
    // Copies of one id are identical (checked by unique_ids), and there are two of each.
    let ids = unique_ids(&received.records);
    let owed_a = owed(&a, "replica-a");
    assert!(!owed_a["aggregates"].is_empty() && !owed_a["raw"].is_empty());
    for (stream, owed) in &owed_a {
        assert_eq!(
            &ids.get(*stream).cloned().unwrap_or_default(),
            owed,
            "{stream}"
        );
    }
    assert!(
        received.records.values().all(|copies| copies.len() >= 2),
        "each record came from both replicas"
    );
    a.stop().await;
    b.stop().await;
}
