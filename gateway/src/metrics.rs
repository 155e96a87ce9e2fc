//! Prometheus metrics of the gateway, all in one registry served at `/metrics`.
//!
//! Counters end in `_total`; labels are low-cardinality (stream, reason, category, state),
//! never a device id (STYLE.md §9). Per-device detail is in `/api/v1/devices`.

use device_profiles::Category;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the gateway exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// MQTT messages received, by stream (`up`, `status`, `other`).
    pub messages: IntCounterVec,
    /// The children of `messages` and `readings` that every message counts, resolved once.
    pub per_message: PerMessage,
    /// Payload bytes received.
    pub bytes: IntCounter,
    /// Messages rejected, by reason.
    pub rejected: IntCounterVec,
    /// Live reloads, by outcome (`ok`, `refused`).
    pub reloads: IntCounterVec,
    /// Key rotation steps, by what happened (`sent`, `applied`, `refused`).
    pub key_rotations: IntCounterVec,
    /// Devices whose new key was sent and not yet acknowledged.
    pub key_rotations_pending: IntGauge,
    /// Readings accepted, by category.
    pub readings: IntCounterVec,
    /// Time to verify and decode one message.
    pub decode_seconds: Histogram,
    /// Devices by district and presence (`online`, `offline`, `unknown`).
    pub devices: IntGaugeVec,
    /// Reports expected from sequence numbers but never received, all devices.
    pub ledger_missing: IntGauge,
    /// 1 while connected to the broker with the subscription granted.
    pub broker_connected: IntGauge,
    /// Connection attempts that failed or connections that dropped.
    pub broker_disconnects: IntCounterVec,
    /// Connections on which the broker still had our session (nothing queued was lost).
    pub sessions_resumed: IntCounter,
    /// Dead-letter records published.
    pub dlq_published: IntCounter,
    /// Batches the local store refused (retried; their messages stay unacknowledged).
    pub store_errors: IntCounter,
    /// Time to commit one batch to the local store, fsync included.
    pub store_commit_seconds: Histogram,
    /// Where a commit's time went, by phase: `queue` (for a blocking thread), `wait` (for the
    /// writing connection), `write`, `sync` (the commit and its fsync), `restart` (the WAL's).
    pub store_commit_phase_seconds: prometheus::HistogramVec,
    /// Time one maintenance pass (device checkpoint, retention, size bound) held the writing
    /// connection: commits wait for it.
    pub store_maintenance_seconds: Histogram,
    /// From a batch's arrival to its commit (after which its messages are acknowledged and its
    /// alerts delivered): what queueing behind other batches adds to a report's latency.
    pub batch_accept_seconds: Histogram,
    /// Messages per batch.
    pub batch_messages: Histogram,
    /// Readings older than the raw retention when they came (stored raw, not aggregated).
    pub aggregate_too_late: IntCounter,
    /// Corrections: a unit's windows recomputed from the raw readings after late data.
    pub aggregate_corrections: IntCounter,
    /// Raw readings read again by corrections.
    pub aggregate_corrected_readings: IntCounter,
    /// Repeated tag reads at one gate counted once.
    pub duplicate_passages: IntCounter,
    /// Windows where occupancy would have gone below zero or above 1.5 × capacity.
    pub occupancy_drift: IntCounter,
    /// Points delivered, by sink.
    pub sink_written: IntCounterVec,
    /// Write failures, by sink and class (`bad_lines`, `refused`, `transient`).
    pub sink_errors: IntCounterVec,
    /// Points accepted but not yet delivered, by sink.
    pub sink_pending: IntGaugeVec,
    /// 0 while a sink's server refuses us (credentials, org, bucket), by sink.
    pub sink_ready: IntGaugeVec,
    /// Records the city platform confirmed, by dataset.
    pub city_forwarded: IntCounterVec,
    /// Records not yet confirmed by the city platform, by dataset.
    pub city_pending: IntGaugeVec,
    /// Age of the oldest record not yet confirmed (event time), seconds, by dataset.
    pub city_oldest_unsent: prometheus::GaugeVec,
    /// City-platform failures, by dataset and class.
    pub city_errors: IntCounterVec,
    /// 1 while a dataset catches up on a backlog beside live data.
    pub city_catching_up: IntGaugeVec,
    /// Used bytes of the local store.
    pub store_bytes: IntGauge,
    /// Bytes the process caused to be written to storage (`/proc/self/io` `write_bytes`): the
    /// local store, its WAL and checkpoints; what flash endurance is sized by.
    pub store_bytes_written: IntCounter,
    /// Bytes the local store appended to its WAL, by cause (`store/volume.rs`).
    pub store_wal_bytes: IntCounterVec,
    /// Bytes the WAL checkpoints wrote into the database file.
    pub store_checkpoint_bytes: IntCounter,
    /// Seconds until the size bound at the current write rate.
    pub store_runway_seconds: prometheus::Gauge,
    /// Records dropped by policy, by reason (`space`).
    pub store_dropped: IntCounterVec,
    /// Corrupt records moved to quarantine.
    pub store_quarantined: IntGauge,
    /// 1 while the store refuses new reports (size bound full of undelivered points).
    pub store_full: IntGauge,
    /// Acknowledgements or dead-letter records that could not be queued (the broker redelivers
    /// unacknowledged messages; a lost dead-letter record is only counted).
    pub mqtt_dropped: IntCounterVec,
    /// Open alerts, by category and severity.
    pub alerts_active: IntGaugeVec,
    /// Alert transitions, by category, kind (`raised`, `escalated`, …) and severity.
    pub alert_transitions: IntCounterVec,
    /// Notifier deliveries, by notifier and outcome (`delivered` counts events; `transport`,
    /// `refused` count failed attempts).
    pub alert_notifications: IntCounterVec,
    /// Alert events a notifier has not delivered yet.
    pub alert_pending: IntGaugeVec,
    /// From the commit of the newest alert event in a delivery to its confirmation, by notifier.
    pub alert_delivery_seconds: prometheus::HistogramVec,
    /// Modbus polls by device and outcome (`ok`, `partial`, `failed`).
    pub modbus_polls: IntCounterVec,
    /// Duration of one Modbus poll (every block of a device), by device.
    pub modbus_poll_seconds: prometheus::HistogramVec,
    /// Modbus exception replies by device and code.
    pub modbus_exceptions: IntCounterVec,
    /// Modbus errors by device and kind (`connect`, `timeout`, `transport`, `protocol`).
    pub modbus_errors: IntCounterVec,
    /// 1 while a device's circuit breaker is open.
    pub modbus_breaker_open: IntGaugeVec,
}

/// Registers `metric` and returns it.
///
/// # Panics
/// If a definition is invalid or a name is used twice: a programming error, caught by every
/// test that builds [`Metrics`].
#[allow(clippy::expect_used)]
fn register<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let m = metric.expect("metric definitions are valid");
    r.register(Box::new(m.clone()))
        .expect("metric names are unique");
    m
}

impl Metrics {
    /// Creates and registers every metric, plus the process collector.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter = |name: &str, help: &str| register(&r, IntCounter::new(name, help));
        let gauge = |name: &str, help: &str| register(&r, IntGauge::new(name, help));
        let counters = |name: &str, help: &str, labels: &[&str]| {
            register(&r, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            register(&r, IntGaugeVec::new(Opts::new(name, help), labels))
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            register(
                &r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())),
            )
        };
        let histograms = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            register(
                &r,
                prometheus::HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    labels,
                ),
            )
        };
        // Commit and queueing times: an fsync is ~0.5 ms on a good disk, tens of ms on a busy one.
        let latency = [
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
        ];
        let messages = counters(
            "citysense_mqtt_messages_received_total",
            "MQTT messages received, by stream.",
            &["stream"],
        );
        let readings = counters(
            "citysense_readings_accepted_total",
            "Readings accepted, by category.",
            &["category"],
        );
        let metrics = Metrics {
            per_message: PerMessage::of(&messages, &readings),
            messages,
            bytes: counter(
                "citysense_mqtt_received_bytes_total",
                "MQTT payload bytes received.",
            ),
            rejected: counters(
                "citysense_messages_rejected_total",
                "Messages rejected and sent to the dead-letter topic, by reason.",
                &["reason"],
            ),
            reloads: counters(
                "citysense_config_reloads_total",
                "Live reloads of keys, rules and site (SIGHUP, gateway reload), by outcome (ok, refused).",
                &["outcome"],
            ),
            key_rotations: counters(
                "citysense_key_rotations_total",
                "Key rotation steps: new keys sent to nodes, applied (acknowledged), refused by the node.",
                &["outcome"],
            ),
            key_rotations_pending: gauge(
                "citysense_key_rotations_pending",
                "Devices sent a new key that have not acknowledged it (they keep the old one).",
            ),
            readings,
            decode_seconds: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "citysense_decode_duration_seconds",
                        "Time to verify and decode one message.",
                    )
                    .buckets(vec![1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 1e-3, 1e-2]),
                ),
            ),
            devices: gauges(
                "citysense_devices",
                "Devices by district (zone) and presence (online, offline, unknown).",
                &["zone", "state"],
            ),
            ledger_missing: gauge(
                "citysense_ledger_missing_reports",
                "Reports expected from sequence numbers but never received, all devices.",
            ),
            broker_connected: gauge(
                "citysense_broker_connected",
                "1 while connected to the MQTT broker with the uplink subscription granted.",
            ),
            broker_disconnects: counters(
                "citysense_broker_disconnects_total",
                "Broker connections lost or refused, by cause.",
                &["cause"],
            ),
            sessions_resumed: counter(
                "citysense_broker_sessions_resumed_total",
                "Connections on which the broker still had the gateway's session.",
            ),
            dlq_published: counter(
                "citysense_dlq_published_total",
                "Dead-letter records published.",
            ),
            store_errors: counter(
                "citysense_store_errors_total",
                "Batches the local store refused; retried, their messages stay unacknowledged.",
            ),
            store_commit_seconds: histogram(
                "citysense_store_commit_duration_seconds",
                "Time to commit one batch to the local store, fsync included.",
                &latency,
            ),
            store_commit_phase_seconds: histograms(
                "citysense_store_commit_phase_seconds",
                "Where a commit's time went: queue, wait (for the writer), write, sync (commit and fsync), restart (of the WAL).",
                &latency,
                &["phase"],
            ),
            store_maintenance_seconds: histogram(
                "citysense_store_maintenance_duration_seconds",
                "Time one maintenance pass (device checkpoint, retention) held the store's writer.",
                &latency,
            ),
            batch_accept_seconds: histogram(
                "citysense_batch_accept_duration_seconds",
                "From a batch's first message to its commit, after which its messages are acknowledged.",
                &latency,
            ),
            batch_messages: histogram(
                "citysense_batch_messages",
                "Messages per batch.",
                &[1.0, 10.0, 100.0, 1000.0],
            ),
            aggregate_too_late: counter(
                "citysense_aggregate_too_late_total",
                "Readings older than the raw retention before the newest reading of their units (stored raw, not aggregated).",
            ),
            aggregate_corrections: counter(
                "citysense_aggregate_corrections_total",
                "Corrections: a unit's windows recomputed from the raw readings after late data.",
            ),
            aggregate_corrected_readings: counter(
                "citysense_aggregate_corrected_readings_total",
                "Raw readings read again by corrections.",
            ),
            duplicate_passages: counter(
                "citysense_duplicate_passages_total",
                "Repeated tag reads at one gate counted once.",
            ),
            occupancy_drift: counter(
                "citysense_occupancy_drift_total",
                "Crowd windows whose occupancy would have gone below zero or above 1.5 × capacity.",
            ),
            sink_written: counters(
                "citysense_sink_points_written_total",
                "Points delivered, by sink.",
                &["sink"],
            ),
            sink_errors: counters(
                "citysense_sink_errors_total",
                "Sink write failures, by sink and class.",
                &["sink", "class"],
            ),
            sink_pending: gauges(
                "citysense_sink_pending_points",
                "Points accepted but not yet delivered, by sink.",
                &["sink"],
            ),
            sink_ready: gauges(
                "citysense_sink_ready",
                "0 while a sink's server refuses us, by sink.",
                &["sink"],
            ),
            city_forwarded: counters(
                "citysense_city_platform_forwarded_total",
                "Records the city platform confirmed (PUBACK or 2xx), by dataset.",
                &["dataset"],
            ),
            city_pending: gauges(
                "citysense_city_platform_pending_records",
                "Records not yet confirmed by the city platform, by dataset.",
                &["dataset"],
            ),
            city_oldest_unsent: register(
                &r,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "citysense_city_platform_oldest_unsent_age_seconds",
                        "Age (from event time) of the oldest record the city platform has not confirmed; 0 when none, by dataset.",
                    ),
                    &["dataset"],
                ),
            ),
            city_errors: counters(
                "citysense_city_platform_errors_total",
                "City-platform failures by dataset and class (rejected, too_large, refused, tls, timeout, unavailable).",
                &["dataset", "class"],
            ),
            city_catching_up: gauges(
                "citysense_city_platform_catching_up",
                "1 while a dataset sends a backlog beside live data.",
                &["dataset"],
            ),
            store_bytes: gauge("citysense_store_bytes", "Used bytes of the local store."),
            store_bytes_written: counter(
                "citysense_store_bytes_written_total",
                "Bytes the gateway caused to be written to storage (the local store, its WAL and checkpoints; Linux /proc/self/io write_bytes).",
            ),
            store_wal_bytes: counters(
                "citysense_store_wal_bytes_total",
                "Bytes the local store appended to its write-ahead log, by cause (batches, devices, retention, cursors, alerts, operators).",
                &["cause"],
            ),
            store_checkpoint_bytes: counter(
                "citysense_store_checkpoint_bytes_total",
                "Bytes the local store's WAL checkpoints wrote into its database file.",
            ),
            store_runway_seconds: register(
                &r,
                prometheus::Gauge::new(
                    "citysense_store_runway_seconds",
                    "Seconds until the local store's size bound at the current write rate (capped at a year).",
                ),
            ),
            store_dropped: counters(
                "citysense_store_dropped_total",
                "Records dropped by the store's policy, by reason.",
                &["reason"],
            ),
            store_quarantined: gauge(
                "citysense_store_quarantined_records",
                "Corrupt records moved to quarantine.",
            ),
            store_full: gauge(
                "citysense_store_full",
                "1 while the local store refuses new reports (size bound full of undelivered points).",
            ),
            mqtt_dropped: counters(
                "citysense_mqtt_requests_dropped_total",
                "Acknowledgements or dead-letter records not queued because the client queue was full.",
                &["request"],
            ),
            alerts_active: gauges(
                "citysense_alerts_active",
                "Open alerts, by category and severity.",
                &["category", "severity"],
            ),
            alert_transitions: counters(
                "citysense_alert_transitions_total",
                "Alert transitions, by category, kind and severity.",
                &["category", "kind", "severity"],
            ),
            alert_notifications: counters(
                "citysense_alert_notifications_total",
                "Alert deliveries by notifier and outcome (delivered: events; transport/refused: failed attempts).",
                &["notifier", "outcome"],
            ),
            alert_pending: gauges(
                "citysense_alert_notifier_pending",
                "Alert events a notifier has not delivered yet.",
                &["notifier"],
            ),
            alert_delivery_seconds: histograms(
                "citysense_alert_delivery_duration_seconds",
                "From the commit of the newest alert event in a delivery to its confirmation, by notifier.",
                &latency,
                &["notifier"],
            ),
            modbus_polls: counters(
                "citysense_modbus_polls_total",
                "Modbus polls by device and outcome.",
                &["device", "outcome"],
            ),
            modbus_poll_seconds: histograms(
                "citysense_modbus_poll_seconds",
                "Duration of one Modbus poll of a device (all its block reads).",
                &[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
                &["device"],
            ),
            modbus_exceptions: counters(
                "citysense_modbus_exceptions_total",
                "Modbus exception replies by device and exception code.",
                &["device", "code"],
            ),
            modbus_errors: counters(
                "citysense_modbus_errors_total",
                "Modbus errors by device and kind (connect, timeout, transport, protocol).",
                &["device", "kind"],
            ),
            modbus_breaker_open: gauges(
                "citysense_modbus_breaker_open",
                "1 while a Modbus device's circuit breaker is open.",
                &["device"],
            ),
            registry: r.clone(),
        };
        #[cfg(target_os = "linux")]
        if let Err(e) = r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::warn!(error = %e, "process metrics unavailable");
        }
        metrics
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

/// The counters the pipeline bumps for every message, each a child of its vector resolved at
/// start: counting a message then hashes no label and takes no lock of the vector.
#[derive(Debug, Clone)]
pub struct PerMessage {
    /// `citysense_mqtt_messages_received_total{stream="up"}`.
    pub up: IntCounter,
    /// `…{stream="status"}`.
    pub status: IntCounter,
    /// `…{stream="other"}`.
    pub other: IntCounter,
    /// `citysense_readings_accepted_total` for crowd, traffic and pipe.
    readings: [IntCounter; 3],
}

impl PerMessage {
    fn of(messages: &IntCounterVec, readings: &IntCounterVec) -> PerMessage {
        let category = |c| readings.with_label_values(&[Category::name(c)]);
        PerMessage {
            up: messages.with_label_values(&["up"]),
            status: messages.with_label_values(&["status"]),
            other: messages.with_label_values(&["other"]),
            readings: [
                category(Category::Crowd),
                category(Category::Traffic),
                category(Category::Pipe),
            ],
        }
    }

    /// Readings accepted of category `c`.
    pub fn readings(&self, c: Category) -> &IntCounter {
        &self.readings[match c {
            Category::Crowd => 0,
            Category::Traffic => 1,
            Category::Pipe => 2,
        }]
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_resolved_per_message_are_the_labelled_series_served() {
        let m = Metrics::new();
        m.per_message.up.inc_by(3);
        m.per_message.status.inc();
        m.per_message.readings(Category::Traffic).inc_by(4);
        m.per_message.readings(Category::Pipe).inc_by(2);
        let text = m.render();
        for line in [
            "citysense_mqtt_messages_received_total{stream=\"up\"} 3",
            "citysense_mqtt_messages_received_total{stream=\"status\"} 1",
            "citysense_mqtt_messages_received_total{stream=\"other\"} 0",
            "citysense_readings_accepted_total{category=\"traffic\"} 4",
            "citysense_readings_accepted_total{category=\"pipe\"} 2",
            "citysense_readings_accepted_total{category=\"crowd\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
