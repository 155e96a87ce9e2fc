//! The receive path: MQTT messages → verify and decode → aggregate → rules → store → acknowledge.
//!
//! Messages are verified as they come (under one lock of the registry for whatever has
//! arrived), into the batch being gathered, until the batch before it is committed; the batch
//! is then aggregated (in event-time order), the rules evaluate it, and a committer task stores
//! it in one call. Only once a batch is committed are its messages acknowledged, so a crash
//! before that leaves them with the broker, which redelivers them. Rejected messages go to
//! `cs/v1/dlq/{zone}` with their reason and are acknowledged: they are handled.
//!
//! A commit costs an fsync and at least a block of the WAL however little it holds: one per
//! report at a low rate wrote 10 KB per 100-byte report, more than edge flash can take. So a
//! batch that raised no alert event and holds no urgent reading stays open for up to
//! `store.commit_interval_ms` from its first message: what arrives meanwhile is aggregated and
//! evaluated into it (the commit lock still held, so the engine's order is kept), and it is
//! committed at the deadline, or as soon as an alert event or an urgent reading joins it, or
//! when it is full ([`MAX_BATCH`] messages). Alerts do not wait for the interval; only the
//! acknowledgements of quiet reports do.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Publish;
use rustc_hash::FxHashSet;
use serde::Serialize;
use tokio::sync::{OwnedMutexGuard, mpsc, watch};

use crate::aggregate::Aggregators;
use crate::aggregate::correct::Due;
use crate::alert::Changes;
use crate::clock::{SLOW_COMMIT, millis, now_ms};
use crate::decode::{Rejection, Stream, Verifier, parse_topic};

pub mod alerts;
pub mod peers;

use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::point::Point;
use crate::reading::Reading;
use crate::registry::Registry;
use crate::store::{CommitTimes, Store};
use alerts::Alerts;

/// How far the pipeline got: what the service manager's watchdog is fed by (see
/// `housekeeping/watchdog.rs`). Healthy means idle (everything taken in is settled) or a commit
/// lately; a wedged commit or a stuck pipeline is neither.
#[derive(Debug, Default)]
pub struct Progress {
    /// Messages and polled readings taken into batches.
    taken: AtomicU64,
    /// Of those, committed (or refused) and acknowledged.
    settled: AtomicU64,
    /// When a batch was last committed, Unix ms.
    committed_ms: AtomicI64,
}

impl Progress {
    pub(crate) fn took(&self, n: usize) {
        self.taken.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn settled(&self, n: usize) {
        self.settled.fetch_add(n as u64, Ordering::Relaxed);
        self.committed_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Work taken in and not settled, and how long ago the last commit was (ms) as of `now_ms`.
    pub fn waiting(&self, now_ms: i64) -> (u64, i64) {
        let settled = self.settled.load(Ordering::Relaxed);
        let taken = self.taken.load(Ordering::Relaxed);
        (
            taken.saturating_sub(settled),
            now_ms - self.committed_ms.load(Ordering::Relaxed),
        )
    }
}

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

/// A batch verified, aggregated and evaluated.
struct Evaluated {
    /// Messages taken from the broker.
    messages: usize,
    /// Messages and polled readings taken in ([`Progress`]).
    taken: usize,
    readings: Vec<Reading>,
    points: Vec<Point>,
    ledgers: Vec<(String, Ledger)>,
    changes: Changes,
    /// The aggregates' corrections still to run, when they changed (JSON).
    corrections: Option<String>,
    /// The messages to acknowledge once committed (QoS 0 ones need nothing).
    acks: Vec<Publish>,
    /// Rejected messages (with when they were received, Unix ms), published as dead letters
    /// once the batch is committed.
    dead: Vec<Dead>,
    /// When the batch's first message was received, for
    /// `citysense_batch_accept_duration_seconds`.
    arrived: Instant,
    /// Is to be committed now, without waiting for others to share the commit: it raises an
    /// alert event or holds a reading its node sent at once (a threshold crossed). Found when
    /// each part is evaluated, so that an open batch is not searched again at every merge.
    urgent: bool,
}

impl Evaluated {
    /// Takes in what was evaluated after it, while it held the commit lock.
    fn merge(&mut self, later: Evaluated) {
        self.messages += later.messages;
        self.taken += later.taken;
        self.urgent |= later.urgent;
        self.readings.extend(later.readings);
        self.points.extend(later.points);
        self.ledgers.extend(later.ledgers);
        self.changes.states.extend(later.changes.states);
        self.changes.events.extend(later.changes.events);
        if later.corrections.is_some() {
            self.corrections = later.corrections;
        }
        self.acks.extend(later.acks);
        self.dead.extend(later.dead);
    }
}

/// A batch evaluated, on its way to the committer.
struct Accepted {
    batch: Evaluated,
    /// The alert commit lock, released once the batch's alert changes are committed.
    held: OwnedMutexGuard<()>,
}

/// A rejected message: topic, payload, reason, when it was received (Unix ms).
type Dead = (String, Vec<u8>, Rejection, i64);

/// The batch being gathered: its messages verified, not yet aggregated or evaluated.
#[derive(Default)]
struct Batch {
    /// Messages taken from the broker.
    messages: usize,
    /// Readings of polled devices taken in.
    polled: usize,
    readings: Vec<Reading>,
    /// Devices whose ledgers moved.
    touched: FxHashSet<Arc<str>>,
    acks: Vec<Publish>,
    dead: Vec<Dead>,
    /// When its first message or polled reading arrived.
    arrived: Option<Instant>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.arrived.is_none()
    }
}

/// A batch's wait for the alert commit lock, kept across the pipeline's wake-ups so that it
/// keeps its place in the lock's queue.
type Turn = Pin<Box<dyn Future<Output = OwnedMutexGuard<()>> + Send>>;

/// Sleeps until `due`; never, without one.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// The lock once `turn` has it; never, while there is no turn.
async fn next_turn(turn: &mut Option<Turn>) -> OwnedMutexGuard<()> {
    match turn {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

/// Everything the receive path needs.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Verification rules, catalog and keys; replaced whole by a reload or a key rotation.
    pub verifier: Arc<arc_swap::ArcSwap<Verifier>>,
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
    /// Told after every commit that held points: the InfluxDB sink writes them at once.
    pub points_committed: watch::Sender<()>,
    /// Changed after every commit that held readings: wakes the sinks of raw readings.
    pub readings_committed: watch::Sender<()>,
    /// How long a batch without alert events or urgent readings stays open for others to
    /// share its commit (`store.commit_interval_ms`; zero commits each batch at once).
    pub commit_interval: Duration,
    /// How far it got (the watchdog's food).
    pub progress: Arc<Progress>,
}

impl Pipeline {
    /// Runs until the inbound channel closes: MQTT messages in batches, and the readings of
    /// polled (Modbus) devices.
    ///
    /// A batch gathers messages, verified as they arrive, until the alert commit lock comes
    /// free, that is until the batch before it is committed; it is then aggregated and
    /// evaluated. An urgent one goes to the committer at once; another stays open, taking in
    /// what arrives, until its interval is over or something urgent joins it (see the module's
    /// documentation).
    pub async fn run(
        self,
        mut inbound: mpsc::Receiver<Publish>,
        mut polled: mpsc::Receiver<Vec<Reading>>,
    ) {
        let (to_commit, accepted) = mpsc::channel(1);
        let committer = tokio::spawn(self.clone().commit_in_order(accepted));
        let mut batch = Batch::default();
        let mut messages = Vec::with_capacity(MAX_BATCH);
        // The batch's turn at the commit lock, asked for as soon as it holds anything.
        let mut turn: Option<Turn> = None;
        // The batch evaluated and holding the lock, waiting for others to share its commit.
        let mut open: Option<Accepted> = None;
        let (mut receiving, mut polling) = (true, true);
        // A quiet gateway still runs the corrections whose backlog has come.
        let mut corrections = tokio::time::interval(Duration::from_secs(1));
        corrections.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while receiving || !batch.is_empty() || open.is_some() {
            let due = open
                .as_ref()
                .map(|a| a.batch.arrived + self.commit_interval);
            let mut ready = None;
            tokio::select! {
                biased;
                held = next_turn(&mut turn) => {
                    turn = None;
                    ready = Some(Accepted {
                        batch: self.evaluate(std::mem::take(&mut batch), true),
                        held,
                    });
                }
                () = sleep_until(due) => ready = open.take(),
                first = inbound.recv(), if receiving && batch.messages < MAX_BATCH => match first {
                    Some(first) => {
                        messages.push(first);
                        while batch.messages + messages.len() < MAX_BATCH {
                            match inbound.try_recv() {
                                Ok(p) => messages.push(p),
                                Err(_) => break,
                            }
                        }
                        self.gather(&mut messages, &mut batch);
                    }
                    None => receiving = false,
                },
                readings = polled.recv(), if polling => match readings {
                    Some(r) => self.gather_polled(r, &mut batch),
                    None => polling = false,
                },
                _ = corrections.tick(), if batch.is_empty() && turn.is_none() && open.is_none() => {
                    if self.aggregators.lock().is_ok_and(|a| a.corrections_pending()) {
                        batch.arrived = Some(Instant::now());
                    }
                }
            }
            // The open batch holds the lock: what was gathered joins it at once. Once the
            // inbound queue has closed (shutdown), it is committed without waiting.
            if let Some(a) = open.as_mut()
                && !batch.is_empty()
            {
                a.batch
                    .merge(self.evaluate(std::mem::take(&mut batch), false));
                ready = open.take();
            } else if !receiving && ready.is_none() {
                ready = open.take();
            }
            if let Some(a) = ready {
                let now = a.batch.urgent
                    || a.batch.messages >= MAX_BATCH
                    || !receiving
                    || a.batch.arrived.elapsed() >= self.commit_interval;
                if !now {
                    open = Some(a);
                } else if to_commit.send(a).await.is_err() {
                    // The committer is gone (shutdown): the messages stay unacknowledged and
                    // the broker keeps them.
                    break;
                }
            }
            if turn.is_none() && open.is_none() && !batch.is_empty() {
                turn = Some(Box::pin(self.alerts.commit_lock.clone().lock_owned()));
            }
        }
        drop(to_commit);
        let _ = committer.await;
    }

    /// Readings of a polled device: checked against the profile's ranges, then added to the
    /// batch like reports'.
    fn gather_polled(&self, readings: Vec<Reading>, batch: &mut Batch) {
        let Some(first) = readings.first() else {
            return;
        };
        let device = first.device.clone();
        let (readings, rejected) = match self.registry.lock() {
            Ok(mut registry) => match registry.get_mut(&device) {
                Some(d) => self.verifier.load().polled(d, readings, now_ms()),
                None => (readings, Vec::new()),
            },
            Err(_) => {
                tracing::error!("registry lock poisoned; polled readings dropped");
                return;
            }
        };
        for r in &rejected {
            self.metrics.rejected.with_label_values(&[r.reason]).inc();
            tracing::debug!(device = %device, reason = r.reason, detail = %r.detail, "polled reading refused");
        }
        self.metrics
            .readings
            .with_label_values(&["pipe"])
            .inc_by(readings.len() as u64);
        batch.arrived.get_or_insert_with(Instant::now);
        self.progress.took(readings.len());
        batch.polled += readings.len();
        batch.readings.extend(readings);
    }

    /// Verifies `messages` under one lock of the registry into the batch; the messages join
    /// the batch's acknowledgements.
    fn gather(&self, messages: &mut Vec<Publish>, batch: &mut Batch) {
        let now = now_ms();
        batch.arrived.get_or_insert_with(Instant::now);
        batch.messages += messages.len();
        self.progress.took(messages.len());
        {
            let Ok(mut registry) = self.registry.lock() else {
                tracing::error!("registry lock poisoned; messages left unacknowledged");
                messages.clear();
                return;
            };
            for p in messages.iter() {
                self.metrics.bytes.inc_by(p.payload.len() as u64);
                let topic = String::from_utf8_lossy(&p.topic);
                let started = Instant::now();
                let outcome = self.verify_one(
                    &mut registry,
                    &topic,
                    &p.payload,
                    now,
                    &mut batch.readings,
                    &mut batch.touched,
                );
                self.metrics
                    .decode_seconds
                    .observe(started.elapsed().as_secs_f64());
                if let Err(r) = outcome {
                    batch
                        .dead
                        .push((topic.into_owned(), p.payload.to_vec(), r, now));
                }
            }
        }
        batch.acks.append(messages);
    }

    /// Runs the corrections whose backlog has come when `correct` (their readings are
    /// committed: this batch's turn came after the commit before it; not so for what joins an
    /// open batch), then aggregates the batch's readings, in one call so that the aggregators
    /// put the whole batch in event-time order.
    /// Returns the points, and the corrections still to run when they changed (JSON).
    fn aggregate(&self, readings: &[Reading], correct: bool) -> (Vec<Point>, Option<String>) {
        let Ok(mut a) = self.aggregators.lock() else {
            tracing::error!("aggregation state lock poisoned; readings stored without points");
            return (Vec::new(), None);
        };
        let before = a.counts;
        let mut points = Vec::new();
        if correct && a.corrections_pending() {
            let skew = self.verifier.load().max_clock_skew_ms();
            let read = |devices: &[Arc<str>], since| {
                self.store.readings_of(devices, since, i64::MAX, skew)
            };
            match a.correct(Due::Settled, read) {
                Ok(corrected) => points = corrected,
                Err(e) => {
                    tracing::error!(error = %e, "a correction could not read the local store; it stays pending");
                }
            }
        }
        points.extend(a.ingest(readings));
        let m = &self.metrics;
        let after = a.counts;
        m.aggregate_too_late
            .inc_by(after.too_late - before.too_late);
        m.aggregate_corrections
            .inc_by(after.corrections - before.corrections);
        m.aggregate_corrected_readings
            .inc_by(after.corrected_readings - before.corrected_readings);
        m.duplicate_passages
            .inc_by(after.duplicate_passages - before.duplicate_passages);
        m.occupancy_drift.inc_by(after.drift - before.drift);
        let corrections = a
            .corrections_to_record()
            .and_then(|c| serde_json::to_string(&c).ok());
        (points, corrections)
    }

    /// The batch's turn has come (the alert commit lock is held, by it or by the open batch it
    /// joins): it is aggregated and the rules evaluate its readings and points. The lock is held
    /// until it is committed, so that alert changes reach the outbox in engine order.
    fn evaluate(&self, batch: Batch, correct: bool) -> Evaluated {
        let (points, corrections) = self.aggregate(&batch.readings, correct);
        // The sequence ledgers of the devices this batch moved, committed with its readings.
        let ledgers = match self.registry.lock() {
            Ok(registry) => batch
                .touched
                .iter()
                .filter_map(|id| {
                    registry
                        .get(id)
                        .map(|d| (id.to_string(), d.state.ledger.clone()))
                })
                .collect(),
            Err(_) => {
                tracing::error!("registry lock poisoned; ledgers not committed with the batch");
                Vec::new()
            }
        };
        let changes = self.alerts.evaluate(|e| {
            e.arrived(now_ms());
            e.on_readings(&batch.readings);
            e.on_points(&points);
        });
        let urgent = !changes.events.is_empty()
            || batch.readings.iter().any(|r| {
                matches!(
                    r.measurement,
                    crate::reading::Measurement::Value { urgent: true, .. }
                        | crate::reading::Measurement::Occupancy { .. }
                )
            });
        Evaluated {
            urgent,
            messages: batch.messages,
            taken: batch.messages + batch.polled,
            readings: batch.readings,
            points,
            ledgers,
            changes,
            corrections,
            acks: batch.acks,
            dead: batch.dead,
            arrived: batch.arrived.unwrap_or_else(Instant::now),
        }
    }

    /// Commits batches in the order they were verified, then acknowledges their messages and
    /// publishes their dead letters. Accepted means committed to the local store; until then
    /// nothing is acknowledged.
    async fn commit_in_order(self, mut accepted: mpsc::Receiver<Accepted>) {
        while let Some(a) = accepted.recv().await {
            let Accepted { batch, held } = a;
            self.metrics.batch_messages.observe(batch.messages as f64);
            let Evaluated {
                messages: _,
                taken,
                readings,
                points,
                ledgers,
                changes,
                corrections,
                acks,
                dead,
                arrived,
                urgent: _,
            } = batch;
            let with_points = !points.is_empty();
            let with_readings = !readings.is_empty();
            let mut event_ids = Vec::new();
            if !readings.is_empty()
                || with_points
                || !ledgers.is_empty()
                || !changes.is_empty()
                || corrections.is_some()
            {
                event_ids = self
                    .commit(readings, points, ledgers, changes.clone(), corrections)
                    .await;
            }
            if with_points {
                self.points_committed.send_replace(());
            }
            if with_readings {
                self.readings_committed.send_replace(());
            }
            self.metrics
                .batch_accept_seconds
                .observe(arrived.elapsed().as_secs_f64());
            drop(held);
            self.alerts.committed(&changes, &event_ids);
            for (topic, payload, r, received_ms) in &dead {
                self.dead_letter(topic, payload, r, *received_ms);
            }
            for p in &acks {
                if p.qos != QoS::AtMostOnce && self.client.try_ack(p).is_err() {
                    self.metrics.mqtt_dropped.with_label_values(&["ack"]).inc();
                }
            }
            self.progress.settled(taken);
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
        touched: &mut FxHashSet<Arc<str>>,
    ) -> Result<(), Rejection> {
        match parse_topic(topic) {
            Some(t) if t.stream == Stream::Up => {
                let counts = &self.metrics.per_message;
                counts.up.inc();
                let a = self.verifier.load().report(registry, topic, payload, now)?;
                counts.readings(a.category).inc_by(a.readings.len() as u64);
                touched.insert(a.device);
                readings.extend(a.readings);
                Ok(())
            }
            Some(_) => {
                self.metrics.per_message.status.inc();
                self.verifier.load().status(registry, topic, payload)
            }
            None => {
                self.metrics.per_message.other.inc();
                Err(Rejection {
                    reason: "bad_topic",
                    detail: format!("topic \"{topic}\" is not a device topic"),
                    zone: None,
                })
            }
        }
    }

    /// Commits, retrying until the store takes the batch: the messages stay unacknowledged (and
    /// the broker keeps them) for as long as it refuses. Returns the outbox ids of the alert
    /// events.
    async fn commit(
        &self,
        readings: Vec<Reading>,
        points: Vec<Point>,
        ledgers: Vec<(String, Ledger)>,
        alerts: Changes,
        corrections: Option<String>,
    ) -> Vec<i64> {
        let batch = Arc::new((readings, points, ledgers, alerts, corrections));
        let mut delay = Duration::from_millis(100);
        loop {
            let (store, b) = (self.store.clone(), batch.clone());
            let started = Instant::now();
            let committed = tokio::task::spawn_blocking(move || {
                let queued = started.elapsed();
                let ledgers: Vec<(&str, &Ledger)> =
                    b.2.iter().map(|(d, l)| (d.as_str(), l)).collect();
                store
                    .accept_with(&b.0, &b.1, &ledgers, &b.3, b.4.as_deref())
                    .map(|t| (queued, t))
            })
            .await;
            let took = started.elapsed();
            self.metrics
                .store_commit_seconds
                .observe(took.as_secs_f64());
            match committed {
                Ok(Ok((queued, commit))) => {
                    self.commit_took(took, queued, &commit.times, batch.0.len());
                    return commit.event_ids;
                }
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

    /// Records where a commit's time went, and names the phase of one that stalled.
    fn commit_took(&self, took: Duration, queued: Duration, t: &CommitTimes, readings: usize) {
        let phases = [
            ("queue", queued),
            ("wait", t.wait),
            ("write", t.write),
            ("sync", t.sync),
            ("restart", t.restart),
        ];
        for (phase, d) in phases {
            self.metrics
                .store_commit_phase_seconds
                .with_label_values(&[phase])
                .observe(d.as_secs_f64());
        }
        if took >= SLOW_COMMIT {
            tracing::warn!(
                took_ms = millis(took),
                queue_ms = millis(queued),
                wait_ms = millis(t.wait),
                write_ms = millis(t.write),
                sync_ms = millis(t.sync),
                restart_ms = millis(t.restart),
                readings,
                "slow store commit: acknowledgements and alerts waited for it"
            );
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use device_profiles::Catalog;
    use rumqttc::v5::MqttOptions;
    use wire::{Body, Header, PipeReading, PipeReadings, Quantity, Timestamp, Trigger};

    use super::*;
    use crate::alert::Engine;
    use crate::decode::Verifier;
    use device_profiles::demo::key as demo_key;

    /// A pipeline that commits each batch at once.
    fn pipeline() -> Pipeline {
        pipeline_with(Duration::ZERO)
    }

    fn pipeline_with(commit_interval: Duration) -> Pipeline {
        let catalog = Arc::new(Catalog::ganzhou().unwrap());
        let keys = crate::keys::Keys::demo(&catalog);
        let metrics = Metrics::new();
        let rules = crate::alert::rule::in_force(&catalog, &[], Default::default()).unwrap();
        let (store, _) = Store::open(Path::new(":memory:")).unwrap();
        // Never connected: the messages are QoS 0 and valid, so nothing is published.
        let (client, _) =
            crate::net::mqtt::client(MqttOptions::new("pipeline-test", "127.0.0.1", 1));
        Pipeline {
            verifier: Arc::new(arc_swap::ArcSwap::from_pointee(Verifier::new(
                &catalog,
                keys.clone(),
                Default::default(),
            ))),
            registry: Arc::new(Mutex::new(Registry::new(&catalog, &keys, &[]))),
            store: Arc::new(store),
            metrics: metrics.clone(),
            client,
            aggregators: Arc::new(Mutex::new(Aggregators::new(&catalog))),
            alerts: Alerts::new(Engine::new(&catalog, rules, 3600), metrics),
            points_committed: watch::channel(()).0,
            readings_committed: watch::channel(()).0,
            commit_interval,
            progress: Arc::default(),
        }
    }

    fn report(sequence: u32) -> Publish {
        report_of("gz-p1-press", sequence, now_ms())
    }

    fn report_of(device: &str, sequence: u32, unix_ms: i64) -> Publish {
        pipe_report(
            device,
            sequence,
            unix_ms,
            Quantity::Pressure,
            0.3,
            Trigger::Periodic,
        )
    }

    fn pipe_report(
        device: &str,
        sequence: u32,
        unix_ms: i64,
        quantity: Quantity,
        value: f32,
        trigger: Trigger,
    ) -> Publish {
        let mut readings = heapless::Vec::new();
        readings.push(PipeReading { quantity, value }).unwrap();
        let body = Body::PipeReadings(PipeReadings { trigger, readings });
        let header = Header {
            device_id: device,
            boot_epoch: 1,
            sequence,
            timestamp: Timestamp::Synced {
                unix_ms: unix_ms as u64,
            },
        };
        let frame = wire::frame::seal_to_vec(&header, &body, &demo_key(device)).unwrap();
        let kind = match quantity {
            Quantity::Pressure | Quantity::Flow => "water-pressure",
            _ => "tunnel-gas",
        };
        let topic = format!("cs/v1/360702/{kind}/{device}/up");
        Publish::new(topic, QoS::AtMostOnce, frame, None)
    }

    /// Waits until the pipeline has verified `n` reports of the two loggers.
    async fn verified(p: &Pipeline, n: u64) {
        let accepted = || {
            let registry = p.registry.lock().unwrap();
            ["gz-p1-press", "gz-p2-press"]
                .iter()
                .filter_map(|id| registry.get(id))
                .map(|d| d.state.accepted)
                .sum::<u64>()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while accepted() < n {
            assert!(
                Instant::now() < deadline,
                "the pipeline verified {} of {n} reports; it stopped reading while its batch \
                 waited for the commit before it",
                accepted()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// `p` running with a commit in progress, which holds the alert commit lock until the
    /// returned guard is dropped: its inbound queue, the guard, the task.
    async fn during_a_commit(
        p: &Pipeline,
    ) -> (
        mpsc::Sender<Publish>,
        OwnedMutexGuard<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (inbound, inbound_rx) = mpsc::channel(16);
        // No polled devices: the channel closes at once and the pipeline stops polling it.
        let (_, polled_rx) = mpsc::channel(1);
        let commit = p.alerts.commit_lock.clone().lock_owned().await;
        let running = tokio::spawn(p.clone().run(inbound_rx, polled_rx));
        (inbound, commit, running)
    }

    #[tokio::test]
    async fn reports_that_arrive_during_a_commit_go_into_the_next_batch() {
        let p = pipeline();
        let (inbound, commit, running) = during_a_commit(&p).await;
        inbound.send(report(0)).await.unwrap();
        verified(&p, 1).await;
        inbound.send(report(1)).await.unwrap();
        inbound.send(report(2)).await.unwrap();
        verified(&p, 3).await;
        drop(commit);
        drop(inbound);
        running.await.unwrap();
        let batches = p.metrics.batch_messages.get_sample_count();
        let messages = p.metrics.batch_messages.get_sample_sum();
        assert_eq!(
            (batches, messages),
            (1, 3.0),
            "all three reports in the one batch committed after the commit in progress"
        );
        let stored = p.store.recent("gz-p1-press", 16).unwrap();
        assert_eq!(stored.len(), 3, "{stored:?}");
    }

    #[tokio::test]
    async fn a_batch_is_aggregated_in_event_time_order_whatever_order_it_arrived_in() {
        let p = pipeline();
        let (inbound, commit, running) = during_a_commit(&p).await;
        // During one commit: a report of now, then one of ten minutes ago from another logger.
        // Its five-minute window closed (lateness two minutes) by the first one's time, so
        // aggregated in arrival order it would be too late.
        let now = now_ms();
        inbound
            .send(report_of("gz-p1-press", 0, now))
            .await
            .unwrap();
        verified(&p, 1).await;
        inbound
            .send(report_of("gz-p2-press", 0, now - 10 * 60_000))
            .await
            .unwrap();
        verified(&p, 2).await;
        drop(commit);
        drop(inbound);
        running.await.unwrap();
        assert_eq!(
            p.metrics.aggregate_too_late.get(),
            0,
            "the older report was aggregated after the newer one moved the watermark"
        );
        assert_eq!(p.metrics.batch_messages.get_sample_count(), 1);
    }

    #[tokio::test]
    async fn a_commit_that_holds_points_wakes_the_sink() {
        let p = pipeline();
        let sink = p.points_committed.subscribe();
        let (inbound, running) = running(&p);
        // A report ten minutes after the one before closes that one's window: a point.
        let now = now_ms();
        for (sequence, at) in [(0, now - 10 * 60_000), (1, now)] {
            inbound
                .send(report_of("gz-p1-press", sequence, at))
                .await
                .unwrap();
        }
        drop(inbound);
        running.await.unwrap();
        assert!(
            p.store.last_point_id().unwrap() > 0,
            "a point was committed"
        );
        assert!(
            sink.has_changed().unwrap(),
            "the sink was not told of the committed points"
        );
    }

    /// `p` running: its inbound queue and its task.
    fn running(p: &Pipeline) -> (mpsc::Sender<Publish>, tokio::task::JoinHandle<()>) {
        let (inbound, inbound_rx) = mpsc::channel(16);
        // No polled devices: the channel closes at once and the pipeline stops polling it.
        let (_, polled_rx) = mpsc::channel(1);
        (inbound, tokio::spawn(p.clone().run(inbound_rx, polled_rx)))
    }

    /// Waits until the store holds `n` readings of `device` (the inbound queue still open).
    async fn committed(p: &Pipeline, device: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.store.recent(device, 64).unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "{device}: {} of {n} readings committed",
                p.store.recent(device, 64).unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn quiet_reports_share_a_commit_until_an_urgent_one_joins() {
        // An interval no test waits for: what is committed was committed by urgency.
        let p = pipeline_with(Duration::from_secs(3600));
        let (inbound, running) = running(&p);
        let now = now_ms();
        for sequence in 0..3 {
            inbound
                .send(report_of("gz-p1-press", sequence, now))
                .await
                .unwrap();
            verified(&p, u64::from(sequence) + 1).await;
        }
        assert!(
            p.store.recent("gz-p1-press", 16).unwrap().is_empty(),
            "quiet reports were committed before their interval"
        );
        // The node saw a threshold crossed and sent at once.
        let urgent = pipe_report(
            "gz-p2-press",
            0,
            now,
            Quantity::Pressure,
            0.3,
            Trigger::Threshold,
        );
        inbound.send(urgent).await.unwrap();
        committed(&p, "gz-p2-press", 1).await;
        assert_eq!(p.store.recent("gz-p1-press", 16).unwrap().len(), 3);
        assert_eq!(
            (
                p.metrics.batch_messages.get_sample_count(),
                p.metrics.batch_messages.get_sample_sum()
            ),
            (1, 4.0),
            "the three quiet reports and the urgent one in one commit"
        );
        drop(inbound);
        running.await.unwrap();
    }

    #[tokio::test]
    async fn a_report_that_raises_an_alert_is_committed_without_waiting() {
        let p = pipeline_with(Duration::from_secs(3600));
        let (inbound, running) = running(&p);
        let now = now_ms();
        inbound
            .send(report_of("gz-p1-press", 0, now))
            .await
            .unwrap();
        verified(&p, 1).await;
        // Combustible gas over its alarm (no hold) in a periodic report: the node did not call
        // it urgent, the rules do.
        let gas = pipe_report("gz-t1-gas", 0, now, Quantity::Gas, 35.0, Trigger::Periodic);
        inbound.send(gas).await.unwrap();
        committed(&p, "gz-t1-gas", 1).await;
        let events = p.store.recent_alert_events(10).unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(p.store.recent("gz-p1-press", 16).unwrap().len(), 1);
        drop(inbound);
        running.await.unwrap();
    }

    #[tokio::test]
    async fn a_quiet_report_is_committed_when_its_interval_is_over() {
        let p = pipeline_with(Duration::from_millis(30));
        let (inbound, running) = running(&p);
        inbound.send(report(0)).await.unwrap();
        committed(&p, "gz-p1-press", 1).await;
        assert_eq!(p.metrics.batch_messages.get_sample_count(), 1);
        drop(inbound);
        running.await.unwrap();
    }
}
