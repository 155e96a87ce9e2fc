//! A [`Point`]: one time-series row (InfluxDB's model), and its line-protocol encoding.
//!
//! Points are idempotent: measurement, tags and timestamp are deterministic functions of the
//! readings and the window they fall in, so writing a point twice overwrites it (InfluxDB) or is
//! removed by deduplication (VictoriaMetrics with `-dedup.minScrapeInterval`).

use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// A field value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FieldValue {
    /// A float (written as is).
    Float(f64),
    /// A signed integer (written with the `i` suffix).
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A string (quoted).
    Str(String),
}

/// How far a point can be trusted (forwarded to the city platform; not in line protocol).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quality {
    /// The window was emitted again: data arrived after it first closed.
    #[serde(default)]
    pub late: bool,
    /// Some reading in the window came from a node whose clock was not set (receive time used).
    #[serde(default)]
    pub unsynced_clock: bool,
    /// A value is estimated: a congestion grade from occupancy (no speed), or an occupancy
    /// clamped after count drift.
    #[serde(default)]
    pub estimated: bool,
}

impl Quality {
    /// No flag set.
    pub fn is_clean(&self) -> bool {
        *self == Quality::default()
    }
}

/// One row of a time series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// `crowd`, `traffic`, `pipe`, `device_health`.
    pub measurement: String,
    /// Identifying tags, in a fixed order.
    pub tags: Vec<(String, String)>,
    /// Values. Non-finite floats are left out when encoding (line protocol has no NaN).
    pub fields: Vec<(String, FieldValue)>,
    /// Unix milliseconds: the end of the window the point summarises.
    pub time_ms: i64,
    /// Quality flags.
    #[serde(default, skip_serializing_if = "Quality::is_clean")]
    pub quality: Quality,
}

/// Escapes a name or tag value. Line protocol cannot carry a backslash at the end of a name
/// and gives no reliable way to escape one, so backslashes become '/' (CitySense's own names
/// never contain them); line breaks become spaces.
fn escape(out: &mut String, s: &str, specials: &[char]) {
    for c in s.chars() {
        let c = match c {
            '\\' => '/',
            '\n' | '\r' | '\t' => ' ',
            c => c,
        };
        if specials.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

impl Point {
    /// Appends this point as one line of line protocol (millisecond precision) to `out`. Returns
    /// `false` and appends nothing when no field is writable (all non-finite) or a name is empty.
    pub fn write_line(&self, out: &mut String) -> bool {
        let fields: Vec<&(String, FieldValue)> = self
            .fields
            .iter()
            .filter(|(k, v)| !k.is_empty() && !matches!(v, FieldValue::Float(f) if !f.is_finite()))
            .collect();
        if fields.is_empty() || self.measurement.is_empty() {
            return false;
        }
        escape(out, &self.measurement, &[',', ' ']);
        for (k, v) in &self.tags {
            if k.is_empty() || v.is_empty() {
                continue; // line protocol has no empty tag values
            }
            out.push(',');
            escape(out, k, &[',', '=', ' ']);
            out.push('=');
            escape(out, v, &[',', '=', ' ']);
        }
        for (i, (k, v)) in fields.into_iter().enumerate() {
            out.push(if i == 0 { ' ' } else { ',' });
            escape(out, k, &[',', '=', ' ']);
            out.push('=');
            match v {
                FieldValue::Float(f) => {
                    let _ = write!(out, "{f:?}");
                }
                FieldValue::Int(i) => {
                    let _ = write!(out, "{i}i");
                }
                FieldValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                FieldValue::Str(s) => {
                    out.push('"');
                    for c in s.chars() {
                        if c == '"' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('"');
                }
            }
        }
        let _ = writeln!(out, " {}", self.time_ms);
        true
    }

    /// The point as one line of line protocol.
    pub fn line(&self) -> String {
        let mut s = String::new();
        self.write_line(&mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use influxdb_line_protocol::{FieldValue as Parsed, parse_lines};
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_point_encodes_as_documented() {
        let p = Point {
            measurement: "pipe".into(),
            tags: vec![
                ("asset".into(), "P1".into()),
                ("field".into(), "pressure".into()),
            ],
            fields: vec![
                ("mean".into(), FieldValue::Float(0.3)),
                ("n".into(), FieldValue::Int(5)),
            ],
            time_ms: 1_759_284_060_000,
            quality: Default::default(),
        };
        assert_eq!(
            p.line(),
            "pipe,asset=P1,field=pressure mean=0.3,n=5i 1759284060000\n"
        );
    }

    #[test]
    fn non_finite_fields_are_left_out() {
        let p = Point {
            measurement: "m".into(),
            tags: vec![],
            fields: vec![
                ("a".into(), FieldValue::Float(f64::NAN)),
                ("b".into(), FieldValue::Float(1.0)),
            ],
            time_ms: 1,
            quality: Default::default(),
        };
        assert_eq!(p.line(), "m b=1.0 1\n");
    }

    fn text() -> impl Strategy<Value = String> {
        // Printable text with every character line protocol must escape, plus CJK names.
        "[a-zA-Z0-9 ,=\"_.\\-赣州红旗大道]{1,12}"
    }

    fn value_text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 ,=\"\\\\_.\\-赣州]{0,12}"
    }

    #[test]
    fn backslashes_in_names_become_slashes() {
        let p = Point {
            measurement: "a\\b".into(),
            tags: vec![],
            fields: vec![("f\\".into(), FieldValue::Int(1))],
            time_ms: 0,
            quality: Default::default(),
        };
        assert_eq!(p.line(), "a/b f/=1i 0\n");
    }

    proptest! {
        #[test]
        fn line_protocol_parses_back_to_the_same_values(
            measurement in text().prop_filter("no leading #", |s| !s.starts_with('#')),
            tags in proptest::collection::vec((text(), text()), 0..4),
            floats in proptest::collection::vec((text(), any::<f64>().prop_filter("finite", |f| f.is_finite())), 1..4),
            int in any::<i64>(),
            string in value_text(),
            flag in any::<bool>(),
            time_ms in 0i64..4_000_000_000_000,
        ) {
            let mut fields: Vec<(String, FieldValue)> = floats.into_iter().map(|(k, v)| (format!("f_{k}"), FieldValue::Float(v))).collect();
            fields.push(("i".into(), FieldValue::Int(int)));
            fields.push(("s".into(), FieldValue::Str(string.clone())));
            fields.push(("b".into(), FieldValue::Bool(flag)));
            let mut tags = tags;
            tags.sort();
            tags.dedup_by(|a, b| a.0 == b.0);
            let p = Point { measurement: measurement.clone(), tags: tags.clone(), fields: fields.clone(), time_ms, quality: Quality::default() };
            let line = p.line();
            let parsed: Vec<_> = parse_lines(&line).collect();
            prop_assert_eq!(parsed.len(), 1, "{}", line);
            let parsed = parsed.into_iter().next().unwrap().map_err(|e| TestCaseError::fail(format!("{e}: {line}")))?;
            prop_assert_eq!(parsed.series.measurement.to_string(), measurement);
            let got_tags: Vec<(String, String)> = parsed.series.tag_set.unwrap_or_default().iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            prop_assert_eq!(got_tags, tags);
            prop_assert_eq!(parsed.timestamp, Some(time_ms));
            prop_assert_eq!(parsed.field_set.len(), fields.len());
            for ((k, v), (pk, pv)) in fields.iter().zip(parsed.field_set.iter()) {
                prop_assert_eq!(k, &pk.to_string());
                match (v, pv) {
                    (FieldValue::Float(a), Parsed::F64(b)) => prop_assert_eq!(a.to_bits(), b.to_bits()),
                    (FieldValue::Int(a), Parsed::I64(b)) => prop_assert_eq!(a, b),
                    (FieldValue::Bool(a), Parsed::Boolean(b)) => prop_assert_eq!(a, b),
                    (FieldValue::Str(a), Parsed::String(b)) => prop_assert_eq!(a, &b.to_string()),
                    (a, b) => prop_assert!(false, "{:?} parsed as {:?}", a, b),
                }
            }
        }
    }
}
