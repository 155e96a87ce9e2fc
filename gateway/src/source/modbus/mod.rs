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

mod config;
pub mod plan;

pub use config::{Device, DeviceTuning, Endpoint, ModbusSection, devices};

use std::time::{Duration, Instant};

use device_profiles::modbus::RegisterTable;
use tokio::sync::{mpsc, watch};
use tokio_modbus::client::{Context, Reader};

use crate::decode::registers;
use crate::metrics::Metrics;
use crate::reading::{Measurement, Reading};
use plan::{Block, plan};

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
