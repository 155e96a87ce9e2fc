//! HTTP on one port: `/metrics`, `/healthz`, `/readyz` (open), the console (`/`, `/console/`:
//! [`console`], a page that logs in), `POST /api/v1/login`, and, for a session or an API token
//! only ([`session`]): `POST /api/v1/logout`, `GET /api/v1/whoami`, `/api/v1/devices`,
//! `/api/v1/devices/{id}`, `/api/v1/series`, `/api/v1/situation` ([`situation`]),
//! `GET /api/v1/alerts`, `/api/v1/alerts/stream` ([`live`]), `/api/v1/alerts/{id}` ([`detail`]),
//! `POST /api/v1/alerts/{id}/ack|assign|comment`, `POST /api/v1/areas/{id}/occupancy`.

pub mod console;
pub mod detail;
pub mod live;
pub mod session;
pub mod situation;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde::Serialize;

use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::reading::Reading;
use crate::registry::{Device, Presence, Registry};
use crate::store::Store;

/// Readings shown with one device.
const RECENT_READINGS: usize = 16;

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Device state.
    pub registry: Arc<Mutex<Registry>>,
    /// Recent readings.
    pub store: Arc<Store>,
    /// Metrics.
    pub metrics: Metrics,
    /// Why sinks are not ready, by sink.
    pub not_ready: crate::sink::NotReady,
    /// The alert engine.
    pub alerts: crate::pipeline::alerts::Alerts,
    /// The profiles and the site (names, capacities, places on the map); a reload replaces it.
    pub catalog: Arc<arc_swap::ArcSwap<device_profiles::Catalog>>,
    /// Readings that enter the pipeline beside the sources (an operator's count).
    pub readings: tokio::sync::mpsc::Sender<Vec<Reading>>,
    /// The open login sessions.
    pub sessions: Arc<session::Sessions>,
    /// The listener serves HTTPS: session cookies are `Secure`.
    pub secure_cookies: bool,
    /// Becomes `true` when the gateway stops: open streams end (the server waits for them).
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// `/metrics` needs a session or a token like `/api/v1` (`http.metrics_need_identity`).
    pub metrics_need_identity: bool,
}

/// The routes.
pub fn router(state: AppState) -> Router {
    let who = axum::middleware::from_fn_with_state(state.clone(), session::authenticate);
    let metrics_route = Router::new().route("/metrics", get(metrics));
    let metrics_route = match state.metrics_need_identity {
        true => metrics_route.route_layer(who.clone()),
        false => metrics_route,
    };
    let identified = Router::new()
        .route("/api/v1/logout", axum::routing::post(logout))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/devices/{id}", get(device))
        .route("/api/v1/series", get(series))
        .route("/api/v1/situation", get(situation::situation))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/stream", get(live::alerts_stream))
        .route("/api/v1/alerts/{id}", get(alert_timeline))
        .route("/api/v1/alerts/{id}/ack", axum::routing::post(ack))
        .route("/api/v1/alerts/{id}/assign", axum::routing::post(assign))
        .route("/api/v1/alerts/{id}/comment", axum::routing::post(comment))
        .route(
            "/api/v1/areas/{id}/occupancy",
            axum::routing::post(set_occupancy),
        )
        .route_layer(who)
        .layer(compression());
    Router::new()
        .merge(metrics_route)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/login", axum::routing::post(login))
        .merge(identified)
        .merge(console::routes())
        .with_state(state)
}

/// JSON for the console and machines, gzipped when asked and worth it (the device list of a
/// large site is hundreds of kilobytes; a `whoami` would grow); event streams never (a browser
/// must see each event as it is sent).
fn compression()
-> tower_http::compression::CompressionLayer<impl tower_http::compression::Predicate> {
    use tower_http::compression::Predicate;
    use tower_http::compression::predicate::{NotForContentType, SizeAbove};
    tower_http::compression::CompressionLayer::new()
        .compress_when(SizeAbove::new(1024).and(NotForContentType::SSE))
}

/// Appends to the audit trail off the async threads; a failure is logged (the change stands).
async fn audit(s: &AppState, entry: crate::store::AuditEntry) {
    let store = s.store.clone();
    let done = tokio::task::spawn_blocking(move || store.audit(now_ms(), &entry)).await;
    if !matches!(done, Ok(Ok(_))) {
        tracing::error!("cannot append to the audit trail");
    }
}

fn entry(
    who: &str,
    from: &str,
    (action, target): (&str, &str),
    (outcome, detail): (&str, &str),
) -> crate::store::AuditEntry {
    crate::store::AuditEntry {
        actor: who.to_owned(),
        source: from.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        outcome: outcome.to_owned(),
        detail: detail.to_owned(),
    }
}

/// Body of `POST /api/v1/login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    name: String,
    password: String,
}

/// `POST /api/v1/login {"name", "password"}`: a session cookie and the CSRF token changes
/// carry; 401 for a wrong name or password (after a delay that grows with each failure), 429
/// while the account is locked.
async fn login(
    State(s): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    let body: LoginBody = match json_body(&body, r#"{"name": "...", "password": "..."}"#) {
        Ok(b) => b,
        Err(refused) => return *refused,
    };
    let (store, from) = (s.store.clone(), peer.ip().to_string());
    let name = body.name.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let outcome =
            crate::auth::login::login(&store, &body.name, &body.password, &from, now_ms())?;
        let failures = store.account(&body.name)?.map_or(1, |a| a.failures.max(1));
        Ok::<_, crate::store::StoreError>((outcome, failures))
    })
    .await;
    match checked {
        Ok(Ok((Ok(identity), _))) => {
            let (id, csrf) = s.sessions.open(identity.clone(), now_ms());
            let cookie = format!(
                "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
                session::COOKIE,
                session::IDLE_MS / 1000,
                if s.secure_cookies { "; Secure" } else { "" }
            );
            (
                [(header::SET_COOKIE, cookie)],
                Json(serde_json::json!({
                    "name": identity.name, "role": identity.role, "csrf": csrf,
                })),
            )
                .into_response()
        }
        Ok(Ok((Err(e @ crate::auth::login::LoginError::Locked { .. }), _))) => {
            bad_request(StatusCode::TOO_MANY_REQUESTS, e.to_string())
        }
        Ok(Ok((Err(e), failures))) => {
            tokio::time::sleep(crate::auth::login::delay_after(failures)).await;
            tracing::info!(name = %name, from = %peer.ip(), "login refused");
            bad_request(StatusCode::UNAUTHORIZED, e.to_string())
        }
        _ => bad_request(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the accounts from the local store".into(),
        ),
    }
}

/// `POST /api/v1/logout`: ends the session.
async fn logout(
    State(s): State<AppState>,
    axum::extract::Extension(who): axum::extract::Extension<crate::auth::Identity>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(id) = session::cookie(&headers, session::COOKIE) {
        s.sessions.close(id);
    }
    let from = peer.ip().to_string();
    audit(
        &s,
        entry(&who.name, &from, ("logout", &who.name), ("ok", "")),
    )
    .await;
    let expired = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        session::COOKIE
    );
    ([(header::SET_COOKIE, expired)], StatusCode::NO_CONTENT).into_response()
}

/// `GET /api/v1/whoami`: the caller's name and role, and for a session its CSRF token (a page
/// of the console opened after the login reads it here: only pages of the gateway's own origin
/// can, the cookie being `SameSite=Strict` and the API answering no other origin).
async fn whoami(
    axum::extract::Extension(who): axum::extract::Extension<crate::auth::Identity>,
    csrf: Option<axum::extract::Extension<session::Csrf>>,
) -> Response {
    Json(serde_json::json!({
        "name": who.name,
        "role": who.role,
        "csrf": csrf.map(|c| c.0.0),
    }))
    .into_response()
}

/// Query of `GET /api/v1/alerts`.
#[derive(Debug, serde::Deserialize)]
pub struct AlertsQuery {
    /// How many recent events to include under `events` (default 50, at most 1000).
    #[serde(default)]
    pub events: Option<usize>,
    /// Only this category (`crowd`, `traffic`, `pipe`, `device`).
    #[serde(default)]
    pub category: Option<String>,
    /// Only this district code.
    #[serde(default)]
    pub zone: Option<String>,
}

/// A request's JSON body, or a 400 saying what it must look like (`shape`) and why it is not.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(bad_request(
            StatusCode::BAD_REQUEST,
            format!("body must be JSON {shape}: {e}"),
        ))
    })
}

fn bad_request(status: StatusCode, error: String) -> Response {
    (status, Json(serde_json::json!({ "error": error }))).into_response()
}

/// Open alerts (oldest first) and the latest events (newest first).
async fn alerts(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<AlertsQuery>,
) -> Response {
    let wanted = |a: &crate::alert::Alert| {
        q.category.as_deref().is_none_or(|c| a.category.name() == c)
            && q.zone.as_deref().is_none_or(|z| a.zone == z)
    };
    let open: Vec<crate::alert::Alert> = s
        .alerts
        .engine
        .lock()
        .map(|e| e.open_alerts())
        .unwrap_or_default()
        .into_iter()
        .filter(|a| wanted(a))
        .collect();
    let (store, limit) = (s.store.clone(), q.events.unwrap_or(50).min(1000));
    let events = tokio::task::spawn_blocking(move || store.recent_alert_events(limit)).await;
    let events: Vec<serde_json::Value> = match events {
        Ok(Ok(e)) => e
            .iter()
            .filter(|(_, event)| wanted(&event.alert))
            .map(|(seq, event)| serde_json::json!(crate::sink::notify::Envelope::new(*seq, event)))
            .collect(),
        _ => {
            return bad_request(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read alert events from the local store".into(),
            );
        }
    };
    Json(serde_json::json!({ "firing": open.len(), "alerts": open, "events": events }))
        .into_response()
}

/// Body of `POST /api/v1/alerts/{id}/ack` (optional).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// A note.
    #[serde(default)]
    pub note: Option<String>,
}

async fn ack(
    State(s): State<AppState>,
    axum::extract::Extension(who): axum::extract::Extension<crate::auth::Identity>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let body: AckBody = if body.is_empty() {
        AckBody::default()
    } else {
        match json_body(
            &body,
            r#"{"note": "..."} (who acknowledges is who is logged in)"#,
        ) {
            Ok(b) => b,
            Err(refused) => return *refused,
        }
    };
    let note = body.note.unwrap_or_default();
    let change = |e: &mut crate::alert::Engine| e.ack(&id, &who.name, &note, now_ms());
    change_alert(&s, (&who, peer), (&id, "ack", &note), change).await
}

/// An operator's change to open alert `id` (`change` on the engine, committed), recorded in
/// the audit trail as `action` with `detail`: the alert afterwards, 404 for no open alert.
async fn change_alert(
    s: &AppState,
    (who, peer): (&crate::auth::Identity, SocketAddr),
    (id, action, detail): (&str, &str, &str),
    change: impl FnOnce(
        &mut crate::alert::Engine,
    ) -> Result<crate::alert::Alert, crate::alert::model::AckError>,
) -> Response {
    let done = s.alerts.apply(&s.store, change).await;
    let outcome = if matches!(done, Ok(Ok(_))) {
        "ok"
    } else {
        "refused"
    };
    let from = peer.ip().to_string();
    audit(s, entry(&who.name, &from, (action, id), (outcome, detail))).await;
    match done {
        Ok(Ok(alert)) => Json(alert).into_response(),
        Ok(Err(e)) => bad_request(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => bad_request(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Body of `POST /api/v1/alerts/{id}/assign`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    /// The account it is given to.
    to: String,
}

/// Body of `POST /api/v1/alerts/{id}/comment`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentBody {
    /// The comment.
    text: String,
}

/// `POST /api/v1/alerts/{id}/assign {"to": "account"}`: gives an open alert to someone (an
/// account that exists and is not disabled), in the name of who is logged in.
async fn assign(
    State(s): State<AppState>,
    axum::extract::Extension(who): axum::extract::Extension<crate::auth::Identity>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let body: AssignBody = match json_body(&body, r#"{"to": "account"}"#) {
        Ok(b) => b,
        Err(refused) => return *refused,
    };
    let store = s.store.clone();
    let to = body.to.clone();
    let known = tokio::task::spawn_blocking(move || store.account(&to)).await;
    if !matches!(&known, Ok(Ok(Some(a))) if !a.disabled) {
        return bad_request(
            StatusCode::BAD_REQUEST,
            format!("no active account \"{}\" to give it to", body.to),
        );
    }
    let change = |e: &mut crate::alert::Engine| e.assign(&id, &body.to, &who.name, now_ms());
    change_alert(&s, (&who, peer), (&id, "assign", &body.to), change).await
}

/// `POST /api/v1/alerts/{id}/comment {"text": "..."}`: a comment on an open alert, in the name
/// of who is logged in.
async fn comment(
    State(s): State<AppState>,
    axum::extract::Extension(who): axum::extract::Extension<crate::auth::Identity>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let body: CommentBody = match json_body::<CommentBody>(&body, r#"{"text": "..."}"#) {
        Ok(b) if !b.text.trim().is_empty() => b,
        Ok(_) => return bad_request(StatusCode::BAD_REQUEST, "an empty comment".into()),
        Err(refused) => return *refused,
    };
    let change = |e: &mut crate::alert::Engine| e.comment(&id, &who.name, &body.text, now_ms());
    change_alert(&s, (&who, peer), (&id, "comment", &body.text), change).await
}

/// How far back `GET /api/v1/alerts/{id}` looks for an alert's events.
const TIMELINE_EVENTS: usize = 5_000;

/// `GET /api/v1/alerts/{id}`: the alert as it is now, its timeline (raised, escalated,
/// re-notified, acknowledged, assigned, commented, resolved: who and when), oldest first, its
/// rule (standard, advice, thresholds) and the series to chart ([`detail`]).
async fn alert_timeline(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let store = s.store.clone();
    let events =
        tokio::task::spawn_blocking(move || store.recent_alert_events(TIMELINE_EVENTS)).await;
    let Ok(Ok(events)) = events else {
        return bad_request(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read alert events from the local store".into(),
        );
    };
    let mut timeline: Vec<serde_json::Value> = events
        .iter()
        .filter(|(_, e)| e.alert.id == id)
        .map(|(seq, event)| serde_json::json!(crate::sink::notify::Envelope::new(*seq, event)))
        .collect();
    timeline.sort_by_key(|e| e["seq"].as_i64());
    let open = s
        .alerts
        .engine
        .lock()
        .ok()
        .and_then(|e| e.open_alerts().into_iter().find(|a| a.id == id));
    let latest = open.or_else(|| {
        events
            .iter()
            .filter(|(_, e)| e.alert.id == id)
            .max_by_key(|(seq, _)| *seq)
            .map(|(_, e)| e.alert.clone())
    });
    match latest {
        Some(alert) => {
            let (rule, chart) = s
                .alerts
                .engine
                .lock()
                .ok()
                .and_then(|e| {
                    let rule = e.rules().find(|r| r.id == alert.rule)?;
                    Some((detail::rule_view(rule, &alert), detail::chart(rule, &alert)))
                })
                .unzip();
            Json(serde_json::json!({
                "alert": alert, "timeline": timeline, "rule": rule, "chart": chart.flatten(),
            }))
            .into_response()
        }
        None => bad_request(StatusCode::NOT_FOUND, format!("no alert with id \"{id}\"")),
    }
}

/// Body of `POST /api/v1/areas/{id}/occupancy`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OccupancyBody {
    /// Visitors inside, as the duty officer counted them.
    count: u32,
    /// When they were counted, Unix ms (default: now).
    #[serde(default)]
    at_ms: Option<i64>,
}

/// The most a count may be ahead of the gateway's clock, ms.
const COUNT_SKEW_MS: i64 = 60_000;

/// `POST /api/v1/areas/{id}/occupancy`: an operator's count of the visitors inside a scenic
/// area or choke point, the baseline its occupancy continues from (see
/// `aggregate::crowd`). It enters the pipeline as a reading, so it is committed before it
/// counts and a restart applies it again.
async fn set_occupancy(
    State(s): State<AppState>,
    axum::extract::Extension(who): axum::extract::Extension<crate::auth::Identity>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let body: OccupancyBody = match json_body(&body, r#"{"count": N, "at_ms": T (optional)}"#) {
        Ok(b) => b,
        Err(refused) => return *refused,
    };
    // Where an operator may set the occupancy: a scenic area or one of its choke points.
    let zone = s.catalog.load().site.scenic_areas.iter().find_map(|a| {
        (a.id == id || a.choke_points.iter().any(|c| c.id == id)).then(|| a.zone.clone())
    });
    let Some(zone) = zone else {
        return bad_request(
            StatusCode::NOT_FOUND,
            format!("no scenic area or choke point with id \"{id}\""),
        );
    };
    let now = now_ms();
    let at_ms = body.at_ms.unwrap_or(now);
    if at_ms > now + COUNT_SKEW_MS {
        return bad_request(
            StatusCode::BAD_REQUEST,
            format!("at_ms {at_ms} is in the future (the gateway's clock says {now})"),
        );
    }
    let reading = Reading {
        device: id.as_str().into(),
        zone: zone.as_str().into(),
        kind: "operator".into(),
        time_ms: at_ms,
        received_ms: now,
        unsynced_clock: false,
        origin: None,
        measurement: crate::reading::Measurement::Occupancy { count: body.count },
    };
    if s.readings.send(vec![reading]).await.is_err() {
        return bad_request(
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline is stopping".to_owned(),
        );
    }
    tracing::info!(area = %id, count = body.count, at_ms, by = %who.name, "occupancy baseline set through the API");
    let detail = format!("{} at {at_ms}", body.count);
    let from = peer.ip().to_string();
    audit(
        &s,
        entry(&who.name, &from, ("occupancy", &id), ("ok", &detail)),
    )
    .await;
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"area": id, "count": body.count, "at_ms": at_ms})),
    )
        .into_response()
}

/// Query of `GET /api/v1/series`.
#[derive(Debug, serde::Deserialize)]
pub struct SeriesQuery {
    /// `crowd`, `traffic`, `pipe` or `device_health`.
    pub measurement: String,
    /// A subject: scenic area, road segment, pipe asset or device id (any tag value).
    #[serde(default)]
    pub subject: Option<String>,
    /// How far back, in minutes (default 60).
    #[serde(default)]
    pub minutes: Option<i64>,
    /// Most points returned (default 500, at most 10000).
    #[serde(default)]
    pub limit: Option<usize>,
}

async fn series(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<SeriesQuery>,
) -> Response {
    const MEASUREMENTS: [&str; 4] = ["crowd", "traffic", "pipe", "device_health"];
    if !MEASUREMENTS.contains(&q.measurement.as_str()) {
        let error = format!(
            "unknown measurement \"{}\": one of {}",
            q.measurement,
            MEASUREMENTS.join(", ")
        );
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": error })),
        )
            .into_response();
    }
    let since = now_ms() - q.minutes.unwrap_or(60).clamp(1, 7 * 24 * 60) * 60_000;
    let limit = q.limit.unwrap_or(500).clamp(1, 10_000);
    let store = s.store.clone();
    let result = tokio::task::spawn_blocking(move || {
        store.series(&q.measurement, q.subject.as_deref(), since, limit)
    })
    .await;
    match result {
        Ok(Ok(points)) => Json(points).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}
async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    let mut reasons: Vec<String> = Vec::new();
    if s.metrics.broker_connected.get() != 1 {
        reasons.push("not connected to the MQTT broker".into());
    }
    if let Ok(m) = s.not_ready.lock() {
        reasons.extend(m.iter().map(|(sink, why)| format!("{sink} sink: {why}")));
    }
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        )
            .into_response()
    }
}

/// One device as the API shows it.
#[derive(Debug, Serialize)]
pub struct DeviceView<'a> {
    /// Facts and state.
    #[serde(flatten)]
    pub device: &'a Device,
    /// Online, offline or unknown now.
    pub presence: Presence,
    /// Reports expected but not received.
    pub missing_reports: u64,
}

fn view(d: &Device, now: i64) -> DeviceView<'_> {
    DeviceView {
        device: d,
        presence: d.presence(now),
        missing_reports: d.state.ledger.missing(),
    }
}

fn locked(s: &AppState) -> Result<std::sync::MutexGuard<'_, Registry>, Box<Response>> {
    s.registry.lock().map_err(|_| {
        Box::new((StatusCode::INTERNAL_SERVER_ERROR, "registry unavailable\n").into_response())
    })
}

async fn devices(State(s): State<AppState>) -> Response {
    let registry = match locked(&s) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let now = now_ms();
    let list: Vec<DeviceView<'_>> = registry.iter().map(|d| view(d, now)).collect();
    Json(list).into_response()
}

#[derive(Debug, Serialize)]
struct DeviceDetail<'a> {
    #[serde(flatten)]
    device: DeviceView<'a>,
    recent_readings: Vec<Reading>,
}

async fn device(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let registry = match locked(&s) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    match registry.get(&id) {
        Some(d) => {
            let recent_readings = s.store.recent(&id, RECENT_READINGS).unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read recent readings");
                Vec::new()
            });
            Json(DeviceDetail {
                device: view(d, now_ms()),
                recent_readings,
            })
            .into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("no device \"{id}\" is served here") })),
        )
            .into_response(),
    }
}
/// Serves `app` over HTTPS on `listener` until `stop` completes (then lets requests under way
/// finish for up to five seconds).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: axum::extract::connect_info::IntoMakeServiceWithConnectInfo<Router, SocketAddr>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        stop.await;
        stopping.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(config);
    axum_server::from_tcp_rustls(listener.into_std()?, tls)
        .handle(handle)
        .serve(app)
        .await?;
    Ok(())
}

/// HTTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Address for `/metrics`, `/healthz`, `/readyz` and `/api/v1`.
    #[serde(default = "default_http")]
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate and key (rustls).
    #[serde(default)]
    pub tls: Option<HttpTlsSection>,
    /// Serve plain HTTP on an address other than loopback (behind a TLS-terminating proxy).
    #[serde(default)]
    pub allow_plain_http: bool,
    /// `/metrics` needs a session or an API token too (a scraper sends `Authorization: Bearer`).
    #[serde(default)]
    pub metrics_need_identity: bool,
}

/// `[http.tls]`: the listener's certificate chain and private key, PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsSection {
    /// Certificate chain, PEM.
    pub cert: std::path::PathBuf,
    /// Private key, PEM.
    pub key: std::path::PathBuf,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: default_http(),
            tls: None,
            allow_plain_http: false,
            metrics_need_identity: false,
        }
    }
}

impl HttpSection {
    /// Checks values that types alone cannot; returns `(key, reason)` pairs.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.allow_plain_http {
            p.push((
                "http.listen".into(),
                format!(
                    "{} is not a loopback address: logins and tokens would cross the network in clear; give [http.tls] cert and key, or set http.allow_plain_http = true behind a TLS-terminating proxy",
                    self.listen
                ),
            ));
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [("http.tls.cert", &tls.cert), ("http.tls.key", &tls.key)] {
                if !path.is_file() {
                    p.push((key.into(), format!("no file {}", path.display())));
                }
            }
        }
        p
    }
}

fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
