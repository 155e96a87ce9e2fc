//! Sinks: where what the store accepted goes, and the one runtime that drains the store into
//! them.
//!
//! A sink only delivers batches ([`Sink::deliver`]) and says what became of one ([`Failure`]).
//! Everything else is the [`runtime`]'s, written once for every sink (Telegraf's transaction
//! model, Vector's buffers):
//! - the **cursor** in the store, moved only when the receiver acknowledged a batch, so nothing
//!   is lost across outages and restarts (a batch delivered again keeps its ids);
//! - **batching** by size and age: at most `batch` items, and at least `gap` between two
//!   deliveries, so an item waits at most `gap` and a lone item goes at once;
//! - **wake-on-commit**: the pipeline's commits wake the sink, which looks at the store only
//!   every few seconds when nothing wakes it;
//! - **backoff** with jitter on transient failures, the receiver's `Retry-After` when it sends
//!   one, a slow retry while an operator must act;
//! - **readiness** for `/readyz` and the `gateway.sink_refused` alert, and the metrics;
//! - **refused items** isolated by splitting the batch until they are alone, then kept in the
//!   store's dead letters while the rest is delivered;
//! - optionally a **catch-up lane** beside live data after an outage, and a **rate limit**
//!   ([`lanes`]).
//!
//! A sink is a folder: [`influxdb`], [`city_platform`], [`notify`] (MQTT, webhooks,
//! Alertmanager).

pub mod city_platform;
pub mod influxdb;
pub mod lanes;
pub mod notify;
pub mod runtime;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge};

use crate::store::{Store, StoreError};

pub use runtime::run;

/// Why a sink is not ready, by sink name (shown by `/readyz`).
pub type NotReady = Arc<Mutex<BTreeMap<String, String>>>;

/// What stopped a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Some items are refused as invalid (HTTP 400, 422): the runtime splits the batch until
    /// the refused items are alone and dead-letters those.
    #[error("items refused: {0}")]
    Rejected(String),
    /// The batch is too large (HTTP 413): the runtime splits it and delivers the halves.
    #[error("the batch is too large")]
    TooLarge,
    /// An operator must act (credentials, permissions, bucket, certificates): the items stay
    /// stored, the sink reports not ready with `reason`, and the runtime retries every
    /// [`Options::operator_retry`] (5 s).
    #[error("{reason}")]
    NeedsOperator {
        /// Metrics label (`refused`, `tls`).
        class: &'static str,
        /// What the receiver said.
        reason: String,
    },
    /// Try again later (timeouts, 429, 5xx, connection errors), after `after` if the receiver
    /// said when, otherwise after the runtime's backoff.
    #[error("{reason}")]
    Retry {
        /// Metrics label (`transient`, `timeout`, `unavailable`, `transport`, ...).
        class: &'static str,
        /// What happened.
        reason: String,
        /// The receiver's `Retry-After`.
        after: Option<Duration>,
    },
}

impl Failure {
    /// The metrics label.
    pub fn class(&self) -> &'static str {
        match self {
            Failure::Rejected(_) => "rejected",
            Failure::TooLarge => "too_large",
            Failure::NeedsOperator { class, .. } | Failure::Retry { class, .. } => class,
        }
    }
}

/// One place the store drains into.
pub trait Sink: Send + 'static {
    /// What one delivery carries (a line, a record, an alert event).
    type Item: Send + Sync + 'static;

    /// Delivers one batch; `Ok` only once the receiver acknowledged all of it (HTTP 2xx, every
    /// PUBACK).
    fn deliver(
        &mut self,
        batch: &[(i64, Self::Item)],
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// An item as it is kept in the dead letters when the receiver refuses it for good.
    fn dead_letter(item: &Self::Item) -> String;

    /// Keeps a connection alive while there is nothing to deliver (MQTT: pings); completes only
    /// when that connection failed. Cancelled when work comes.
    fn idle(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Whether the sink has work due without new items ([`Sink::tick`]).
    const TICKS: bool = false;

    /// Work due once a second without new items (Alertmanager re-sends open alerts).
    fn tick(&mut self) -> impl Future<Output = Result<(), Failure>> + Send {
        std::future::ready(Ok(()))
    }

    /// Where it delivers, for the logs.
    fn endpoint(&self) -> String;
}

/// Items read from the store for one lane.
#[derive(Debug)]
pub struct Read<T> {
    /// The items, by store id, in order.
    pub items: Vec<(i64, T)>,
    /// The id the lane may move to once the items are delivered: past rows that were filtered
    /// out, expired or quarantined.
    pub upto: i64,
}

impl<T> Read<T> {
    /// Items of `(after, until]` read with at most `limit` rows: a short read means the rest of
    /// the range holds no rows, so the lane may move to `until`.
    pub fn of(rows: Vec<(i64, T)>, until: i64, limit: usize) -> Read<T> {
        let upto = match rows.last() {
            Some((last, _)) if rows.len() >= limit => *last,
            _ => until,
        };
        Read { items: rows, upto }
    }
}

/// What a sink drains from the store. Runs on a blocking thread.
pub trait Feed: Send + Sync + 'static {
    /// What it reads.
    type Item: Send + Sync + 'static;
    /// What wakes the sink: the pipeline's commits.
    type Wake: Clone + Send + Sync + 'static;

    /// The newest id of its table.
    fn newest(&self, store: &Store) -> Result<i64, StoreError>;

    /// Up to `limit` items with ids in `(after, until]`.
    fn read(
        &self,
        store: &Store,
        after: i64,
        until: i64,
        limit: usize,
    ) -> Result<Read<Self::Item>, StoreError>;

    /// The event time of the first item after `after`, for the oldest-unsent age.
    fn oldest_time(&self, _store: &Store, _after: i64) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }

    /// The items a wake-up handed over, when they follow `after` directly: delivered without
    /// reading them back from the store.
    fn handed_over(
        &self,
        _woken: &Self::Wake,
        _after: i64,
        _limit: usize,
    ) -> Option<Read<Self::Item>> {
        None
    }

    /// When the commit that woke the sink ended, for the commit → delivery histogram.
    fn committed_at(_woken: &Self::Wake) -> Option<Instant> {
        None
    }
}

/// How a sink is named and counted: its cursor, readiness, and metric handles.
#[derive(Debug, Clone)]
pub struct Meters {
    /// For the logs.
    pub display: String,
    /// The store cursor (and, with lanes, `{cursor}:split` and `{cursor}:live`).
    pub cursor: String,
    /// The name in `/readyz` and `citysense_sink_ready`; `None` for sinks without readiness.
    pub ready_name: Option<String>,
    /// `citysense_sink_ready{sink}`.
    pub ready: Option<IntGauge>,
    /// Items waiting.
    pub pending: IntGauge,
    /// Items delivered.
    pub delivered: IntCounter,
    /// Failures, by class: this vector with `errors_label` and the class.
    pub errors: IntCounterVec,
    /// The first label of `errors`.
    pub errors_label: String,
    /// The class refused items are counted under.
    pub rejected_class: &'static str,
    /// Whether a catch-up lane is open.
    pub catching_up: Option<IntGauge>,
    /// The oldest unsent item's age, seconds.
    pub oldest_unsent: Option<Gauge>,
    /// Commit → delivery.
    pub delivery_seconds: Option<Histogram>,
}

/// How the runtime drains one sink.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most items per delivery.
    pub batch: usize,
    /// Least time between two deliveries (0: none).
    pub gap: Duration,
    /// A backlog of more items than this opens a catch-up lane beside live data (`None`: one
    /// lane, in order).
    pub catch_up_after: Option<u64>,
    /// Most items per second (0: no limit).
    pub max_per_s: u32,
    /// Backoff bounds after transient failures.
    pub retry_min: Duration,
    /// See `retry_min`.
    pub retry_max: Duration,
    /// How often the store is looked at when nothing wakes the sink.
    pub look_anyway: Duration,
    /// How often a receiver that needs an operator is tried again.
    pub operator_retry: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            batch: 100,
            gap: Duration::ZERO,
            catch_up_after: None,
            max_per_s: 0,
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            look_anyway: Duration::from_secs(5),
            operator_retry: Duration::from_secs(5),
        }
    }
}
