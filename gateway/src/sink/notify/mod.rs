//! Notifiers: deliver alert events from the store's outbox, each with its own cursor.
//!
//! Every transition is committed to `alert_events` with the readings that caused it. Each
//! notifier reads the events after its cursor, delivers them, and moves its cursor only when
//! the receiver confirmed (MQTT PUBACK, HTTP 2xx and, for robots, `errcode` 0). A notifier that
//! is down retries with backoff and delays only itself; nothing is lost, and after a restart it
//! continues where it stopped (an event may then arrive twice, with the same `seq`).
//!
//! - MQTT: every event on `cs/v1/alerts/events` (QoS 1), and the subject's current state,
//!   retained, on `cs/v1/alerts/{zone}/{category}/{subject}`; its own connection
//!   (`{gateway id}-alerts`), so the ingest session is never held up.
//! - Webhook: generic JSON (the event), DingTalk or WeCom robot markdown.
//! - Alertmanager: `POST /api/v2/alerts`; open alerts are re-sent every `resend_s` (Alertmanager
//!   resolves what is not re-sent), resolutions carry `endsAt`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::alert::engine::{Alert, AlertEvent, Engine, EventKind, Status};
use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::net::mqtt::{ConfirmedPublisher, Message, PublishError};
use crate::store::Committed;
use crate::store::Store;

/// Events delivered per attempt.
const BATCH: usize = 100;

/// A webhook receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// Name, in metrics and logs (`citysense_alert_notifications_total{notifier="webhook:NAME"}`).
    pub name: String,
    /// Where to POST.
    pub url: String,
    /// Body format.
    #[serde(default)]
    pub format: WebhookFormat,
    /// DingTalk only: the environment variable holding the robot's signing secret (加签).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Request timeout, milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// How a webhook body looks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The event as JSON (`{"seq", "kind", "at_ms", "alert": {...}}`).
    #[default]
    Generic,
    /// DingTalk custom robot, markdown message.
    Dingtalk,
    /// WeCom (企业微信) group robot, markdown message.
    Wecom,
}

/// Prometheus Alertmanager.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerSection {
    /// Base URL, e.g. `http://127.0.0.1:9093`.
    pub url: String,
    /// Re-send open alerts this often, seconds; each is valid for three times this.
    #[serde(default = "default_resend")]
    pub resend_s: u64,
    /// Request timeout, milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_resend() -> u64 {
    60
}

/// The JSON of one event on the wire: the event with its outbox sequence number.
#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    /// Outbox position: increases with every event; a redelivery carries the same number.
    pub seq: i64,
    /// The event.
    #[serde(flatten)]
    pub event: &'a AlertEvent,
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The receiver could not be reached or did not answer in time.
    #[error("{0}")]
    Transport(String),
    /// The receiver answered with an error.
    #[error("refused: {0}")]
    Refused(String),
}

impl DeliveryError {
    fn class(&self) -> &'static str {
        match self {
            DeliveryError::Transport(_) => "transport",
            DeliveryError::Refused(_) => "refused",
        }
    }
}

/// One way alerts leave the gateway.
pub enum Notifier {
    /// Publishes on the broker.
    Mqtt(Box<MqttNotifier>),
    /// POSTs to a webhook.
    Webhook(WebhookNotifier),
    /// POSTs to Alertmanager.
    Alertmanager(AlertmanagerNotifier),
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

macro_rules! debug_by_name {
    ($t:ty, $name:expr) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("name", &$name(self))
                    .finish_non_exhaustive()
            }
        }
    };
}

debug_by_name!(MqttNotifier, |_: &MqttNotifier| "mqtt");
debug_by_name!(WebhookNotifier, |w: &WebhookNotifier| w
    .section
    .name
    .clone());
debug_by_name!(AlertmanagerNotifier, |a: &AlertmanagerNotifier| a
    .section
    .url
    .clone());

impl Notifier {
    /// The name of its cursor and metrics label.
    pub fn name(&self) -> String {
        match self {
            Notifier::Mqtt(_) => "mqtt".to_owned(),
            Notifier::Webhook(w) => format!("webhook:{}", w.section.name),
            Notifier::Alertmanager(_) => "alertmanager".to_owned(),
        }
    }

    async fn deliver(&mut self, events: &[(i64, AlertEvent)]) -> Result<(), DeliveryError> {
        match self {
            Notifier::Mqtt(m) => m.deliver(events).await,
            Notifier::Webhook(w) => w.deliver(events).await,
            Notifier::Alertmanager(a) => a.deliver(events).await,
        }
    }

    /// Keeps a connection alive while there is nothing to deliver (MQTT: pings); completes
    /// only when that connection failed. Cancelled when work comes.
    async fn idle(&mut self) {
        match self {
            Notifier::Mqtt(m) => m.publisher.idle().await,
            _ => std::future::pending().await,
        }
    }

    /// Work due without new events (Alertmanager re-sends).
    async fn tick(&mut self) -> Result<(), DeliveryError> {
        match self {
            Notifier::Alertmanager(a) => a.resend().await,
            _ => Ok(()),
        }
    }
}

/// The events of a commit that a notifier can deliver as they were handed over: those that
/// follow its cursor `after` directly, at most a batch of them. Otherwise (events committed in
/// between, or the cursor not known yet) it reads the outbox.
fn handed_over(
    committed: Option<&Committed>,
    after: Option<i64>,
) -> Option<Vec<(i64, AlertEvent)>> {
    let (committed, after) = (committed?, after?);
    let (first, _) = committed.events.first()?;
    (*first == after + 1 && committed.events.len() <= BATCH).then(|| committed.events.to_vec())
}

/// Drains the outbox into `notifier` until shutdown.
pub async fn run(
    mut notifier: Notifier,
    store: Arc<Store>,
    metrics: Metrics,
    mut wake: watch::Receiver<Option<Committed>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = notifier.name();
    let cursor_name = format!("alerts:{name}");
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The notifier's cursor: read from the store once, then kept here (only this task moves it).
    let mut cursor: Option<i64> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let committed = wake.borrow_and_update().clone();
        // The events just committed, as they were handed over: a read of the outbox (and two
        // trips to a blocking thread) less on an alert's way to the operators.
        let handed = handed_over(committed.as_ref(), cursor);
        let events = match handed {
            Some(events) => events,
            None => {
                let (s, c) = (store.clone(), cursor_name.clone());
                let read = tokio::task::spawn_blocking(move || {
                    let after = match cursor {
                        Some(after) => after,
                        None => s.cursor(&c)?,
                    };
                    Ok::<_, crate::store::StoreError>((after, s.alert_events_after(after, BATCH)?))
                })
                .await;
                match read {
                    Ok(Ok((after, e))) => {
                        cursor = Some(after);
                        e
                    }
                    _ => {
                        tracing::error!(notifier = %name, "cannot read the alert outbox");
                        Vec::new()
                    }
                }
            }
        };
        if events.is_empty() {
            metrics.alert_pending.with_label_values(&[&name]).set(0);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = wake.changed() => {}
                () = notifier.idle() => {}
                _ = tick.tick() => {
                    if let Err(e) = notifier.tick().await {
                        tracing::warn!(notifier = %name, error = %e, "re-sending open alerts failed");
                    }
                }
            }
            continue;
        }
        let last = events.last().map_or(0, |(id, _)| *id);
        // A delivery under way is finished (each is bounded by its timeout) and its cursor
        // moved, so a clean stop repeats nothing.
        match notifier.deliver(&events).await {
            Ok(()) => {
                backoff.reset();
                metrics
                    .alert_notifications
                    .with_label_values(&[&name, "delivered"])
                    .inc_by(events.len() as u64);
                if let Some(Committed { at, .. }) = committed {
                    metrics
                        .alert_delivery_seconds
                        .with_label_values(&[&name])
                        .observe(at.elapsed().as_secs_f64());
                }
                let (s, c) = (store.clone(), cursor_name.clone());
                let moved = tokio::task::spawn_blocking(move || s.advance(&c, last, &[])).await;
                if matches!(moved, Ok(Ok(()))) {
                    cursor = Some(last);
                } else {
                    tracing::error!(notifier = %name, "cannot move the notifier's cursor; the events will be delivered again");
                }
            }
            Err(e) => {
                metrics
                    .alert_notifications
                    .with_label_values(&[&name, e.class()])
                    .inc();
                let delay = backoff.next_delay(&mut rand::rng());
                tracing::warn!(notifier = %name, error = %e, retry_in_ms = delay.as_millis() as u64, "alert delivery failed; kept in the outbox");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
        // Counted after the delivery, off an alert's path to the operators.
        let Some(after) = cursor else { continue };
        let s = store.clone();
        if let Ok(Ok(pending)) =
            tokio::task::spawn_blocking(move || s.alert_events_pending(after)).await
        {
            metrics
                .alert_pending
                .with_label_values(&[&name])
                .set(pending as i64);
        }
    }
}

/// MQTT: its own connection; a batch counts as delivered when every PUBACK came back.
pub struct MqttNotifier {
    publisher: ConfirmedPublisher,
    engine: Arc<Mutex<Engine>>,
}

impl MqttNotifier {
    /// A notifier connecting with `options` (client id and session of its own).
    pub fn new(options: rumqttc::v5::MqttOptions, engine: Arc<Mutex<Engine>>) -> MqttNotifier {
        MqttNotifier {
            publisher: ConfirmedPublisher::new(options, 2 * BATCH, Duration::from_secs(10)),
            engine,
        }
    }

    /// The retained state of one subject: every open alert it has in the category.
    fn subject_state(&self, alert: &Alert) -> serde_json::Value {
        let open: Vec<Alert> = self
            .engine
            .lock()
            .map(|e| {
                e.open_alerts()
                    .into_iter()
                    .filter(|a| a.category == alert.category && a.subject == alert.subject)
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "zone": alert.zone,
            "category": alert.category,
            "subject": alert.subject,
            "subject_name": alert.subject_name,
            "firing": open.len(),
            "alerts": open,
            "updated_ms": alert.updated_ms,
        })
    }

    async fn deliver(&mut self, events: &[(i64, AlertEvent)]) -> Result<(), DeliveryError> {
        let mut messages = Vec::with_capacity(events.len() * 2);
        for (seq, event) in events {
            let body = serde_json::to_vec(&Envelope { seq: *seq, event })
                .map_err(|e| DeliveryError::Refused(e.to_string()))?;
            messages.push(Message {
                topic: "cs/v1/alerts/events".to_owned(),
                payload: body,
                retain: false,
                properties: None,
            });
            let a = &event.alert;
            let topic = format!(
                "cs/v1/alerts/{}/{}/{}",
                a.zone,
                a.category.name(),
                a.subject
            );
            let state = serde_json::to_vec(&self.subject_state(a))
                .map_err(|e| DeliveryError::Refused(e.to_string()))?;
            messages.push(Message {
                topic,
                payload: state,
                retain: true,
                properties: None,
            });
        }
        self.publisher
            .publish_all(messages)
            .await
            .map_err(|e| match e {
                PublishError::Refused(r) => DeliveryError::Refused(r),
                other => DeliveryError::Transport(other.to_string()),
            })
    }
}

/// A webhook.
pub struct WebhookNotifier {
    section: WebhookSection,
    http: reqwest::Client,
    secret: Option<String>,
}

impl WebhookNotifier {
    /// A webhook notifier; the DingTalk secret is read from its environment variable now.
    pub fn new(section: WebhookSection) -> anyhow::Result<WebhookNotifier> {
        let secret = match &section.secret_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                anyhow::anyhow!(
                    "webhook \"{}\": environment variable {var} (secret_env) is not set",
                    section.name
                )
            })?),
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(section.timeout_ms))
            .build()?;
        Ok(WebhookNotifier {
            section,
            http,
            secret,
        })
    }

    fn url(&self) -> String {
        let Some(secret) = &self.secret else {
            return self.section.url.clone();
        };
        // DingTalk 加签: HMAC-SHA256 of "{timestamp}\n{secret}", base64, URL-encoded.
        use base64::Engine as _;
        use hmac::Mac as _;
        let ts = crate::clock::now_ms();
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
            return self.section.url.clone(); // HMAC takes keys of any length
        };
        mac.update(format!("{ts}\n{secret}").as_bytes());
        let sign = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let sep = if self.section.url.contains('?') {
            '&'
        } else {
            '?'
        };
        let sign: String = url::form_urlencoded::byte_serialize(sign.as_bytes()).collect();
        format!("{}{sep}timestamp={ts}&sign={sign}", self.section.url)
    }

    /// The body of one event in this webhook's format.
    pub fn body(format: WebhookFormat, seq: i64, event: &AlertEvent) -> serde_json::Value {
        let a = &event.alert;
        let text = markdown(event);
        match format {
            WebhookFormat::Generic => json!(Envelope { seq, event }),
            WebhookFormat::Dingtalk => json!({
                "msgtype": "markdown",
                "markdown": { "title": format!("[{}] {}", a.label, a.subject_name), "text": text },
            }),
            WebhookFormat::Wecom => json!({
                "msgtype": "markdown",
                "markdown": { "content": text },
            }),
        }
    }

    async fn deliver(&mut self, events: &[(i64, AlertEvent)]) -> Result<(), DeliveryError> {
        for (seq, event) in events {
            let body = Self::body(self.section.format, *seq, event);
            let response = self
                .http
                .post(self.url())
                .json(&body)
                .send()
                .await
                .map_err(|e| DeliveryError::Transport(format!("{}: {e}", self.section.url)))?;
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if !status.is_success() {
                return Err(DeliveryError::Refused(format!(
                    "HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                )));
            }
            if self.section.format != WebhookFormat::Generic {
                // Robots answer 200 with {"errcode": N, "errmsg": "..."}.
                let reply: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let code = reply.get("errcode").and_then(|c| c.as_i64()).unwrap_or(-1);
                if code != 0 {
                    return Err(DeliveryError::Refused(format!(
                        "robot errcode {code}: {text}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A markdown message for robots: grade, subject, what and when (Beijing time).
pub fn markdown(event: &AlertEvent) -> String {
    let a = &event.alert;
    let what = match event.kind {
        EventKind::Raised => "告警 raised",
        EventKind::Escalated => "升级 escalated",
        EventKind::Renotified => "仍在告警 still firing",
        EventKind::Resolved => "解除 resolved",
        EventKind::Acknowledged => "已确认 acknowledged",
    };
    let at = humantime::format_rfc3339_seconds(
        UNIX_EPOCH + Duration::from_millis((event.at_ms + 8 * 3_600_000).max(0) as u64),
    )
    .to_string()
    .replace('Z', "+08:00");
    format!(
        "### [{}] {} — {}\n\n{}\n\n- rule: {}\n- zone: {}\n- at: {}\n- alert: {}",
        a.label, a.subject_name, what, a.summary, a.rule, a.zone, at, a.id
    )
}

/// Alertmanager (API v2).
pub struct AlertmanagerNotifier {
    section: AlertmanagerSection,
    http: reqwest::Client,
    gateway_id: String,
    engine: Arc<Mutex<Engine>>,
    last_resend: Option<std::time::Instant>,
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

impl AlertmanagerNotifier {
    /// A notifier posting to `section.url`.
    pub fn new(
        section: AlertmanagerSection,
        gateway_id: &str,
        engine: Arc<Mutex<Engine>>,
    ) -> anyhow::Result<AlertmanagerNotifier> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(section.timeout_ms))
            .build()?;
        Ok(AlertmanagerNotifier {
            section,
            http,
            gateway_id: gateway_id.to_owned(),
            engine,
            last_resend: None,
        })
    }

    /// One Alertmanager alert. Labels identify it: `alertname` (the rule), `category`,
    /// `subject`, `zone`, `severity`, `gateway`.
    pub fn am_alert(gateway: &str, a: &Alert, severity: &str, ends_ms: i64) -> serde_json::Value {
        json!({
            "labels": {
                "alertname": a.rule,
                "category": a.category.name(),
                "subject": a.subject,
                "zone": a.zone,
                "severity": severity,
                "gateway": gateway,
            },
            "annotations": {
                "summary": a.summary,
                "label": a.label,
                "subject_name": a.subject_name,
                "value": a.value.to_string(),
                "threshold": a.threshold.to_string(),
                "alert_id": a.id,
            },
            "startsAt": rfc3339(a.started_ms),
            "endsAt": rfc3339(ends_ms),
        })
    }

    fn valid_until(&self) -> i64 {
        crate::clock::now_ms() + 3 * self.section.resend_s as i64 * 1000
    }

    async fn post(&self, alerts: Vec<serde_json::Value>) -> Result<(), DeliveryError> {
        if alerts.is_empty() {
            return Ok(());
        }
        let url = format!("{}/api/v2/alerts", self.section.url.trim_end_matches('/'));
        let response = self
            .http
            .post(&url)
            .json(&alerts)
            .send()
            .await
            .map_err(|e| DeliveryError::Transport(format!("{url}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(DeliveryError::Refused(format!(
            "{url}: HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        )))
    }

    async fn deliver(&mut self, events: &[(i64, AlertEvent)]) -> Result<(), DeliveryError> {
        let mut alerts = Vec::new();
        for (_, e) in events {
            let a = &e.alert;
            // An escalation changes the severity label: the lower grade's alert ends now.
            if let Some(before) = &e.previous_severity {
                alerts.push(Self::am_alert(&self.gateway_id, a, before, e.at_ms));
            }
            let ends = match a.status {
                Status::Resolved => a.resolved_ms.unwrap_or(e.at_ms),
                Status::Firing => self.valid_until(),
            };
            alerts.push(Self::am_alert(&self.gateway_id, a, &a.severity, ends));
        }
        self.post(alerts).await
    }

    async fn resend(&mut self) -> Result<(), DeliveryError> {
        let every = Duration::from_secs(self.section.resend_s);
        if self.last_resend.is_some_and(|t| t.elapsed() < every) {
            return Ok(());
        }
        let open = self
            .engine
            .lock()
            .map(|e| e.open_alerts())
            .unwrap_or_default();
        let until = self.valid_until();
        let alerts = open
            .iter()
            .map(|a| Self::am_alert(&self.gateway_id, a, &a.severity, until))
            .collect();
        self.post(alerts).await?;
        self.last_resend = Some(std::time::Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::rule::Category;

    /// The next batch's evaluation holds the engine while a committed batch is reported: its
    /// notifiers must be woken without waiting for the engine (metrics and the log can).
    #[test]
    fn notifiers_are_woken_before_the_engine_is_taken_for_metrics() {
        let catalog = device_profiles::Catalog::ganzhou().unwrap();
        let rules = crate::alert::rule::defaults(&catalog, &Default::default());
        let alerts = crate::pipeline::alerts::Alerts::new(
            Engine::new(&catalog, rules, 3600),
            Metrics::new(),
        );
        let mut woken = alerts.subscribe();
        let changes = crate::alert::Changes {
            states: Vec::new(),
            events: vec![event(EventKind::Raised)],
        };
        let busy = alerts.engine.lock().unwrap();
        let reporter = {
            let alerts = alerts.clone();
            std::thread::spawn(move || alerts.committed(&changes, &[1]))
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let wake = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), woken.changed()).await
        });
        drop(busy);
        reporter.join().unwrap();
        assert!(
            matches!(wake, Ok(Ok(()))),
            "the notifiers were not woken while the engine was busy"
        );
        let handed = woken.borrow().clone().unwrap();
        assert_eq!(
            handed.events.len(),
            1,
            "the event is handed over with its id"
        );
        assert_eq!(handed.events[0].0, 1);
        assert_eq!(handed.events[0].1.kind, EventKind::Raised);
    }

    #[test]
    fn the_ids_a_commit_hands_over_are_the_outboxs() {
        let (store, _) = Store::open(std::path::Path::new(":memory:")).unwrap();
        let changes = crate::alert::Changes {
            states: Vec::new(),
            events: vec![event(EventKind::Raised), event(EventKind::Resolved)],
        };
        let first = store.accept(&[], &[], &[], &changes).unwrap().event_ids;
        let second = store.commit_alerts(&changes).unwrap();
        let outbox: Vec<i64> = store
            .alert_events_after(0, 10)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!([first, second].concat(), outbox);
        assert_eq!(outbox.len(), 4);
    }

    #[test]
    fn a_notifier_takes_handed_over_events_only_when_they_follow_its_cursor() {
        let committed = |first: i64, n: usize| Committed {
            at: std::time::Instant::now(),
            events: (0..n)
                .map(|i| (first + i as i64, event(EventKind::Raised)))
                .collect(),
        };
        let ids = |e: Option<Vec<(i64, AlertEvent)>>| {
            e.map(|e| e.into_iter().map(|(id, _)| id).collect::<Vec<_>>())
        };
        let c = committed(8, 2);
        assert_eq!(ids(handed_over(Some(&c), Some(7))), Some(vec![8, 9]));
        // Events committed in between that it has not delivered, or these already delivered.
        assert_eq!(ids(handed_over(Some(&c), Some(5))), None);
        assert_eq!(ids(handed_over(Some(&c), Some(9))), None);
        // The cursor not read yet; nothing committed; ids unknown; more than a batch.
        assert_eq!(ids(handed_over(Some(&c), None)), None);
        assert_eq!(ids(handed_over(None, Some(7))), None);
        assert_eq!(ids(handed_over(Some(&committed(8, 0)), Some(7))), None);
        assert_eq!(
            ids(handed_over(Some(&committed(8, BATCH + 1)), Some(7))),
            None
        );
    }

    fn event(kind: EventKind) -> AlertEvent {
        AlertEvent {
            kind,
            at_ms: 1_764_200_000_000,
            previous_severity: None,
            alert: Alert {
                id: "crowd.occupancy:S4:1764200000000".into(),
                rule: "crowd.occupancy".into(),
                category: Category::Crowd,
                subject: "S4".into(),
                subject_name: "通天岩".into(),
                zone: "360702".into(),
                grade: 2,
                severity: "yellow".into(),
                label: "黄".into(),
                status: Status::Firing,
                value: 0.82,
                threshold: 0.8,
                started_ms: 1_764_200_000_000,
                updated_ms: 1_764_200_000_000,
                resolved_ms: None,
                ack: None,
                flapping: false,
                summary: "通天岩: occupancy — 黄 (occupancy_ratio 0.82 ≥ 0.8)".into(),
            },
        }
    }

    #[test]
    fn robot_bodies_follow_the_dingtalk_and_wecom_formats() {
        let e = event(EventKind::Raised);
        let d = WebhookNotifier::body(WebhookFormat::Dingtalk, 7, &e);
        assert_eq!(d["msgtype"], "markdown");
        assert_eq!(d["markdown"]["title"], "[黄] 通天岩");
        let text = d["markdown"]["text"].as_str().unwrap();
        assert!(text.contains("告警 raised"), "{text}");
        assert!(text.contains("2025-11-27T07:33:20+08:00"), "{text}");
        let w = WebhookNotifier::body(WebhookFormat::Wecom, 7, &e);
        assert_eq!(w["markdown"]["content"], d["markdown"]["text"]);
        let g = WebhookNotifier::body(WebhookFormat::Generic, 7, &e);
        assert_eq!(g["seq"], 7);
        assert_eq!(g["kind"], "raised");
        assert_eq!(g["alert"]["subject"], "S4");
    }

    #[test]
    fn a_dingtalk_secret_signs_the_url() {
        let mut w = WebhookNotifier::new(WebhookSection {
            name: "duty".into(),
            url: "https://oapi.dingtalk.com/robot/send?access_token=abc".into(),
            format: WebhookFormat::Dingtalk,
            secret_env: None,
            timeout_ms: 1000,
        })
        .unwrap();
        assert_eq!(
            w.url(),
            "https://oapi.dingtalk.com/robot/send?access_token=abc"
        );
        w.secret = Some("SEC123".into());
        let url = w.url();
        let (_, query) = url.split_once("&timestamp=").unwrap();
        let (ts, sign) = query.split_once("&sign=").unwrap();
        // The signature is HMAC-SHA256 of "{timestamp}\n{secret}" keyed by the secret.
        use base64::Engine as _;
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"SEC123").unwrap();
        mac.update(format!("{ts}\nSEC123").as_bytes());
        let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let decoded: String = url::form_urlencoded::parse(format!("s={sign}").as_bytes())
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(decoded, want);
    }

    #[test]
    fn a_missing_secret_variable_is_named() {
        let e = WebhookNotifier::new(WebhookSection {
            name: "duty".into(),
            url: "https://example.invalid/".into(),
            format: WebhookFormat::Dingtalk,
            secret_env: Some("CITYSENSE_TEST_SURELY_UNSET".into()),
            timeout_ms: 1000,
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "webhook \"duty\": environment variable CITYSENSE_TEST_SURELY_UNSET (secret_env) is not set"
        );
    }

    #[test]
    fn alertmanager_alerts_carry_the_documented_labels_and_end_times() {
        let e = event(EventKind::Raised);
        let a = AlertmanagerNotifier::am_alert("gw-1", &e.alert, "yellow", 1_764_200_060_000);
        assert_eq!(
            a["labels"],
            json!({"alertname": "crowd.occupancy", "category": "crowd", "subject": "S4",
                   "zone": "360702", "severity": "yellow", "gateway": "gw-1"})
        );
        assert_eq!(a["startsAt"], "2025-11-26T23:33:20.000Z");
        assert_eq!(a["endsAt"], "2025-11-26T23:34:20.000Z");
    }
}
