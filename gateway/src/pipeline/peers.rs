//! Operator actions reach every replica of a partition (DESIGN.md, Scale). Each gateway follows
//! the retained subject states on `cs/v1/alerts/{zone}/{category}/{subject}`: what every
//! replica's MQTT notifier publishes, each open alert with its acknowledgement, assignment and
//! comments. What operators did on a peer is adopted here ([`Engine::adopt`]) with its names
//! and times, so both replicas commit the same events and both consoles show the same. Its own
//! states coming back, and states of other partitions' subjects, change nothing.
//!
//! A state naming an alert that is not open here yet (this replica is a report behind) is kept
//! and tried again every second for ten minutes. The connection is its own
//! (`{gateway id}-peers`, a clean session: the retained states come again at every connect,
//! which is how a restarted replica catches up).
//!
//! [`Engine::adopt`]: crate::alert::Engine::adopt

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{Event, MqttOptions};
use tokio::sync::watch;
use tokio::time::Instant;

use super::alerts::Alerts;
use crate::alert::Alert;
use crate::alert::model::AckError;
use crate::store::Store;

/// The retained subject states of every partition's alerts.
pub const FILTER: &str = "cs/v1/alerts/+/+/+";
/// How long a state waits for its alert to open here.
const PENDING_FOR: Duration = Duration::from_secs(600);

/// The part of a retained subject state read here.
#[derive(Debug, serde::Deserialize)]
struct SubjectState {
    #[serde(default)]
    alerts: Vec<Alert>,
}

/// Follows the peers' subject states until `shutdown`.
pub async fn follow(
    mut options: MqttOptions,
    alerts: Alerts,
    store: Arc<Store>,
    mut shutdown: watch::Receiver<bool>,
) {
    options.set_clean_start(true).set_manual_acks(false);
    let (client, mut eventloop) = crate::net::mqtt::client(options);
    let mut pending: HashMap<String, (Alert, Instant)> = HashMap::new();
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                let _ = client.disconnect().await;
                return;
            }
            _ = retry.tick(), if !pending.is_empty() => {
                pending.retain(|_, (_, since)| since.elapsed() < PENDING_FOR);
                let waiting: Vec<Alert> = pending.values().map(|(a, _)| a.clone()).collect();
                for alert in waiting {
                    if adopt(&alerts, &store, &alert).await != Err(AckError::NotFound(alert.id.clone())) {
                        pending.remove(&alert.id);
                    }
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Err(e) = client.subscribe(FILTER, QoS::AtLeastOnce).await {
                        tracing::error!(error = %e, "peers: cannot queue the subscription");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(state) = serde_json::from_slice::<SubjectState>(&p.payload) else {
                        continue; // a cleared state, or not ours to read
                    };
                    for alert in state.alerts {
                        if alert.ack.is_none() && alert.comments.is_empty() {
                            continue;
                        }
                        if adopt(&alerts, &store, &alert).await == Err(AckError::NotFound(alert.id.clone())) {
                            pending.insert(alert.id.clone(), (alert, Instant::now()));
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "peers: connection lost; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }
}

/// Adopts `theirs` and commits what it changed: how many events, or why not.
async fn adopt(alerts: &Alerts, store: &Arc<Store>, theirs: &Alert) -> Result<usize, AckError> {
    match alerts.apply(store, |e| e.adopt(theirs)).await {
        Ok(Ok(0)) => Ok(0),
        Ok(Ok(n)) => {
            tracing::info!(alert = %theirs.id, events = n, "took operator actions from a replica");
            Ok(n)
        }
        Ok(Err(e)) => Err(e),
        Err(e) => {
            tracing::error!(error = %e, "peers: the alert engine is unavailable");
            Ok(0)
        }
    }
}
