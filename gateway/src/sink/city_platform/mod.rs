//! The city-platform sink: forwards what the gateway owes the city's data-sharing and exchange
//! platform, from the local store, in the [`exchange`] format, over MQTT 5 or HTTPS
//! ([`transport`]).
//!
//! ```text
//! store ──▶ aggregates (points) ─┐
//!       ──▶ alerts (outbox)     ─┼─▶ one forwarder per dataset: lanes ─▶ rate limit ─▶ transport
//!       ──▶ raw (readings)      ─┘
//! ```
//!
//! - Each dataset has its own cursors in the store and advances only on the platform's
//!   confirmation (every PUBACK of a batch, or a 2xx), so nothing is lost across outages and
//!   restarts; a record sent twice keeps its id.
//! - **Lanes.** When the backlog grows past `catch_up_after` (an outage), what is stored at that
//!   moment becomes the catch-up lane and everything after it the live lane. Every round sends a
//!   live batch first, then a catch-up batch, so live data keeps flowing while the backlog
//!   drains; with a rate limit, catch-up gets what live leaves.
//! - Failures by class: rejected records (400, 422) are isolated by splitting and dead-lettered
//!   in the store; too large (413) splits; refused (401, 403, 404, MQTT refusal) and TLS failures
//!   keep the data, mark the sink not ready (`/readyz`, alert `gateway.sink_refused`) and retry
//!   every 5 s; timeouts and 5xx retry with backoff (or the platform's `Retry-After`).

pub mod exchange;
pub mod transport;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::watch;

use self::exchange::{Exchange, Record};
use self::transport::{HttpsSection, SendError, Transport, UpstreamMqttSection};
use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::sink::NotReady;
use crate::store::{Store, StoreError, Table};

/// The sink's name: cursors are `city_platform:{dataset}`, readiness and alerts name
/// `city_platform:{dataset}`.
pub const SINK: &str = "city_platform";

/// `[city_platform]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CityPlatformSection {
    /// GB/T 2260 code for records without a district of their own (default: the site's
    /// region, e.g. 360700).
    #[serde(default)]
    pub region: Option<String>,
    /// How often pending records are looked for, milliseconds: the most a live record waits.
    #[serde(default = "default_flush")]
    pub flush_ms: u64,
    /// Records per batch: one HTTPS request, or MQTT messages awaiting their PUBACKs together.
    #[serde(default = "default_batch")]
    pub batch_records: usize,
    /// A backlog of more records than this opens a catch-up lane beside live data.
    #[serde(default = "default_catch_up_after")]
    pub catch_up_after: u64,
    /// Retries after timeouts and 5xx back off up to this, milliseconds (with jitter).
    #[serde(default = "default_retry_max")]
    pub retry_max_ms: u64,
    /// Aggregated points (crowd, traffic, pipe, device health): forwarded unless disabled.
    #[serde(default)]
    pub aggregates: DatasetSection,
    /// Alert transitions: always forwarded.
    #[serde(default)]
    pub alerts: DatasetSection,
    /// Raw readings: forwarded only when enabled.
    #[serde(default)]
    pub raw: DatasetSection,
    /// MQTT 5 upstream (one of `mqtt` and `https`).
    #[serde(default)]
    pub mqtt: Option<UpstreamMqttSection>,
    /// HTTPS batches (one of `mqtt` and `https`).
    #[serde(default)]
    pub https: Option<HttpsSection>,
}

fn default_flush() -> u64 {
    1000
}
fn default_batch() -> usize {
    500
}
fn default_catch_up_after() -> u64 {
    1000
}
fn default_retry_max() -> u64 {
    30_000
}

/// `[city_platform.aggregates]`, `[city_platform.alerts]`, `[city_platform.raw]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    /// Forward this dataset (default: aggregates on, raw off; alerts cannot be turned off).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The platform's id for the dataset (default `citysense.{aggregates|alerts|raw}`).
    #[serde(default)]
    pub id: Option<String>,
    /// At most this many records per second, live and catch-up together (0: no limit).
    #[serde(default)]
    pub max_records_per_s: u32,
    /// Only these measurements (aggregates: `crowd`, `traffic`, `pipe`, `device_health`; raw:
    /// `passage`, `counts`, `lane`, `value`, `status`); empty means all.
    #[serde(default)]
    pub measurements: Vec<String>,
}

/// What the platform receives, each with its own cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    /// Points.
    Aggregates,
    /// Alert transitions.
    Alerts,
    /// Readings.
    Raw,
}

impl Dataset {
    /// Every dataset.
    pub const ALL: [Dataset; 3] = [Dataset::Aggregates, Dataset::Alerts, Dataset::Raw];

    /// `aggregates`, `alerts`, `raw`: the stream name in record ids and the metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Aggregates => "aggregates",
            Dataset::Alerts => "alerts",
            Dataset::Raw => "raw",
        }
    }

    fn table(self) -> Table {
        match self {
            Dataset::Aggregates => Table::Points,
            Dataset::Alerts => Table::AlertEvents,
            Dataset::Raw => Table::Readings,
        }
    }

    /// The store cursor below which everything was confirmed.
    pub fn cursor(self) -> String {
        format!("{SINK}:{}", self.name())
    }
}

impl CityPlatformSection {
    fn dataset(&self, d: Dataset) -> &DatasetSection {
        match d {
            Dataset::Aggregates => &self.aggregates,
            Dataset::Alerts => &self.alerts,
            Dataset::Raw => &self.raw,
        }
    }

    /// Whether `d` is forwarded.
    pub fn enabled(&self, d: Dataset) -> bool {
        match d {
            Dataset::Aggregates => self.aggregates.enabled.unwrap_or(true),
            Dataset::Alerts => true,
            Dataset::Raw => self.raw.enabled.unwrap_or(false),
        }
    }

    /// The platform's id of `d`.
    pub fn dataset_id(&self, d: Dataset) -> String {
        self.dataset(d)
            .id
            .clone()
            .unwrap_or_else(|| format!("citysense.{}", d.name()))
    }

    /// Checks values that types alone cannot; returns `(key, reason)` pairs.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let key = |k: &str| format!("city_platform.{k}");
        match (&self.mqtt, &self.https) {
            (Some(_), Some(_)) => p.push((
                key("https"),
                "choose one transport: [city_platform.mqtt] or [city_platform.https]".into(),
            )),
            (None, None) => p.push((
                SINK.into(),
                "no transport: add [city_platform.mqtt] or [city_platform.https]".into(),
            )),
            _ => {}
        }
        if self.alerts.enabled == Some(false) {
            p.push((
                key("alerts.enabled"),
                "alerts are always forwarded to the city platform".into(),
            ));
        }
        if let Some(r) = &self.region
            && !(r.len() == 6 && r.bytes().all(|b| b.is_ascii_digit()))
        {
            p.push((
                key("region"),
                format!("region \"{r}\" is not a six-digit GB/T 2260 code"),
            ));
        }
        if self.batch_records == 0 || self.batch_records > 10_000 {
            p.push((
                key("batch_records"),
                format!(
                    "batch_records must be 1..=10000, not {}",
                    self.batch_records
                ),
            ));
        }
        if self.flush_ms == 0 {
            p.push((key("flush_ms"), "flush_ms must be > 0".into()));
        }
        for d in Dataset::ALL {
            let id = self.dataset_id(d);
            if id.is_empty() || id.contains(['/', '+', '#', ' ']) {
                p.push((
                    key(&format!("{}.id", d.name())),
                    format!(
                        "dataset id \"{id}\" must be non-empty, without '/', '+', '#' or spaces"
                    ),
                ));
            }
        }
        if let Some(m) = &self.mqtt {
            if m.keep_alive_s < 5 || m.keep_alive_s > 3600 {
                p.push((
                    key("mqtt.keep_alive_s"),
                    format!("keep_alive_s must be 5..=3600, not {}", m.keep_alive_s),
                ));
            }
            if m.topic_prefix.is_empty() || m.topic_prefix.contains(['+', '#']) {
                p.push((
                    key("mqtt.topic_prefix"),
                    "topic_prefix must be non-empty and free of '+' and '#'".into(),
                ));
            }
            if let Some(tls) = &m.tls
                && tls.client_cert.is_some() != tls.client_key.is_some()
            {
                p.push((
                    key("mqtt.tls"),
                    "client_cert and client_key go together".into(),
                ));
            }
        }
        if let Some(h) = &self.https {
            if !h.url.starts_with("https://") {
                p.push((
                    key("https.url"),
                    format!("url \"{}\" must start with https://", h.url),
                ));
            }
            if h.client_cert.is_some() != h.client_key.is_some() {
                p.push((
                    key("https"),
                    "client_cert and client_key go together".into(),
                ));
            }
        }
        p
    }

    /// Every file path in the section, to resolve against the config file's folder.
    pub fn paths_mut(&mut self) -> Vec<&mut std::path::PathBuf> {
        let mut out = Vec::new();
        if let Some(m) = &mut self.mqtt {
            if let Some(f) = &mut m.password_file {
                out.push(f);
            }
            if let Some(t) = &mut m.tls {
                out.push(&mut t.ca);
                out.extend(t.client_cert.iter_mut());
                out.extend(t.client_key.iter_mut());
            }
        }
        if let Some(h) = &mut self.https {
            out.extend(h.ca.iter_mut());
            out.extend(h.client_cert.iter_mut());
            out.extend(h.client_key.iter_mut());
        }
        out
    }

    /// The cursors the store's retention must wait for: (points, readings, alert events).
    pub fn retention_cursors(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        let on = |d: Dataset| {
            if self.enabled(d) {
                vec![d.cursor()]
            } else {
                Vec::new()
            }
        };
        (
            on(Dataset::Aggregates),
            on(Dataset::Raw),
            on(Dataset::Alerts),
        )
    }

    /// The readiness names of the enabled datasets (`city_platform:{dataset}`).
    pub fn sink_names(&self) -> Vec<String> {
        Dataset::ALL
            .into_iter()
            .filter(|d| self.enabled(*d))
            .map(Dataset::cursor)
            .collect()
    }
}

/// Where one dataset's forwarding stands; persisted as the cursors `{cursor}`, `{cursor}:split`
/// and `{cursor}:live`.
///
/// Everything up to `done` is confirmed. While catching up (`split > 0`), the catch-up lane
/// sends `(done, split]` and the live lane `(live, newest]`; when the catch-up lane reaches
/// `split`, everything up to `live` is confirmed and the lanes merge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lanes {
    /// Confirmed up to here.
    pub done: i64,
    /// The end of the backlog being caught up; 0 when not catching up.
    pub split: i64,
    /// Confirmed up to here after `split` (live lane).
    pub live: i64,
}

/// Which lane a batch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Records stored after the backlog.
    Live,
    /// The backlog.
    CatchUp,
}

impl Lanes {
    /// Opens a catch-up lane when more than `threshold` records wait: what is stored now is the
    /// backlog. While the platform stays down nothing moves, so the backlog grows with it (the
    /// live lane starts at the newest record when sending resumes). Returns whether the lanes
    /// changed.
    pub fn open_catch_up(&mut self, newest: i64, threshold: u64) -> bool {
        let backlog_from = match (self.catching_up(), self.live == self.split) {
            (false, _) => self.done,
            (true, true) => self.split,
            // The live lane made progress: its own backlog is sent in order.
            (true, false) => return false,
        };
        if newest - backlog_from > threshold as i64 {
            self.split = newest;
            self.live = newest;
            true
        } else {
            false
        }
    }

    /// Whether a backlog is being caught up.
    pub fn catching_up(&self) -> bool {
        self.split > 0
    }

    /// The ids `(after, until]` the lane sends next, if any.
    pub fn range(&self, lane: Lane, newest: i64) -> Option<(i64, i64)> {
        let (after, until) = match (lane, self.catching_up()) {
            (Lane::Live, true) => (self.live, newest),
            (Lane::Live, false) => (self.done, newest),
            (Lane::CatchUp, true) => (self.done, self.split),
            (Lane::CatchUp, false) => return None,
        };
        (after < until).then_some((after, until))
    }

    /// The lane's records up to `upto` were confirmed (or skipped).
    pub fn sent(&mut self, lane: Lane, upto: i64) {
        match (lane, self.catching_up()) {
            (Lane::Live, true) => self.live = self.live.max(upto),
            (Lane::Live, false) | (Lane::CatchUp, false) => self.done = self.done.max(upto),
            (Lane::CatchUp, true) => {
                self.done = self.done.max(upto);
                if self.done >= self.split {
                    self.done = self.done.max(self.live);
                    self.split = 0;
                    self.live = 0;
                }
            }
        }
    }

    /// Records (by id) not yet confirmed.
    pub fn pending(&self, newest: i64) -> i64 {
        if self.catching_up() {
            (self.split - self.done) + (newest - self.live).max(0)
        } else {
            (newest - self.done).max(0)
        }
    }

    fn load(store: &Store, d: Dataset) -> Result<Lanes, StoreError> {
        let c = d.cursor();
        Ok(Lanes {
            done: store.cursor(&c)?,
            split: store.cursor(&format!("{c}:split"))?,
            live: store.cursor(&format!("{c}:live"))?,
        })
    }

    fn save(
        &self,
        store: &Store,
        d: Dataset,
        refused: &[(i64, String, String)],
    ) -> Result<(), StoreError> {
        let c = d.cursor();
        store.set_cursors(
            &c,
            &[
                (&c, self.done),
                (&format!("{c}:split"), self.split),
                (&format!("{c}:live"), self.live),
            ],
            refused,
        )
    }
}

/// A token bucket over records: `rate` per second, up to one second's worth at once.
#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate_per_s: u32) -> Bucket {
        Bucket {
            rate: f64::from(rate_per_s),
            tokens: f64::from(rate_per_s),
            at: Instant::now(),
        }
    }

    fn unlimited(&self) -> bool {
        self.rate <= 0.0
    }

    /// Whole records that may go now.
    fn available(&mut self) -> usize {
        if self.unlimited() {
            return usize::MAX;
        }
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate)
            .min(self.rate.max(1.0));
        self.at = now;
        self.tokens.floor() as usize
    }

    fn take(&mut self, n: usize) {
        if !self.unlimited() {
            self.tokens -= n as f64;
        }
    }

    /// Until one record may go.
    fn wait(&self) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(((1.0 - self.tokens).max(0.0) / self.rate).max(0.001))
    }
}

/// One dataset's forwarder.
#[derive(Debug)]
pub struct Forwarder {
    /// Which dataset.
    pub dataset: Dataset,
    /// The section.
    pub section: Arc<CityPlatformSection>,
    /// The local store.
    pub store: Arc<Store>,
    /// Record builder.
    pub exchange: Arc<Exchange>,
    /// Where records go.
    pub transport: Transport,
    /// Metrics.
    pub metrics: Metrics,
    /// Readiness by sink name.
    pub not_ready: NotReady,
    /// Allowed lateness of readings (their `late` flag).
    pub lateness_ms: i64,
}

/// Records read from one lane: the records, and the id the lane may move to once they are
/// confirmed (past rows that were filtered out or expired).
struct Read {
    records: Vec<(i64, Record)>,
    upto: i64,
}

impl Forwarder {
    /// Reads up to `limit` records with ids in `(after, until]`, off the async threads. The
    /// future does not borrow `self` (whose MQTT connection is not `Sync`).
    fn read(
        &self,
        after: i64,
        until: i64,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Read, StoreError>> + use<> {
        let (d, section, store, x, lateness_ms) = (
            self.dataset,
            self.section.clone(),
            self.store.clone(),
            self.exchange.clone(),
            self.lateness_ms,
        );
        blocking(move || {
            let id = section.dataset_id(d);
            let records: Vec<(i64, Record)> = match d {
                Dataset::Aggregates => store
                    .points_after(after, until, limit)?
                    .into_iter()
                    .map(|(seq, p)| (seq, x.point(&id, seq, &p)))
                    .collect(),
                Dataset::Alerts => store
                    .alert_events_after(after, limit)?
                    .into_iter()
                    .filter(|(seq, _)| *seq <= until)
                    .map(|(seq, e)| (seq, x.alert(&id, seq, &e)))
                    .collect(),
                Dataset::Raw => store
                    .readings_after(after, limit)?
                    .into_iter()
                    .filter(|(seq, _)| *seq <= until)
                    .map(|(seq, r)| (seq, x.reading(&id, seq, &r, lateness_ms)))
                    .collect(),
            };
            // A short read means the rest of the range holds no rows (expired or quarantined).
            let upto = match records.last() {
                Some((last, _)) if records.len() == limit => *last,
                _ => until,
            };
            let wanted = &section.dataset(d).measurements;
            Ok(Read {
                records: records
                    .into_iter()
                    .filter(|(_, r)| wanted.is_empty() || wanted.contains(&r.measurement))
                    .collect(),
                upto,
            })
        })
    }

    /// Sends `batch`; on rejected records or a batch too large, splits until the refused
    /// records are alone. Returns the dead letters (id, record, reason).
    async fn deliver(
        &mut self,
        batch: &[(i64, Record)],
    ) -> Result<Vec<(i64, String, String)>, SendError> {
        let id = self.section.dataset_id(self.dataset);
        let mut refused = Vec::new();
        let mut todo: Vec<&[(i64, Record)]> = vec![batch];
        while let Some(part) = todo.pop() {
            let records: Vec<&Record> = part.iter().map(|(_, r)| r).collect();
            match self.transport.send(&id, &records).await {
                Ok(()) => {}
                Err(SendError::Rejected(reason)) if part.len() == 1 => {
                    let json = serde_json::to_string(&part[0].1).unwrap_or_default();
                    refused.push((part[0].0, json, reason));
                }
                Err(SendError::TooLarge) if part.len() == 1 => {
                    let json = serde_json::to_string(&part[0].1).unwrap_or_default();
                    refused.push((
                        part[0].0,
                        json,
                        "a single record is larger than the platform accepts".into(),
                    ));
                }
                Err(SendError::Rejected(_) | SendError::TooLarge) => {
                    let (a, b) = part.split_at(part.len() / 2);
                    todo.push(b);
                    todo.push(a);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(refused)
    }

    /// Exports pending records, the oldest one's age (`oldest`: its event time) and the lanes.
    fn report(&self, lanes: &Lanes, newest: i64, oldest: Option<i64>) {
        let label = [self.dataset.name()];
        let pending = lanes.pending(newest);
        self.metrics
            .city_pending
            .with_label_values(&label)
            .set(pending);
        self.metrics
            .city_catching_up
            .with_label_values(&label)
            .set(i64::from(lanes.catching_up()));
        let age = match oldest {
            Some(t) if pending > 0 => (crate::clock::now_ms() - t).max(0) as f64 / 1000.0,
            _ => 0.0,
        };
        self.metrics
            .city_oldest_unsent
            .with_label_values(&label)
            .set(age);
    }

    fn set_ready(&self, reason: Option<String>) {
        let name = self.dataset.cursor();
        self.metrics
            .sink_ready
            .with_label_values(&[&name])
            .set(i64::from(reason.is_none()));
        if let Ok(mut m) = self.not_ready.lock() {
            match reason {
                Some(r) => {
                    m.insert(name, r);
                }
                None => {
                    m.remove(&name);
                }
            }
        }
    }

    /// Sends what is pending, lane by lane, until nothing is left, the rate limit says wait
    /// (returns the wait), or a send fails (returns the error).
    async fn drain(&mut self, lanes: &mut Lanes, bucket: &mut Bucket) -> Result<Duration, Failure> {
        let (d, batch) = (self.dataset, self.section.batch_records);
        loop {
            let (store, done) = (self.store.clone(), lanes.done);
            let (newest, oldest) = blocking(move || {
                Ok((
                    store.last_id(d.table())?,
                    store.time_after(d.table(), done)?,
                ))
            })
            .await?;
            let was_catching_up = lanes.catching_up();
            if lanes.open_catch_up(newest, self.section.catch_up_after) {
                if !was_catching_up {
                    tracing::info!(
                        dataset = d.name(),
                        backlog = newest - lanes.done,
                        "city platform: catching up a backlog beside live data"
                    );
                }
                let (store, l) = (self.store.clone(), *lanes);
                blocking(move || l.save(&store, d, &[])).await?;
            }
            self.report(lanes, newest, oldest);
            let mut progressed = false;
            for lane in [Lane::Live, Lane::CatchUp] {
                let Some((after, until)) = lanes.range(lane, newest) else {
                    continue;
                };
                let n = bucket.available().min(batch);
                if n == 0 {
                    return Ok(bucket.wait());
                }
                let read = self.read(after, until, n).await?;
                let refused = if read.records.is_empty() {
                    Vec::new()
                } else {
                    let refused = self.deliver(&read.records).await?;
                    bucket.take(read.records.len());
                    let label = [d.name()];
                    self.metrics
                        .city_forwarded
                        .with_label_values(&label)
                        .inc_by((read.records.len() - refused.len()) as u64);
                    if !refused.is_empty() {
                        tracing::error!(dataset = d.name(), records = refused.len(), reason = %refused[0].2, "the city platform rejected records; kept in the store's sink dead letters");
                        self.metrics
                            .city_errors
                            .with_label_values(&[d.name(), "rejected"])
                            .inc_by(refused.len() as u64);
                    }
                    refused
                };
                let was_catching_up = lanes.catching_up();
                lanes.sent(lane, read.upto);
                if was_catching_up && !lanes.catching_up() {
                    tracing::info!(dataset = d.name(), "city platform: caught up");
                }
                let (store, l) = (self.store.clone(), *lanes);
                blocking(move || l.save(&store, d, &refused)).await?;
                self.set_ready(None);
                progressed = true;
            }
            if !progressed {
                return Ok(Duration::ZERO);
            }
        }
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let d = self.dataset;
        let rate = self.section.dataset(d).max_records_per_s;
        let mut bucket = Bucket::new(rate);
        let mut backoff = Backoff::new(
            Duration::from_millis(200),
            Duration::from_millis(self.section.retry_max_ms.max(200)),
        );
        let mut lanes = match Lanes::load(&self.store, d) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(dataset = d.name(), error = %e, "city platform: cannot read the cursors; not forwarding");
                return;
            }
        };
        let mut wait = Duration::ZERO;
        loop {
            let pause = if wait.is_zero() {
                Duration::from_millis(self.section.flush_ms)
            } else {
                wait
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(pause) => {}
                // Ends only when the connection failed; the next send connects anew.
                () = self.transport.idle() => {}
            }
            wait = match self.drain(&mut lanes, &mut bucket).await {
                Ok(w) => {
                    backoff.reset();
                    w
                }
                Err(Failure::Store(e)) => {
                    tracing::error!(dataset = d.name(), error = %e, "city platform: the local store failed; retrying");
                    Duration::from_secs(1)
                }
                Err(Failure::Send(e)) => {
                    self.metrics
                        .city_errors
                        .with_label_values(&[d.name(), e.class()])
                        .inc();
                    let endpoint = self.transport.endpoint();
                    if e.needs_operator() {
                        tracing::error!(dataset = d.name(), %endpoint, error = %e, "city platform refuses the gateway; records stay in the local store until an operator fixes it");
                        self.set_ready(Some(e.to_string()));
                        Duration::from_secs(5)
                    } else {
                        let delay = match &e {
                            SendError::Transient {
                                retry_after: Some(r),
                                ..
                            } => *r,
                            _ => backoff.next_delay(&mut rand::rng()),
                        };
                        tracing::warn!(dataset = d.name(), %endpoint, error = %e, retry_in_ms = delay.as_millis() as u64, "city platform send failed; retrying");
                        delay
                    }
                }
            };
        }
    }
}

/// Why a drain stopped.
#[derive(Debug)]
enum Failure {
    Store(StoreError),
    Send(SendError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<SendError> for Failure {
    fn from(e: SendError) -> Self {
        Failure::Send(e)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(StoreError::Poisoned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_opens_a_catch_up_lane_and_live_data_goes_first() {
        let mut l = Lanes::default();
        assert!(!l.open_catch_up(10, 100), "a small backlog is just sent");
        assert_eq!(l.range(Lane::Live, 10), Some((0, 10)));
        assert_eq!(l.range(Lane::CatchUp, 10), None);
        l.sent(Lane::Live, 10);
        assert_eq!(l.done, 10);

        // An outage: 500 records wait, then 500 more while the platform stays down.
        assert!(l.open_catch_up(510, 100));
        assert!(
            l.open_catch_up(1010, 100),
            "the backlog grows while nothing moves"
        );
        assert_eq!((l.split, l.live), (1010, 1010));
        assert!(l.catching_up());
        assert_eq!(l.range(Lane::CatchUp, 1010), Some((10, 1010)));
        assert_eq!(l.range(Lane::Live, 1010), None, "nothing live yet");
        // Live records arrive and are sent while the backlog drains.
        assert_eq!(l.range(Lane::Live, 1015), Some((1010, 1015)));
        l.sent(Lane::Live, 1015);
        assert!(
            !l.open_catch_up(2000, 100),
            "live made progress: no new split"
        );
        l.sent(Lane::CatchUp, 510);
        assert_eq!(l.pending(1020), 500 + 5);
        assert_eq!(
            l.done, 510,
            "the confirmed prefix only moves with the backlog"
        );
        // The backlog ends: the lanes merge at the live cursor.
        l.sent(Lane::CatchUp, 1010);
        assert!(!l.catching_up());
        assert_eq!(l.done, 1015);
        assert_eq!(l.range(Lane::Live, 1020), Some((1015, 1020)));
        assert_eq!(l.pending(1020), 5);
    }

    #[test]
    fn the_bucket_gives_one_second_of_records_then_paces() {
        let mut b = Bucket::new(100);
        assert_eq!(b.available(), 100);
        b.take(100);
        assert_eq!(b.available(), 0);
        assert!(b.wait() >= Duration::from_millis(5), "{:?}", b.wait());
        assert_eq!(Bucket::new(0).available(), usize::MAX);
    }

    #[test]
    fn config_names_every_problem() {
        let s: CityPlatformSection = toml::from_str(
            r#"
            region = "36070"
            batch_records = 0
            [alerts]
            enabled = false
            [raw]
            id = "a/b"
            [mqtt]
            host = "platform"
            keep_alive_s = 1
            topic_prefix = "x/#"
            [https]
            url = "http://platform"
            "#,
        )
        .unwrap();
        let keys: Vec<String> = s.check().into_iter().map(|(k, _)| k).collect();
        for k in [
            "city_platform.https",
            "city_platform.alerts.enabled",
            "city_platform.region",
            "city_platform.batch_records",
            "city_platform.raw.id",
            "city_platform.mqtt.topic_prefix",
            "city_platform.mqtt.keep_alive_s",
            "city_platform.https.url",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} not in {keys:?}");
        }
        let fine: CityPlatformSection =
            toml::from_str("[https]\nurl = \"https://platform.example/api/v1/records\"").unwrap();
        assert!(fine.check().is_empty(), "{:?}", fine.check());
        assert!(fine.enabled(Dataset::Aggregates) && fine.enabled(Dataset::Alerts));
        assert!(!fine.enabled(Dataset::Raw));
        assert_eq!(fine.dataset_id(Dataset::Raw), "citysense.raw");
    }
}
