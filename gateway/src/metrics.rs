//! Prometheus metrics of the gateway, all in one registry served at `/metrics`.
//!
//! Counters end in `_total`; labels are low-cardinality (stream, reason, category, state),
//! never a device id (STYLE.md §9). Per-device detail is in `/api/v1/devices`.

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
    /// Payload bytes received.
    pub bytes: IntCounter,
    /// Messages rejected, by reason.
    pub rejected: IntCounterVec,
    /// Readings accepted, by category.
    pub readings: IntCounterVec,
    /// Time to verify and decode one message.
    pub decode_seconds: Histogram,
    /// Devices by presence (`online`, `offline`, `unknown`).
    pub devices: IntGaugeVec,
    /// Reports expected from sequence numbers but never received, all devices.
    pub ledger_missing: IntGauge,
    /// 1 while connected to the broker.
    pub broker_connected: IntGauge,
    /// Connection attempts that failed or connections that dropped.
    pub broker_disconnects: IntCounterVec,
    /// Connections on which the broker still had our session (nothing queued was lost).
    pub sessions_resumed: IntCounter,
    /// Dead-letter records published.
    pub dlq_published: IntCounter,
    /// Batches the local store refused (retried; their messages stay unacknowledged).
    pub store_errors: IntCounter,
    /// Readings later than their window's allowed lateness (stored raw, not aggregated).
    pub aggregate_too_late: IntCounter,
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
    /// Used bytes of the local store.
    pub store_bytes: IntGauge,
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
}

#[allow(clippy::expect_used)] // fixed definitions: a failure is a programming error
fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m =
        IntCounterVec::new(Opts::new(name, help), labels).expect("metric definitions are valid");
    r.register(Box::new(m.clone()))
        .expect("metric names are unique");
    m
}

impl Metrics {
    /// Creates and registers every metric, plus the process collector.
    ///
    /// # Panics
    /// Only if the definitions below are invalid or duplicated: a programming error.
    #[allow(clippy::expect_used)]
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let messages = counter_vec(
            &registry,
            "citysense_mqtt_messages_received_total",
            "MQTT messages received, by stream.",
            &["stream"],
        );
        let bytes = IntCounter::new(
            "citysense_mqtt_received_bytes_total",
            "MQTT payload bytes received.",
        )
        .expect("valid");
        registry.register(Box::new(bytes.clone())).expect("unique");
        let rejected = counter_vec(
            &registry,
            "citysense_messages_rejected_total",
            "Messages rejected and sent to the dead-letter topic, by reason.",
            &["reason"],
        );
        let readings = counter_vec(
            &registry,
            "citysense_readings_accepted_total",
            "Readings accepted, by category.",
            &["category"],
        );
        let decode_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "citysense_decode_duration_seconds",
                "Time to verify and decode one message.",
            )
            .buckets(vec![1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 1e-3, 1e-2]),
        )
        .expect("valid");
        registry
            .register(Box::new(decode_seconds.clone()))
            .expect("unique");
        let devices = IntGaugeVec::new(
            Opts::new("citysense_devices", "Devices by presence."),
            &["state"],
        )
        .expect("valid");
        registry
            .register(Box::new(devices.clone()))
            .expect("unique");
        let ledger_missing = IntGauge::new(
            "citysense_ledger_missing_reports",
            "Reports expected from sequence numbers but never received, all devices.",
        )
        .expect("valid");
        registry
            .register(Box::new(ledger_missing.clone()))
            .expect("unique");
        let broker_connected = IntGauge::new(
            "citysense_broker_connected",
            "1 while connected to the MQTT broker.",
        )
        .expect("valid");
        registry
            .register(Box::new(broker_connected.clone()))
            .expect("unique");
        let broker_disconnects = counter_vec(
            &registry,
            "citysense_broker_disconnects_total",
            "Broker connections lost or refused, by cause.",
            &["cause"],
        );
        let sessions_resumed = IntCounter::new(
            "citysense_broker_sessions_resumed_total",
            "Connections on which the broker still had the gateway's session.",
        )
        .expect("valid");
        registry
            .register(Box::new(sessions_resumed.clone()))
            .expect("unique");
        let store_errors = IntCounter::new(
            "citysense_store_errors_total",
            "Batches the local store refused; retried, their messages stay unacknowledged.",
        )
        .expect("valid");
        registry
            .register(Box::new(store_errors.clone()))
            .expect("unique");
        let simple = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let aggregate_too_late = simple(
            "citysense_aggregate_too_late_total",
            "Readings later than their window's allowed lateness (stored raw, not aggregated).",
        );
        let duplicate_passages = simple(
            "citysense_duplicate_passages_total",
            "Repeated tag reads at one gate counted once.",
        );
        let occupancy_drift = simple(
            "citysense_occupancy_drift_total",
            "Crowd windows whose occupancy would have gone below zero or above 1.5 × capacity.",
        );
        let sink_written = counter_vec(
            &registry,
            "citysense_sink_points_written_total",
            "Points delivered, by sink.",
            &["sink"],
        );
        let sink_errors = counter_vec(
            &registry,
            "citysense_sink_errors_total",
            "Sink write failures, by sink and class.",
            &["sink", "class"],
        );
        let sink_pending = IntGaugeVec::new(
            Opts::new(
                "citysense_sink_pending_points",
                "Points accepted but not yet delivered, by sink.",
            ),
            &["sink"],
        )
        .expect("valid");
        registry
            .register(Box::new(sink_pending.clone()))
            .expect("unique");
        let sink_ready = IntGaugeVec::new(
            Opts::new(
                "citysense_sink_ready",
                "0 while a sink's server refuses us, by sink.",
            ),
            &["sink"],
        )
        .expect("valid");
        registry
            .register(Box::new(sink_ready.clone()))
            .expect("unique");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let store_bytes = gauge("citysense_store_bytes", "Used bytes of the local store.");
        let store_quarantined = gauge(
            "citysense_store_quarantined_records",
            "Corrupt records moved to quarantine.",
        );
        let store_full = gauge(
            "citysense_store_full",
            "1 while the local store refuses new reports (size bound full of undelivered points).",
        );
        let store_runway_seconds = prometheus::Gauge::new(
            "citysense_store_runway_seconds",
            "Seconds until the local store's size bound at the current write rate (capped at a year).",
        )
        .expect("valid");
        registry
            .register(Box::new(store_runway_seconds.clone()))
            .expect("unique");
        let store_dropped = counter_vec(
            &registry,
            "citysense_store_dropped_total",
            "Records dropped by the store's policy, by reason.",
            &["reason"],
        );
        let dlq_published = IntCounter::new(
            "citysense_dlq_published_total",
            "Dead-letter records published.",
        )
        .expect("valid");
        registry
            .register(Box::new(dlq_published.clone()))
            .expect("unique");
        let mqtt_dropped = counter_vec(
            &registry,
            "citysense_mqtt_requests_dropped_total",
            "Acknowledgements or dead-letter records not queued because the client queue was full.",
            &["request"],
        );
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique");
        Metrics {
            registry,
            messages,
            bytes,
            rejected,
            readings,
            decode_seconds,
            devices,
            ledger_missing,
            broker_connected,
            broker_disconnects,
            sessions_resumed,
            dlq_published,
            store_errors,
            aggregate_too_late,
            duplicate_passages,
            occupancy_drift,
            sink_written,
            sink_errors,
            sink_pending,
            sink_ready,
            store_bytes,
            store_runway_seconds,
            store_dropped,
            store_quarantined,
            store_full,
            mqtt_dropped,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
