//! Alerts end to end over a real Mosquitto: a Golden Week surge at 通天岩 from real RFID frames,
//! one alert per episode across a restart, acknowledgement through the API, a real Alertmanager,
//! and a webhook that is down while the other notifiers carry on.

use std::sync::atomic::Ordering;
use std::time::Duration;

use gateway::sink::notify::{AlertmanagerSection, WebhookFormat, WebhookSection};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;
use system_tests::http::{Webhook, get, post};
use system_tests::services::{Alertmanager, Mosquitto};
use tokio::sync::mpsc::UnboundedReceiver;
use wire::{Body, Direction, GateEvent, GateEvents, Quantity, TagHash};

use crate::support::*;

const MINUTE: i64 = 60_000;

/// The next event on `cs/v1/alerts/events` that `wanted` accepts (others are skipped), within
/// `limit`.
async fn next_event(
    rx: &mut UnboundedReceiver<(String, Vec<u8>)>,
    limit: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((topic, body))) if topic == "cs/v1/alerts/events" => {
                let event: Value = serde_json::from_slice(&body).unwrap();
                if wanted(&event) {
                    return event;
                }
            }
            Ok(Some(_)) => {}
            _ => panic!("no matching alert event within {limit:?}"),
        }
    }
}

fn is_rule(event: &Value, rule: &str) -> bool {
    event["alert"]["rule"] == rule
}

async fn watch_alerts(name: &str, port: u16) -> UnboundedReceiver<(String, Vec<u8>)> {
    let (c, rx) = client(name, port, true).await;
    c.subscribe("cs/v1/alerts/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    // Keep the client alive for the test's duration.
    std::mem::forget(c);
    rx
}

/// One RFID frame with `n` passages (at most 32) at `time_ms`.
pub(crate) fn passages(n: usize, direction: Direction, rng: &mut impl rand::Rng) -> Body {
    let mut events = heapless::Vec::new();
    for i in 0..n {
        events
            .push(GateEvent {
                tag: TagHash(rng.random()),
                direction,
                offset_ms: i as u32,
            })
            .unwrap();
    }
    Body::GateEvents(GateEvents { events })
}

/// The start of a 26-minute stretch in the past that lies within one crowd day of 通天岩 (its
/// day ends at closing time, 18:00 +08:00 = 10:00 UTC).
pub(crate) fn surge_start(now: i64) -> i64 {
    let day = 24 * 60 * MINUTE;
    let closing = (now - 10 * 60 * MINUTE).div_euclid(day) * day + 10 * 60 * MINUTE;
    let start = (now - 30 * MINUTE).div_euclid(MINUTE) * MINUTE;
    if start < closing && closing <= start + 26 * MINUTE {
        closing - 30 * MINUTE
    } else {
        start
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_golden_week_surge_at_tongtianyan_raises_blue_yellow_orange_once_each_then_resolves() {
    let broker = Mosquitto::start();
    let gw = start_gateway("surge", broker.port, 10).await;
    let mut events = watch_alerts("surge-watch", broker.port).await;
    let (node, _) = client("surge-gates", broker.port, true).await;
    let mut rng = rand::rng();
    // Occupancy of 通天岩 (6,000) at the end of each minute: 50%, then 62% (蓝), 82% (黄),
    // 92% (橙), back to 50% from minute 8, held there (one entry and one exit a minute) until
    // the ten minutes of clearing have passed.
    let targets = [3000, 3700, 4000, 4900, 5000, 5500, 5600, 4000, 3000];
    let base = surge_start(gateway::clock::now_ms());
    // The gateway starts mid-day: the duty officer's count (nobody inside yet) is its baseline.
    let (status, body) = post(
        gw.http_addr(),
        "/api/v1/areas/S4/occupancy",
        &format!(r#"{{"count": 0, "at_ms": {}}}"#, base - 1),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // 方特 nearby (15,000) is at 45% all along: where 通天岩's 橙 sends visitors.
    let (status, body) = post(
        gw.http_addr(),
        "/api/v1/areas/S5/occupancy",
        &format!(r#"{{"count": 6750, "at_ms": {}}}"#, base - 1),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (mut occupancy, mut seq) = (0i64, 0u32);
    let mut send = async |device: &str, n: usize, direction: Direction, t: i64| {
        let mut left = n;
        while left > 0 {
            let batch = left.min(32);
            let body = passages(batch, direction, &mut rng);
            seq += 1;
            publish(&node, &up_topic(device), frame_at(device, 7, seq, t, &body)).await;
            left -= batch;
        }
    };
    for minute in 0..=21 {
        let t = base + minute * MINUTE + 1_000;
        let target = targets.get(minute as usize).copied().unwrap_or(3000);
        let change = target - occupancy;
        occupancy = target;
        // One entry and one exit every minute keep the windows coming while nothing changes.
        send("gz-s4-g1", change.max(0) as usize + 1, Direction::Entry, t).await;
        send(
            "gz-s4-g3",
            (-change).max(0) as usize + 1,
            Direction::Exit,
            t + 500,
        )
        .await;
        send("gz-s5-g1", 1, Direction::Entry, t).await;
        send("gz-s5-g7", 1, Direction::Exit, t + 500).await;
    }
    // A last frame moves event time past minute 21, closing its window.
    send("gz-s4-g1", 1, Direction::Entry, base + 22 * MINUTE + 1_000).await;
    send("gz-s5-g1", 1, Direction::Entry, base + 22 * MINUTE + 1_000).await;

    let surge = |e: &Value| is_rule(e, "crowd.occupancy") && e["alert"]["subject"] == "S4";
    let mut got = Vec::new();
    let mut last_seq = 0;
    let mut orange_advice = Value::Null;
    for _ in 0..4 {
        let e = next_event(&mut events, Duration::from_secs(30), surge).await;
        if e["alert"]["severity"] == "orange" && e["kind"] == "escalated" {
            orange_advice = e["alert"]["advice"].clone();
        }
        let seq = e["seq"].as_i64().unwrap();
        assert!(seq > last_seq, "events arrive in outbox order");
        last_seq = seq;
        got.push((
            e["kind"].as_str().unwrap().to_owned(),
            e["alert"]["severity"].as_str().unwrap().to_owned(),
            (e["at_ms"].as_i64().unwrap() - base) / MINUTE,
            e["alert"]["id"].as_str().unwrap().to_owned(),
        ));
    }
    let kinds: Vec<(&str, &str, i64)> = got
        .iter()
        .map(|(k, s, m, _)| (k.as_str(), s.as_str(), *m))
        .collect();
    // Points carry the end of their minute: minute 1's window ends at minute 2.
    assert_eq!(
        kinds,
        vec![
            ("raised", "blue", 2),
            ("escalated", "yellow", 4),
            ("escalated", "orange", 6),
            ("resolved", "orange", 19),
        ]
    );
    assert!(
        got.iter().all(|g| g.3 == got[0].3),
        "one alert from raise to resolution: {got:?}"
    );
    // At 橙 the MQTT event names 方特 with its occupancy, and the access road to keep off.
    assert_eq!(
        orange_advice["divert_to"][0]["area"], "S5",
        "{orange_advice}"
    );
    assert_eq!(
        orange_advice["divert_to"][0]["occupancy_ratio"], 0.45,
        "{orange_advice}"
    );
    assert_eq!(
        orange_advice["avoid"][0]["segment"], "R2",
        "{orange_advice}"
    );
    assert!(
        orange_advice["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("分流：方特东方欲晓（在园 45%")),
        "{orange_advice}"
    );
    // Nothing else about the surge: the API shows it resolved, and exactly four events for it.
    let (_, body) = get(gw.http_addr(), "/api/v1/alerts?events=1000").await;
    let api: Value = serde_json::from_str(&body).unwrap();
    let for_surge = api["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| surge(e))
        .count();
    assert_eq!(for_surge, 4, "{api}");
    assert!(
        !api["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["rule"] == "crowd.occupancy"),
        "{api}"
    );
    // At 黄 the access roads of 通天岩 were flagged, and released with the resolution.
    let coupled: Vec<&Value> = api["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| is_rule(e, "traffic.crowd_coupling"))
        .collect();
    assert!(
        coupled.iter().any(|e| e["kind"] == "raised")
            && coupled.iter().any(|e| e["kind"] == "resolved"),
        "{coupled:?}"
    );
    gw.stop().await;
}

/// An open server-sent-events stream of the alert API (raw HTTP/1.1): status, then its lines.
async fn open_stream(
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
) -> (
    u16,
    tokio::io::Lines<tokio::io::BufReader<tokio::net::TcpStream>>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = format!("GET /api/v1/alerts/stream HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut lines = tokio::io::BufReader::new(s).lines();
    let status = lines.next_line().await.unwrap().unwrap_or_default();
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    while let Ok(Some(l)) = lines.next_line().await {
        if l.is_empty() {
            break;
        }
    }
    (code, lines)
}

/// The next alert event of an SSE stream: its id and JSON.
async fn next_streamed(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::net::TcpStream>>,
) -> (i64, Value) {
    let mut id = 0;
    loop {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("an alert event within 5 s")
            .unwrap()
            .expect("the stream stays open");
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().unwrap();
        } else if let Some(data) = line.strip_prefix("data:") {
            return (id, serde_json::from_str(data.trim()).unwrap());
        }
    }
}

/// A page that stays open gets each alert event pushed as it is committed (server-sent events,
/// within a second of the report); one that reconnects with `Last-Event-ID` gets what it
/// missed; without a login or a token there is no stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_events_are_pushed_to_an_open_page_and_replayed_after_a_reconnect() {
    let broker = Mosquitto::start();
    let gw = start_gateway("stream", broker.port, 10).await;
    let addr = gw.http_addr();
    let auth = format!("Bearer {}", system_tests::http::TEST_TOKEN);
    let (status, _) = open_stream(addr, &[]).await;
    assert_eq!(status, 401);
    let (status, mut page) = open_stream(addr, &[("Authorization", &auth)]).await;
    assert_eq!(status, 200);
    let (node, _) = client("stream-node", broker.port, true).await;
    let topic = up_topic("gz-t1-gas");
    let sent = std::time::Instant::now();
    let t = gateway::clock::now_ms();
    publish(
        &node,
        &topic,
        frame_at("gz-t1-gas", 4, 1, t, &pipe(Quantity::Gas, 23.0)),
    )
    .await;
    let (seq, raised) = next_streamed(&mut page).await;
    let took = sent.elapsed();
    assert_eq!(
        (raised["kind"].as_str(), raised["seq"].as_i64()),
        (Some("raised"), Some(seq))
    );
    assert_eq!(raised["alert"]["rule"], "pipe.gas_high");
    assert!(
        took < Duration::from_secs(1),
        "pushed {took:?} after the report"
    );
    // A page that lost its connection comes back with the last id it saw.
    let before = (seq - 1).to_string();
    let (_, mut again) = open_stream(
        addr,
        &[("Authorization", &auth), ("Last-Event-ID", &before)],
    )
    .await;
    let (replayed, event) = next_streamed(&mut again).await;
    assert_eq!((replayed, event["kind"].as_str()), (seq, Some("raised")));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_episode_neither_refires_nor_loses_the_resolution() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("gateway.db");
    let settings = |s: &mut gateway::Settings| s.store_path = store.clone();
    let gw = start_gateway_settings("restart", broker.port, settings).await;
    let mut events = watch_alerts("restart-watch", broker.port).await;
    let (node, _) = client("restart-node", broker.port, true).await;
    let topic = up_topic("gz-t1-gas");
    let t0 = gateway::clock::now_ms() - 10_000;
    // Two triggering readings 1 ms apart: one alert.
    publish(
        &node,
        &topic,
        frame_at("gz-t1-gas", 3, 1, t0, &pipe(Quantity::Gas, 22.0)),
    )
    .await;
    publish(
        &node,
        &topic,
        frame_at("gz-t1-gas", 3, 2, t0 + 1, &pipe(Quantity::Gas, 22.4)),
    )
    .await;
    let gas = |e: &Value| is_rule(e, "pipe.gas_high");
    let raised = next_event(&mut events, Duration::from_secs(10), gas).await;
    assert_eq!(raised["kind"], "raised");
    assert_eq!(raised["alert"]["subject"], "T1");
    assert_eq!(raised["alert"]["severity"], "alarm");
    let id = raised["alert"]["id"].as_str().unwrap().to_owned();
    wait_for(
        "both readings accepted",
        Duration::from_secs(10),
        || async { accepted(&gw, "gz-t1-gas") == 2 },
    )
    .await;
    // The retained state of T1 shows the open alert.
    let state = next_event_on(&mut events, "cs/v1/alerts/360702/pipe/T1").await;
    assert_eq!(state["firing"], 1, "{state}");

    // An operator logs in and takes it (who takes it is who logged in); an unknown id is
    // refused.
    let (addr, pw) = (gw.http_addr(), "右转看见通天岩-2026");
    let role = gateway::auth::Role::Operator;
    gateway::auth::login::add(&gw.store(), ("li.duty", role, pw), "test", 0)
        .unwrap()
        .unwrap();
    let operator = log_in(addr, "li.duty", pw).await;
    let path = format!("/api/v1/alerts/{id}/ack");
    let claimed = r#"{"by": "someone else", "note": "ventilation started"}"#;
    let (status, body) = operator.post(&path, claimed).await;
    assert_eq!(status, 400, "the body names nobody: {body}");
    let (status, body) = operator
        .post(&path, r#"{"note": "ventilation started"}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(gw.http_addr(), "/api/v1/alerts/nope/ack", "").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no open alert with id \\\"nope\\\""),
        "{body}"
    );
    let acked = next_event(&mut events, Duration::from_secs(10), gas).await;
    assert_eq!(acked["kind"], "acknowledged");
    assert_eq!(acked["alert"]["ack"]["by"], "li.duty");
    // Li gives it to the tunnel's engineer and comments; the alert's page shows who did what.
    gateway::auth::login::add(&gw.store(), ("zhou.eng", role, pw), "test", 0)
        .unwrap()
        .unwrap();
    let (status, body) = operator
        .post(
            &format!("/api/v1/alerts/{id}/assign"),
            r#"{"to": "nobody"}"#,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = operator
        .post(
            &format!("/api/v1/alerts/{id}/assign"),
            r#"{"to": "zhou.eng"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = operator
        .post(
            &format!("/api/v1/alerts/{id}/comment"),
            r#"{"text": "fans at full speed"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let commented = next_event(&mut events, Duration::from_secs(10), |e| {
        gas(e) && e["kind"] == "commented"
    })
    .await;
    assert_eq!(commented["alert"]["assigned_to"], "zhou.eng");
    let (status, body) = operator.get(&format!("/api/v1/alerts/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let kinds: Vec<&str> = page["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["raised", "acknowledged", "assigned", "commented"],
        "{page}"
    );
    let comments = &page["alert"]["comments"];
    assert_eq!(comments[0]["text"], "assigned to zhou.eng");
    assert_eq!(
        (comments[1]["by"].as_str(), comments[1]["text"].as_str()),
        (Some("li.duty"), Some("fans at full speed"))
    );
    let before_restart = commented["seq"].as_i64().unwrap();

    gw.stop().await;
    let gw = start_gateway_settings("restart", broker.port, settings).await;
    let (_, body) = get(gw.http_addr(), "/api/v1/alerts").await;
    let api: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        api["alerts"][0]["id"],
        id.as_str(),
        "the open alert survives: {api}"
    );
    // Still above the threshold after the restart: nothing new. Then the gas clears: the
    // resolution of the same alert is the next event, and nothing came between.
    publish(
        &node,
        &topic,
        frame_at("gz-t1-gas", 3, 3, t0 + 2_000, &pipe(Quantity::Gas, 22.5)),
    )
    .await;
    publish(
        &node,
        &topic,
        frame_at("gz-t1-gas", 3, 4, t0 + 3_000, &pipe(Quantity::Gas, 2.0)),
    )
    .await;
    // Delivery is at least once: an event repeated across the restart carries its old `seq`.
    let next = next_event(&mut events, Duration::from_secs(10), |e| {
        gas(e) && e["seq"].as_i64().unwrap() > before_restart
    })
    .await;
    assert_eq!(
        next["kind"], "resolved",
        "no re-fire after the restart: {next}"
    );
    assert_eq!(next["alert"]["id"], id.as_str());
    assert_eq!(next["seq"].as_i64().unwrap(), before_restart + 1);
    let state = next_event_on(&mut events, "cs/v1/alerts/360702/pipe/T1").await;
    assert_eq!(state["firing"], 0, "{state}");
    let metrics = get(gw.http_addr(), "/metrics").await.1;
    assert!(
        metrics.contains("citysense_alert_transitions_total{category=\"pipe\",kind=\"resolved\",severity=\"alarm\"} 1"),
        "{metrics}"
    );
    // Each confirmed delivery is timed from its commit (the PUBACK may come just after the
    // watcher saw the event).
    let delivered = "citysense_alert_delivery_duration_seconds_count{notifier=\"mqtt\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get(gw.http_addr(), "/metrics").await.1;
        let count = metrics
            .lines()
            .find_map(|l| l.strip_prefix(delivered))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if count.is_some_and(|n| n >= 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no timed delivery after the resolution: {count:?}\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_connection_stays_up_through_a_quiet_spell() {
    let broker = Mosquitto::start_logging_debug();
    // The shortest keepalive, 5 s: the broker drops a connection that sent nothing for 7.5 s.
    let gw = start_gateway_settings("quiet", broker.port, |s| s.mqtt.keep_alive_s = 5).await;
    let mut events = watch_alerts("quiet-watch", broker.port).await;
    let (node, _) = client("quiet-node", broker.port, true).await;
    let topic = up_topic("gz-t1-gas");
    let t0 = gateway::clock::now_ms() - 10_000;
    let gas = |e: &Value| is_rule(e, "pipe.gas_high");
    publish(
        &node,
        &topic,
        frame_at("gz-t1-gas", 3, 1, t0, &pipe(Quantity::Gas, 22.0)),
    )
    .await;
    assert_eq!(
        next_event(&mut events, Duration::from_secs(10), gas).await["kind"],
        "raised"
    );
    // No alert for a while: the alerts connection keeps itself alive with pings. Before, it
    // was polled only while it delivered; the broker dropped it, and the next alert failed on
    // the dead socket and waited for a retry.
    let alerts_client = format!("gw-quiet-{}-alerts", std::process::id());
    pings_through_a_quiet_spell(&broker, &alerts_client).await;
    // The gas clears: the resolution goes out at the first attempt.
    publish(
        &node,
        &topic,
        frame_at("gz-t1-gas", 3, 2, t0 + 1_000, &pipe(Quantity::Gas, 2.0)),
    )
    .await;
    assert_eq!(
        next_event(&mut events, Duration::from_secs(10), gas).await["kind"],
        "resolved"
    );
    let metrics = get(gw.http_addr(), "/metrics").await.1;
    let failed: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("citysense_alert_notifications_total{notifier=\"mqtt\"")
                && !l.contains("delivered")
        })
        .collect();
    assert!(failed.is_empty(), "failed attempts: {failed:?}");
    gw.stop().await;
}

/// The next message on `topic` (JSON).
async fn next_event_on(rx: &mut UnboundedReceiver<(String, Vec<u8>)>, topic: &str) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some((t, body))) if t == topic => return serde_json::from_slice(&body).unwrap(),
            Ok(Some(_)) => {}
            _ => panic!("nothing on {topic} within 10 s"),
        }
    }
}

/// Active alerts in Alertmanager with `alertname`.
async fn am_alerts(am: &Alertmanager, alertname: &str) -> Vec<Value> {
    let addr = ([127, 0, 0, 1], am.port).into();
    let (status, body) = get(
        addr,
        "/api/v2/alerts?active=true&silenced=false&inhibited=false",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let all: Vec<Value> = serde_json::from_str(&body).unwrap();
    all.into_iter()
        .filter(|a| a["labels"]["alertname"] == alertname)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_gets_labelled_alerts_and_resolutions_while_a_dead_webhook_delays_only_itself()
{
    let broker = Mosquitto::start();
    let am = Alertmanager::start();
    let hook = Webhook::start(true).await;
    let (am_url, hook_url) = (am.url(), format!("http://{}/robot/send", hook.addr));
    let gw = start_gateway_settings("notify", broker.port, |s| {
        s.alerts.alertmanager = Some(AlertmanagerSection {
            url: am_url,
            resend_s: 60,
            timeout_ms: 5_000,
        });
        s.alerts.webhook.push(WebhookSection {
            name: "duty".into(),
            url: hook_url,
            format: WebhookFormat::Dingtalk,
            secret_env: None,
            grids: Vec::new(),
            timeout_ms: 2_000,
        });
    })
    .await;
    let mut events = watch_alerts("notify-watch", broker.port).await;
    let (node, _) = client("notify-node", broker.port, true).await;
    let topic = up_topic("gz-t1-gas");
    let t0 = gateway::clock::now_ms() - 5_000;
    publish(
        &node,
        &topic,
        frame_at("gz-t1-gas", 5, 1, t0, &pipe(Quantity::Gas, 23.0)),
    )
    .await;

    // MQTT and Alertmanager get it while the webhook refuses.
    let raised = next_event(&mut events, Duration::from_secs(10), |e| {
        is_rule(e, "pipe.gas_high")
    })
    .await;
    assert_eq!(raised["kind"], "raised");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let firing = loop {
        let firing = am_alerts(&am, "pipe.gas_high").await;
        if !firing.is_empty() {
            break firing;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the alert never reached Alertmanager"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let labels = &firing[0]["labels"];
    assert_eq!(labels["category"], "pipe");
    assert_eq!(labels["subject"], "T1");
    assert_eq!(labels["zone"], "360702");
    assert_eq!(labels["severity"], "alarm");
    assert!(
        labels["gateway"]
            .as_str()
            .unwrap()
            .starts_with("gw-notify-")
    );
    assert_eq!(firing[0]["annotations"]["alert_id"], raised["alert"]["id"]);
    wait_for(
        "the webhook refused at least once",
        Duration::from_secs(10),
        || async { hook.refused.load(Ordering::SeqCst) > 0 },
    )
    .await;
    assert!(hook.accepted.lock().unwrap().is_empty());

    // The gas clears: Alertmanager resolves it.
    publish(
        &node,
        &topic,
        frame_at("gz-t1-gas", 5, 2, t0 + 1_000, &pipe(Quantity::Gas, 1.0)),
    )
    .await;
    let resolved = next_event(&mut events, Duration::from_secs(10), |e| {
        is_rule(e, "pipe.gas_high")
    })
    .await;
    assert_eq!(resolved["kind"], "resolved");
    wait_for(
        "Alertmanager resolves the alert",
        Duration::from_secs(20),
        || async { am_alerts(&am, "pipe.gas_high").await.is_empty() },
    )
    .await;

    // The webhook comes back: it gets both, in order, nothing lost.
    hook.failing.store(false, Ordering::SeqCst);
    wait_for(
        "the webhook catches up",
        Duration::from_secs(40),
        || async { hook.accepted.lock().unwrap().len() >= 2 },
    )
    .await;
    let bodies = hook.accepted.lock().unwrap().clone();
    let texts: Vec<&str> = bodies
        .iter()
        .map(|b| {
            assert_eq!(b["msgtype"], "markdown", "{b}");
            b["markdown"]["text"].as_str().unwrap()
        })
        .collect();
    assert!(
        texts[0].contains("告警 raised") && texts[1].contains("解除 resolved"),
        "{texts:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_influxdb_that_refuses_the_gateway_raises_an_alert_that_resolves_once_it_accepts() {
    let broker = Mosquitto::start();
    let influx = Webhook::start(true).await;
    influx.fail_status.store(401, Ordering::SeqCst);
    influx.no_content.store(true, Ordering::SeqCst);
    let url = format!("http://{}", influx.addr);
    let gw = start_gateway_settings("sink-refused", broker.port, |s| {
        s.influxdb = Some(gateway::sink::influxdb::InfluxSection {
            url,
            org: "ganzhou".into(),
            bucket: "citysense".into(),
            batch_lines: 100,
            flush_ms: 100,
            timeout_ms: 2_000,
            gzip: false,
            token: "wrong".into(),
        });
    })
    .await;
    let mut events = watch_alerts("sink-watch", broker.port).await;
    let (node, _) = client("sink-node", broker.port, true).await;
    // Two readings three minutes apart close a pipe window: a point for the sink to write.
    let topic = up_topic("gz-t1-gas");
    let t0 = gateway::clock::now_ms() - 600_000;
    publish(
        &node,
        &topic,
        frame_at("gz-t1-gas", 6, 1, t0, &pipe(Quantity::Gas, 1.0)),
    )
    .await;
    publish(
        &node,
        &topic,
        frame_at("gz-t1-gas", 6, 2, t0 + 180_000, &pipe(Quantity::Gas, 1.2)),
    )
    .await;
    let sink = |e: &Value| is_rule(e, "gateway.sink_refused");
    let raised = next_event(&mut events, Duration::from_secs(15), sink).await;
    assert_eq!(raised["kind"], "raised");
    assert_eq!(raised["alert"]["subject"], "influxdb");
    assert_eq!(raised["alert"]["category"], "gateway");
    // Credentials fixed: the next write goes through and the alert resolves.
    influx.failing.store(false, Ordering::SeqCst);
    let resolved = next_event(&mut events, Duration::from_secs(20), sink).await;
    assert_eq!(resolved["kind"], "resolved");
    assert_eq!(resolved["alert"]["id"], raised["alert"]["id"]);
    gw.stop().await;
}

/// A third-party cover that reports only on change (one JSON message when lifted, one when put
/// back): the hold and the clear hold complete on the gateway's clock, not at its next report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cover_that_reports_once_raises_within_its_hold_and_resolves_within_its_clear_hold() {
    const HOLD: Duration = Duration::from_secs(2);
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    // The cover's tilt rule with short holds, so the test waits seconds, not half a minute.
    let rules = dir.path().join("cover.toml");
    std::fs::write(
        &rules,
        r#"
[[rule]]
id = "pipe.tilt_high"
category = "pipe"
description = "cover lifted or displaced"
source = "reading"
field = "tilt"
kinds = ["manhole-json"]
side = "above"
grades = [{ name = "warning", at = 5.0 }, { name = "alarm", at = 10.0 }, { name = "critical", at = 30.0 }]
clear_margin = 1.0
hold_s = 2
clear_hold_s = 2
"#,
    )
    .unwrap();
    let gw = start_gateway_settings("cover", broker.port, |s| {
        s.alerts.rule_files = vec![rules.clone()];
    })
    .await;
    let mut events = watch_alerts("cover-watch", broker.port).await;
    let (vendor, _) = client("cover-vendor", broker.port, true).await;
    let topic = up_topic("gz-m9-cover");
    let report = |tilt: f64, status: &str| {
        let ts = gateway::clock::now_ms() / 1000;
        format!(
            r#"{{"device_id":"gz-m9-cover","tilt":{tilt},"battery":80,"status":"{status}","ts":{ts}}}"#
        )
        .into_bytes()
    };
    let tilt = |e: &Value| is_rule(e, "pipe.tilt_high");

    // Lifted: one report, then nothing.
    let lifted = std::time::Instant::now();
    publish(&vendor, &topic, report(45.0, "open")).await;
    let raised = next_event(&mut events, Duration::from_secs(10), tilt).await;
    let took = lifted.elapsed();
    assert_eq!(raised["kind"], "raised", "{raised}");
    assert_eq!(raised["alert"]["severity"], "critical");
    assert!(
        took >= HOLD - Duration::from_millis(100) && took <= HOLD + Duration::from_millis(1500),
        "raised {took:?} after the only report (hold {HOLD:?}: within the hold + 1 s)"
    );
    // Stamped with the hold's end in the cover's own time.
    let started = raised["alert"]["started_ms"].as_i64().unwrap();
    assert_eq!(
        started % 1000,
        0,
        "the cover's time has whole seconds: {raised}"
    );

    // Put back: one report, and the clear hold completes on the clock too.
    let put_back = std::time::Instant::now();
    publish(&vendor, &topic, report(0.5, "normal")).await;
    let resolved = next_event(&mut events, Duration::from_secs(10), tilt).await;
    let took = put_back.elapsed();
    assert_eq!(resolved["kind"], "resolved", "{resolved}");
    assert!(
        took >= HOLD - Duration::from_millis(100) && took <= HOLD + Duration::from_millis(1500),
        "resolved {took:?} after the only report (clear hold {HOLD:?})"
    );
    gw.stop().await;
}

/// Yesterday at `hh:mm` local time in Ganzhou (+08:00), Unix ms.
fn yesterday_at(hh: i64, mm: i64) -> i64 {
    let day = 24 * 60 * MINUTE;
    let offset = 8 * 60 * MINUTE;
    let today = (gateway::clock::now_ms() + offset).div_euclid(day) * day - offset;
    today - day + hh * 60 * MINUTE + mm * MINUTE
}

/// A gateway that starts while 通天岩 is open does not know who is inside: exits of visitors it
/// never saw enter raise no drift alarm, and the points say the occupancy is unknown. Once the
/// duty officer counts, a gate that misses entries is a real drift again, and raises one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_in_opening_hours_raises_no_drift_until_a_count_and_then_a_real_drift_does() {
    let broker = Mosquitto::start();
    let gw = start_gateway("baseline", broker.port, 10).await;
    let mut events = watch_alerts("baseline-watch", broker.port).await;
    let (node, _) = client("baseline-gates", broker.port, true).await;
    let mut rng = rand::rng();
    let mut seq = 0u32;
    // `n` passages through `device` at `t`; none: its status report (the area's windows close
    // once both gates have passed them).
    let mut send = async |device: &str, n: usize, direction: Direction, t: i64| {
        seq += 1;
        let body = match n {
            0 => heartbeat(),
            n => passages(n, direction, &mut rng),
        };
        publish(&node, &up_topic(device), frame_at(device, 9, seq, t, &body)).await;
    };
    // 10:00 yesterday, open since 07:00: twenty leave, then five arrive.
    let ten = yesterday_at(10, 0);
    send("gz-s4-g3", 20, Direction::Exit, ten + 1_000).await;
    send("gz-s4-g1", 5, Direction::Entry, ten + MINUTE + 1_000).await;
    send("gz-s4-g1", 1, Direction::Entry, ten + 4 * MINUTE + 1_000).await;
    send("gz-s4-g3", 0, Direction::Exit, ten + 4 * MINUTE + 1_000).await;
    let series = |addr| async move {
        let (_, body) = get(
            addr,
            "/api/v1/series?measurement=crowd&subject=S4&minutes=3000",
        )
        .await;
        serde_json::from_str::<Value>(&body).unwrap()
    };
    // A point's fields are `[name, {"Int": 20}]` pairs: the value of one, if there.
    let field = |p: &Value, name: &str| {
        p["fields"].as_array().and_then(|f| {
            f.iter()
                .find(|kv| kv[0] == name)
                .and_then(|kv| kv[1].as_object()?.values().next().cloned())
        })
    };
    let addr = gw.http_addr();
    wait_for(
        "the first minutes aggregated",
        Duration::from_secs(10),
        || async { series(addr).await.as_array().is_some_and(|p| p.len() >= 2) },
    )
    .await;
    let points = series(addr).await;
    let first = &points[0];
    assert_eq!(field(first, "exits"), Some(Value::from(20)), "{points}");
    assert_eq!(
        field(first, "occupancy_known"),
        Some(Value::from(false)),
        "{points}"
    );
    assert_eq!(field(first, "drift"), None, "{points}");
    assert_eq!(field(first, "occupancy"), None, "{points}");

    // The duty officer counts 3 inside at 10:05; then four leave: one more than were there.
    let (status, body) = post(
        addr,
        "/api/v1/areas/S4/occupancy",
        &format!(r#"{{"count": 3, "at_ms": {}}}"#, ten + 5 * MINUTE),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = post(addr, "/api/v1/areas/S99/occupancy", r#"{"count": 3}"#).await;
    assert_eq!(status, 404, "an unknown area is named");
    let (status, body) = post(addr, "/api/v1/areas/S4/occupancy", r#"{"count": -1}"#).await;
    assert_eq!(status, 400, "{body}");
    send("gz-s4-g3", 4, Direction::Exit, ten + 6 * MINUTE + 1_000).await;
    send("gz-s4-g1", 1, Direction::Entry, ten + 9 * MINUTE + 1_000).await;
    send("gz-s4-g3", 0, Direction::Exit, ten + 9 * MINUTE + 1_000).await;
    let drift = |e: &Value| is_rule(e, "crowd.count_drift") && e["alert"]["subject"] == "S4";
    let raised = next_event(&mut events, Duration::from_secs(15), drift).await;
    assert_eq!(raised["kind"], "raised", "{raised}");
    // Only the real drift: nothing before the count.
    let at = raised["at_ms"].as_i64().unwrap();
    assert!(at > ten + 5 * MINUTE, "raised at {at}, before the count");
    gw.stop().await;
}

/// A critical gas alarm in the utility tunnel nobody acknowledges: the robot @-s the person on
/// duty of 章贡地下管网网格, then, after the grid's time for critical (2 s here), their
/// supervisor; an acknowledgement then stops the step to the unit's head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_critical_goes_to_the_supervisor_and_an_acknowledgement_stops_the_head() {
    let broker = Mosquitto::start();
    // The pipes unit's robot group, and the scenic unit's, which must hear nothing of pipes.
    let hook = Webhook::start(false).await;
    let scenic = Webhook::start(false).await;
    let (site, keys) = escalating("zg-pipes", "critical", 2);
    let url = format!("http://{}/robot", hook.addr);
    let scenic_url = format!("http://{}/robot", scenic.addr);
    let gw = start_gateway_on(site, keys, "escalation", broker.port, |s| {
        s.alerts.webhook.push(WebhookSection {
            name: "pipes".into(),
            url,
            format: WebhookFormat::Dingtalk,
            secret_env: None,
            grids: vec!["zg-pipes".into()],
            timeout_ms: 2_000,
        });
        s.alerts.webhook.push(WebhookSection {
            name: "scenic".into(),
            url: scenic_url,
            format: WebhookFormat::Dingtalk,
            secret_env: None,
            grids: vec!["zg-west-scenic".into(), "zg-old-city".into()],
            timeout_ms: 2_000,
        });
    })
    .await;
    let (node, _) = client("escalation-node", broker.port, true).await;
    publish(
        &node,
        &up_topic("gz-t1-gas"),
        frame("gz-t1-gas", 3, 1, &pipe(Quantity::Gas, 26.0)),
    )
    .await;
    let called = robot_calls;
    wait_for(
        "the supervisor called after 2 s unacknowledged",
        Duration::from_secs(15),
        || {
            let calls = called(&hook);
            async move { calls.iter().any(|(t, _)| t.contains("无人确认")) }
        },
    )
    .await;
    let calls = called(&hook);
    assert!(calls[0].0.contains("告警 raised"), "{calls:?}");
    assert_eq!(calls[0].1, "13900000041", "the person on duty first");
    let step = calls.iter().find(|(t, _)| t.contains("无人确认")).unwrap();
    assert_eq!(step.1, "13900000042", "then their supervisor");
    assert!(
        step.0.contains("- 升级至: 值班科长（示例） 13900000042"),
        "{}",
        step.0
    );
    let tunnel_alert = || open_alert(&gw, "pipe.gas_high").unwrap();
    // Acknowledged now: the step to the head (2 s later) does not come.
    let id = tunnel_alert().id;
    let (status, body) = post(
        gw.http_addr(),
        &format!("/api/v1/alerts/{id}/ack"),
        r#"{"note": "通风已启动"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // An absence: wait past the head's time (2 s after the supervisor) with margin.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let calls = called(&hook);
    assert!(
        !calls.iter().any(|(_, m)| m == "13800000003"),
        "the head was called after the acknowledgement: {calls:?}"
    );
    assert_eq!(tunnel_alert().escalation.unwrap().step, 1);
    assert!(
        scenic.accepted.lock().unwrap().is_empty(),
        "the scenic unit's robot heard of a tunnel alarm"
    );
    gw.stop().await;
}
