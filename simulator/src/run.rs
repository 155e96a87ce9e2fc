//! `simulator run`: plays a scenario against a broker and a gateway, then checks what the
//! gateway said (the alerts topic, its API and metrics) against the scenario's expectations.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use device_profiles::Catalog;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use serde_json::Value;

use crate::clock::now_ms;
use crate::fleet::{Fleet, FleetCounts, Out};
use crate::scenario::{Scenario, minutes};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Broker host.
    pub mqtt_host: String,
    /// Broker port.
    pub mqtt_port: u16,
    /// The gateway's HTTP base URL.
    pub gateway: String,
    /// The API token the oracle reads the gateway's alerts and devices with, and sets the
    /// scenario's counts with (scope `operate`: `gateway tokens add simulator --scope operate`).
    pub token: Option<String>,
    /// Overrides the scenario's acceleration.
    pub acceleration: Option<f64>,
    /// Seed of the simulation's randomness.
    pub seed: u64,
    /// How long to wait for the gateway after the last report.
    pub settle: Duration,
    /// Print progress.
    pub progress: bool,
    /// The nodes' keys by device; `None`: the demo keys.
    pub keys: Option<std::collections::HashMap<String, wire::DeviceKey>>,
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The readable report (with a diff when something did not hold).
    pub report: String,
    /// Every expectation held.
    pub passed: bool,
    /// What the fleet did.
    pub counts: FleetCounts,
}

/// The broker connection the fleet publishes through.
struct Publisher {
    client: AsyncClient,
}

impl Out for Publisher {
    fn publish(&mut self, topic: &str, frame: Vec<u8>) -> bool {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, frame)
            .is_ok()
    }
}

/// A client whose event loop runs in the background; PUBACKs are counted and publishes
/// received go to `inbox`.
async fn connect(
    host: &str,
    port: u16,
    id: &str,
    capacity: usize,
    subscribe: Option<&str>,
    inbox: Option<Arc<Mutex<Vec<Value>>>>,
) -> anyhow::Result<(AsyncClient, Arc<AtomicU64>)> {
    let run_id: u32 = rand::random();
    let mut o = MqttOptions::new(format!("{id}-{run_id:08x}"), host, port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(Some(256 * 1024));
    // rumqttc allocates a slot per possible in-flight publish up front (65,536 without it).
    o.set_outgoing_inflight_upper_limit(256);
    let (client, mut eventloop) = AsyncClient::new(o, capacity);
    let acked = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(1);
    let counter = acked.clone();
    let waits_for_suback = subscribe.is_some();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) if !waits_for_suback => {
                    let _ = ready_tx.try_send(());
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    let _ = ready_tx.try_send(());
                }
                Ok(Event::Incoming(Incoming::PubAck(_))) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    if let (Some(inbox), Ok(v)) = (&inbox, serde_json::from_slice(&p.payload))
                        && let Ok(mut i) = inbox.lock()
                    {
                        i.push(v);
                    }
                }
                Ok(_) => {}
                // Every handle dropped: this connection's work is over.
                Err(rumqttc::v5::ConnectionError::RequestsDone) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    if let Some(topic) = subscribe {
        client.subscribe(topic, QoS::AtLeastOnce).await?;
    }
    tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
        .await
        .with_context(|| format!("broker {host}:{port} did not answer within 10 s"))?;
    Ok((client, acked))
}

/// Plays `scenario` and checks its expectations.
pub async fn run(
    catalog: &Catalog,
    scenario: &Scenario,
    opts: &RunOptions,
) -> anyhow::Result<Outcome> {
    let offset = catalog.site.site.utc_offset.ms();
    let now = now_ms();
    let start = scenario.start_ms(now, offset)?;
    let (from, to) = scenario.window();
    let span_ms = i64::from(to - from) * 60_000;
    let acceleration = opts
        .acceleration
        .unwrap_or(scenario.time.acceleration)
        .max(1.0);
    let mut fleet = Fleet::new(catalog, scenario, start, opts.seed, opts.keys.as_ref())?;
    anyhow::ensure!(
        !fleet.nodes.is_empty(),
        "the scenario simulates no CitySense node"
    );

    let events = Arc::new(Mutex::new(Vec::new()));
    let (_watcher, _) = connect(
        &opts.mqtt_host,
        opts.mqtt_port,
        "simulator-oracle",
        100,
        Some("cs/v1/alerts/events"),
        Some(events.clone()),
    )
    .await?;
    let (client, acked) = connect(
        &opts.mqtt_host,
        opts.mqtt_port,
        "simulator-fleet",
        50_000,
        None,
        None,
    )
    .await?;
    let mut out = Publisher { client };
    // The simulated areas start empty: the duty officer's count the gateway starts from, or a
    // rehearsal in opening hours would leave their occupancy unknown.
    let gateway = GatewayApi::new(&opts.gateway, opts.token.as_deref())?;
    for crowd in &scenario.crowd {
        let area = catalog
            .site
            .scenic_areas
            .iter()
            .find(|a| a.id == crowd.area);
        let ids = area
            .into_iter()
            .flat_map(|a| std::iter::once(&a.id).chain(a.choke_points.iter().map(|c| &c.id)));
        for id in ids {
            gateway.set_occupancy(id, 0, start - 1).await?;
        }
    }
    if opts.progress {
        eprintln!(
            "{}: {} nodes, {} simulated minutes at {}× ({:.0} s)",
            scenario.name,
            fleet.nodes.len(),
            span_ms / 60_000,
            acceleration,
            span_ms as f64 / 1000.0 / acceleration
        );
    }
    let bar = opts.progress.then(|| {
        let b = indicatif::ProgressBar::new((span_ms / 1000) as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} simulated s  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let real_start = Instant::now();
    let mut t = start;
    while t < start + span_ms {
        t += 1000;
        fleet.step(t, &mut out);
        let due = Duration::from_secs_f64((t - start) as f64 / 1000.0 / acceleration);
        if let Some(wait) = due.checked_sub(real_start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        if let Some(b) = &bar {
            b.set_position(((t - start) / 1000) as u64);
            b.set_message(format!("{} frames", fleet.counts.published));
        }
    }
    if let Some(b) = bar {
        b.finish();
    }
    // Everything published must be acknowledged by the broker before the gateway is asked.
    let sent = fleet.counts.published + fleet.counts.replayed + fleet.counts.forged;
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settle_until = Instant::now() + opts.settle;
    let min_settle = Instant::now() + Duration::from_secs(2).min(opts.settle);
    loop {
        let verdict = judge(scenario, &fleet, &events, &gateway, offset).await?;
        let done = (verdict.1 && Instant::now() >= min_settle) || Instant::now() >= settle_until;
        if done {
            return Ok(Outcome {
                report: verdict.0,
                passed: verdict.1,
                counts: fleet.counts,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A client of the gateway's HTTP API (the oracle's view of the gateway).
#[derive(Debug)]
pub struct GatewayApi {
    base: String,
    http: reqwest::Client,
    /// `Authorization: Bearer …` for `/api/v1` (`/metrics` is open).
    token: Option<String>,
}

impl GatewayApi {
    /// At `base` (e.g. `http://127.0.0.1:8080`), with an API token for `/api/v1`.
    pub fn new(base: &str, token: Option<&str>) -> anyhow::Result<GatewayApi> {
        Ok(GatewayApi {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            token: token.map(|t| format!("Bearer {t}")),
        })
    }

    fn authorized(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => r.header(reqwest::header::AUTHORIZATION, t),
            None => r,
        }
    }

    async fn get(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let r = self
            .authorized(self.http.get(&url))
            .send()
            .await
            .with_context(|| format!("gateway {url}"))?;
        let status = r.status();
        anyhow::ensure!(
            status.is_success(),
            "gateway {url}: HTTP {status}: {}{}",
            r.text().await.unwrap_or_default(),
            if status == reqwest::StatusCode::UNAUTHORIZED {
                " (give simulator run --token, an API token of the gateway: gateway tokens add simulator --scope operate)"
            } else {
                ""
            }
        );
        Ok(r.text().await?)
    }

    /// Tells the gateway that `count` visitors were inside `area` at `at_ms`: the occupancy
    /// baseline a rehearsal starts from (its simulated areas start empty).
    pub async fn set_occupancy(&self, area: &str, count: u32, at_ms: i64) -> anyhow::Result<()> {
        let url = format!("{}/api/v1/areas/{area}/occupancy", self.base);
        let r = self
            .authorized(self.http.post(&url))
            .json(&serde_json::json!({ "count": count, "at_ms": at_ms }))
            .send()
            .await
            .with_context(|| format!("gateway {url}"))?;
        let status = r.status();
        anyhow::ensure!(
            status.is_success(),
            "gateway {url}: HTTP {status}: {}",
            r.text().await.unwrap_or_default()
        );
        Ok(())
    }

    /// A counter of `/metrics` with the given labels, summed.
    pub async fn metric(&self, name: &str, label: Option<(&str, &str)>) -> anyhow::Result<f64> {
        let text = self.get("/metrics").await?;
        Ok(metric_sum(&text, name, label))
    }
}

/// Sums the samples of `name` in Prometheus text, optionally with one label value.
pub fn metric_sum(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| label.is_none_or(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn local_hhmm(at_ms: i64, offset: i64) -> String {
    let m = (at_ms + offset).rem_euclid(86_400_000) / 60_000;
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// Checks every expectation: the report and whether all held.
async fn judge(
    scenario: &Scenario,
    fleet: &Fleet,
    topic_events: &Arc<Mutex<Vec<Value>>>,
    gateway: &GatewayApi,
    offset: i64,
) -> anyhow::Result<(String, bool)> {
    // Events from the alerts topic and from the API, de-duplicated by their outbox sequence.
    let mut by_seq: BTreeMap<i64, Value> = BTreeMap::new();
    if let Ok(e) = topic_events.lock() {
        for v in e.iter() {
            by_seq.insert(v["seq"].as_i64().unwrap_or(-1), v.clone());
        }
    }
    let from_topic = by_seq.len();
    let api: Value = serde_json::from_str(&gateway.get("/api/v1/alerts?events=1000").await?)?;
    for v in api["events"].as_array().into_iter().flatten() {
        by_seq
            .entry(v["seq"].as_i64().unwrap_or(-1))
            .or_insert_with(|| v.clone());
    }
    let window_start = fleet.start_ms;
    let events: Vec<&Value> = by_seq
        .values()
        .filter(|e| e["at_ms"].as_i64().unwrap_or(0) >= window_start - 60_000)
        .collect();
    let mut report = String::new();
    let mut all = true;
    let _ = writeln!(
        report,
        "scenario {}: {} frames published, {} alert events seen ({} on cs/v1/alerts/events)",
        scenario.name,
        fleet.counts.published,
        events.len(),
        from_topic
    );
    for x in &scenario.expects {
        let between = x
            .between
            .as_ref()
            .map(|[a, b]| (minutes(a).unwrap_or(0), minutes(b).unwrap_or(24 * 60)));
        let matching: Vec<&&Value> = events
            .iter()
            .filter(|e| {
                let a = &e["alert"];
                a["rule"] == x.rule.as_str()
                    && a["subject"] == x.subject.as_str()
                    && e["kind"] == x.kind.as_str()
                    && x.grade.as_ref().is_none_or(|g| a["severity"] == g.as_str())
                    && x.advises.as_ref().is_none_or(|area| {
                        a["advice"]["divert_to"]
                            .as_array()
                            .is_some_and(|d| d.iter().any(|d| d["area"] == area.as_str()))
                    })
                    && x.to
                        .as_ref()
                        .is_none_or(|name| a["escalation"]["to"]["name"] == name.as_str())
                    && between.is_none_or(|(lo, hi)| {
                        let m = ((e["at_ms"].as_i64().unwrap_or(0) + offset).rem_euclid(86_400_000)
                            / 60_000) as u32;
                        (lo..=hi).contains(&m)
                    })
            })
            .collect();
        let what = format!(
            "{} {} {} {}×{}{}{}{}",
            x.rule,
            x.subject,
            x.kind,
            x.grade.as_deref().unwrap_or("any"),
            x.count,
            x.between
                .as_ref()
                .map_or(String::new(), |[a, b]| format!(" between {a} and {b}")),
            x.advises
                .as_ref()
                .map_or(String::new(), |a| format!(" advising {a}")),
            x.to.as_ref()
                .map_or(String::new(), |p| format!(" calling {p}"))
        );
        let ok = matching.len() == x.count as usize;
        all &= ok;
        if ok {
            let at: Vec<String> = matching
                .iter()
                .map(|e| local_hhmm(e["at_ms"].as_i64().unwrap_or(0), offset))
                .collect();
            let _ = writeln!(
                report,
                "  ok    {what}{}",
                if at.is_empty() {
                    String::new()
                } else {
                    format!(" (at {})", at.join(", "))
                }
            );
        } else {
            let related: Vec<String> = events
                .iter()
                .filter(|e| e["alert"]["subject"] == x.subject.as_str())
                .map(|e| {
                    format!(
                        "{} {} {} at {}",
                        e["alert"]["rule"].as_str().unwrap_or("?"),
                        e["kind"].as_str().unwrap_or("?"),
                        e["alert"]["severity"].as_str().unwrap_or("?"),
                        local_hhmm(e["at_ms"].as_i64().unwrap_or(0), offset)
                    )
                })
                .collect();
            let _ = writeln!(
                report,
                "  FAIL  {what}: saw {}\n        what {} got: {}",
                matching.len(),
                x.subject,
                if related.is_empty() {
                    "nothing".to_owned()
                } else {
                    related.join("; ")
                }
            );
        }
    }
    for r in &scenario.expect_rejected {
        let n = gateway
            .metric(
                "citysense_messages_rejected_total",
                Some(("reason", &r.reason)),
            )
            .await? as u64;
        let ok = n >= r.min;
        all &= ok;
        let _ = writeln!(
            report,
            "  {}  rejected {} ≥ {}: {n}",
            if ok { "ok  " } else { "FAIL" },
            r.reason,
            r.min
        );
    }
    if let Some(c) = &scenario.expect_completeness {
        let devices: Value = serde_json::from_str(&gateway.get("/api/v1/devices").await?)?;
        let (mut accepted, mut missing) = (0u64, 0u64);
        for d in devices.as_array().into_iter().flatten() {
            let id = d["id"].as_str().unwrap_or_default();
            if fleet.nodes.iter().any(|n| n.id == id) {
                accepted += d["accepted"].as_u64().unwrap_or(0);
                missing += d["missing_reports"].as_u64().unwrap_or(0);
            }
        }
        let completeness = accepted as f64 / (accepted + missing).max(1) as f64;
        let ok = completeness >= c.min && accepted > 0;
        all &= ok;
        let _ = writeln!(
            report,
            "  {}  completeness {completeness:.4} ≥ {} ({accepted} frames accepted, {missing} missing)",
            if ok { "ok  " } else { "FAIL" },
            c.min
        );
    }
    let _ = writeln!(
        report,
        "{}",
        if all {
            "PASSED"
        } else {
            "FAILED: the gateway did not do what the scenario expects"
        }
    );
    Ok((report, all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_by_name_and_label() {
        let text = "# HELP x\ncitysense_messages_rejected_total{reason=\"replayed\"} 5\ncitysense_messages_rejected_total{reason=\"bad_tag\"} 2\ncitysense_messages_rejected_totalx 9\n";
        assert_eq!(
            metric_sum(text, "citysense_messages_rejected_total", None),
            7.0
        );
        assert_eq!(
            metric_sum(
                text,
                "citysense_messages_rejected_total",
                Some(("reason", "bad_tag"))
            ),
            2.0
        );
    }
}
