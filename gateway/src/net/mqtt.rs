//! MQTT connections: the options every connection of the gateway is built from (ingest
//! session, alert notifier, city platform), the [`ConfirmedPublisher`] that counts a batch as
//! delivered only when every PUBACK came back, and the [`Watchdog`] that notices a silent broker.
//!
//! The ingest session itself is the MQTT source (`crate::source::mqtt`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde::Deserialize;
use tokio::time::Instant;

use crate::net::tls::TlsSection;
use crate::secret::Secret;

/// Capacity of the client's request queue (acknowledgements and dead-letter publishes). The
/// broker may not have more than [`RECEIVE_MAXIMUM`] unacknowledged messages in flight to us,
/// so acknowledgements always fit.
const REQUEST_CAPACITY: usize = 16 * 1024;
/// MQTT 5 receive maximum: unacknowledged QoS1 messages the broker may send us at once.
pub const RECEIVE_MAXIMUM: u16 = 4096;
/// Our own QoS1 publishes (dead letters, alert events) in flight at once.
pub const OUTGOING_INFLIGHT: u16 = 1024;

/// MQTT connection and session.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// Broker host name or address.
    pub host: String,
    /// Broker port (1883 plain, 8883 TLS).
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// User name, if the broker requires one (overridden by `CITYSENSE_MQTT_USERNAME`).
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (first line); `CITYSENSE_MQTT_PASSWORD` takes precedence.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Seconds between keepalive pings (5..=3600); a silent broker is detected within 1.5 × this.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// Start a new session on connect. Keep `false` so the broker queues QoS1 reports while the
    /// gateway restarts.
    #[serde(default)]
    pub clean_start: bool,
    /// How long the broker keeps the session (and its queue) after a disconnect, in seconds.
    /// Must be greater than 0 when `clean_start = false`, or the broker drops the queue at once.
    #[serde(default = "default_session_expiry")]
    pub session_expiry_s: u32,
    /// Refused (kept only to say why): a `$share/{group}` subscription hands each report to one
    /// member in turn, so every gateway of the group would see part of an area's gates, part of
    /// a device's sequence numbers and part of a segment's lanes, and aggregate and alert on
    /// that part. Partition by district (`site.zones`) and run replicas instead.
    #[serde(default)]
    pub shared_group: Option<String>,
    /// Largest packet accepted; must be at least the broker's `message_size_limit`.
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: u32,
    /// Reconnect backoff: first delay, doubled per failure up to `reconnect_max_ms`, with jitter.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// Reconnect backoff ceiling.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// TLS to the broker; absent means plain TCP (loopback or a trusted segment only).
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// The password, from the environment or `password_file` (never from the file itself).
    #[serde(skip)]
    pub password: Option<Secret>,
}

impl MqttSection {
    /// Checks values that types alone cannot; returns `(key, reason)` pairs.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let m = self;
        if !m.clean_start && m.session_expiry_s == 0 {
            p.push((
                "mqtt.session_expiry_s".into(),
                "a persistent session (clean_start = false) needs session_expiry_s > 0: with 0 the broker drops the session and its queued reports at every disconnect".into(),
            ));
        }
        // rumqttc refuses keepalives under 5 s (it panics): say so here instead.
        if m.keep_alive_s < 5 || m.keep_alive_s > 3600 {
            p.push((
                "mqtt.keep_alive_s".into(),
                format!("keep_alive_s must be 5..=3600, not {}", m.keep_alive_s),
            ));
        }
        if m.reconnect_min_ms == 0 || m.reconnect_min_ms > m.reconnect_max_ms {
            p.push((
                "mqtt.reconnect_min_ms".into(),
                "reconnect_min_ms must be > 0 and at most reconnect_max_ms".into(),
            ));
        }
        if m.max_packet_bytes < 1024 {
            p.push((
                "mqtt.max_packet_bytes".into(),
                "max_packet_bytes below 1024 cannot carry a full wire frame".into(),
            ));
        }
        if m.shared_group.is_some() {
            p.push((
                "mqtt.shared_group".into(),
                "shared subscriptions are no longer supported: the broker hands each report to one gateway of the group in turn, so each would aggregate and alert on part of an area's gates and part of a device's sequence numbers. Serve districts with site.zones (one gateway per district), and run replicas with their own sessions for availability (README, \"Partitions\")".into(),
            ));
        }
        if let Some(tls) = &m.tls
            && tls.client_cert.is_some() != tls.client_key.is_some()
        {
            p.push((
                "mqtt.tls".into(),
                "client_cert and client_key go together".into(),
            ));
        }
        p
    }

    /// The keepalive interval.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_s)
    }
}

fn default_mqtt_port() -> u16 {
    1883
}
fn default_keep_alive() -> u64 {
    30
}
fn default_session_expiry() -> u32 {
    3600
}
fn default_max_packet() -> u32 {
    64 * 1024
}
fn default_reconnect_min() -> u64 {
    500
}
fn default_reconnect_max() -> u64 {
    30_000
}

/// Builds the client options from the config, with `TCP_NODELAY` (what the gateway publishes
/// is waited for: alert events, peer actions).
pub fn options(cfg: &MqttSection, client_id: &str) -> anyhow::Result<MqttOptions> {
    session_options(cfg, client_id, true)
}

/// The options of the ingest session: those of [`options`], with Nagle's algorithm on. What
/// the gateway sends on that session is acknowledgements, dead letters and pings, none of them
/// waited for: Nagle lets the kernel send the acknowledgements of a commit (one small write
/// each, as rumqttc writes every request on its own) in a few segments instead of one segment
/// and one loopback or network transmit per report. Alerts go out on their own session, which
/// keeps `TCP_NODELAY`.
pub fn ingest_options(cfg: &MqttSection, client_id: &str) -> anyhow::Result<MqttOptions> {
    session_options(cfg, client_id, false)
}

fn session_options(
    cfg: &MqttSection,
    client_id: &str,
    nodelay: bool,
) -> anyhow::Result<MqttOptions> {
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
    net.set_tcp_nodelay(nodelay);
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
            Arc::new(crate::net::tls::client_config(tls)?),
        )));
    }
    Ok(o)
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

/// Creates the client and its event loop.
pub fn client(options: MqttOptions) -> (AsyncClient, EventLoop) {
    AsyncClient::new(options, REQUEST_CAPACITY)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
