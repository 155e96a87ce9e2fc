//! The alert engine as the pipeline, the presence sweep and the API share it: one commit at a
//! time, so events reach the store's outbox in the order the engine made them, and the
//! notifiers woken with the events just committed.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::alert::{Changes, Engine};
use crate::metrics::Metrics;
use crate::store::{Committed, Store};

/// The engine with what every producer of alert changes shares: one commit at a time (so
/// events reach the outbox in the order the engine made them), the notifiers' wake-up, metrics
/// and the log.
#[derive(Debug, Clone)]
pub struct Alerts {
    /// The rule engine.
    pub engine: Arc<Mutex<Engine>>,
    /// Held from taking changes out of the engine until they are committed.
    pub commit_lock: Arc<tokio::sync::Mutex<()>>,
    /// The events last committed: the notifiers' wake-up.
    wake: Arc<watch::Sender<Option<Committed>>>,
    metrics: Metrics,
}

impl Alerts {
    /// Wraps an engine.
    pub fn new(engine: Engine, metrics: Metrics) -> Alerts {
        Alerts {
            engine: Arc::new(Mutex::new(engine)),
            commit_lock: Arc::new(tokio::sync::Mutex::new(())),
            wake: Arc::new(watch::channel(None).0),
            metrics,
        }
    }

    /// A wake-up for a notifier: changes whenever events were committed, to those events.
    pub fn subscribe(&self) -> watch::Receiver<Option<Committed>> {
        self.wake.subscribe()
    }

    /// Runs `f` on the engine and takes its changes (call with `commit_lock` held).
    pub fn evaluate(&self, f: impl FnOnce(&mut Engine)) -> Changes {
        match self.engine.lock() {
            Ok(mut e) => {
                f(&mut e);
                e.take_changes()
            }
            Err(_) => {
                tracing::error!("alert engine lock poisoned");
                Changes::default()
            }
        }
    }

    /// After `changes` were committed, their events with the outbox `ids` the store gave them:
    /// the notifiers' wake-up first (an alert's latency ends with its delivery), then metrics
    /// and the log.
    pub fn committed(&self, changes: &Changes, ids: &[i64]) {
        if changes.events.is_empty() {
            return;
        }
        let at = Instant::now();
        let events = if ids.len() == changes.events.len() {
            ids.iter()
                .copied()
                .zip(changes.events.iter().cloned())
                .collect()
        } else {
            tracing::error!(
                events = changes.events.len(),
                ids = ids.len(),
                "alert events committed without their outbox ids; the notifiers read the outbox"
            );
            Arc::from([])
        };
        self.wake.send_replace(Some(Committed { at, events }));
        for e in &changes.events {
            let a = &e.alert;
            self.metrics
                .alert_transitions
                .with_label_values(&[a.category.name(), e.kind.name(), &a.severity])
                .inc();
            tracing::warn!(
                alert = %a.id,
                event = e.kind.name(),
                severity = %a.severity,
                zone = %a.zone,
                "{}",
                a.summary
            );
        }
        if let Ok(e) = self.engine.lock() {
            for ((category, severity), n) in e.active_counts() {
                self.metrics
                    .alerts_active
                    .with_label_values(&[category, &severity])
                    .set(n);
            }
        }
    }

    /// Runs `f` on the engine and commits what it changed on its own (presence checks,
    /// acknowledgements).
    pub async fn apply<T>(
        &self,
        store: &Arc<Store>,
        f: impl FnOnce(&mut Engine) -> T,
    ) -> anyhow::Result<T> {
        let _held = self.commit_lock.lock().await;
        let mut out = None;
        let changes = self.evaluate(|e| out = Some(f(e)));
        let out = out.ok_or_else(|| anyhow::anyhow!("alert engine unavailable"))?;
        if !changes.is_empty() {
            // Alerts are never dropped: retry until the store takes them.
            let mut delay = std::time::Duration::from_millis(100);
            loop {
                let (s, c) = (store.clone(), changes.clone());
                match tokio::task::spawn_blocking(move || s.commit_alerts(&c)).await {
                    Ok(Ok(ids)) => {
                        self.committed(&changes, &ids);
                        break;
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot commit alert changes; retrying")
                    }
                    Err(e) => tracing::error!(error = %e, "alert commit task failed; retrying"),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
        Ok(out)
    }
}
