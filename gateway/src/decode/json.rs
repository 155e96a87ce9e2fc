//! Third-party JSON payloads (for example commercial manhole covers) to readings, through the
//! profile's field mapping: size, nesting and syntax first, then the mapped fields.

use device_profiles::Profile;
use serde_json::Value as Json;

use crate::reading::{Measurement, Reading};
use crate::registry::DeviceInfo;

use super::verify::check_range;
use super::{Rejection, reject};

/// Deepest nesting of arrays and objects in `bytes`, stopping early past `limit`. Strings are
/// skipped so brackets inside them do not count.
fn json_depth_exceeds(bytes: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

pub(super) fn json_report(
    info: &DeviceInfo,
    profile: &Profile,
    payload: &[u8],
    now_ms: i64,
) -> Result<Vec<Reading>, Rejection> {
    let Some(mapping) = &profile.json else {
        return Err(reject(
            "unknown_device",
            format!("profile {} has no JSON mapping", profile.kind),
        ));
    };
    if payload.len() > mapping.max_payload_bytes {
        return Err(reject(
            "oversized",
            format!(
                "{} bytes of JSON, the profile allows {}",
                payload.len(),
                mapping.max_payload_bytes
            ),
        ));
    }
    if json_depth_exceeds(payload, mapping.max_depth) {
        return Err(reject(
            "too_deep",
            format!("JSON nested deeper than {} levels", mapping.max_depth),
        ));
    }
    let doc: Json = serde_json::from_slice(payload)
        .map_err(|e| reject("malformed_json", format!("not JSON: {e}")))?;
    let id = doc
        .pointer(&mapping.device_id)
        .ok_or_else(|| {
            reject(
                "missing_field",
                format!("no device id at {}", mapping.device_id),
            )
        })?
        .as_str()
        .ok_or_else(|| {
            reject(
                "wrong_type",
                format!("device id at {} is not a string", mapping.device_id),
            )
        })?;
    if id != &*info.id {
        return Err(reject(
            "device_mismatch",
            format!(
                "a payload of device \"{id}\" was published on the topic of \"{}\"",
                info.id
            ),
        ));
    }
    let (time_ms, unsynced) = match &mapping.timestamp {
        None => (now_ms, true),
        Some(ptr) => {
            let ts = doc
                .pointer(ptr)
                .ok_or_else(|| reject("missing_field", format!("no timestamp at {ptr}")))?
                .as_f64()
                .ok_or_else(|| {
                    reject("wrong_type", format!("timestamp at {ptr} is not a number"))
                })?;
            let ms = match mapping.timestamp_unit {
                device_profiles::profile::TimestampUnit::S => ts * 1000.0,
                device_profiles::profile::TimestampUnit::Ms => ts,
            };
            if !(0.0..=1.0e15).contains(&ms) {
                return Err(reject(
                    "out_of_range",
                    format!("timestamp {ts} is not a plausible time"),
                ));
            }
            (ms as i64, false)
        }
    };
    let mut out = Vec::with_capacity(profile.fields.len());
    for f in &profile.fields {
        let Some(ptr) = &f.pointer else { continue };
        let Some(v) = doc.pointer(ptr) else {
            return Err(reject("missing_field", format!("no {} at {ptr}", f.name)));
        };
        let value = match (v, &f.map) {
            (Json::Number(n), _) => n.as_f64().unwrap_or(f64::NAN),
            (Json::String(s), Some(map)) => *map.get(s).ok_or_else(|| {
                reject(
                    "out_of_range",
                    format!(
                        "{} \"{s}\" is not one of {:?}",
                        f.name,
                        map.keys().collect::<Vec<_>>()
                    ),
                )
            })?,
            _ => {
                return Err(reject(
                    "wrong_type",
                    format!("{} at {ptr} is {v}, not a number", f.name),
                ));
            }
        };
        check_range(profile, &f.name, value)?;
        out.push(Reading {
            device: info.id.clone(),
            zone: info.zone.clone(),
            kind: info.kind.clone(),
            time_ms,
            received_ms: now_ms,
            unsynced_clock: unsynced,
            origin: None,
            measurement: Measurement::Value {
                field: f.name.clone().into(),
                value,
                urgent: false,
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_ignores_brackets_in_strings() {
        assert!(!json_depth_exceeds(br#"{"a": "[[[[[[[[[["}"#, 2));
        assert!(json_depth_exceeds(br#"{"a": [[[1]]]}"#, 3));
        assert!(!json_depth_exceeds(br#"{"a": [[1]]}"#, 3));
        assert!(!json_depth_exceeds(br#"{"a": "\"[[[["}"#, 1));
    }
}
