//! Sinks: where what the store accepted goes.
//!
//! - [`influxdb`]: points to InfluxDB or VictoriaMetrics (v2 write API).
//! - [`city_platform`]: points, alert transitions and raw readings to the city's data platform.
//! - [`notify`]: alert events to operators (MQTT, webhooks, Alertmanager).

pub mod city_platform;
pub mod influxdb;
pub mod notify;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Why a sink is not ready, by sink name (shown by `/readyz`).
pub type NotReady = Arc<Mutex<BTreeMap<String, String>>>;
