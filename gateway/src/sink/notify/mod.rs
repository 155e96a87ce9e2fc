//! Notifiers: alert events from the store's outbox to operators, each a [`Sink`] drained by the
//! [sink runtime](crate::sink::runtime) with its own cursor (`alerts:{name}`).
//!
//! Every transition is committed to `alert_events` with the readings that caused it. Each
//! notifier delivers the events after its cursor, which moves only when the receiver confirmed
//! (MQTT PUBACK, HTTP 2xx and, for robots, `errcode` 0). A notifier that is down retries with
//! backoff and delays only itself; nothing is lost, and after a restart it continues where it
//! stopped (an event may then arrive twice, with the same `seq`). The events a commit just
//! made are handed over with the wake-up ([`Outbox`]), so an alert's way to the operators
//! needs no read of the outbox.
//!
//! # Layout
//! - [`mqtt`]: the event stream and the retained state per subject.
//! - [`webhook`]: generic JSON, DingTalk and WeCom robots.
//! - [`alertmanager`]: the Alertmanager v2 API.

pub mod alertmanager;
pub mod mqtt;
pub mod webhook;

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use self::alertmanager::AlertmanagerNotifier;
pub use self::mqtt::MqttNotifier;
pub use self::webhook::WebhookNotifier;
use super::{Failure, Feed, Meters, NotReady, Options, Read, Sink};
use crate::alert::model::AlertEvent;
use crate::metrics::Metrics;
use crate::store::{Committed, Store, StoreError, Table};

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
    /// Only alerts of these grids (`[[grid]]` ids of the site): a unit's own robot group.
    /// Empty: every alert.
    #[serde(default)]
    pub grids: Vec<String>,
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

impl WebhookSection {
    /// Checks the `i`th webhook against the values types cannot check and the webhooks before
    /// it; returns `(key, reason)` pairs.
    pub fn check(&self, i: usize, before: &[WebhookSection]) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if let Err(e) = reqwest::Url::parse(&self.url) {
            p.push((
                format!("alerts.webhook[{i}].url"),
                format!("\"{}\" is not a URL: {e}", self.url),
            ));
        }
        if before.iter().any(|o| o.name == self.name) {
            p.push((
                format!("alerts.webhook[{i}].name"),
                format!("webhook name \"{}\" is used twice", self.name),
            ));
        }
        p
    }
}

impl AlertmanagerSection {
    /// Checks values that types alone cannot; returns `(key, reason)` pairs.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if let Err(e) = reqwest::Url::parse(&self.url) {
            p.push((
                "alerts.alertmanager.url".into(),
                format!("\"{}\" is not a URL: {e}", self.url),
            ));
        }
        if self.resend_s == 0 {
            p.push((
                "alerts.alertmanager.resend_s".into(),
                "resend_s must be at least 1: Alertmanager resolves alerts that are not re-sent"
                    .into(),
            ));
        }
        p
    }
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
    /// Each replica of a partition numbers its own outbox.
    pub seq: i64,
    /// The same on every replica and every redelivery: `{alert id}/{kind}/{at_ms}`. A subscriber
    /// of several replicas keeps one event per id.
    pub event_id: String,
    /// The event.
    #[serde(flatten)]
    pub event: &'a AlertEvent,
}

impl<'a> Envelope<'a> {
    /// Event `event` at outbox row `seq`.
    pub fn new(seq: i64, event: &'a AlertEvent) -> Envelope<'a> {
        Envelope {
            seq,
            event_id: format!("{}/{}/{}", event.alert.id, event.kind.name(), event.at_ms),
            event,
        }
    }
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
}

impl From<DeliveryError> for Failure {
    /// Alerts are never dropped: a refusal is retried like a broken link, never isolated.
    fn from(e: DeliveryError) -> Failure {
        Failure::Retry {
            class: e.class(),
            reason: e.to_string(),
            after: None,
        }
    }
}

impl Sink for Notifier {
    type Item = AlertEvent;

    const TICKS: bool = true;

    async fn deliver(&mut self, events: &[(i64, AlertEvent)]) -> Result<(), Failure> {
        Ok(match self {
            Notifier::Mqtt(m) => m.deliver(events).await,
            Notifier::Webhook(w) => w.deliver(events).await,
            Notifier::Alertmanager(a) => a.deliver(events).await,
        }?)
    }

    fn dead_letter(event: &AlertEvent) -> String {
        serde_json::to_string(event).unwrap_or_default()
    }

    async fn idle(&mut self) {
        match self {
            Notifier::Mqtt(m) => m.publisher.idle().await,
            _ => std::future::pending().await,
        }
    }

    async fn tick(&mut self) -> Result<(), Failure> {
        match self {
            Notifier::Alertmanager(a) => Ok(a.resend().await?),
            _ => Ok(()),
        }
    }

    fn endpoint(&self) -> String {
        match self {
            Notifier::Mqtt(_) => "cs/v1/alerts".to_owned(),
            Notifier::Webhook(w) => w.section.url.clone(),
            Notifier::Alertmanager(a) => a.section.url.clone(),
        }
    }
}

/// The alert outbox, as the notifiers read it.
#[derive(Debug)]
pub struct Outbox;

/// The alert outbox's wake-up hands its events over.
impl Feed for Outbox {
    type Item = AlertEvent;
    type Wake = Option<Committed>;

    fn newest(&self, store: &Store) -> Result<i64, StoreError> {
        store.last_id(Table::AlertEvents)
    }

    fn read(
        &self,
        store: &Store,
        after: i64,
        until: i64,
        limit: usize,
    ) -> Result<Read<Self::Item>, StoreError> {
        let mut rows = store.alert_events_after(after, limit)?;
        rows.retain(|(id, _)| *id <= until);
        Ok(Read::of(rows, until, limit))
    }

    fn handed_over(
        &self,
        woken: &Self::Wake,
        after: i64,
        limit: usize,
    ) -> Option<Read<Self::Item>> {
        let committed = woken.as_ref()?;
        let (first, _) = committed.events.first()?;
        let (last, _) = committed.events.last()?;
        (*first == after + 1 && committed.events.len() <= limit).then(|| Read {
            items: committed.events.to_vec(),
            upto: *last,
        })
    }

    fn committed_at(woken: &Self::Wake) -> Option<Instant> {
        woken.as_ref().map(|c| c.at)
    }
}

/// Drains the outbox into `notifier` until shutdown; `wake` carries the events just committed.
pub async fn run(
    notifier: Notifier,
    store: Arc<Store>,
    metrics: Metrics,
    wake: tokio::sync::watch::Receiver<Option<Committed>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let name = notifier.name();
    let meters = Meters {
        display: format!("notifier {name}"),
        cursor: format!("alerts:{name}"),
        ready_name: None,
        ready: None,
        pending: metrics.alert_pending.with_label_values(&[&name]),
        delivered: metrics
            .alert_notifications
            .with_label_values(&[&name, "delivered"]),
        errors: metrics.alert_notifications.clone(),
        errors_label: name.clone(),
        rejected_class: "refused",
        catching_up: None,
        oldest_unsent: None,
        delivery_seconds: Some(metrics.alert_delivery_seconds.with_label_values(&[&name])),
    };
    let options = Options {
        batch: BATCH,
        ..Options::default()
    };
    super::run(
        notifier,
        Arc::new(Outbox),
        options,
        meters,
        store,
        NotReady::default(),
        wake,
        shutdown,
    )
    .await;
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::alert::Engine;
    use crate::alert::model::{Alert, EventKind, Status};
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
        let handed_over =
            |c: Option<&Committed>, after: i64| Outbox.handed_over(&c.cloned(), after, BATCH);
        let ids = |e: Option<Read<AlertEvent>>| {
            e.map(|e| e.items.into_iter().map(|(id, _)| id).collect::<Vec<_>>())
        };
        let c = committed(8, 2);
        assert_eq!(ids(handed_over(Some(&c), 7)), Some(vec![8, 9]));
        // Events committed in between that it has not delivered, or these already delivered.
        assert_eq!(ids(handed_over(Some(&c), 5)), None);
        assert_eq!(ids(handed_over(Some(&c), 9)), None);
        // Nothing committed; ids unknown; more than a batch.
        assert_eq!(ids(handed_over(None, 7)), None);
        assert_eq!(ids(handed_over(Some(&committed(8, 0)), 7)), None);
        assert_eq!(ids(handed_over(Some(&committed(8, BATCH + 1)), 7)), None);
    }

    pub(super) fn event(kind: EventKind) -> AlertEvent {
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
                assigned_to: None,
                comments: Vec::new(),
                summary: "通天岩: occupancy — 黄 (occupancy_ratio 0.82 ≥ 0.8)".into(),
                advice: None,
                calendar: None,
                duty: None,
                escalation: None,
            },
        }
    }
}
