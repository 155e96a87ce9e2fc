//! `GET /api/v1/situation`: the site as the console's situation page draws it. Every scenic
//! area, choke point, road segment and pipe asset of the site file with its place on the map,
//! its newest aggregate (occupancy against capacity and the 30-minute forecast; congestion
//! grade, speed and TPI; the last value of each pipe field) and its worst open alert; devices
//! offline and low on battery counted.
//!
//! Colours come from the alerts, not from thresholds of its own: the map shows what the rules
//! (with their hysteresis, holds and policy caps) decided.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{AppState, bad_request};
use crate::alert::Alert;
use crate::clock::now_ms;
use crate::point::{FieldValue, Point};
use crate::registry::Presence;
use device_profiles::site::LatLon;

/// How far back the situation looks for a subject's newest point.
const LOOK_BACK_MS: i64 = 24 * 3_600_000;
/// Most rows read per measurement.
const SCAN_ROWS: usize = 20_000;

/// The worst open alert on a subject.
#[derive(Debug, Serialize)]
struct Worst<'a> {
    id: &'a str,
    rule: &'a str,
    severity: &'a str,
    label: &'a str,
    grade: u8,
}

/// A subject's newest aggregate: its fields by name and when its window ended.
#[derive(Debug, Serialize)]
struct Latest {
    at_ms: i64,
    fields: Map<String, Value>,
}

#[derive(Debug, Serialize)]
struct Subject<'a> {
    id: &'a str,
    name: &'a str,
    zone: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<LatLon>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ends: Option<[LatLon; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    latest: Option<Latest>,
    /// Pipe assets: the newest point of each field.
    #[serde(skip_serializing_if = "Map::is_empty")]
    fields: Map<String, Value>,
    alert: Option<Worst<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    choke_points: Vec<Subject<'a>>,
}

impl<'a> Subject<'a> {
    /// A subject with nothing known about it yet.
    fn named(id: &'a str, name: &'a str, zone: &'a str) -> Subject<'a> {
        Subject {
            id,
            name,
            zone,
            location: None,
            ends: None,
            capacity: None,
            kind: None,
            latest: None,
            fields: Map::new(),
            alert: None,
            choke_points: Vec::new(),
        }
    }
}

/// A point's fields as JSON values.
fn fields_of(p: &Point) -> Map<String, Value> {
    p.fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                FieldValue::Float(f) => {
                    serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
                }
                FieldValue::Int(i) => Value::from(*i),
                FieldValue::Bool(b) => Value::from(*b),
                FieldValue::Str(s) => Value::from(s.as_str()),
            };
            (k.clone(), v)
        })
        .collect()
}

fn tag<'p>(p: &'p Point, key: &str) -> Option<&'p str> {
    p.tags
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `GET /api/v1/situation`.
pub async fn situation(State(s): State<AppState>) -> Response {
    let (store, now) = (s.store.clone(), now_ms());
    let read = tokio::task::spawn_blocking(move || {
        let since = now - LOOK_BACK_MS;
        Ok::<_, crate::store::StoreError>((
            store.latest_points("crowd", since, SCAN_ROWS)?,
            store.latest_points("traffic", since, SCAN_ROWS)?,
            store.latest_points("pipe", since, SCAN_ROWS)?,
        ))
    })
    .await;
    let Ok(Ok((crowd, traffic, pipe))) = read else {
        return bad_request(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the latest aggregates from the local store".into(),
        );
    };
    let open: Vec<Alert> = s
        .alerts
        .engine
        .lock()
        .map(|e| e.open_alerts())
        .unwrap_or_default();
    let mut counts = HashMap::<&str, usize>::new();
    if let Ok(registry) = s.registry.lock() {
        for d in registry.iter() {
            let presence = match d.presence(now) {
                Presence::Online => "online",
                Presence::Offline => "offline",
                Presence::Unknown => "unknown",
            };
            *counts.entry(presence).or_default() += 1;
        }
    }
    let low_battery = open
        .iter()
        // Profiles with other thresholds get rules of their own: `device.low_battery@kind`.
        .filter(|a| a.rule.split('@').next() == Some("device.low_battery"))
        .count();

    // Worst open alert per (category, subject); crowd colours come from the occupancy rules.
    let worst = |category: &str, subject: &str, rules: &[&str]| {
        open.iter()
            .filter(|a| a.category.name() == category && a.subject == subject)
            .filter(|a| rules.is_empty() || rules.contains(&a.rule.as_str()))
            .max_by_key(|a| a.grade)
            .map(|a| Worst {
                id: &a.id,
                rule: &a.rule,
                severity: &a.severity,
                label: &a.label,
                grade: a.grade,
            })
    };
    let latest = |p: &Point| Latest {
        at_ms: p.time_ms,
        fields: fields_of(p),
    };
    let crowd_of = |area: &str, choke: Option<&str>| {
        crowd
            .iter()
            .find(|p| tag(p, "area") == Some(area) && tag(p, "choke_point") == choke)
            .map(latest)
    };
    let catalog = s.catalog.load();
    let site = &catalog.site;
    let areas: Vec<Subject> = site
        .scenic_areas
        .iter()
        .map(|a| Subject {
            location: a.location,
            capacity: Some(a.capacity.instantaneous),
            latest: crowd_of(&a.id, None),
            alert: worst("crowd", &a.id, &["crowd.occupancy"]),
            choke_points: a
                .choke_points
                .iter()
                .map(|c| Subject {
                    capacity: Some(c.capacity),
                    latest: crowd_of(&a.id, Some(&c.id)),
                    alert: worst("crowd", &c.id, &["crowd.choke_point"]),
                    ..Subject::named(&c.id, &c.name, &a.zone)
                })
                .collect(),
            ..Subject::named(&a.id, &a.name, &a.zone)
        })
        .collect();
    let segments: Vec<Subject> = site
        .road_segments
        .iter()
        .map(|r| Subject {
            ends: r.ends,
            latest: segment_latest(&traffic, &r.id).map(latest),
            alert: worst("traffic", &r.id, &[]),
            ..Subject::named(&r.id, &r.name, &r.zone)
        })
        .collect();
    let assets: Vec<Subject> = site
        .pipe_assets
        .iter()
        .map(|a| Subject {
            location: a.location,
            kind: Some(asset_kind(a.kind)),
            fields: pipe
                .iter()
                .filter(|p| tag(p, "asset") == Some(&a.id))
                .filter_map(|p| {
                    let field = tag(p, "field")?;
                    let last = fields_of(p).remove("last")?;
                    Some((field.to_owned(), last))
                })
                .collect(),
            alert: worst("pipe", &a.id, &[]),
            ..Subject::named(&a.id, &a.name, &a.zone)
        })
        .collect();
    Json(serde_json::json!({
        "site": { "id": site.site.id, "name": site.site.name },
        "districts": site.districts.iter().map(|d| serde_json::json!({"code": d.code, "name": d.name})).collect::<Vec<_>>(),
        "now_ms": now,
        "areas": areas,
        "segments": segments,
        "assets": assets,
        "devices": {
            "online": counts.get("online").copied().unwrap_or(0),
            "offline": counts.get("offline").copied().unwrap_or(0),
            "unknown": counts.get("unknown").copied().unwrap_or(0),
            "low_battery": low_battery,
        },
        "open_alerts": open.len(),
    }))
    .into_response()
}

/// A segment's newest whole-road point: its 5-minute bin (what congestion is graded on) while
/// one closed in the last ten minutes, else its 1-minute bin (a gateway just started, or a
/// detector that came back).
fn segment_latest<'p>(traffic: &'p [Point], segment: &str) -> Option<&'p Point> {
    let of_bin = |bin: &str| {
        traffic.iter().find(|p| {
            tag(p, "segment") == Some(segment)
                && tag(p, "bin") == Some(bin)
                && tag(p, "lane").is_none()
        })
    };
    let one = of_bin("1m");
    match (of_bin("5m"), one) {
        (Some(five), Some(one)) if one.time_ms - five.time_ms > 10 * 60_000 => Some(one),
        (Some(five), _) => Some(five),
        (None, one) => one,
    }
}

fn asset_kind(k: device_profiles::site::PipeAssetKind) -> &'static str {
    use device_profiles::site::PipeAssetKind::*;
    match k {
        WaterMain => "water_main",
        DrainageWell => "drainage_well",
        UtilityTunnel => "utility_tunnel",
        Manhole => "manhole",
        PumpStation => "pump_station",
    }
}
