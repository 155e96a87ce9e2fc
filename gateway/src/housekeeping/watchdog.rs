//! The service manager's view of the gateway (systemd `Type=notify`, `WatchdogSec=`): `READY=1`
//! once the broker session and its subscriptions are up, then `WATCHDOG=1` every half of the
//! watchdog's period while the pipeline makes progress or has nothing to do and the MQTT event
//! loop turns. A commit wedged (a disk that stopped answering, a lock never released), a
//! pipeline stuck with reports waiting, or an event loop that ended stops the feeding, and
//! systemd restarts the gateway; the broker keeps what was not acknowledged. Outside systemd (no `NOTIFY_SOCKET`) this sends nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::pipeline::Progress;

/// What the watchdog looks at.
#[derive(Debug, Clone)]
pub struct Signs {
    /// How far the pipeline got.
    pub progress: Arc<Progress>,
    /// When the MQTT event loop last turned, Unix ms (`source::mqtt::run`).
    pub event_loop: Arc<AtomicI64>,
    /// How long the event loop may go without a turn: two keepalives, the longest reconnect
    /// wait and a connection timeout.
    pub event_loop_limit: Duration,
}

/// Whether the gateway is healthy as of `now_ms`: its pipeline has nothing waiting or committed
/// within `limit`, and its MQTT event loop turned lately. Otherwise the reason, for the log.
pub fn healthy(signs: &Signs, now_ms: i64, limit: Duration) -> Result<(), String> {
    let (waiting, since_ms) = signs.progress.waiting(now_ms);
    if waiting > 0 && since_ms >= crate::clock::millis(limit) as i64 {
        return Err(format!(
            "{waiting} reports waiting and no commit for {:.1} s",
            since_ms as f64 / 1000.0
        ));
    }
    let quiet_ms = now_ms - signs.event_loop.load(Ordering::Relaxed);
    if quiet_ms >= crate::clock::millis(signs.event_loop_limit) as i64 {
        return Err(format!(
            "the MQTT event loop has not turned for {:.1} s",
            quiet_ms as f64 / 1000.0
        ));
    }
    Ok(())
}

/// Tells the service manager the gateway is ready, then feeds its watchdog while
/// [`healthy`] (see the module's documentation). Ends at shutdown.
pub async fn notify(signs: Signs, metrics: Metrics, mut shutdown: watch::Receiver<bool>) {
    // READY once the broker session and its subscriptions are up.
    while metrics.broker_connected.get() != 1 {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell the service manager the gateway is ready");
    }
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec);
    tracing::info!(
        watchdog_s = period.as_secs_f64(),
        "feeding the service manager's watchdog while the pipeline makes progress"
    );
    let mut tick = tokio::time::interval(period / 2);
    let mut starving = false;
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
                return;
            }
            _ = tick.tick() => {}
        }
        match healthy(&signs, now_ms(), period / 2) {
            Ok(()) => {
                if starving {
                    tracing::warn!("the pipeline makes progress again: feeding the watchdog");
                    starving = false;
                }
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
            Err(why) => {
                if !starving {
                    tracing::error!(
                        reason = %why,
                        "the pipeline is stuck: not feeding the watchdog, the service manager will restart the gateway"
                    );
                    starving = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_or_committing_is_healthy_and_work_waiting_without_commits_is_not() {
        let signs = Signs {
            progress: Arc::default(),
            event_loop: Arc::new(AtomicI64::new(i64::MAX / 2)),
            event_loop_limit: Duration::from_secs(60),
        };
        let p = &signs.progress;
        let limit = Duration::from_secs(5);
        assert_eq!(
            healthy(&signs, 1_000_000, limit),
            Ok(()),
            "idle from the start"
        );
        p.took(3);
        let now = now_ms();
        // No commit yet with work waiting: stuck.
        let stuck = healthy(&signs, now, limit).unwrap_err();
        assert!(
            stuck.starts_with("3 reports waiting and no commit for"),
            "{stuck}"
        );
        p.settled(2);
        assert_eq!(
            healthy(&signs, now_ms(), limit),
            Ok(()),
            "a commit just now"
        );
        let later = now_ms() + 6_000;
        let stuck = healthy(&signs, later, limit).unwrap_err();
        assert!(
            stuck.starts_with("1 reports waiting and no commit for 6."),
            "{stuck}"
        );
        p.settled(1);
        assert_eq!(healthy(&signs, later + 60_000, limit), Ok(()), "idle again");
    }

    #[test]
    fn an_event_loop_that_stopped_turning_is_not_healthy_even_when_idle() {
        let now = now_ms();
        let signs = Signs {
            progress: Arc::default(),
            event_loop: Arc::new(AtomicI64::new(now - 59_000)),
            event_loop_limit: Duration::from_secs(60),
        };
        assert_eq!(healthy(&signs, now, Duration::from_secs(5)), Ok(()));
        let dead = healthy(&signs, now + 2_000, Duration::from_secs(5)).unwrap_err();
        assert_eq!(dead, "the MQTT event loop has not turned for 61.0 s");
    }
}
