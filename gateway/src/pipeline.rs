//! The receive path: batches of MQTT messages → verify and decode → store → acknowledge.
//!
//! Messages are taken in batches (whatever has arrived, up to [`MAX_BATCH`]), verified under one
//! lock of the registry, and the batch's readings handed to the store in one call, by a committer
//! task that takes batches in order (so batch N is committed while batch N+1 is verified and
//! aggregated). Only once a batch is committed are its messages acknowledged, so a crash before
//! that leaves them with the broker, which redelivers them. Rejected messages go to
//! `cs/v1/dlq/{zone}` with their reason and are acknowledged: they are handled.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Publish;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::aggregate::Aggregators;
use crate::alert::{Alerts, Changes};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::point::Point;
use crate::reading::{Measurement, Reading};
use crate::registry::{Registry, category_name};
use crate::store::Store;
use crate::verify::{Rejection, Stream, Verifier, parse_topic};

/// Most messages handled in one batch.
pub const MAX_BATCH: usize = 1024;
/// Dead-letter records keep at most this much of the payload.
const DLQ_PAYLOAD_BYTES: usize = 1024;

/// A dead-letter record, published as JSON on `cs/v1/dlq/{zone}`.
#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    /// The topic the message came on.
    pub topic: &'a str,
    /// Stable reason label (as in `citysense_messages_rejected_total{reason}`).
    pub reason: &'static str,
    /// What was wrong, for people.
    pub detail: &'a str,
    /// When the gateway received it, Unix ms.
    pub received_ms: i64,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// The first 1 KiB of the payload, hex.
    pub payload_hex: String,
}

/// A batch verified, aggregated and evaluated, on its way to the committer.
struct Accepted {
    readings: Vec<Reading>,
    points: Vec<Point>,
    ledgers: Vec<(String, Ledger)>,
    changes: Changes,
    /// The alert commit lock, released once this batch's alert changes are committed.
    held: tokio::sync::OwnedMutexGuard<()>,
    /// The messages to acknowledge once committed (QoS 0 ones need nothing).
    acks: Vec<Publish>,
    /// Rejected messages, published as dead letters once the batch is committed.
    dead: Vec<(String, Vec<u8>, Rejection)>,
    /// When the batch was received, Unix ms.
    now: i64,
    /// When the batch was received, for `citysense_batch_accept_duration_seconds`.
    arrived: Instant,
}

/// The current time, Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Everything the receive path needs.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Verification rules, catalog and keys.
    pub verifier: Arc<Verifier>,
    /// Device state.
    pub registry: Arc<Mutex<Registry>>,
    /// The store boundary.
    pub store: Arc<Store>,
    /// Metrics.
    pub metrics: Metrics,
    /// For acknowledgements and dead-letter records.
    pub client: AsyncClient,
    /// Crowd, traffic, pipe and health aggregation (only the pipeline task uses it).
    pub aggregators: Arc<Mutex<Aggregators>>,
    /// The rule engine: readings and points in, alert changes out, committed with the batch.
    pub alerts: Alerts,
}

impl Pipeline {
    /// Runs until the inbound channel closes: MQTT messages in batches, and the readings of
    /// polled (Modbus) devices.
    pub async fn run(
        self,
        mut inbound: mpsc::Receiver<Publish>,
        mut polled: mpsc::Receiver<Vec<Reading>>,
    ) {
        // Batch N is committed while batch N+1 is verified and aggregated.
        let (to_commit, accepted) = mpsc::channel(1);
        let committer = tokio::spawn(self.clone().commit_in_order(accepted));
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut polling = true;
        loop {
            tokio::select! {
                first = inbound.recv() => {
                    let Some(first) = first else { break };
                    batch.push(first);
                    while batch.len() < MAX_BATCH {
                        match inbound.try_recv() {
                            Ok(p) => batch.push(p),
                            Err(_) => break,
                        }
                    }
                    self.process(&mut batch, &to_commit).await;
                }
                readings = polled.recv(), if polling => match readings {
                    Some(r) => self.process_polled(r, &to_commit).await,
                    None => polling = false,
                },
            }
        }
        drop(to_commit);
        let _ = committer.await;
    }

    /// Readings of a polled device: checked against the profile's ranges, then aggregated,
    /// evaluated and committed like reports.
    async fn process_polled(&self, mut readings: Vec<Reading>, to_commit: &mpsc::Sender<Accepted>) {
        let Some(first) = readings.first() else {
            return;
        };
        let device = first.device.clone();
        let mut rejected = Vec::new();
        if let Ok(mut registry) = self.registry.lock()
            && let Some(d) = registry.get_mut(&device)
        {
            let profile = self.verifier.profile(&d.info.kind);
            readings.retain(|r| match (&r.measurement, profile) {
                (Measurement::Value { field, value, .. }, Some(p)) => {
                    let ok = p
                        .fields
                        .iter()
                        .find(|f| f.name == *field)
                        .is_some_and(|f| *value >= f.min && *value <= f.max);
                    if !ok {
                        rejected.push(format!("{field} = {value}"));
                    }
                    ok
                }
                _ => true,
            });
            d.state.accepted += 1;
            d.state.last_seen_ms = Some(now_ms());
        }
        for r in &rejected {
            self.metrics
                .rejected
                .with_label_values(&["out_of_range"])
                .inc();
            tracing::debug!(device = %device, value = %r, "polled value out of the profile's range");
        }
        self.metrics
            .readings
            .with_label_values(&["pipe"])
            .inc_by(readings.len() as u64);
        let accepted = self
            .accept(readings, Vec::new(), now_ms(), Instant::now())
            .await;
        let _ = to_commit.send(accepted).await;
    }

    /// Verifies and aggregates one batch and hands it to the committer, which stores it and
    /// then acknowledges its messages.
    async fn process(&self, batch: &mut Vec<Publish>, to_commit: &mpsc::Sender<Accepted>) {
        let (now, arrived) = (now_ms(), Instant::now());
        self.metrics.batch_messages.observe(batch.len() as f64);
        let mut readings: Vec<Reading> = Vec::new();
        let mut touched: HashSet<Arc<str>> = HashSet::new();
        let mut dead: Vec<(String, Vec<u8>, Rejection)> = Vec::new();
        // The sequence ledgers of the devices this batch moved, committed with its readings.
        let ledgers: Vec<(String, Ledger)> = {
            let Ok(mut registry) = self.registry.lock() else {
                tracing::error!("registry lock poisoned; messages left unacknowledged");
                return;
            };
            for p in batch.iter() {
                self.metrics.bytes.inc_by(p.payload.len() as u64);
                let topic = String::from_utf8_lossy(&p.topic);
                let started = Instant::now();
                let outcome = self.verify_one(
                    &mut registry,
                    &topic,
                    &p.payload,
                    now,
                    &mut readings,
                    &mut touched,
                );
                self.metrics
                    .decode_seconds
                    .observe(started.elapsed().as_secs_f64());
                if let Err(r) = outcome {
                    dead.push((topic.into_owned(), p.payload.to_vec(), r));
                }
            }
            touched
                .iter()
                .filter_map(|id| {
                    registry
                        .get(id)
                        .map(|d| (id.to_string(), d.state.ledger.clone()))
                })
                .collect()
        };
        let mut accepted = self.accept(readings, ledgers, now, arrived).await;
        accepted.dead = dead;
        accepted.acks = std::mem::replace(batch, Vec::with_capacity(MAX_BATCH));
        // Sending fails only when the committer is gone (shutdown): the messages stay
        // unacknowledged and the broker keeps them.
        let _ = to_commit.send(accepted).await;
    }

    /// Aggregates and evaluates the rules: the batch as it is to be committed, holding the
    /// alert commit lock so that alert changes reach the outbox in engine order.
    async fn accept(
        &self,
        readings: Vec<Reading>,
        ledgers: Vec<(String, Ledger)>,
        now: i64,
        arrived: Instant,
    ) -> Accepted {
        let points = match self.aggregators.lock() {
            Ok(mut a) => {
                let before = a.counts;
                let points = a.ingest(&readings);
                self.metrics
                    .aggregate_too_late
                    .inc_by(a.counts.too_late - before.too_late);
                self.metrics
                    .duplicate_passages
                    .inc_by(a.counts.duplicate_passages - before.duplicate_passages);
                self.metrics
                    .occupancy_drift
                    .inc_by(a.counts.drift - before.drift);
                points
            }
            Err(_) => {
                tracing::error!("aggregation state lock poisoned; readings stored without points");
                Vec::new()
            }
        };
        // Alert changes commit with the readings that caused them, one batch at a time.
        let held = self.alerts.commit_lock.clone().lock_owned().await;
        let changes = self.alerts.evaluate(|e| {
            e.on_readings(&readings);
            e.on_points(&points);
        });
        Accepted {
            readings,
            points,
            ledgers,
            changes,
            held,
            acks: Vec::new(),
            dead: Vec::new(),
            now,
            arrived,
        }
    }

    /// Commits batches in the order they were verified, then acknowledges their messages and
    /// publishes their dead letters. Accepted means committed to the local store; until then
    /// nothing is acknowledged.
    async fn commit_in_order(self, mut accepted: mpsc::Receiver<Accepted>) {
        while let Some(a) = accepted.recv().await {
            let Accepted {
                readings,
                points,
                ledgers,
                changes,
                held,
                acks,
                dead,
                now,
                arrived,
            } = a;
            if !readings.is_empty() || !ledgers.is_empty() || !changes.is_empty() {
                self.commit(readings, points, ledgers, changes.clone())
                    .await;
            }
            self.metrics
                .batch_accept_seconds
                .observe(arrived.elapsed().as_secs_f64());
            drop(held);
            self.alerts.committed(&changes);
            for (topic, payload, r) in &dead {
                self.dead_letter(topic, payload, r, now);
            }
            for p in &acks {
                if p.qos != QoS::AtMostOnce && self.client.try_ack(p).is_err() {
                    self.metrics.mqtt_dropped.with_label_values(&["ack"]).inc();
                }
            }
        }
    }

    /// One message: its readings and its device's ledger are appended to the batch's.
    fn verify_one(
        &self,
        registry: &mut Registry,
        topic: &str,
        payload: &[u8],
        now: i64,
        readings: &mut Vec<Reading>,
        touched: &mut HashSet<Arc<str>>,
    ) -> Result<(), Rejection> {
        match parse_topic(topic) {
            Some(t) if t.stream == Stream::Up => {
                self.metrics.messages.with_label_values(&["up"]).inc();
                let r = self.verifier.report(registry, topic, payload, now)?;
                if let Some(d) = registry.get(t.device) {
                    self.metrics
                        .readings
                        .with_label_values(&[category_name(d.info.category)])
                        .inc_by(r.len() as u64);
                    touched.insert(d.info.id.clone());
                }
                readings.extend(r);
                Ok(())
            }
            Some(_) => {
                self.metrics.messages.with_label_values(&["status"]).inc();
                self.verifier.status(registry, topic, payload)
            }
            None => {
                self.metrics.messages.with_label_values(&["other"]).inc();
                Err(Rejection {
                    reason: "bad_topic",
                    detail: format!("topic \"{topic}\" is not a device topic"),
                    zone: None,
                })
            }
        }
    }

    /// Commits, retrying until the store takes the batch: the messages stay unacknowledged (and
    /// the broker keeps them) for as long as it refuses.
    async fn commit(
        &self,
        readings: Vec<Reading>,
        points: Vec<Point>,
        ledgers: Vec<(String, Ledger)>,
        alerts: Changes,
    ) {
        let batch = Arc::new((readings, points, ledgers, alerts));
        let mut delay = Duration::from_millis(100);
        loop {
            let (store, b) = (self.store.clone(), batch.clone());
            let started = Instant::now();
            let committed = tokio::task::spawn_blocking(move || {
                let ledgers: Vec<(&str, &Ledger)> =
                    b.2.iter().map(|(d, l)| (d.as_str(), l)).collect();
                store.accept(&b.0, &b.1, &ledgers, &b.3)
            })
            .await;
            self.metrics
                .store_commit_seconds
                .observe(started.elapsed().as_secs_f64());
            match committed {
                Ok(Ok(())) => return,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "local store refused a batch; retrying, its messages stay unacknowledged")
                }
                Err(e) => tracing::error!(error = %e, "store task failed; retrying"),
            }
            self.metrics.store_errors.inc();
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    fn dead_letter(&self, topic: &str, payload: &[u8], r: &Rejection, now: i64) {
        self.metrics.rejected.with_label_values(&[r.reason]).inc();
        tracing::debug!(topic, reason = r.reason, detail = %r.detail, "rejected");
        let record = DeadLetter {
            topic,
            reason: r.reason,
            detail: &r.detail,
            received_ms: now,
            payload_bytes: payload.len(),
            payload_hex: hex::encode(&payload[..payload.len().min(DLQ_PAYLOAD_BYTES)]),
        };
        let zone = r.zone.as_deref().unwrap_or("unknown");
        let body = serde_json::to_vec(&record).unwrap_or_default();
        match self
            .client
            .try_publish(format!("cs/v1/dlq/{zone}"), QoS::AtLeastOnce, false, body)
        {
            Ok(()) => self.metrics.dlq_published.inc(),
            Err(_) => self
                .metrics
                .mqtt_dropped
                .with_label_values(&["dead_letter"])
                .inc(),
        }
    }
}
