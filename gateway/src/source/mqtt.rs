//! The MQTT source: one persistent MQTT 5 session to the broker (rumqttc), subscribed to the
//! served zones' device topics with QoS1 and manual acknowledgements.
//!
//! One task owns the event loop and `select!`s between the network, a watchdog and shutdown;
//! incoming publishes go to the pipeline over a bounded channel, which acknowledges them through
//! the [`AsyncClient`] once what they produced was accepted by the store.
//!
//! - **Persistent session**: `clean_start = false` with a session expiry, so the broker queues
//!   QoS1 reports while the gateway is away and redelivers whatever was not acknowledged.
//! - **Reconnect**: exponential backoff from `reconnect_min_ms` to `reconnect_max_ms`, with
//!   full jitter so a fleet of gateways does not reconnect in step.
//! - **Silent broker**: rumqttc pings every keepalive but only notices a missing answer at the
//!   next ping (2 × keepalive). The [`Watchdog`] drops the connection when nothing has come back
//!   within half a keepalive of a ping, so a black-holed broker is detected within 1.5 ×
//!   keepalive.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::net::mqtt::{MqttSection, Watchdog};

/// The topic filters for the served zones: every report and status of their devices, on this
/// gateway's own session (never a `$share/` group: see `MqttSection::shared_group`).
pub fn filters(zones: &[Arc<str>]) -> Vec<Filter> {
    let mut out = Vec::new();
    for z in zones {
        out.push(Filter::new(format!("cs/v1/{z}/+/+/up"), QoS::AtLeastOnce));
        out.push(Filter::new(
            format!("cs/v1/{z}/+/+/status"),
            QoS::AtLeastOnce,
        ));
    }
    out
}

/// A message for the pipeline.
pub type Inbound = Publish;

/// Runs the session until `shutdown` turns true: connects, subscribes, forwards publishes to
/// `inbound`, reconnects with backoff. Each turn of its loop sets `alive` to the time (Unix ms):
/// at least once a keepalive while connected, once a retry while not; the watchdog's proof that
/// the event loop still runs.
pub async fn run(
    mut eventloop: EventLoop,
    client: AsyncClient,
    cfg: MqttSection,
    filters: Vec<Filter>,
    (inbound, alive): (mpsc::Sender<Inbound>, Arc<AtomicI64>),
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(
        Duration::from_millis(cfg.reconnect_min_ms),
        Duration::from_millis(cfg.reconnect_max_ms),
    );
    let mut watchdog = Watchdog::new(cfg.keep_alive());
    loop {
        alive.store(crate::clock::now_ms(), Ordering::Relaxed);
        let deadline = watchdog.deadline();
        tokio::select! {
            _ = shutdown.changed() => {
                let _ = client.disconnect().await;
                // Let the DISCONNECT go out; the session (and its queue) stays on the broker.
                let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
                metrics.broker_connected.set(0);
                return;
            }
            // Only armed while a ping is unanswered.
            _ = sleep_until(deadline), if deadline.is_some() => {
                if watchdog.expired(Instant::now()) {
                    tracing::warn!(host = %cfg.host, port = cfg.port, "broker silent past 1.5 × keepalive; reconnecting");
                    metrics.broker_disconnects.with_label_values(&["silent"]).inc();
                    metrics.broker_connected.set(0);
                    eventloop.clean();
                    watchdog.heard();
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(packet)) => {
                    watchdog.heard();
                    match packet {
                        Packet::ConnAck(ack) => {
                            backoff.reset();
                            if ack.session_present {
                                metrics.sessions_resumed.inc();
                            }
                            tracing::info!(host = %cfg.host, port = cfg.port, session_present = ack.session_present, "connected to broker");
                            if let Err(e) = client.subscribe_many(filters.clone()).await {
                                tracing::error!(error = %e, "cannot queue the subscription");
                            }
                        }
                        // Back-pressure: when the pipeline is behind, stop reading from the
                        // broker (it holds the rest, up to our receive maximum in flight).
                        // A closed channel means the pipeline stopped: shutting down.
                        Packet::Publish(p) => {
                            let sent = inbound.send(p).await;
                            if sent.is_err() {
                                return;
                            }
                        }
                        // Ready only once the broker holds the subscription: a report
                        // published between CONNACK and SUBACK would not reach us.
                        Packet::SubAck(ack) => {
                            let refused: Vec<_> = ack
                                .return_codes
                                .iter()
                                .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                                .collect();
                            if refused.is_empty() {
                                metrics.broker_connected.set(1);
                            } else {
                                tracing::error!(codes = ?refused, "broker refused the subscription (check the ACL for the gateway's user)");
                            }
                        }
                        Packet::Disconnect(d) => {
                            tracing::warn!(reason = ?d.reason_code, "broker sent DISCONNECT");
                        }
                        _ => {}
                    }
                }
                Ok(Event::Outgoing(Outgoing::PingReq)) => watchdog.ping_sent(Instant::now()),
                Ok(Event::Outgoing(_)) => {}
                Err(e) => {
                    metrics.broker_connected.set(0);
                    metrics.broker_disconnects.with_label_values(&[cause(&e)]).inc();
                    watchdog.heard();
                    let delay = backoff.next_delay(&mut rand::rng());
                    tracing::warn!(host = %cfg.host, port = cfg.port, error = %e, retry_in_ms = delay.as_millis() as u64, "broker connection lost");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => { metrics.broker_connected.set(0); return; }
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn cause(e: &rumqttc::v5::ConnectionError) -> &'static str {
    use rumqttc::v5::ConnectionError as E;
    match e {
        E::Io(_) => "io",
        E::ConnectionRefused(_) => "refused",
        E::Timeout(_) => "timeout",
        E::MqttState(_) => "protocol",
        E::Tls(_) => "tls",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_subscribes_to_its_districts_on_its_own_session() {
        let f = filters(&["360702".into(), "360781".into()]);
        let paths: Vec<&str> = f.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "cs/v1/360702/+/+/up",
                "cs/v1/360702/+/+/status",
                "cs/v1/360781/+/+/up",
                "cs/v1/360781/+/+/status"
            ]
        );
    }
}
