//! How a reading is kept in its row: the device, the two times and the device's previous
//! reading in columns of their own, the rest in `body`.
//!
//! # Formats of `body`
//!
//! - **Schema 2** (this release) writes a BLOB: [`Compact`] in postcard, about 45 bytes for a
//!   pipe value. A reading's row is about 90 bytes on its page, against 194 as JSON: the
//!   readings are most of what the store writes (BENCHMARKS.md, "Edge write volume").
//! - **Schema 1** wrote JSON text ([`Json`]); before it the text held the whole reading,
//!   columns included. Both still decode, the extra fields ignored.
//!
//! SQLite keeps each value's own type, so the two live side by side in one column, told apart
//! by it: a store upgraded from schema 1 is not rewritten at open (a day of readings would be
//! hours of writes on the very flash this format saves), its JSON rows are read as they are
//! until retention removes them.
//!
//! The variants of [`Stored`] and the fields of [`Compact`] are the format: postcard writes
//! neither names nor a version, only the variant's index and the fields in order. New variants
//! go at the end; a change to a field is a new schema.

use std::borrow::Cow;
use std::sync::Arc;

use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};

use crate::reading::{Measurement, Reading, Tag};

/// A reading's body in schema 2.
#[derive(Debug, Serialize, Deserialize)]
struct Compact<'a> {
    #[serde(borrow)]
    zone: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    unsynced_clock: bool,
    origin: Option<(u32, u32)>,
    #[serde(borrow)]
    measurement: Stored<'a>,
}

/// [`Measurement`] as schema 2 stores it (externally tagged, which postcard can read back).
#[derive(Debug, Serialize, Deserialize)]
enum Stored<'a> {
    Passage {
        tag: [u8; 8],
        entry: bool,
    },
    Counts {
        entries: u32,
        exits: u32,
        interval_s: u16,
    },
    Lane {
        lane: u8,
        vehicles: u16,
        occupancy_pct: f64,
        speed_kmh: Option<f64>,
        interval_s: u16,
    },
    Value {
        #[serde(borrow)]
        field: Cow<'a, str>,
        value: f64,
        urgent: bool,
    },
    Status {
        battery_pct: Option<u8>,
        signal_dbm: i8,
        uptime_s: u32,
        #[serde(borrow)]
        firmware: Cow<'a, str>,
        #[serde(borrow)]
        key_fingerprint: Cow<'a, str>,
    },
    Occupancy {
        count: u32,
    },
}

impl<'a> From<&'a Measurement> for Stored<'a> {
    fn from(m: &'a Measurement) -> Stored<'a> {
        match m {
            Measurement::Passage { tag, entry } => Stored::Passage {
                tag: tag.0,
                entry: *entry,
            },
            Measurement::Counts {
                entries,
                exits,
                interval_s,
            } => Stored::Counts {
                entries: *entries,
                exits: *exits,
                interval_s: *interval_s,
            },
            Measurement::Lane {
                lane,
                vehicles,
                occupancy_pct,
                speed_kmh,
                interval_s,
            } => Stored::Lane {
                lane: *lane,
                vehicles: *vehicles,
                occupancy_pct: *occupancy_pct,
                speed_kmh: *speed_kmh,
                interval_s: *interval_s,
            },
            Measurement::Value {
                field,
                value,
                urgent,
            } => Stored::Value {
                field: Cow::Borrowed(field),
                value: *value,
                urgent: *urgent,
            },
            Measurement::Status {
                battery_pct,
                signal_dbm,
                uptime_s,
                firmware,
                key_fingerprint,
            } => Stored::Status {
                battery_pct: *battery_pct,
                signal_dbm: *signal_dbm,
                uptime_s: *uptime_s,
                firmware: Cow::Borrowed(firmware),
                key_fingerprint: Cow::Borrowed(key_fingerprint),
            },
            Measurement::Occupancy { count } => Stored::Occupancy { count: *count },
        }
    }
}

impl From<Stored<'_>> for Measurement {
    fn from(s: Stored<'_>) -> Measurement {
        match s {
            Stored::Passage { tag, entry } => Measurement::Passage {
                tag: Tag(tag),
                entry,
            },
            Stored::Counts {
                entries,
                exits,
                interval_s,
            } => Measurement::Counts {
                entries,
                exits,
                interval_s,
            },
            Stored::Lane {
                lane,
                vehicles,
                occupancy_pct,
                speed_kmh,
                interval_s,
            } => Measurement::Lane {
                lane,
                vehicles,
                occupancy_pct,
                speed_kmh,
                interval_s,
            },
            Stored::Value {
                field,
                value,
                urgent,
            } => Measurement::Value {
                field: Cow::Owned(field.into_owned()),
                value,
                urgent,
            },
            Stored::Status {
                battery_pct,
                signal_dbm,
                uptime_s,
                firmware,
                key_fingerprint,
            } => Measurement::Status {
                battery_pct,
                signal_dbm,
                uptime_s,
                firmware: firmware.into_owned(),
                key_fingerprint: key_fingerprint.into_owned(),
            },
            Stored::Occupancy { count } => Measurement::Occupancy { count },
        }
    }
}

/// Appends the schema 2 body of `r` to `out`, and returns it.
pub(super) fn encode(r: &Reading, out: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
    let compact = Compact {
        zone: Cow::Borrowed(&r.zone),
        kind: Cow::Borrowed(&r.kind),
        unsynced_clock: r.unsynced_clock,
        origin: r.origin,
        measurement: Stored::from(&r.measurement),
    };
    postcard::to_extend(&compact, out)
}

/// A reading's body in schema 1, as read back.
#[derive(Deserialize)]
struct Json {
    zone: Arc<str>,
    kind: Arc<str>,
    #[serde(default)]
    unsynced_clock: bool,
    #[serde(default)]
    origin: Option<(u32, u32)>,
    measurement: Measurement,
}

/// Why a row's body did not decode.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    /// A schema 1 body that is not the JSON of a reading.
    #[error("JSON body: {0}")]
    Json(#[from] serde_json::Error),
    /// A schema 2 body that is not the postcard of a reading.
    #[error("compact body: {0}")]
    Compact(#[from] postcard::Error),
    /// Neither text nor a BLOB.
    #[error("body is {0}, neither JSON text nor a compact BLOB")]
    Type(&'static str),
}

/// What a row's body column holds.
pub(super) fn body_bytes(v: ValueRef<'_>) -> Result<(bool, &[u8]), BodyError> {
    match v {
        ValueRef::Blob(b) => Ok((true, b)),
        ValueRef::Text(t) => Ok((false, t)),
        ValueRef::Null => Err(BodyError::Type("NULL")),
        ValueRef::Integer(_) => Err(BodyError::Type("an integer")),
        ValueRef::Real(_) => Err(BodyError::Type("a real")),
    }
}

/// The reading of a row: its body (compact when `compact`, JSON otherwise) with its columns.
pub(super) fn decode(
    compact: bool,
    body: &[u8],
    device: &str,
    time_ms: i64,
    received_ms: i64,
) -> Result<Reading, BodyError> {
    let (zone, kind, unsynced_clock, origin, measurement) = if compact {
        let c: Compact = postcard::from_bytes(body)?;
        (
            Arc::from(&*c.zone),
            Arc::from(&*c.kind),
            c.unsynced_clock,
            c.origin,
            Measurement::from(c.measurement),
        )
    } else {
        let j: Json = serde_json::from_slice(body)?;
        (j.zone, j.kind, j.unsynced_clock, j.origin, j.measurement)
    };
    Ok(Reading {
        device: Arc::from(device),
        zone,
        kind,
        time_ms,
        received_ms,
        unsynced_clock,
        origin,
        measurement,
    })
}

/// The `(epoch, sequence)` a row's body names, without decoding the rest (for the device
/// replay at open).
pub(super) fn origin(compact: bool, body: &[u8]) -> Result<Option<(u32, u32)>, BodyError> {
    if compact {
        /// The fields before the measurement, which is left unread.
        #[derive(Deserialize)]
        struct Head<'a> {
            #[serde(borrow)]
            _zone: &'a str,
            #[serde(borrow)]
            _kind: &'a str,
            _unsynced_clock: bool,
            origin: Option<(u32, u32)>,
        }
        let (head, _rest): (Head, _) = postcard::take_from_bytes(body)?;
        Ok(head.origin)
    } else {
        #[derive(Deserialize)]
        struct Origin {
            #[serde(default)]
            origin: Option<(u32, u32)>,
        }
        Ok(serde_json::from_slice::<Origin>(body)?.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings() -> Vec<Reading> {
        let base = |measurement| Reading {
            device: Arc::from("gz-x"),
            zone: Arc::from("360702"),
            kind: Arc::from("water-pressure"),
            time_ms: 1_000,
            received_ms: 1_040,
            unsynced_clock: false,
            origin: Some((3, 9)),
            measurement,
        };
        vec![
            base(Measurement::Passage {
                tag: Tag::from(7),
                entry: false,
            }),
            base(Measurement::Counts {
                entries: 1,
                exits: 2,
                interval_s: 60,
            }),
            base(Measurement::Lane {
                lane: 1,
                vehicles: 2,
                occupancy_pct: 3.5,
                speed_kmh: None,
                interval_s: 60,
            }),
            Reading {
                unsynced_clock: true,
                origin: None,
                ..base(Measurement::Value {
                    field: Cow::Borrowed("pressure"),
                    value: 0.31,
                    urgent: true,
                })
            },
            base(Measurement::Status {
                battery_pct: None,
                signal_dbm: -80,
                uptime_s: 5,
                firmware: "1.0.0".into(),
                key_fingerprint: "ff".into(),
            }),
            base(Measurement::Occupancy { count: 9 }),
        ]
    }

    #[test]
    fn every_measurement_comes_back_from_its_compact_body_with_its_origin() {
        for r in readings() {
            let body = encode(&r, Vec::new()).unwrap();
            let back = decode(true, &body, &r.device, r.time_ms, r.received_ms).unwrap();
            assert_eq!(back, r);
            assert_eq!(origin(true, &body).unwrap(), r.origin);
        }
    }

    #[test]
    fn a_compact_body_is_a_quarter_of_the_json_one() {
        let r = &readings()[3];
        let body = encode(r, Vec::new()).unwrap();
        let json = r#"{"zone":"360702","kind":"water-pressure","unsynced_clock":true,"measurement":{"type":"value","field":"pressure","value":0.31,"urgent":true}}"#;
        assert_eq!(
            decode(false, json.as_bytes(), "gz-x", 1_000, 1_040).unwrap(),
            *r
        );
        assert!(body.len() * 3 < json.len(), "{} bytes", body.len());
    }

    #[test]
    fn a_damaged_body_is_an_error_that_says_which_format() {
        let r = &readings()[3];
        let mut body = encode(r, Vec::new()).unwrap();
        body.truncate(body.len() - 4);
        let e = decode(true, &body, "gz-x", 0, 0).unwrap_err();
        assert!(e.to_string().starts_with("compact body:"), "{e}");
        let e = decode(false, b"{not json", "gz-x", 0, 0).unwrap_err();
        assert!(e.to_string().starts_with("JSON body:"), "{e}");
        assert!(body_bytes(ValueRef::Null).is_err());
    }
}
