//! Housekeeping: the background jobs beside the data path. Rebuilding aggregation state from
//! the store at start, retention and the size bound of the store, and the presence sweep that
//! runs the presence rules and logs devices coming and going.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::aggregate::{self, correct::Due};
use crate::clock::{SLOW_COMMIT, millis, now_ms};
use crate::metrics::Metrics;
use crate::pipeline::alerts::Alerts;
use crate::reading;
use crate::registry::{Presence, Registry, Seen};
use crate::sink::NotReady;
use crate::store::{self, Store};

#[cfg(test)]
mod arrival_orders;
pub mod rotation;
pub mod watchdog;

/// Feeds the stored readings with event times from `since_ms` on to fresh aggregators, so
/// windows open at a restart and the day's crowd counts continue; the backlogs they hold are
/// corrected as they were live. The points this emits were stored before; they are dropped.
/// Returns the readings replayed.
/// `clock_skew_ms`: the verifier's `max_clock_skew_s` (how far ahead of its receipt a reading's
/// event time may be).
pub fn replay_recent(
    store: &Store,
    aggregators: &mut aggregate::Aggregators,
    since_ms: i64,
    clock_skew_ms: i64,
) -> anyhow::Result<usize> {
    let (mut after, mut n) = (0, 0);
    loop {
        let batch = store.readings_after(after, 10_000)?;
        let Some(&(last, _)) = batch.last() else {
            return Ok(n);
        };
        after = last;
        let recent: Vec<reading::Reading> = batch
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| r.time_ms >= since_ms)
            .collect();
        n += recent.len();
        aggregators.ingest(&recent);
        aggregators.correct(Due::All, |devices, since| {
            store.readings_of(devices, since, last, clock_skew_ms)
        })?;
    }
}

/// Runs the corrections a stop interrupted (recorded with the last commit: their backlog was
/// committed, their revised points not) on the replayed aggregators, and commits their points.
/// Returns how many points that was.
pub fn resume_corrections(
    store: &Store,
    aggregators: &mut aggregate::Aggregators,
    clock_skew_ms: i64,
) -> anyhow::Result<usize> {
    let Some(recorded) = store.pending_corrections()? else {
        return Ok(0);
    };
    let pending: Vec<(String, i64)> = match serde_json::from_str(&recorded) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "the corrections recorded in the local store do not decode; left out");
            Vec::new()
        }
    };
    aggregators.expect_corrections(&pending);
    let points = aggregators.correct(Due::All, |devices, since| {
        store.readings_of(devices, since, i64::MAX, clock_skew_ms)
    })?;
    let none = serde_json::to_string(&aggregators.corrections_to_record().unwrap_or_default())?;
    store.accept_with(&[], &points, &[], &Default::default(), Some(&none))?;
    Ok(points.len())
}
/// Bytes this process caused to be written to storage so far (Linux; none elsewhere).
fn bytes_written() -> Option<u64> {
    store::proc_write_bytes(&std::fs::read_to_string("/proc/self/io").ok()?)
}

/// Exports what the store wrote since `last` (by cause), and returns the new totals.
fn export_written(store: &Store, metrics: &Metrics, last: store::Written) -> store::Written {
    let now = store.written();
    for ((cause, now), then) in store::Cause::ALL.iter().zip(now.wal).zip(last.wal) {
        metrics
            .store_wal_bytes
            .with_label_values(&[cause.name()])
            .inc_by(now.saturating_sub(then));
    }
    metrics
        .store_checkpoint_bytes
        .inc_by(now.checkpoints.saturating_sub(last.checkpoints));
    now
}

/// How often the device checkpoint is taken (`store/devices.rs`): each rewrites a row or two
/// for every device that reported since the one before (a sixth of the store's writes at
/// nominal load when it was every ten seconds), and the readings after it are replayed at
/// open (a minute of them at most).
const DEVICE_CHECKPOINT_EVERY: Duration = Duration::from_secs(60);

/// Takes the device checkpoint every minute, applies retention and the size bound every ten
/// seconds, and exports the store's size and writes, the runway (time) left at the current
/// write rate, drops and quarantined records.
pub async fn maintain_store(
    store: Arc<Store>,
    rules: store::Retention,
    (sinks, raw_sinks): (Vec<String>, Vec<String>),
    notifiers: Vec<String>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    let mut last: Option<(std::time::Instant, u64)> = None;
    let mut written = 0;
    let mut by_cause = store::Written::default();
    let mut last_checkpoint = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        if let Some(now) = bytes_written() {
            metrics
                .store_bytes_written
                .inc_by(now.saturating_sub(written));
            written = now;
        }
        by_cause = export_written(&store, &metrics, by_cause);
        let (s, sinks2, raw2, notifiers2) = (
            store.clone(),
            sinks.clone(),
            raw_sinks.clone(),
            notifiers.clone(),
        );
        let checkpoint = last_checkpoint.elapsed() >= DEVICE_CHECKPOINT_EVERY;
        if checkpoint {
            last_checkpoint = std::time::Instant::now();
        }
        let done = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            let (points, raw): (Vec<&str>, Vec<&str>) = (
                sinks2.iter().map(String::as_str).collect(),
                raw2.iter().map(String::as_str).collect(),
            );
            let started = std::time::Instant::now();
            let written = if checkpoint {
                s.checkpoint_devices()?
            } else {
                0
            };
            let took = started.elapsed();
            let mut r = s.enforce(now, &rules, &points, &raw)?;
            r.devices_written += written;
            r.devices_took += took;
            r.took += took;
            s.expire_alert_events(now - rules.points_ms, &notifiers2)?;
            s.expire_audit(now - store::AUDIT_KEEP_MS)?;
            Ok::<_, store::StoreError>((r, s.quarantined()?))
        })
        .await;
        let Ok(Ok((r, quarantined))) = done else {
            tracing::error!("local store maintenance failed");
            continue;
        };
        metrics
            .store_maintenance_seconds
            .observe(r.took.as_secs_f64());
        tracing::debug!(
            took_ms = millis(r.took),
            devices_ms = millis(r.devices_took),
            devices_written = r.devices_written,
            "store maintenance"
        );
        if r.took >= SLOW_COMMIT {
            tracing::warn!(
                took_ms = millis(r.took),
                devices_ms = millis(r.devices_took),
                devices_written = r.devices_written,
                expired_readings = r.expired_readings,
                expired_points = r.expired_points,
                "slow store maintenance: commits waited for it"
            );
        }
        metrics.store_bytes.set(r.bytes as i64);
        metrics.store_quarantined.set(quarantined as i64);
        metrics
            .store_dropped
            .with_label_values(&["space"])
            .inc_by(r.dropped_readings_for_space);
        metrics.store_full.set(i64::from(r.full));
        let now = std::time::Instant::now();
        if let Some((then, bytes)) = last {
            const YEAR_S: f64 = 365.0 * 86_400.0;
            let growth_per_s =
                r.bytes.saturating_sub(bytes) as f64 / now.duration_since(then).as_secs_f64();
            let room = rules.max_bytes.saturating_sub(r.bytes) as f64;
            // No growth (or shrinking, after retention) means no end in sight: report a year.
            let runway = if growth_per_s > 0.0 {
                (room / growth_per_s).min(YEAR_S)
            } else {
                YEAR_S
            };
            metrics.store_runway_seconds.set(runway);
        }
        last = Some((now, r.bytes));
    }
}

/// A device whose presence changed: id, kind, district and its presence now.
type Moved = (Arc<str>, Arc<str>, Arc<str>, Presence);

/// Updates the presence gauges, logs devices coming and going, and runs the presence rules.
pub async fn sweep_presence(
    registry: Arc<Mutex<Registry>>,
    alerts: Alerts,
    store: Arc<Store>,
    metrics: Metrics,
    (sinks, not_ready): (Vec<String>, NotReady),
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        let refused: Vec<(&str, bool)> = {
            let down = not_ready.lock().map(|m| m.clone()).unwrap_or_default();
            sinks
                .iter()
                .map(|s| (s.as_str(), down.contains_key(s)))
                .collect()
        };
        // One survey of the registry a second, taken by the presence rules under the lock they
        // read the registry with; the devices that came or went are copied out for the log.
        let checked = alerts
            .apply(&store, |e| {
                let r = registry.lock().ok()?;
                // Holds complete on the clock, not on the next value.
                e.tick(now);
                // Unacknowledged alerts go to the next person in their grade's time.
                e.escalate(now);
                let survey = e.on_presence(now, &r);
                let zone = r.zones().first().map_or("000000", |z| &**z);
                e.on_sinks(now, zone, &refused);
                let moved: Vec<Moved> = survey
                    .changed
                    .iter()
                    .map(|&i| {
                        let d = &r.devices()[i];
                        let info = &d.info;
                        (
                            info.id.clone(),
                            info.kind.clone(),
                            info.zone.clone(),
                            d.presence(now),
                        )
                    })
                    .collect();
                Some((survey, moved))
            })
            .await;
        let (survey, moved) = match checked {
            Ok(Some(surveyed)) => surveyed,
            // The registry's lock is poisoned: nothing more to sweep.
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "presence rules failed");
                // The gauges still follow the devices; the log of comings and goings needs
                // the rules' survey.
                let Ok(r) = registry.lock() else {
                    return;
                };
                (r.survey(now, &mut Seen::default()), Vec::new())
            }
        };
        for (zone, counts) in &survey.by_zone {
            for (state, n) in [
                ("online", counts.online),
                ("offline", counts.offline),
                ("unknown", counts.unknown),
            ] {
                metrics
                    .devices
                    .with_label_values(&[zone, state])
                    .set(n as i64);
            }
        }
        metrics.ledger_missing.set(survey.missing as i64);
        for (device, kind, zone, presence) in moved {
            match presence {
                Presence::Online => {
                    tracing::info!(device = %device, kind = %kind, zone = %zone, "device online")
                }
                Presence::Offline => {
                    tracing::warn!(device = %device, kind = %kind, zone = %zone, "device offline")
                }
                Presence::Unknown => {}
            }
        }
    }
}
