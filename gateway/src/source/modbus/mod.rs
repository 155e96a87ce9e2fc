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

use crate::decode::registers;
use crate::metrics::Metrics;
use crate::reading::{Measurement, Reading};
use plan::{Block, plan};

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
    /// Times a block read is asked again within a poll after a busy or acknowledge exception
    /// (codes 5 and 6) or, on TCP, after a transport error on a fresh connection.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Interval, timeout and retries of single devices, by id.
    #[serde(default)]
    pub device: BTreeMap<String, DeviceTuning>,
    /// Endpoints replacing the site's, by device id (`"gz-p3-rtu" = "tcp://10.0.0.9:502"` or
    /// `"rtu:///dev/ttyUSB0?baud=9600"`).
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
    /// RS-485: extra silence before each request beyond the 3.5 characters, milliseconds (slow
    /// slaves and RS-485 converters need some).
    #[serde(default)]
    pub rtu_delay_ms: u64,
    /// RS-485: the extra silence for single devices, by id, instead of `rtu_delay_ms`.
    #[serde(default)]
    pub rtu_delays_ms: BTreeMap<String, u64>,
    /// RS-485: pause after opening the port before the first request, milliseconds.
    #[serde(default = "default_open_pause")]
    pub rtu_open_pause_ms: u64,
}

fn default_retries() -> u32 {
    1
}

/// One device's own poll interval, timeout and retries.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceTuning {
    /// Poll interval, seconds.
    #[serde(default)]
    pub interval_s: Option<u64>,
    /// Request timeout, milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Retries.
    #[serde(default)]
    pub retries: Option<u32>,
}

fn default_open_pause() -> u64 {
    100
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
            retries: default_retries(),
            device: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            rtu_delay_ms: 0,
            rtu_delays_ms: BTreeMap::new(),
            rtu_open_pause_ms: default_open_pause(),
        }
    }
}

/// Where a device is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Modbus TCP, `host:port`.
    Tcp(String),
    /// Modbus RTU on a serial port (RS-485), shared by every device on that port.
    Rtu {
        /// The serial device, e.g. `/dev/ttyUSB0`.
        path: String,
        /// Baud rate.
        baud: u32,
    },
}

impl Endpoint {
    /// `tcp://HOST:PORT` or `rtu:///dev/ttyUSB0?baud=9600` (default 9600 baud).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        if let Some(addr) = url.strip_prefix("tcp://") {
            return Ok(Endpoint::Tcp(addr.to_owned()));
        }
        if let Some(rest) = url.strip_prefix("rtu://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let baud = match query.strip_prefix("baud=") {
                Some(b) => b
                    .parse()
                    .map_err(|_| format!("baud \"{b}\" in \"{url}\""))?,
                None if query.is_empty() => 9600,
                None => return Err(format!("\"{url}\": only ?baud=N is understood")),
            };
            return Ok(Endpoint::Rtu {
                path: path.to_owned(),
                baud,
            });
        }
        Err(format!(
            "Modbus endpoint \"{url}\" is neither tcp://HOST:PORT nor rtu:///dev/PORT?baud=N"
        ))
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
    /// Where it is.
    pub endpoint: Endpoint,
    /// Unit id.
    pub unit: u8,
    /// The register map.
    pub map: RegisterMap,
    /// Poll interval.
    pub interval: Duration,
    /// Request timeout.
    pub timeout: Duration,
    /// Retries per block.
    pub retries: u32,
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
        let endpoint = Endpoint::parse(url).map_err(|e| anyhow::anyhow!("device {}: {e}", d.id))?;
        let tuning = section.device.get(&d.id).copied().unwrap_or_default();
        out.push(Device {
            id: d.id.as_str().into(),
            zone: d.zone.as_str().into(),
            kind: profile.kind.as_str().into(),
            endpoint,
            unit: d
                .modbus
                .as_ref()
                .and_then(|m| m.unit_id)
                .unwrap_or(map.unit_id),
            interval: Duration::from_secs(
                tuning
                    .interval_s
                    .or(section.interval_s)
                    .unwrap_or(u64::from(profile.report_interval_s))
                    .max(1),
            ),
            timeout: Duration::from_millis(tuning.timeout_ms.unwrap_or(section.timeout_ms).max(1)),
            retries: tuning.retries.unwrap_or(section.retries),
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

/// A device's poll bookkeeping: metrics and the circuit breaker.
#[derive(Debug)]
struct Health {
    id: String,
    failures: u32,
    /// While open: no poll before this.
    open_until: Option<Instant>,
}

impl Health {
    fn new(id: &str) -> Health {
        Health {
            id: id.to_owned(),
            failures: 0,
            open_until: None,
        }
    }

    /// Whether the breaker lets a poll through now.
    fn may_poll(&self) -> bool {
        self.open_until.is_none_or(|t| Instant::now() >= t)
    }

    fn record(
        &mut self,
        outcome: Outcome,
        took: Duration,
        section: &ModbusSection,
        metrics: &Metrics,
    ) {
        metrics
            .modbus_poll_seconds
            .with_label_values(&[&self.id])
            .observe(took.as_secs_f64());
        let label = match outcome {
            Outcome::Ok => "ok",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
        };
        metrics
            .modbus_polls
            .with_label_values(&[&self.id, label])
            .inc();
        if outcome == Outcome::Failed {
            self.failures += 1;
            if self.failures >= section.breaker_after {
                if self.open_until.is_none() {
                    tracing::warn!(device = %self.id, failures = self.failures, "Modbus device not answering: circuit breaker open, next try in {} s", section.breaker_open_s);
                }
                self.open_until =
                    Some(Instant::now() + Duration::from_secs(section.breaker_open_s));
                metrics
                    .modbus_breaker_open
                    .with_label_values(&[&self.id])
                    .set(1);
            }
        } else {
            if self.open_until.take().is_some() {
                tracing::info!(device = %self.id, "Modbus device answers again: circuit breaker closed");
            }
            self.failures = 0;
            metrics
                .modbus_breaker_open
                .with_label_values(&[&self.id])
                .set(0);
        }
    }
}

/// Polls a Modbus TCP `device` until shutdown, sending its readings to `out`.
pub async fn poll(
    device: Device,
    section: ModbusSection,
    out: mpsc::Sender<Vec<Reading>>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let Endpoint::Tcp(address) = device.endpoint.clone() else {
        return;
    };
    let blocks = plan(&device.map);
    let timeout = device.timeout;
    let mut health = Health::new(&device.id);
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut ctx: Option<Context> = None;
    let mut tick = tokio::time::interval(device.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        if !health.may_poll() {
            continue;
        }
        let started = Instant::now();
        if ctx.is_none() {
            let connect = async {
                let addr = address.parse().map_err(std::io::Error::other)?;
                tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(device.unit))
                    .await
            };
            match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(c)) => ctx = Some(c),
                _ => {
                    metrics
                        .modbus_errors
                        .with_label_values(&[&health.id, "connect"])
                        .inc();
                    health.record(Outcome::Failed, started.elapsed(), &section, &metrics);
                    // Reconnect with backoff (and jitter), on top of the poll period.
                    let delay = backoff.next_delay(&mut rand::rng());
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            }
            backoff.reset();
        }
        let Some(c) = ctx.as_mut() else { continue };
        let (outcome, readings, reset) = read_blocks(&device, &blocks, c, timeout, &metrics).await;
        if reset {
            // A late reply must never answer the next request: a new connection.
            ctx = None;
        }
        health.record(outcome, started.elapsed(), &section, &metrics);
        if !readings.is_empty() && out.send(readings).await.is_err() {
            return;
        }
    }
}

/// Polls every device on one RS-485 port, one request at a time: the 3.5-character silence
/// before each request, `rtu_delay_ms` more per device switch, a pause after opening the port;
/// a device that times out costs its own poll only, and the port is reopened (stale bytes
/// dropped) before the next device is asked.
pub async fn poll_bus(
    path: String,
    baud: u32,
    devices: Vec<Device>,
    section: ModbusSection,
    out: mpsc::Sender<Vec<Reading>>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    use tokio_modbus::prelude::SlaveContext;
    use tokio_serial::SerialPortBuilderExt;
    let gap = Duration::from_micros(u64::from(node_gap_us(baud)));
    let mut state: Vec<(Device, Vec<Block>, Health, Instant)> = devices
        .into_iter()
        .map(|d| {
            let blocks = plan(&d.map);
            let health = Health::new(&d.id);
            (d, blocks, health, Instant::now())
        })
        .collect();
    let mut ctx: Option<Context> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let now = Instant::now();
        let next = state
            .iter()
            .map(|s| s.3)
            .min()
            .unwrap_or(now + Duration::from_secs(1));
        if next > now {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(next - now) => {}
            }
        }
        for (device, blocks, health, due) in state.iter_mut() {
            if Instant::now() < *due {
                continue;
            }
            *due += device.interval;
            if *due < Instant::now() {
                *due = Instant::now() + device.interval;
            }
            if !health.may_poll() {
                continue;
            }
            let started = Instant::now();
            if ctx.is_none() {
                match tokio_serial::new(&path, baud).open_native_async() {
                    Ok(port) => {
                        ctx = Some(tokio_modbus::client::rtu::attach(port));
                        tokio::time::sleep(Duration::from_millis(section.rtu_open_pause_ms)).await;
                    }
                    Err(e) => {
                        tracing::warn!(port = %path, error = %e, "cannot open the RS-485 port");
                        metrics
                            .modbus_errors
                            .with_label_values(&[&health.id, "connect"])
                            .inc();
                        health.record(Outcome::Failed, started.elapsed(), &section, &metrics);
                        continue;
                    }
                }
            }
            let Some(c) = ctx.as_mut() else { continue };
            c.set_slave(tokio_modbus::Slave(device.unit));
            let extra = section
                .rtu_delays_ms
                .get(&*device.id)
                .copied()
                .unwrap_or(section.rtu_delay_ms);
            tokio::time::sleep(gap + Duration::from_millis(extra)).await;
            let (outcome, readings, reset) =
                read_blocks(device, blocks, c, device.timeout, &metrics).await;
            if reset {
                ctx = None;
            }
            health.record(outcome, started.elapsed(), &section, &metrics);
            if !readings.is_empty() && out.send(readings).await.is_err() {
                return;
            }
        }
    }
}

/// The silence that ends an RTU frame, microseconds (3.5 characters of 11 bits; 1,750 µs above
/// 19,200 baud).
fn node_gap_us(baud: u32) -> u32 {
    if baud > 19_200 {
        1_750
    } else {
        (35 * 11 * 1_000_000 / 10) / baud.max(1)
    }
}

/// Reads every block of `device` on `ctx`; `reset` when the connection must be replaced.
async fn read_blocks(
    device: &Device,
    blocks: &[Block],
    c: &mut Context,
    timeout: Duration,
    metrics: &Metrics,
) -> (Outcome, Vec<Reading>, bool) {
    let id = device.id.to_string();
    let now = crate::clock::now_ms();
    let mut readings = Vec::new();
    let (mut failed, mut reset) = (0, false);
    for b in blocks {
        if reset {
            failed += 1;
            continue;
        }
        let mut result = tokio::time::timeout(timeout, read_block(c, b)).await;
        let mut attempts = 0;
        while attempts < device.retries
            && matches!(
                result,
                Ok(Ok(Err(tokio_modbus::ExceptionCode::ServerDeviceBusy
                    | tokio_modbus::ExceptionCode::Acknowledge)))
            )
        {
            attempts += 1;
            metrics
                .modbus_errors
                .with_label_values(&[&id, "retry"])
                .inc();
            result = tokio::time::timeout(timeout, read_block(c, b)).await;
        }
        match result {
            Ok(Ok(Ok(values))) => {
                for &(i, offset) in &b.registers {
                    let r = &device.map.registers[i];
                    let o = usize::from(offset);
                    let value = match &values {
                        Values::Words(w) => w.get(o..).and_then(|w| registers::value(r, w, None)),
                        Values::Bits(bits) => registers::value(r, &[], bits.get(o).copied()),
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
                                field: r.field.clone().into(),
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
                let text = e.to_string();
                let kind = if text.contains("CRC") || text.contains("mismatch") {
                    "protocol"
                } else {
                    "transport"
                };
                metrics.modbus_errors.with_label_values(&[&id, kind]).inc();
                reset = true;
            }
            Err(_) => {
                failed += 1;
                metrics
                    .modbus_errors
                    .with_label_values(&[&id, "timeout"])
                    .inc();
                reset = true;
            }
        }
    }
    let outcome = match (failed, readings.is_empty()) {
        (0, _) => Outcome::Ok,
        (_, false) => Outcome::Partial,
        (_, true) => Outcome::Failed,
    };
    (outcome, readings, reset)
}

/// One block read.
async fn read_block(c: &mut Context, b: &Block) -> tokio_modbus::Result<Values> {
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
}

enum Values {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}
