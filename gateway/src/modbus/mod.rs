//! The Modbus source: polls the site's Modbus devices (TCP) by their profiles' register maps and
//! hands their readings to the pipeline, like MQTT reports.
//!
//! ```text
//! register map ──▶ plan (block reads) ──▶ poller per device (interval, timeout, reconnect,
//!                                          circuit breaker) ──▶ decode ──▶ Readings ──▶ pipeline
//! ```
//!
//! A read that times out drops the connection: a late reply can then never be taken for the
//! answer to the next request (tokio-modbus#324). An exception costs only the registers of that
//! block in that round, and is counted by code. Transport errors reconnect with backoff; after
//! `breaker_after` failed polls in a row the device's breaker opens for `breaker_open_s` and
//! the poller only tries again after it, so one dead slave costs nothing to the others.

pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use device_profiles::Catalog;
use device_profiles::modbus::{RegisterMap, RegisterTable};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_modbus::client::{Context, Reader};

use crate::metrics::Metrics;
use crate::reading::{Measurement, Reading};
use plan::{Block, decode, plan};

/// The `[modbus]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusSection {
    /// Poll the site's Modbus devices.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Time allowed for one request, milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Failed polls in a row that open a device's circuit breaker.
    #[serde(default = "default_breaker_after")]
    pub breaker_after: u32,
    /// How long an open breaker waits before the next try, seconds.
    #[serde(default = "default_breaker_open")]
    pub breaker_open_s: u64,
    /// Poll interval, seconds; the profile's `report_interval_s` when absent.
    #[serde(default)]
    pub interval_s: Option<u64>,
    /// Endpoints replacing the site's, by device id (`"gz-p3-rtu" = "tcp://10.0.0.9:502"`).
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}
fn default_timeout() -> u64 {
    1000
}
fn default_breaker_after() -> u32 {
    3
}
fn default_breaker_open() -> u64 {
    30
}

impl Default for ModbusSection {
    fn default() -> Self {
        ModbusSection {
            enabled: true,
            timeout_ms: default_timeout(),
            breaker_after: default_breaker_after(),
            breaker_open_s: default_breaker_open(),
            interval_s: None,
            endpoints: BTreeMap::new(),
        }
    }
}

/// One polled device.
#[derive(Debug, Clone)]
pub struct Device {
    /// Device id.
    pub id: Arc<str>,
    /// Zone.
    pub zone: Arc<str>,
    /// Kind.
    pub kind: Arc<str>,
    /// `host:port`.
    pub address: String,
    /// Unit id.
    pub unit: u8,
    /// The register map.
    pub map: RegisterMap,
    /// Poll interval.
    pub interval: Duration,
}

/// The Modbus devices of the served zones.
pub fn devices(
    catalog: &Catalog,
    zones: &[String],
    section: &ModbusSection,
) -> anyhow::Result<Vec<Device>> {
    let mut out = Vec::new();
    for d in &catalog.site.devices {
        let Some(endpoint) = &d.modbus else { continue };
        if !zones.is_empty() && !zones.contains(&d.zone) {
            continue;
        }
        let Some(profile) = catalog.profiles.get(&d.profile) else {
            continue;
        };
        let Some(map) = profile.modbus.clone() else {
            continue;
        };
        let url = section.endpoints.get(&d.id).unwrap_or(&endpoint.url);
        let Some(address) = url.strip_prefix("tcp://") else {
            anyhow::bail!(
                "device {}: Modbus endpoint \"{url}\" is not tcp://HOST:PORT (RTU over serial is not polled yet)",
                d.id
            );
        };
        out.push(Device {
            id: d.id.as_str().into(),
            zone: d.zone.as_str().into(),
            kind: profile.kind.as_str().into(),
            address: address.to_owned(),
            unit: endpoint.unit_id.unwrap_or(map.unit_id),
            interval: Duration::from_secs(
                section
                    .interval_s
                    .unwrap_or(u64::from(profile.report_interval_s))
                    .max(1),
            ),
            map,
        });
    }
    Ok(out)
}

/// What one poll did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Partial,
    Failed,
}

/// Polls `device` until shutdown, sending its readings to `out`.
pub async fn poll(
    device: Device,
    section: ModbusSection,
    out: mpsc::Sender<Vec<Reading>>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let blocks = plan(&device.map);
    let timeout = Duration::from_millis(section.timeout_ms.max(1));
    let id = device.id.to_string();
    let mut ctx: Option<Context> = None;
    let mut failures = 0u32;
    let mut tick = tokio::time::interval(device.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        if failures >= section.breaker_after {
            // Open: wait out the cool-down, then one half-open try.
            metrics.modbus_breaker_open.with_label_values(&[&id]).set(1);
            tracing::warn!(device = %id, address = %device.address, failures, "Modbus device not answering: circuit breaker open for {} s", section.breaker_open_s);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(section.breaker_open_s)) => {}
            }
            failures = section.breaker_after - 1;
        }
        let started = Instant::now();
        let (outcome, readings) = poll_once(&device, &blocks, &mut ctx, timeout, &metrics).await;
        metrics
            .modbus_poll_seconds
            .with_label_values(&[&id])
            .observe(started.elapsed().as_secs_f64());
        let label = match outcome {
            Outcome::Ok => "ok",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
        };
        metrics.modbus_polls.with_label_values(&[&id, label]).inc();
        if outcome == Outcome::Failed {
            failures += 1;
        } else {
            if failures >= section.breaker_after.saturating_sub(1) && failures > 0 {
                tracing::info!(device = %id, "Modbus device answers again");
            }
            failures = 0;
            metrics.modbus_breaker_open.with_label_values(&[&id]).set(0);
        }
        if !readings.is_empty() && out.send(readings).await.is_err() {
            return;
        }
    }
}

/// One round over every block.
async fn poll_once(
    device: &Device,
    blocks: &[Block],
    ctx: &mut Option<Context>,
    timeout: Duration,
    metrics: &Metrics,
) -> (Outcome, Vec<Reading>) {
    let id = device.id.to_string();
    if ctx.is_none() {
        let Ok(addr) = device.address.parse() else {
            return (Outcome::Failed, Vec::new());
        };
        let connect =
            tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(device.unit));
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(c)) => *ctx = Some(c),
            _ => {
                metrics
                    .modbus_errors
                    .with_label_values(&[&id, "connect"])
                    .inc();
                return (Outcome::Failed, Vec::new());
            }
        }
    }
    let now = crate::pipeline::now_ms();
    let mut readings = Vec::new();
    let mut failed = 0;
    for b in blocks {
        let Some(c) = ctx.as_mut() else { break };
        let read = async {
            match b.table {
                RegisterTable::Holding => c
                    .read_holding_registers(b.start, b.count)
                    .await
                    .map(|r| r.map(Values::Words)),
                RegisterTable::Input => c
                    .read_input_registers(b.start, b.count)
                    .await
                    .map(|r| r.map(Values::Words)),
                RegisterTable::Coil => c
                    .read_coils(b.start, b.count)
                    .await
                    .map(|r| r.map(Values::Bits)),
                RegisterTable::Discrete => c
                    .read_discrete_inputs(b.start, b.count)
                    .await
                    .map(|r| r.map(Values::Bits)),
            }
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(Ok(values))) => {
                for &(i, offset) in &b.registers {
                    let r = &device.map.registers[i];
                    let o = usize::from(offset);
                    let value = match &values {
                        Values::Words(w) => w.get(o..).and_then(|w| decode(r, w, None)),
                        Values::Bits(bits) => decode(r, &[], bits.get(o).copied()),
                    };
                    if let Some(value) = value.filter(|v| v.is_finite()) {
                        readings.push(Reading {
                            device: device.id.clone(),
                            zone: device.zone.clone(),
                            kind: device.kind.clone(),
                            time_ms: now,
                            received_ms: now,
                            unsynced_clock: false,
                            origin: None,
                            measurement: Measurement::Value {
                                field: r.field.clone(),
                                value,
                                urgent: false,
                            },
                        });
                    }
                }
            }
            Ok(Ok(Err(exception))) => {
                failed += 1;
                let code = format!("{:#04x}", u8::from(exception));
                metrics
                    .modbus_exceptions
                    .with_label_values(&[&id, &code])
                    .inc();
            }
            Ok(Err(e)) => {
                failed += 1;
                let kind = if e.to_string().contains("CRC") || e.to_string().contains("mismatch") {
                    "protocol"
                } else {
                    "transport"
                };
                metrics.modbus_errors.with_label_values(&[&id, kind]).inc();
                *ctx = None; // reconnect next round
            }
            Err(_) => {
                failed += 1;
                metrics
                    .modbus_errors
                    .with_label_values(&[&id, "timeout"])
                    .inc();
                // A late reply must never answer the next request: start a new connection.
                *ctx = None;
            }
        }
    }
    let outcome = match (failed, readings.is_empty()) {
        (0, _) => Outcome::Ok,
        (_, false) => Outcome::Partial,
        (_, true) => Outcome::Failed,
    };
    (outcome, readings)
}

enum Values {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}
