//! The city-platform sink: forwards what the gateway owes the city's data-sharing and exchange
//! platform, from the local store, in the [`exchange`] format, over MQTT 5 or HTTPS
//! ([`transport`]).
//!
//! ```text
//! store ──▶ aggregates (points) ─┐
//!       ──▶ alerts (outbox)     ─┼─▶ the sink runtime, one task per dataset ─▶ transport
//!       ──▶ raw (readings)      ─┘
//! ```
//!
//! Each dataset is a [`Sink`] drained by the [sink runtime](crate::sink::runtime) with its own
//! cursors, woken by the commits that hold its rows. The runtime gives it what every sink has
//! (confirmation before the cursor moves, refused records dead-lettered, backoff or the
//! platform's `Retry-After`, readiness), and two things this sink asks for: a **catch-up lane**
//! beside live data when the backlog grows past `catch_up_after` (an outage), and a **rate
//! limit** per dataset (`max_records_per_s`; catch-up gets what live leaves).
//!
//! Failures by class: rejected records (400, 422) are isolated by splitting and dead-lettered in
//! the store; too large (413) splits; refused (401, 403, 404, MQTT refusal) and TLS failures keep
//! the data, mark the sink not ready (`/readyz`, alert `gateway.sink_refused`) and retry every
//! 5 s; timeouts and 5xx retry with backoff (or the platform's `Retry-After`).
//!
//! # Layout
//! - [`config`]: the `city_platform` section of the config file.
//! - [`exchange`]: the records and their schema.
//! - [`transport`]: MQTT 5 or HTTPS, and how their answers are classified.

pub mod config;
pub mod exchange;
pub mod transport;

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use device_profiles::Catalog;
use tokio::sync::watch;

pub use self::config::{CityPlatformSection, DatasetSection};
use self::exchange::{Exchange, Record};
use self::transport::{SendError, Transport};
use super::{Failure, Feed, Meters, NotReady, Options, Read, Sink};
use crate::metrics::Metrics;
use crate::store::{Committed, Store, StoreError, Table};

/// The sink's name: cursors are `city_platform:{dataset}`, readiness and alerts name
/// `city_platform:{dataset}`.
pub const SINK: &str = "city_platform";

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

impl From<SendError> for Failure {
    fn from(e: SendError) -> Failure {
        let class = e.class();
        match e {
            SendError::Rejected(reason) => Failure::Rejected(reason),
            SendError::TooLarge => Failure::TooLarge,
            e @ (SendError::Refused(_) | SendError::Tls(_)) => Failure::NeedsOperator {
                class,
                reason: e.to_string(),
            },
            SendError::Transient {
                reason,
                retry_after,
                ..
            } => Failure::Retry {
                class,
                reason,
                after: retry_after,
            },
        }
    }
}

/// One dataset's way to the platform.
#[derive(Debug)]
pub struct Forwarder {
    /// The platform's id of the dataset.
    dataset_id: String,
    transport: Transport,
}

impl Sink for Forwarder {
    type Item = Record;

    async fn deliver(&mut self, batch: &[(i64, Record)]) -> Result<(), Failure> {
        let records: Vec<&Record> = batch.iter().map(|(_, r)| r).collect();
        Ok(self.transport.send(&self.dataset_id, &records).await?)
    }

    fn dead_letter(record: &Record) -> String {
        serde_json::to_string(record).unwrap_or_default()
    }

    async fn idle(&mut self) {
        self.transport.idle().await
    }

    fn endpoint(&self) -> String {
        self.transport.endpoint()
    }
}

/// One dataset's records, built from the store's rows; `W` is what wakes its sink.
#[derive(Debug)]
pub struct Records<W> {
    dataset: Dataset,
    section: Arc<CityPlatformSection>,
    exchange: Arc<Exchange>,
    /// Allowed lateness of readings (their `late` flag).
    lateness_ms: i64,
    woken_by: PhantomData<fn() -> W>,
}

impl<W: Clone + Send + Sync + 'static> Feed for Records<W> {
    type Item = Record;
    type Wake = W;

    fn newest(&self, store: &Store) -> Result<i64, StoreError> {
        store.last_id(self.dataset.table())
    }

    fn oldest_time(&self, store: &Store, after: i64) -> Result<Option<i64>, StoreError> {
        store.time_after(self.dataset.table(), after)
    }

    fn read(
        &self,
        store: &Store,
        after: i64,
        until: i64,
        limit: usize,
    ) -> Result<Read<Record>, StoreError> {
        let (x, d) = (&self.exchange, self.dataset);
        let id = self.section.dataset_id(d);
        let records: Vec<(i64, Record)> = match d {
            Dataset::Aggregates => {
                let mut records = Vec::new();
                for (seq, p) in store.points_after(after, until, limit)? {
                    // A revised window keeps the id of its first version.
                    let first = match p.quality.late {
                        true => store.first_emission(&p)?,
                        false => None,
                    };
                    records.push((seq, x.point(&id, seq, &p, first)));
                }
                records
            }
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
                .map(|(seq, r)| (seq, x.reading(&id, seq, &r, self.lateness_ms)))
                .collect(),
        };
        let read = Read::of(records, until, limit);
        let wanted = &self.section.dataset(d).measurements;
        Ok(Read {
            items: read
                .items
                .into_iter()
                .filter(|(_, r)| wanted.is_empty() || wanted.contains(&r.measurement))
                .collect(),
            upto: read.upto,
        })
    }
}

/// What wakes the datasets' sinks: commits with points, alert events, readings.
#[derive(Debug, Clone)]
pub struct Wakes {
    /// Commits that held points.
    pub points: watch::Receiver<()>,
    /// Committed alert events.
    pub alerts: watch::Receiver<Option<Committed>>,
    /// Commits that held readings.
    pub readings: watch::Receiver<()>,
}

/// Where the datasets' sinks run.
#[derive(Debug, Clone)]
pub struct Context {
    /// The gateway's id: the source of the records and the MQTT client ids.
    pub gateway_id: String,
    /// The local store.
    pub store: Arc<Store>,
    /// Metrics.
    pub metrics: Metrics,
    /// Readiness.
    pub not_ready: NotReady,
    /// Allowed lateness of readings.
    pub lateness_ms: i64,
    /// Stops every task.
    pub shutdown: watch::Receiver<bool>,
}

/// A sink's task, to spawn.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One task per enabled dataset, each with its own connection.
pub fn start(
    section: &CityPlatformSection,
    catalog: &Catalog,
    cx: &Context,
    wakes: Wakes,
) -> anyhow::Result<Vec<Task>> {
    let region = section
        .region
        .clone()
        .unwrap_or_else(|| catalog.site.site.region.clone());
    let exchange = Arc::new(Exchange::new(
        catalog,
        &cx.gateway_id,
        &cx.store.instance()?,
        &region,
    ));
    let shared = Arc::new(section.clone());
    let mut out: Vec<Task> = Vec::new();
    for d in Dataset::ALL {
        if !section.enabled(d) {
            continue;
        }
        let transport = Transport::new(section, &format!("{}-city-{}", cx.gateway_id, d.name()))?;
        tracing::info!(dataset = d.name(), id = %section.dataset_id(d), endpoint = %transport.endpoint(), "forwarding to the city platform");
        let forwarder = Forwarder {
            dataset_id: section.dataset_id(d),
            transport,
        };
        let options = Options {
            batch: section.batch_records,
            gap: Duration::from_millis(section.flush_ms),
            catch_up_after: Some(section.catch_up_after),
            max_per_s: section.dataset(d).max_records_per_s,
            retry_max: Duration::from_millis(section.retry_max_ms.max(200)),
            ..Options::default()
        };
        let m = &cx.metrics;
        let (label, cursor) = (d.name(), d.cursor());
        let meters = Meters {
            display: format!("city platform ({label})"),
            cursor: cursor.clone(),
            ready: Some(m.sink_ready.with_label_values(&[&cursor])),
            ready_name: Some(cursor),
            pending: m.city_pending.with_label_values(&[label]),
            delivered: m.city_forwarded.with_label_values(&[label]),
            errors: m.city_errors.clone(),
            errors_label: label.into(),
            rejected_class: "rejected",
            catching_up: Some(m.city_catching_up.with_label_values(&[label])),
            oldest_unsent: Some(m.city_oldest_unsent.with_label_values(&[label])),
            delivery_seconds: None,
        };
        let sink = (forwarder, options, meters);
        let records = (d, &shared, &exchange);
        let task = match d {
            Dataset::Aggregates => spawnable(sink, records, cx, wakes.points.clone()),
            Dataset::Alerts => spawnable(sink, records, cx, wakes.alerts.clone()),
            Dataset::Raw => spawnable(sink, records, cx, wakes.readings.clone()),
        };
        out.push(task);
    }
    Ok(out)
}

/// One dataset's sink on the runtime, woken by `wake`.
fn spawnable<W: Clone + Send + Sync + 'static>(
    (forwarder, options, meters): (Forwarder, Options, Meters),
    (dataset, section, exchange): (Dataset, &Arc<CityPlatformSection>, &Arc<Exchange>),
    cx: &Context,
    wake: watch::Receiver<W>,
) -> Task {
    let records = Records {
        dataset,
        section: section.clone(),
        exchange: exchange.clone(),
        lateness_ms: cx.lateness_ms,
        woken_by: PhantomData,
    };
    Box::pin(super::run(
        forwarder,
        Arc::new(records),
        options,
        meters,
        cx.store.clone(),
        cx.not_ready.clone(),
        wake,
        cx.shutdown.clone(),
    ))
}
