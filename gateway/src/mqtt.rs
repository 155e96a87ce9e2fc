//! The MQTT source: one persistent MQTT 5 session to the broker (rumqttc), subscribed to the
//! served zones' device topics with QoS1 and manual acknowledgements.
//!
//! One task owns the event loop and `select!`s between the network, a watchdog and shutdown;
//! incoming publishes go to the [`crate::pipeline`] over a bounded channel, which acknowledges
//! them through the [`AsyncClient`] once what they produced was accepted by the store.
//!
//! - **Persistent session**: `clean_start = false` with a session expiry, so the broker queues
//!   QoS1 reports while the gateway is away and redelivers whatever was not acknowledged.
//! - **Reconnect**: exponential backoff from `reconnect_min_ms` to `reconnect_max_ms`, with
//!   full jitter so a fleet of gateways does not reconnect in step.
//! - **Silent broker**: rumqttc pings every keepalive but only notices a missing answer at the
//!   next ping (2 × keepalive). The watchdog drops the connection when nothing has come back
//!   within half a keepalive of a ping, so a black-holed broker is detected within 1.5 ×
//!   keepalive.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::MqttSection;
use crate::metrics::Metrics;

/// Capacity of the client's request queue (acknowledgements and dead-letter publishes). The
/// broker may not have more than [`RECEIVE_MAXIMUM`] unacknowledged messages in flight to us,
/// so acknowledgements always fit.
const REQUEST_CAPACITY: usize = 16 * 1024;
/// MQTT 5 receive maximum: unacknowledged QoS1 messages the broker may send us at once.
pub const RECEIVE_MAXIMUM: u16 = 4096;
/// Our own QoS1 publishes (dead letters, alert events) in flight at once.
pub const OUTGOING_INFLIGHT: u16 = 1024;

/// The topic filters for the served zones.
pub fn filters(zones: &[Arc<str>], shared_group: Option<&str>) -> Vec<Filter> {
    let mut out = Vec::new();
    for z in zones {
        let up = format!("cs/v1/{z}/+/+/up");
        let up = match shared_group {
            Some(g) => format!("$share/{g}/{up}"),
            None => up,
        };
        out.push(Filter::new(up, QoS::AtLeastOnce));
        // Retained status messages are not delivered through shared subscriptions (MQTT 5
        // §4.8.2), so every instance subscribes to them directly.
        out.push(Filter::new(
            format!("cs/v1/{z}/+/+/status"),
            QoS::AtLeastOnce,
        ));
    }
    out
}

/// Builds the client options from the config.
pub fn options(cfg: &MqttSection, client_id: &str) -> anyhow::Result<MqttOptions> {
    let mut o = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
    o.set_keep_alive(cfg.keep_alive())
        .set_clean_start(cfg.clean_start)
        .set_session_expiry_interval(Some(cfg.session_expiry_s))
        .set_manual_acks(true)
        .set_receive_maximum(Some(RECEIVE_MAXIMUM))
        // rumqttc allocates a slot per possible in-flight publish up front (65,536 without it).
        .set_outgoing_inflight_upper_limit(OUTGOING_INFLIGHT)
        .set_max_packet_size(Some(cfg.max_packet_bytes))
        .set_connection_timeout(cfg.keep_alive_s.clamp(2, 10));
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    o.set_network_options(net);
    if let Some(user) = &cfg.username {
        let pass = cfg
            .password
            .as_ref()
            .map(|s| s.0.clone())
            .unwrap_or_default();
        o.set_credentials(user.clone(), pass);
    }
    if let Some(tls) = &cfg.tls {
        o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
            Arc::new(crate::tls::client_config(tls)?),
        )));
    }
    Ok(o)
}

/// Exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `min`, doubles per failure, never above `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            failures: 0,
        }
    }

    /// The delay before the next attempt: uniform in `[min, min·2^failures]` capped at `max`.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let span = ceiling.saturating_sub(self.min).as_millis() as u64;
        self.min
            + Duration::from_millis(if span == 0 {
                0
            } else {
                rng.random_range(0..=span)
            })
    }

    /// A connection succeeded.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// One QoS1 message for a [`ConfirmedPublisher`].
#[derive(Debug, Clone)]
pub struct Message {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Retained.
    pub retain: bool,
    /// MQTT 5 properties (content type, user properties), if any.
    pub properties: Option<PublishProperties>,
}

/// Why a [`ConfirmedPublisher`] batch did not go through; nothing of it counts as delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The broker refused: a PUBACK reason code, or the connection (credentials, not authorised).
    #[error("{0}")]
    Refused(String),
    /// The TLS handshake failed (certificate not trusted, expired, wrong name, no client
    /// certificate).
    #[error("TLS: {0}")]
    Tls(String),
    /// Unreachable, closed, or no PUBACK in time.
    #[error("{0}")]
    Transport(String),
}

/// A connection of its own that publishes QoS1 batches and reports success only once the broker
/// acknowledged every message with a PUBACK. A failed batch drops the connection, so the retry
/// starts clean; messages of a failed batch may have arrived (at-least-once).
pub struct ConfirmedPublisher {
    options: MqttOptions,
    link: Option<(AsyncClient, EventLoop)>,
    capacity: usize,
    ack_timeout: Duration,
}

impl std::fmt::Debug for ConfirmedPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (host, port) = self.options.broker_address();
        write!(f, "ConfirmedPublisher({host}:{port})")
    }
}

impl ConfirmedPublisher {
    /// Publishes through `options` (a clean session of its own), batches of up to `capacity`
    /// messages, each batch acknowledged within `ack_timeout`.
    pub fn new(mut options: MqttOptions, capacity: usize, ack_timeout: Duration) -> Self {
        options.set_clean_start(true).set_manual_acks(false);
        ConfirmedPublisher {
            options,
            link: None,
            capacity,
            ack_timeout,
        }
    }

    /// Publishes every message at QoS1; `Ok` once every PUBACK came back with success.
    pub async fn publish_all(&mut self, messages: Vec<Message>) -> Result<(), PublishError> {
        let result = self.try_publish_all(messages).await;
        if result.is_err() {
            self.link = None; // a new connection for the retry
        }
        result
    }

    /// Keeps the connection up between batches: answers the broker and sends the keepalive
    /// pings, which a connection polled only during batches never sent (the broker dropped it
    /// after 1.5 × keepalive without a packet, and the next batch failed on the dead socket
    /// and waited out a retry). Completes only when the connection fails (it is dropped; the
    /// next batch connects anew); never without a connection. Meant to be raced against the
    /// wait for work, and cancelled when work comes.
    pub async fn idle(&mut self) {
        let Some((_, eventloop)) = self.link.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            if let Err(e) = eventloop.poll().await {
                let (host, port) = self.options.broker_address();
                tracing::debug!(%host, port, error = %e, "idle publishing connection lost; the next batch reconnects");
                self.link = None;
                return;
            }
        }
    }

    async fn try_publish_all(&mut self, messages: Vec<Message>) -> Result<(), PublishError> {
        let expected = messages.len();
        let capacity = self.capacity.max(expected) + 16;
        let (client, eventloop) = self
            .link
            .get_or_insert_with(|| AsyncClient::new(self.options.clone(), capacity));
        for m in messages {
            let sent = match m.properties {
                Some(props) => client.try_publish_with_properties(
                    m.topic,
                    QoS::AtLeastOnce,
                    m.retain,
                    m.payload,
                    props,
                ),
                None => client.try_publish(m.topic, QoS::AtLeastOnce, m.retain, m.payload),
            };
            sent.map_err(|e| PublishError::Transport(e.to_string()))?;
        }
        let mut acked = 0;
        let wait = async {
            while acked < expected {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        use rumqttc::v5::mqttbytes::v5::PubAckReason;
                        if !matches!(
                            ack.reason,
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                        ) {
                            return Err(PublishError::Refused(format!(
                                "the broker refused a publish: {:?}",
                                ack.reason
                            )));
                        }
                        acked += 1;
                    }
                    Ok(_) => {}
                    Err(e) => return Err(classify_connection_error(&e)),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.ack_timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(PublishError::Transport(format!(
                "{acked} of {expected} PUBACKs within {} ms",
                self.ack_timeout.as_millis()
            ))),
        }
    }
}

fn classify_connection_error(e: &rumqttc::v5::ConnectionError) -> PublishError {
    use rumqttc::v5::ConnectionError as E;
    match e {
        E::Tls(t) => PublishError::Tls(t.to_string()),
        E::ConnectionRefused(code) => {
            PublishError::Refused(format!("the broker refused the connection: {code:?}"))
        }
        other => PublishError::Transport(format!("broker: {other}")),
    }
}

/// Detects a broker that stopped answering: armed by an outgoing ping, disarmed by anything
/// incoming.
#[derive(Debug, Clone)]
pub struct Watchdog {
    grace: Duration,
    ping_sent: Option<Instant>,
}

impl Watchdog {
    /// A watchdog allowing half a keepalive for the answer to a ping.
    pub fn new(keep_alive: Duration) -> Watchdog {
        Watchdog {
            grace: keep_alive / 2,
            ping_sent: None,
        }
    }

    /// A ping went out.
    pub fn ping_sent(&mut self, now: Instant) {
        self.ping_sent.get_or_insert(now);
    }

    /// Something arrived from the broker.
    pub fn heard(&mut self) {
        self.ping_sent = None;
    }

    /// When to look again; `None` while no ping is outstanding.
    pub fn deadline(&self) -> Option<Instant> {
        self.ping_sent.map(|t| t + self.grace)
    }

    /// Whether the broker is silent past the deadline.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }
}

/// A message for the pipeline.
pub type Inbound = Publish;

/// Runs the session until `shutdown` turns true: connects, subscribes, forwards publishes to
/// `inbound`, reconnects with backoff.
pub async fn run(
    mut eventloop: EventLoop,
    client: AsyncClient,
    cfg: MqttSection,
    filters: Vec<Filter>,
    inbound: mpsc::Sender<Inbound>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(
        Duration::from_millis(cfg.reconnect_min_ms),
        Duration::from_millis(cfg.reconnect_max_ms),
    );
    let mut watchdog = Watchdog::new(cfg.keep_alive());
    loop {
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

/// Creates the client and its event loop.
pub fn client(options: MqttOptions) -> (AsyncClient, EventLoop) {
    AsyncClient::new(options, REQUEST_CAPACITY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter_and_resets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay(&mut rng).as_millis()).collect();
        assert_eq!(delays[0], 100);
        assert!(
            delays.iter().all(|d| (100..=1000).contains(d)),
            "{delays:?}"
        );
        assert!(delays[4..].iter().any(|d| *d > 400), "{delays:?}");
        b.reset();
        assert_eq!(b.next_delay(&mut rng).as_millis(), 100);
    }

    #[test]
    fn watchdog_fires_half_a_keepalive_after_an_unanswered_ping() {
        let k = Duration::from_secs(10);
        let mut w = Watchdog::new(k);
        let t0 = Instant::now();
        assert!(!w.expired(t0 + k * 100), "not armed without a ping");
        w.ping_sent(t0);
        assert!(!w.expired(t0 + k / 2 - Duration::from_millis(1)));
        assert!(w.expired(t0 + k / 2));
        w.heard();
        assert!(!w.expired(t0 + k));
    }

    #[test]
    fn shared_subscriptions_cover_reports_but_not_retained_status() {
        let f = filters(&["360702".into()], Some("gw"));
        let paths: Vec<&str> = f.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["$share/gw/cs/v1/360702/+/+/up", "cs/v1/360702/+/+/status"]
        );
    }
}
