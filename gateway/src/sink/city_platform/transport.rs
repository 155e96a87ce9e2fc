//! The two ways records go upstream: MQTT 5 (one QoS1 message per record, delivered on its
//! PUBACK) and HTTPS (one POST per batch with an idempotency key). Both only send; retries,
//! splitting and cursors are the sink runtime's ([`crate::sink::runtime`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde::{Deserialize, Serialize};

use super::exchange::{Record, SCHEMA};
use crate::net::mqtt::{ConfirmedPublisher, Message, PublishError};
use crate::net::tls::TlsSection;
use crate::secret::Secret;

/// `[city_platform.mqtt]`: the platform's MQTT 5 broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamMqttSection {
    /// Broker host name or address.
    pub host: String,
    /// Broker port (8883 for TLS).
    #[serde(default = "default_mqtts_port")]
    pub port: u16,
    /// User name, if the platform requires one.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (first line); `CITYSENSE_CITY_MQTT_PASSWORD` takes precedence.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS: the platform's CA, and our client certificate and key.
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// Records go to `{topic_prefix}/{dataset}/{region}/{measurement}`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Keepalive, seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// How long a batch may wait for all its PUBACKs, milliseconds.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_ms: u64,
    /// The password (from the environment or `password_file`).
    #[serde(skip)]
    pub password: Option<Secret>,
}

fn default_mqtts_port() -> u16 {
    8883
}
fn default_topic_prefix() -> String {
    "citysense/exchange/v1".into()
}
fn default_keep_alive() -> u64 {
    30
}
fn default_ack_timeout() -> u64 {
    10_000
}

/// `[city_platform.https]`: the platform's batch endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsSection {
    /// The endpoint, `https://...`; every batch is POSTed here.
    pub url: String,
    /// PEM file of the CA that signed the platform's certificate; absent means the public
    /// web PKI roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate, where the platform authenticates gateways by certificate.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Time allowed for one request, milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Bearer token, from `CITYSENSE_CITY_TOKEN` (never from the file).
    #[serde(skip)]
    pub token: Option<Secret>,
}

fn default_timeout() -> u64 {
    10_000
}

/// Why a batch was not delivered. Nothing of a failed batch counts as delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The platform refuses these records as invalid (HTTP 400, 422): the batch is split until
    /// the refused records are alone; those are dead-lettered.
    #[error("the platform rejected the records: {0}")]
    Rejected(String),
    /// The batch is too large (HTTP 413): split and sent again.
    #[error("the platform found the batch too large")]
    TooLarge,
    /// An operator must act: credentials, permissions or the endpoint (HTTP 401, 403, 404; an
    /// MQTT refusal). Records stay stored.
    #[error("the platform refused the gateway: {0}")]
    Refused(String),
    /// The TLS handshake failed: certificate not trusted, expired, wrong name, or ours refused.
    /// Records stay stored.
    #[error("TLS with the platform failed: {0}")]
    Tls(String),
    /// Try again later (timeouts, 408, 429, 5xx, connection errors).
    #[error("{reason}")]
    Transient {
        /// `timeout` or `unavailable`.
        class: &'static str,
        /// What happened.
        reason: String,
        /// The platform's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
}

impl SendError {
    /// The metrics label.
    pub fn class(&self) -> &'static str {
        match self {
            SendError::Rejected(_) => "rejected",
            SendError::TooLarge => "too_large",
            SendError::Refused(_) => "refused",
            SendError::Tls(_) => "tls",
            SendError::Transient { class, .. } => class,
        }
    }

    /// Whether an operator must fix something before it can work (refused, TLS).
    pub fn needs_operator(&self) -> bool {
        matches!(self, SendError::Refused(_) | SendError::Tls(_))
    }
}

/// One transport instance (one per dataset: a stalled dataset never holds up another).
#[derive(Debug)]
pub enum Transport {
    /// MQTT 5 upstream.
    Mqtt(Box<MqttUpstream>),
    /// HTTPS batches.
    Https(HttpsPlatform),
}

impl Transport {
    /// Sends `records` of `dataset`; `Ok` only when all were confirmed.
    pub async fn send(&mut self, dataset: &str, records: &[&Record]) -> Result<(), SendError> {
        match self {
            Transport::Mqtt(m) => m.send(dataset, records).await,
            Transport::Https(h) => h.send(dataset, records).await,
        }
    }

    /// Keeps the MQTT connection alive between sends (see [`ConfirmedPublisher::idle`]);
    /// completes only when it failed. HTTPS has nothing to keep.
    pub async fn idle(&mut self) {
        match self {
            Transport::Mqtt(m) => m.publisher.idle().await,
            Transport::Https(_) => std::future::pending().await,
        }
    }

    /// Where records go, for logs.
    pub fn endpoint(&self) -> String {
        match self {
            Transport::Mqtt(m) => m.endpoint.clone(),
            Transport::Https(h) => h.url.to_string(),
        }
    }

    /// The transport `city` configures, with its own connection (`client_id` for MQTT).
    pub fn new(city: &super::CityPlatformSection, client_id: &str) -> anyhow::Result<Transport> {
        match (&city.mqtt, &city.https) {
            (Some(m), _) => Ok(Transport::Mqtt(Box::new(MqttUpstream::new(
                m,
                client_id,
                city.batch_records,
            )?))),
            (None, Some(h)) => Ok(Transport::Https(HttpsPlatform::new(h)?)),
            (None, None) => anyhow::bail!(
                "city_platform has no transport: add [city_platform.mqtt] or [city_platform.https]"
            ),
        }
    }
}

/// MQTT 5 upstream: one message per record, QoS1, counted on its PUBACK.
#[derive(Debug)]
pub struct MqttUpstream {
    publisher: ConfirmedPublisher,
    prefix: String,
    endpoint: String,
}

impl MqttUpstream {
    /// A connection of its own with client id `client_id`.
    pub fn new(
        s: &UpstreamMqttSection,
        client_id: &str,
        batch: usize,
    ) -> anyhow::Result<MqttUpstream> {
        let mut o = rumqttc::v5::MqttOptions::new(client_id, s.host.clone(), s.port);
        o.set_keep_alive(Duration::from_secs(s.keep_alive_s))
            .set_connection_timeout(s.keep_alive_s.clamp(2, 10))
            .set_max_packet_size(Some(1024 * 1024))
            .set_outgoing_inflight_upper_limit(crate::net::mqtt::OUTGOING_INFLIGHT);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        o.set_network_options(net);
        if let Some(user) = &s.username {
            let pass = s.password.as_ref().map(|p| p.0.clone()).unwrap_or_default();
            o.set_credentials(user.clone(), pass);
        }
        if let Some(tls) = &s.tls {
            o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
                Arc::new(crate::net::tls::client_config(tls)?),
            )));
        }
        let scheme = if s.tls.is_some() { "mqtts" } else { "mqtt" };
        Ok(MqttUpstream {
            publisher: ConfirmedPublisher::new(o, batch, Duration::from_millis(s.ack_timeout_ms)),
            prefix: s.topic_prefix.trim_end_matches('/').to_owned(),
            endpoint: format!("{scheme}://{}:{}", s.host, s.port),
        })
    }

    /// The topic of a record.
    pub fn topic(prefix: &str, dataset: &str, r: &Record) -> String {
        format!("{prefix}/{dataset}/{}/{}", r.region, r.measurement)
    }

    async fn send(&mut self, dataset: &str, records: &[&Record]) -> Result<(), SendError> {
        let mut messages = Vec::with_capacity(records.len());
        for r in records {
            let payload = serde_json::to_vec(r).map_err(|e| SendError::Rejected(e.to_string()))?;
            messages.push(Message {
                topic: Self::topic(&self.prefix, dataset, r),
                payload,
                retain: false,
                properties: Some(PublishProperties {
                    payload_format_indicator: Some(1),
                    content_type: Some("application/json".into()),
                    user_properties: vec![("schema".into(), SCHEMA.into())],
                    ..PublishProperties::default()
                }),
            });
        }
        self.publisher
            .publish_all(messages)
            .await
            .map_err(|e| {
                let at = &self.endpoint;
                match e {
                    PublishError::Refused(r) => SendError::Refused(format!("{at}: {r}")),
                    PublishError::Tls(t) => SendError::Tls(format!(
                        "{at}: {t} (check city_platform.mqtt.tls: the CA must have signed the platform's certificate)"
                    )),
                    PublishError::Transport(t) => SendError::Transient {
                        class: if t.contains("PUBACK") {
                            "timeout"
                        } else {
                            "unavailable"
                        },
                        reason: format!("{at}: {t}"),
                        retry_after: None,
                    },
                }
            })
    }
}

/// The body of one HTTPS POST.
#[derive(Debug, Serialize)]
pub struct Batch<'a> {
    /// [`SCHEMA`].
    pub schema: &'a str,
    /// `{gateway}.{store}.{stream}.{first seq}-{last seq}`, also the `Idempotency-Key` header.
    pub idempotency_key: String,
    /// The gateway id.
    pub gateway: &'a str,
    /// The dataset id.
    pub dataset: &'a str,
    /// The records, in order.
    pub records: &'a [&'a Record],
}

/// HTTPS batches with an idempotency key.
#[derive(Debug)]
pub struct HttpsPlatform {
    client: reqwest::Client,
    url: reqwest::Url,
    token: Option<Secret>,
}

impl HttpsPlatform {
    /// A client for the section (its CA, client certificate, timeout).
    pub fn new(s: &HttpsSection) -> anyhow::Result<HttpsPlatform> {
        let url = reqwest::Url::parse(&s.url)
            .with_context(|| format!("city_platform.https.url \"{}\" is not a URL", s.url))?;
        anyhow::ensure!(
            url.scheme() == "https",
            "city_platform.https.url must be https://, not {}",
            url.scheme()
        );
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(true)
            .timeout(Duration::from_millis(s.timeout_ms))
            .connect_timeout(Duration::from_millis(s.timeout_ms.min(5000)));
        if let Some(ca) = &s.ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read the platform CA {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("no usable CA certificate in {}", ca.display()))?;
            b = b.tls_built_in_root_certs(false).add_root_certificate(cert);
        }
        if let (Some(cert), Some(key)) = (&s.client_cert, &s.client_key) {
            let mut pem = std::fs::read(cert)
                .with_context(|| format!("cannot read client certificate {}", cert.display()))?;
            pem.push(b'\n');
            pem.extend(
                std::fs::read(key)
                    .with_context(|| format!("cannot read client key {}", key.display()))?,
            );
            b = b.identity(reqwest::Identity::from_pem(&pem).with_context(|| {
                format!(
                    "client certificate {} and key {} are not a usable PEM pair",
                    cert.display(),
                    key.display()
                )
            })?);
        }
        Ok(HttpsPlatform {
            client: b.build().context("cannot build the HTTPS client")?,
            url,
            token: s.token.clone(),
        })
    }

    /// The idempotency key of a batch: the same records always get the same key.
    pub fn idempotency_key(records: &[&Record]) -> String {
        match (records.first(), records.last()) {
            (Some(first), Some(last)) => format!(
                "{}.{}.{}.{}-{}",
                first.source.gateway,
                first.source.store,
                first.source.stream,
                first.source.seq,
                last.source.seq
            ),
            _ => String::new(),
        }
    }

    async fn send(&self, dataset: &str, records: &[&Record]) -> Result<(), SendError> {
        let Some(first) = records.first() else {
            return Ok(());
        };
        let key = Self::idempotency_key(records);
        let batch = Batch {
            schema: SCHEMA,
            idempotency_key: key.clone(),
            gateway: &first.source.gateway,
            dataset,
            records,
        };
        let mut request = self
            .client
            .post(self.url.clone())
            .header("Idempotency-Key", key)
            .json(&batch);
        if let Some(token) = &self.token {
            request = request.bearer_auth(&token.0);
        }
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text: String = response
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        let reason = format!("HTTP {}: {}", status.as_u16(), text.trim());
        Err(match status.as_u16() {
            400 | 422 => SendError::Rejected(reason),
            413 => SendError::TooLarge,
            401 | 403 | 404 => SendError::Refused(format!("{}: {reason}", self.url)),
            408 => SendError::Transient {
                class: "timeout",
                reason,
                retry_after,
            },
            _ => SendError::Transient {
                class: "unavailable",
                reason,
                retry_after,
            },
        })
    }

    fn transport_error(&self, e: &reqwest::Error) -> SendError {
        let chain = error_chain(e);
        let lower = chain.to_lowercase();
        if lower.contains("certificate") || lower.contains("handshake") || lower.contains("tls") {
            SendError::Tls(format!(
                "{}: {chain} (check city_platform.https.ca: the CA must have signed the platform's certificate)",
                self.url
            ))
        } else if e.is_timeout() {
            SendError::Transient {
                class: "timeout",
                reason: format!("{}: no answer in time: {chain}", self.url),
                retry_after: None,
            }
        } else {
            SendError::Transient {
                class: "unavailable",
                reason: format!("{}: {chain}", self.url),
                retry_after: None,
            }
        }
    }
}

/// An error and its causes, `a: b: c`, without repeats.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}
