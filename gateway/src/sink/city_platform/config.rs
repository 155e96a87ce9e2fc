//! `[city_platform]`: where the city platform is, which datasets go, and how fast.

use serde::Deserialize;

use super::transport::{HttpsSection, UpstreamMqttSection};
use super::{Dataset, SINK};

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

impl CityPlatformSection {
    pub(super) fn dataset(&self, d: Dataset) -> &DatasetSection {
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

#[cfg(test)]
mod tests {
    use super::*;

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
