//! The exchange format: what the city platform receives, one [`Record`] per point, alert event
//! or raw reading. Versioned; the JSON Schema is `gateway/schema/exchange-v1.schema.json`
//! ([`SCHEMA_JSON`]), and every record built here validates against it (tests).
//!
//! A record's `id` is `{gateway}.{store}.{stream}.{seq}`: the gateway, its local store's
//! instance, the stream (`aggregates`, `alerts`, `raw`) and the row id in that stream. A record
//! sent twice (at-least-once delivery) carries the same id and the same content, so the platform
//! de-duplicates by id. An aggregate window recomputed after late data (a correction) is sent
//! again with the id of its first version and a `revision`, the row id of the new version: the
//! platform keeps the highest revision of an id.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, FixedOffset, Offset, Utc};
use device_profiles::Catalog;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest;

use crate::alert::AlertEvent;
use crate::alert::model::Status;
use crate::point::{FieldValue, Point, Quality};
use crate::reading::{Measurement, Reading};

/// The schema version every record names.
pub const SCHEMA: &str = "citysense.exchange.v1";
/// The JSON Schema (draft 2020-12) of records and HTTPS batches.
pub const SCHEMA_JSON: &str = include_str!("../../../schema/exchange-v1.schema.json");

/// One value with its unit (UCUM-like text: `MPa`, `km/h`, `veh/h`, `%`, `1` for ratios).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Field {
    /// A number, a string or a boolean.
    pub value: Value,
    /// The unit.
    pub unit: String,
}

/// Where a record comes from, for de-duplication and ordering upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The gateway id.
    pub gateway: String,
    /// The local store's instance id (row ids restart only with a new store).
    pub store: String,
    /// `aggregates`, `alerts` or `raw`.
    pub stream: String,
    /// The row id in that stream: increasing, gaps where rows were filtered or expired.
    pub seq: i64,
}

/// An alert transition (the alerts dataset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertInfo {
    /// `raised`, `escalated`, `renotified`, `resolved`, `acknowledged`.
    pub event: String,
    /// The alert id (one per episode).
    pub alert_id: String,
    /// The rule.
    pub rule: String,
    /// `crowd`, `traffic`, `pipe`, `device`, `gateway`.
    pub category: String,
    /// Grade name (`blue` … `red`, `warning`, `alarm`, `critical`).
    pub severity: String,
    /// Grade label for people (蓝, 中度拥堵, …).
    pub label: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// The severity before an escalation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_severity: Option<String>,
    /// When the episode started, Unix ms.
    pub started_ms: i64,
    /// One line for people.
    pub summary: String,
    /// What to do next: diversion destinations, roads to avoid, alternatives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advice: Option<crate::alert::advice::Advice>,
    /// The holiday or event whose capacity caps applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar: Option<String>,
}

/// One record of the exchange format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// [`SCHEMA`].
    pub schema: String,
    /// Unique, stable and the same from every replica of a partition: `{site}.{stream}.{hash}`,
    /// the hash of what the record is about (a window: measurement, tags and time; an alert
    /// event: alert id, kind and time; a reading: device, boot epoch and sequence), never of
    /// the instance or a row number.
    pub id: String,
    /// The dataset id the platform files it under (configurable per dataset).
    pub dataset: String,
    /// GB/T 2260 code of the district (or the city).
    pub region: String,
    /// Subject ids: `area`, `segment`, `asset`, `device`, … by role.
    pub subjects: BTreeMap<String, String>,
    /// `crowd`, `traffic`, `pipe`, `device_health`, `alert`, or a raw reading's kind.
    pub measurement: String,
    /// Values with units.
    pub fields: BTreeMap<String, Field>,
    /// Event time, Unix milliseconds (UTC).
    pub event_time_ms: i64,
    /// Event time, ISO 8601 with the site's offset (`+08:00`).
    pub event_time: String,
    /// Quality flags.
    pub quality: Quality,
    /// Origin, for de-duplication.
    pub source: Source,
    /// A corrected aggregate window: the row id of this version (0, left out: the first).
    #[serde(default, skip_serializing_if = "is_first")]
    pub revision: i64,
    /// The alert, for the alerts dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<AlertInfo>,
}

fn is_first(revision: &i64) -> bool {
    *revision == 0
}

/// Builds records for one gateway and store.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The namespace of record ids: the site's id.
    site: String,
    gateway: String,
    store: String,
    region: String,
    offset: FixedOffset,
    /// Profile field units by field name (pipe aggregates) and by (kind, field) (raw readings).
    units_by_field: HashMap<String, String>,
    units_by_kind: HashMap<(String, String), String>,
}

impl Exchange {
    /// For the gateway `gateway` with the store instance `store`; `region` is used when a
    /// record has no district of its own.
    pub fn new(catalog: &Catalog, gateway: &str, store: &str, region: &str) -> Exchange {
        let offset_s = catalog.site.site.utc_offset.ms() / 1000;
        let offset = FixedOffset::east_opt(offset_s as i32).unwrap_or_else(|| Utc.fix());
        let mut units_by_field = HashMap::new();
        let mut units_by_kind = HashMap::new();
        for (kind, profile) in &catalog.profiles {
            for f in &profile.fields {
                units_by_field
                    .entry(f.name.clone())
                    .or_insert_with(|| f.unit.clone());
                units_by_kind.insert((kind.clone(), f.name.clone()), f.unit.clone());
            }
        }
        let site = catalog
            .site
            .site
            .id
            .chars()
            .map(
                |c| match c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    true => c,
                    false => '_',
                },
            )
            .collect();
        Exchange {
            site,
            gateway: gateway.to_owned(),
            store: store.to_owned(),
            region: region.to_owned(),
            offset,
            units_by_field,
            units_by_kind,
        }
    }

    fn time(&self, ms: i64) -> String {
        DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .with_timezone(&self.offset)
            .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
            .to_string()
    }

    /// The id of a record of `stream` about `what` (its identifying parts, in order).
    fn id(&self, stream: &str, what: &[&str]) -> String {
        let mut h = sha2::Sha256::new();
        for part in what {
            h.update(part.as_bytes());
            h.update([0x1f]);
        }
        format!("{}.{stream}.{}", self.site, hex::encode(&h.finalize()[..8]))
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        id: String,
        dataset: &str,
        stream: &str,
        seq: i64,
        region: Option<&str>,
        subjects: BTreeMap<String, String>,
        measurement: &str,
        fields: BTreeMap<String, Field>,
        time_ms: i64,
        quality: Quality,
    ) -> Record {
        Record {
            schema: SCHEMA.to_owned(),
            id,
            dataset: dataset.to_owned(),
            region: region
                .filter(|r| is_region_code(r))
                .unwrap_or(&self.region)
                .to_owned(),
            subjects,
            measurement: measurement.to_owned(),
            fields,
            event_time_ms: time_ms,
            event_time: self.time(time_ms),
            quality,
            source: Source {
                gateway: self.gateway.clone(),
                store: self.store.clone(),
                stream: stream.to_owned(),
                seq,
            },
            revision: 0,
            alert: None,
        }
    }

    /// A point of the aggregates stream (row `seq`); `first`: the row of its window's first
    /// version, when this one is a revision.
    pub fn point(&self, dataset: &str, seq: i64, p: &Point, first: Option<i64>) -> Record {
        let mut region = None;
        let mut subjects = BTreeMap::new();
        for (k, v) in &p.tags {
            if k == "zone" {
                region = Some(v.as_str());
            } else if !v.is_empty() {
                subjects.insert(k.clone(), v.clone());
            }
        }
        let profile_unit = p
            .tags
            .iter()
            .find(|(k, _)| k == "field")
            .and_then(|(_, f)| self.units_by_field.get(f))
            .map_or("1", String::as_str);
        let fields = p
            .fields
            .iter()
            .filter_map(|(name, v)| {
                let value = match v {
                    FieldValue::Float(f) if !f.is_finite() => return None,
                    FieldValue::Float(f) => Value::from(*f),
                    FieldValue::Int(i) => Value::from(*i),
                    FieldValue::Bool(b) => Value::from(*b),
                    FieldValue::Str(s) => Value::from(s.clone()),
                };
                let unit = aggregate_unit(&p.measurement, name, profile_unit);
                Some((name.clone(), Field { value, unit }))
            })
            .collect();
        let time = p.time_ms.to_string();
        let mut what: Vec<&str> = vec![&p.measurement];
        for (k, v) in &p.tags {
            what.extend([k.as_str(), v.as_str()]);
        }
        what.push(&time);
        let mut r = self.record(
            self.id("aggregates", &what),
            dataset,
            "aggregates",
            seq,
            region,
            subjects,
            &p.measurement,
            fields,
            p.time_ms,
            p.quality,
        );
        // The id names the window whatever its version; a revision orders the versions.
        if first.is_some_and(|f| f != seq) {
            r.revision = seq;
        }
        r
    }

    /// An alert transition of the alerts stream (outbox row `seq`).
    pub fn alert(&self, dataset: &str, seq: i64, e: &AlertEvent) -> Record {
        let a = &e.alert;
        let subjects = BTreeMap::from([
            ("category".to_owned(), a.category.name().to_owned()),
            ("subject".to_owned(), a.subject.clone()),
        ]);
        let mut fields = BTreeMap::from([("grade".to_owned(), field(i64::from(a.grade), "1"))]);
        number(&mut fields, "value", a.value, "");
        number(&mut fields, "threshold", a.threshold, "");
        let at = e.at_ms.to_string();
        let id = self.id("alerts", &[&a.id, e.kind.name(), &at]);
        let mut r = self.record(
            id,
            dataset,
            "alerts",
            seq,
            Some(&a.zone),
            subjects,
            "alert",
            fields,
            e.at_ms,
            Quality::default(),
        );
        r.alert = Some(AlertInfo {
            event: e.kind.name().to_owned(),
            alert_id: a.id.clone(),
            rule: a.rule.clone(),
            category: a.category.name().to_owned(),
            severity: a.severity.clone(),
            label: a.label.clone(),
            status: match a.status {
                Status::Firing => "firing",
                Status::Resolved => "resolved",
            }
            .to_owned(),
            previous_severity: e.previous_severity.clone(),
            started_ms: a.started_ms,
            summary: a.summary.clone(),
            advice: a.advice.clone(),
            calendar: a.calendar.clone(),
        });
        r
    }

    /// A raw reading (row `seq`). `lateness_ms`: how late a reading may arrive and still count
    /// as live; later ones are flagged `late`.
    pub fn reading(&self, dataset: &str, seq: i64, r: &Reading, lateness_ms: i64) -> Record {
        let mut subjects = BTreeMap::from([
            ("device".to_owned(), r.device.to_string()),
            ("kind".to_owned(), r.kind.to_string()),
        ]);
        let mut fields = BTreeMap::new();
        let measurement = match &r.measurement {
            Measurement::Passage { tag, entry } => {
                fields.insert("tag".into(), field(tag.to_string(), ""));
                fields.insert("entry".into(), field(*entry, ""));
                "passage"
            }
            Measurement::Counts {
                entries,
                exits,
                interval_s,
            } => {
                fields.insert("entries".into(), field(*entries, "visitors"));
                fields.insert("exits".into(), field(*exits, "visitors"));
                fields.insert("interval".into(), field(*interval_s, "s"));
                "counts"
            }
            Measurement::Lane {
                lane,
                vehicles,
                occupancy_pct,
                speed_kmh,
                interval_s,
            } => {
                subjects.insert("lane".into(), lane.to_string());
                fields.insert("vehicles".into(), field(*vehicles, "veh"));
                number(&mut fields, "occupancy", *occupancy_pct, "%");
                if let Some(s) = speed_kmh {
                    number(&mut fields, "speed", *s, "km/h");
                }
                fields.insert("interval".into(), field(*interval_s, "s"));
                "lane"
            }
            Measurement::Value {
                field: name,
                value,
                urgent,
            } => {
                subjects.insert("field".into(), name.to_string());
                let unit = self
                    .units_by_kind
                    .get(&(r.kind.to_string(), name.to_string()))
                    .map_or("", String::as_str);
                number(&mut fields, name, *value, unit);
                fields.insert("urgent".into(), field(*urgent, ""));
                "value"
            }
            Measurement::Status {
                battery_pct,
                signal_dbm,
                uptime_s,
                firmware,
                key_fingerprint: _,
            } => {
                if let Some(b) = battery_pct {
                    fields.insert("battery".into(), field(*b, "%"));
                }
                fields.insert("signal".into(), field(*signal_dbm, "dBm"));
                fields.insert("uptime".into(), field(*uptime_s, "s"));
                fields.insert("firmware".into(), field(firmware.clone(), ""));
                "status"
            }
            Measurement::Occupancy { count } => {
                fields.insert("count".into(), field(*count, "visitors"));
                "occupancy_count"
            }
        };
        let quality = Quality {
            late: r.received_ms - r.time_ms > lateness_ms,
            unsynced_clock: r.unsynced_clock,
            estimated: false,
        };
        // A frame's boot epoch and sequence name it, and which of its readings this is (a frame
        // carries several: lanes, pipe fields); a reading without them (Modbus, JSON profiles),
        // its time.
        let (at, what) = match r.origin {
            Some((epoch, sequence)) => (format!("{epoch}.{sequence}"), "frame"),
            None => (r.time_ms.to_string(), "time"),
        };
        let content = serde_json::to_string(&r.measurement).unwrap_or_default();
        let id = self.id("raw", &[&r.device, what, &at, &content]);
        self.record(
            id,
            dataset,
            "raw",
            seq,
            Some(&r.zone),
            subjects,
            measurement,
            fields,
            r.time_ms,
            quality,
        )
    }
}

fn field(value: impl Into<Value>, unit: &str) -> Field {
    Field {
        value: value.into(),
        unit: unit.to_owned(),
    }
}

/// Adds a float field; JSON has no NaN or infinity, so such values are left out.
fn number(fields: &mut BTreeMap<String, Field>, name: &str, v: f64, unit: &str) {
    if v.is_finite() {
        fields.insert(name.to_owned(), field(v, unit));
    }
}

fn is_region_code(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The unit of an aggregate field (see the table in [`crate::aggregate`]).
fn aggregate_unit(measurement: &str, field: &str, profile_unit: &str) -> String {
    let unit = match (measurement, field) {
        ("crowd", "entries" | "exits" | "occupancy" | "daily_entries") => "visitors",
        ("crowd", "inflow_per_min" | "outflow_per_min") => "visitors/min",
        ("crowd", "drift") => "",
        ("traffic", "volume") => "veh",
        ("traffic", "flow_vph") => "veh/h",
        ("traffic", "occupancy_pct") => "%",
        ("traffic", "speed_kmh") => "km/h",
        ("pipe", "min" | "max" | "mean" | "last") => profile_unit,
        ("pipe", "rate_per_min") => return format!("{profile_unit}/min"),
        ("device_health", "battery_pct") => "%",
        ("device_health", "signal_dbm") => "dBm",
        ("device_health", "max_gap_s") => "s",
        // Counts, ratios, grades, indices.
        _ => "1",
    };
    unit.to_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::alert::model::{Alert, EventKind};
    use crate::alert::rule::Category;

    fn exchange() -> Exchange {
        let catalog = Catalog::ganzhou().unwrap();
        Exchange::new(&catalog, "gw-1", "18c2f", "360700")
    }

    fn validate(r: &Record) {
        let schema: Value = serde_json::from_str(SCHEMA_JSON).unwrap();
        let v = jsonschema::validator_for(&schema).unwrap();
        let instance = serde_json::to_value(r).unwrap();
        let errors: Vec<String> = v.iter_errors(&instance).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}\n{instance:#}");
    }

    // 2026-10-01 10:00 +08:00.
    const T: i64 = 1_790_820_000_000;

    #[test]
    fn a_corrected_window_keeps_its_first_id_and_carries_a_revision() {
        let p = Point {
            measurement: "crowd".into(),
            tags: vec![
                ("area".into(), "S4".into()),
                ("zone".into(), "360702".into()),
            ],
            fields: vec![("daily_entries".into(), FieldValue::Int(1200))],
            time_ms: T,
            quality: Quality {
                late: true,
                ..Quality::default()
            },
        };
        let r = exchange().point("citysense.aggregates", 977, &p, Some(42));
        validate(&r);
        assert_eq!(
            r.id, "ganzhou.aggregates.d07f0d6ddc4cc7b3",
            "the window's id (pinned: ids must not change between versions)"
        );
        assert_eq!((r.revision, r.source.seq), (977, 977));
        assert!(r.quality.late);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["revision"], 977);
        let first = exchange().point("citysense.aggregates", 42, &p, Some(42));
        assert_eq!((&first.id, first.revision), (&r.id, 0));
        let json = serde_json::to_value(&first).unwrap();
        assert!(json.get("revision").is_none(), "a first version has none");
    }

    #[test]
    fn every_replica_gives_a_record_the_same_id_and_what_differs_gets_another() {
        let catalog = Catalog::ganzhou().unwrap();
        let (a, b) = (
            Exchange::new(&catalog, "gw-a", "18c2f", "360700"),
            Exchange::new(&catalog, "gw-b", "7d01e", "360700"),
        );
        let p = Point {
            measurement: "crowd".into(),
            tags: vec![
                ("area".into(), "S4".into()),
                ("zone".into(), "360702".into()),
            ],
            fields: vec![("entries".into(), FieldValue::Int(3))],
            time_ms: T,
            quality: Quality::default(),
        };
        let (on_a, on_b) = (a.point("d", 42, &p, None), b.point("d", 977, &p, None));
        assert_eq!(on_a.id, on_b.id, "other gateway, store and row: one window");
        assert_ne!(
            (on_a.source.gateway, on_a.source.seq),
            (on_b.source.gateway, on_b.source.seq)
        );
        let later = Point {
            time_ms: T + 60_000,
            ..p.clone()
        };
        assert_ne!(a.point("d", 43, &later, None).id, on_a.id);
        let other = Point {
            tags: vec![
                ("area".into(), "S5".into()),
                ("zone".into(), "360702".into()),
            ],
            ..p
        };
        assert_ne!(a.point("d", 44, &other, None).id, on_a.id);
    }

    #[test]
    fn a_pipe_point_carries_the_profile_unit_the_district_and_local_time() {
        let p = Point {
            measurement: "pipe".into(),
            tags: vec![
                ("asset".into(), "P1".into()),
                ("zone".into(), "360702".into()),
                ("field".into(), "pressure".into()),
            ],
            fields: vec![
                ("mean".into(), FieldValue::Float(0.305)),
                ("count".into(), FieldValue::Int(2)),
                ("rate_per_min".into(), FieldValue::Float(0.01)),
                ("nan".into(), FieldValue::Float(f64::NAN)),
            ],
            time_ms: T,
            quality: Quality {
                late: true,
                ..Quality::default()
            },
        };
        let r = exchange().point("citysense.aggregates", 42, &p, None);
        validate(&r);
        assert!(r.id.starts_with("ganzhou.aggregates."), "{}", r.id);
        assert_eq!(r.region, "360702");
        assert_eq!(r.event_time, "2026-10-01T10:00:00.000+08:00");
        assert_eq!(r.subjects["asset"], "P1");
        assert!(!r.subjects.contains_key("zone"));
        assert_eq!(r.fields["mean"].unit, "MPa");
        assert_eq!(r.fields["rate_per_min"].unit, "MPa/min");
        assert_eq!(r.fields["count"].unit, "1");
        assert!(!r.fields.contains_key("nan"), "NaN has no JSON form");
        assert!(r.quality.late);
    }

    #[test]
    fn an_alert_event_and_every_raw_reading_validate() {
        let x = exchange();
        let alert = Alert {
            id: "crowd.occupancy:S4:1".into(),
            rule: "crowd.occupancy".into(),
            category: Category::Crowd,
            subject: "S4".into(),
            subject_name: "通天岩".into(),
            zone: "360702".into(),
            grade: 2,
            severity: "yellow".into(),
            label: "黄".into(),
            status: Status::Firing,
            value: 0.83,
            threshold: 0.8,
            started_ms: T,
            updated_ms: T,
            resolved_ms: None,
            ack: None,
            flapping: false,
            assigned_to: None,
            comments: Vec::new(),
            summary: "通天岩 occupancy 83 %".into(),
            advice: None,
            calendar: None,
            duty: None,
            escalation: None,
        };
        let e = AlertEvent {
            kind: EventKind::Escalated,
            at_ms: T,
            previous_severity: Some("blue".into()),
            alert,
        };
        let r = x.alert("citysense.alerts", 7, &e);
        validate(&r);
        let a = r.alert.as_ref().unwrap();
        assert_eq!(
            (a.event.as_str(), a.status.as_str()),
            ("escalated", "firing")
        );
        assert_eq!(r.subjects["subject"], "S4");
        // With diversion advice: destinations, roads to avoid, alternatives.
        use crate::alert::advice::{Advice, Destination, Road};
        let road = |grade| Road {
            segment: "R2".into(),
            name: "长征大道–南河大桥".into(),
            grade,
            label: "中度拥堵".into(),
        };
        let mut advised = e.clone();
        advised.alert.calendar = Some("国庆节（黄金周） (national-day-2026): 容量上限 75%".into());
        advised.alert.advice = Some(Advice {
            divert_to: vec![Destination {
                area: "S5".into(),
                name: "方特东方欲晓".into(),
                occupancy_ratio: 0.45,
                distance_km: Some(9.3),
                mode: Some("drive".into()),
                straight_line: true,
            }],
            avoid: vec![road(Some(4))],
            alternatives: vec![road(None)],
            text: "分流：方特东方欲晓（在园 45%，直线约 9.3 km，驾车）".into(),
        });
        let r = x.alert("citysense.alerts", 8, &advised);
        validate(&r);
        assert_eq!(
            r.alert.as_ref().unwrap().advice,
            advised.alert.advice,
            "the record carries the advice"
        );

        let reading = |device: &str, kind: &str, m: Measurement| Reading {
            device: Arc::from(device),
            zone: Arc::from("360702"),
            kind: Arc::from(kind),
            time_ms: T,
            received_ms: T + 600_000,
            unsynced_clock: true,
            origin: Some((1, 9)),
            measurement: m,
        };
        let all = [
            Measurement::Passage {
                tag: crate::reading::Tag::from(0xaa),
                entry: true,
            },
            Measurement::Counts {
                entries: 3,
                exits: 1,
                interval_s: 60,
            },
            Measurement::Lane {
                lane: 2,
                vehicles: 5,
                occupancy_pct: 10.0,
                speed_kmh: Some(30.0),
                interval_s: 30,
            },
            Measurement::Value {
                field: "pressure".into(),
                value: 0.3,
                urgent: false,
            },
            Measurement::Status {
                battery_pct: Some(80),
                signal_dbm: -70,
                uptime_s: 100,
                firmware: "1.0.0".into(),
                key_fingerprint: "ab".into(),
            },
        ];
        for m in all {
            let r = x.reading(
                "citysense.raw",
                3,
                &reading("gz-p1-press", "pipe-pressure", m),
                120_000,
            );
            validate(&r);
            assert!(r.quality.late && r.quality.unsynced_clock, "{r:?}");
            assert!(
                !serde_json::to_string(&r).unwrap().contains("\"ab\""),
                "no key fingerprint upstream"
            );
        }
    }

    #[test]
    fn the_schema_refuses_what_it_should() {
        let schema: Value = serde_json::from_str(SCHEMA_JSON).unwrap();
        let v = jsonschema::validator_for(&schema).unwrap();
        let p = Point {
            measurement: "crowd".into(),
            tags: vec![("area".into(), "S4".into())],
            fields: vec![("occupancy".into(), FieldValue::Int(600))],
            time_ms: T,
            quality: Quality::default(),
        };
        let good =
            serde_json::to_value(exchange().point("citysense.aggregates", 1, &p, None)).unwrap();
        assert!(v.is_valid(&good));
        assert_eq!(good["region"], "360700", "no district: the city's code");
        for (path, bad) in [
            ("/region", Value::from("36070")),
            ("/event_time", Value::from("2026-10-01 10:00")),
            ("/fields/occupancy/unit", Value::Null),
            ("/source/stream", Value::from("points")),
        ] {
            let mut b = good.clone();
            *b.pointer_mut(path).unwrap() = bad;
            assert!(!v.is_valid(&b), "{path} accepted");
        }
        let mut extra = good.clone();
        extra["unexpected"] = Value::from(1);
        assert!(!v.is_valid(&extra));
    }
}
