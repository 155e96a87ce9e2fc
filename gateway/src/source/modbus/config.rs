//! `[modbus]`: polling defaults and each device's own tuning, where devices are reached
//! (`tcp://` or an RS-485 port), and the polled devices of the served zones.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use device_profiles::Catalog;
use device_profiles::modbus::RegisterMap;
use serde::Deserialize;

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
