//! Device profiles: what a kind of device measures, how it encodes it, and its defaults.
//!
//! One file per kind in `profiles/`, named after the kind (`profiles/water-pressure.toml` has
//! `kind = "water-pressure"`). The kind appears in MQTT topics
//! (`cs/v1/{zone}/{kind}/{device}/up`), so it is lowercase ASCII with dashes.

use std::collections::BTreeMap;

use serde::Deserialize;
use wire::Quantity;

use crate::modbus::RegisterMap;

/// What the readings of a device are about; decides which aggregator and rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Visitors at scenic-area gates.
    Crowd,
    /// Vehicles on road segments.
    Traffic,
    /// Underground pipes, wells, tunnels and manhole covers.
    Pipe,
}

impl Category {
    /// Its name as written in profiles, and as the gateway's metrics and API label it.
    pub fn name(self) -> &'static str {
        match self {
            Category::Crowd => "crowd",
            Category::Traffic => "traffic",
            Category::Pipe => "pipe",
        }
    }
}

/// How reports reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// CitySense wire frames over MQTT (our own firmware).
    Wire,
    /// Third-party JSON over MQTT, mapped by `[json]` and each field's `pointer`.
    Json,
    /// Polled by the gateway over Modbus, by the `[modbus]` register map.
    Modbus,
}

/// A device kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The kind's name: in topics, in site files (`profile = "..."`), and the file's stem.
    pub kind: String,
    /// A human name for consoles and documentation.
    pub name: String,
    /// Longer notes: hardware, mounting, where the defaults come from.
    #[serde(default)]
    pub description: String,
    /// Which domain the readings belong to.
    pub category: Category,
    /// How reports are encoded.
    pub encoding: Encoding,
    /// The expected interval between periodic reports (or polls), in seconds.
    pub report_interval_s: u32,
    /// A device silent for this many report intervals is offline (DOMAIN.md §6.3: 2).
    #[serde(default = "default_offline_after")]
    pub offline_after_intervals: u32,
    /// Battery percentage under which a maintenance alert is raised; absent on mains power.
    #[serde(default)]
    pub low_battery_pct: Option<u8>,
    /// The measured values, with units and valid ranges. Readings outside a range are
    /// rejected with reason `out_of_range`.
    #[serde(default, rename = "field")]
    pub fields: Vec<Field>,
    /// How third-party JSON maps to fields (encoding = "json" only).
    #[serde(default)]
    pub json: Option<JsonMapping>,
    /// The register map (encoding = "modbus" only).
    #[serde(default)]
    pub modbus: Option<RegisterMap>,
    /// Default alert thresholds for this kind (sites and rule files may override them).
    #[serde(default, rename = "alert")]
    pub alerts: Vec<AlertDefault>,
}

fn default_offline_after() -> u32 {
    2
}

/// One measured value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// The field name in time series; for wire pipe profiles, a [`wire::Quantity`] name.
    pub name: String,
    /// The unit of the value.
    pub unit: String,
    /// Smallest valid value.
    pub min: f64,
    /// Largest valid value.
    pub max: f64,
    /// JSON pointer (RFC 6901) to the value in a third-party payload (encoding = "json").
    #[serde(default)]
    pub pointer: Option<String>,
    /// For JSON string values: the number each accepted string stands for.
    #[serde(default)]
    pub map: Option<BTreeMap<String, f64>>,
}

/// Where the envelope of a third-party JSON payload is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonMapping {
    /// JSON pointer to the device id, which must match the topic's device.
    pub device_id: String,
    /// JSON pointer to the event time; absent means the receive time is used.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Unit of the timestamp number.
    #[serde(default)]
    pub timestamp_unit: TimestampUnit,
    /// Payloads larger than this are rejected unread.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    /// Payloads nested deeper than this are rejected.
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
}

fn default_max_payload() -> usize {
    4096
}
fn default_max_depth() -> usize {
    8
}

/// The unit of a JSON timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampUnit {
    /// Unix seconds.
    #[default]
    S,
    /// Unix milliseconds.
    Ms,
}

/// Which side of a threshold is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Values at or above the threshold alert.
    Above,
    /// Values at or below the threshold alert.
    Below,
}

/// A default alert on one field, with up to three grades.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertDefault {
    /// The field watched.
    pub field: String,
    /// Which side of the thresholds is bad.
    pub side: Side,
    /// Warning threshold.
    #[serde(default)]
    pub warn: Option<f64>,
    /// Alarm threshold.
    pub alarm: f64,
    /// Critical threshold.
    #[serde(default)]
    pub critical: Option<f64>,
    /// How long the value must stay past a threshold before the alert is raised, in seconds.
    #[serde(default)]
    pub hold_s: u32,
    /// How far back past the threshold the value must come to clear (hysteresis).
    #[serde(default)]
    pub clear_margin: f64,
    /// The standard or regulation behind the thresholds, shown to operators.
    #[serde(default)]
    pub standard: Option<String>,
    /// What operators should do when it fires.
    #[serde(default)]
    pub advice: Option<String>,
}

fn is_kind_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Profile {
    /// The field with this name.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Checks everything that types alone cannot; returns `(path, reason)` pairs.
    pub(crate) fn check(&self, file_stem: &str) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = Vec::new();
        if !is_kind_name(&self.kind) {
            p.push(("kind".into(), format!("kind \"{}\" must be 1–32 characters of a-z, 0-9 and '-' (it is part of MQTT topics)", self.kind)));
        } else if self.kind != file_stem {
            p.push((
                "kind".into(),
                format!(
                    "kind \"{}\" does not match the file name \"{file_stem}.toml\"",
                    self.kind
                ),
            ));
        }
        if self.report_interval_s == 0 {
            p.push((
                "report_interval_s".into(),
                "report_interval_s must be greater than 0".into(),
            ));
        }
        if self.offline_after_intervals == 0 {
            p.push((
                "offline_after_intervals".into(),
                "offline_after_intervals must be at least 1".into(),
            ));
        }
        if let Some(b) = self.low_battery_pct
            && b > 100
        {
            p.push((
                "low_battery_pct".into(),
                format!("low_battery_pct is a percentage, not {b}"),
            ));
        }
        self.check_fields(&mut p);
        self.check_encoding(&mut p);
        self.check_alerts(&mut p);
        p
    }

    fn check_fields(&self, p: &mut Vec<(String, String)>) {
        for (i, f) in self.fields.iter().enumerate() {
            let path = format!("field[{i}]");
            if self.fields[..i].iter().any(|g| g.name == f.name) {
                p.push((
                    format!("{path}.name"),
                    format!("field \"{}\" is defined twice", f.name),
                ));
            }
            if !f.min.is_finite() || !f.max.is_finite() || f.min >= f.max {
                p.push((
                    format!("{path}.min"),
                    format!(
                        "field \"{}\": min ({}) must be finite and below max ({})",
                        f.name, f.min, f.max
                    ),
                ));
            }
            if self.encoding == Encoding::Wire && self.category == Category::Pipe {
                match Quantity::from_name(&f.name) {
                    None => p.push((
                        format!("{path}.name"),
                        format!(
                            "field \"{}\" is not a quantity wire frames carry (one of: {})",
                            f.name,
                            Quantity::ALL.map(Quantity::name).join(", ")
                        ),
                    )),
                    Some(q) if q.unit() != f.unit => p.push((
                        format!("{path}.unit"),
                        format!(
                            "field \"{}\" is sent in {} by wire frames, not {}",
                            f.name,
                            q.unit(),
                            f.unit
                        ),
                    )),
                    Some(_) => {}
                }
            }
            if self.encoding == Encoding::Json {
                match &f.pointer {
                    None => p.push((
                        path.clone(),
                        format!(
                            "field \"{}\" needs a JSON pointer (encoding = \"json\")",
                            f.name
                        ),
                    )),
                    Some(ptr) if !ptr.starts_with('/') => p.push((
                        format!("{path}.pointer"),
                        format!(
                            "field \"{}\": JSON pointer \"{ptr}\" must start with '/'",
                            f.name
                        ),
                    )),
                    Some(_) => {}
                }
            } else if f.pointer.is_some() || f.map.is_some() {
                p.push((
                    format!("{path}.pointer"),
                    format!(
                        "field \"{}\": pointer and map apply only to encoding = \"json\"",
                        f.name
                    ),
                ));
            }
            if let Some(map) = &f.map {
                for (s, v) in map {
                    if *v < f.min || *v > f.max {
                        p.push((
                            format!("{path}.map"),
                            format!(
                                "field \"{}\": \"{s}\" maps to {v}, outside {}..={}",
                                f.name, f.min, f.max
                            ),
                        ));
                    }
                }
            }
        }
    }

    fn check_encoding(&self, p: &mut Vec<(String, String)>) {
        match (self.encoding, &self.json, &self.modbus) {
            (Encoding::Json, None, _) => p.push((
                "encoding".into(),
                "encoding = \"json\" needs a [json] table".into(),
            )),
            (Encoding::Modbus, _, None) => p.push((
                "encoding".into(),
                "encoding = \"modbus\" needs a [modbus] table".into(),
            )),
            (e, Some(_), _) if e != Encoding::Json => p.push((
                "json".into(),
                "[json] applies only to encoding = \"json\"".into(),
            )),
            (e, _, Some(_)) if e != Encoding::Modbus => p.push((
                "modbus".into(),
                "[modbus] applies only to encoding = \"modbus\"".into(),
            )),
            _ => {}
        }
        if let Some(json) = &self.json {
            for (key, ptr) in [
                ("device_id", Some(&json.device_id)),
                ("timestamp", json.timestamp.as_ref()),
            ] {
                if let Some(ptr) = ptr
                    && !ptr.starts_with('/')
                {
                    p.push((
                        format!("json.{key}"),
                        format!("JSON pointer \"{ptr}\" must start with '/'"),
                    ));
                }
            }
            if json.max_payload_bytes == 0 || json.max_payload_bytes > 1 << 20 {
                p.push((
                    "json.max_payload_bytes".into(),
                    "max_payload_bytes must be 1..=1048576".into(),
                ));
            }
            if json.max_depth == 0 || json.max_depth > 64 {
                p.push(("json.max_depth".into(), "max_depth must be 1..=64".into()));
            }
        }
        if let Some(map) = &self.modbus {
            let names: Vec<&str> = self.fields.iter().map(|f| f.name.as_str()).collect();
            p.extend(map.check(&names));
        }
    }

    fn check_alerts(&self, p: &mut Vec<(String, String)>) {
        for (i, a) in self.alerts.iter().enumerate() {
            let path = format!("alert[{i}]");
            if self.field(&a.field).is_none() {
                p.push((
                    format!("{path}.field"),
                    format!(
                        "alert watches field \"{}\", which the profile does not define",
                        a.field
                    ),
                ));
            }
            let grades: Vec<f64> = [a.warn, Some(a.alarm), a.critical]
                .into_iter()
                .flatten()
                .collect();
            let ordered = grades.windows(2).all(|w| match a.side {
                Side::Above => w[0] < w[1],
                Side::Below => w[0] > w[1],
            });
            if !ordered || grades.iter().any(|g| !g.is_finite()) {
                let word = if a.side == Side::Above {
                    "rise"
                } else {
                    "fall"
                };
                p.push((
                    format!("{path}.alarm"),
                    format!(
                        "alert on \"{}\": warn, alarm and critical must {word} in that order",
                        a.field
                    ),
                ));
            }
            if !a.clear_margin.is_finite() || a.clear_margin < 0.0 {
                p.push((
                    format!("{path}.clear_margin"),
                    "clear_margin must be 0 or more".into(),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_categorys_name_is_the_one_profiles_spell() {
        #[derive(Deserialize)]
        struct Named {
            category: Category,
        }
        for c in [Category::Crowd, Category::Traffic, Category::Pipe] {
            let parsed: Named = toml::from_str(&format!("category = \"{}\"", c.name())).unwrap();
            assert_eq!(parsed.category, c);
        }
    }
}
