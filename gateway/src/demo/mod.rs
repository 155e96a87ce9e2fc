//! `gateway demo`: the whole system in one process on embedded defaults — an embedded MQTT
//! broker, the Ganzhou site compiled into the binary, demo keys, built-in traffic, and HTTP on
//! 127.0.0.1:8080 — so a new user sees devices report within seconds of `cargo run`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use device_profiles::Catalog;
use tokio::sync::watch;

use crate::decode::VerifySection;
use crate::net::mqtt::MqttSection;
use crate::{Gateway, Settings};

pub mod feed;

use feed as traffic;

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// HTTP address.
    pub http: SocketAddr,
    /// Where the embedded broker listens (or where an external one is, with `external_broker`).
    pub mqtt: SocketAddr,
    /// Run the built-in traffic.
    pub traffic: bool,
    /// Use a broker already listening at `mqtt` instead of starting the embedded one.
    pub external_broker: bool,
    /// The local store's file.
    pub store: std::path::PathBuf,
}

/// The MQTT settings of the demo: a persistent session on the given broker.
pub fn demo_mqtt(addr: SocketAddr) -> MqttSection {
    MqttSection {
        host: addr.ip().to_string(),
        port: addr.port(),
        username: None,
        password_file: None,
        keep_alive_s: 10,
        clean_start: false,
        session_expiry_s: 3600,
        shared_group: None,
        max_packet_bytes: 64 * 1024,
        reconnect_min_ms: 200,
        reconnect_max_ms: 5_000,
        tls: None,
        password: None,
    }
}

/// The demo operator `demo` with a fresh password, and a fresh `operate` API token: the
/// password and the token, printed at start.
fn demo_identities(store: &crate::store::Store) -> anyhow::Result<(String, String)> {
    use crate::auth::{Role, login, tokens};
    use rand::RngCore;
    let mut raw = [0u8; 8];
    rand::rng().fill_bytes(&mut raw);
    let password = hex::encode(raw);
    let now = crate::clock::now_ms();
    let made = login::add(store, ("demo", Role::Operator, &password), "demo", now)?;
    if let Err(login::AccountError::Taken(_)) = made {
        login::set_password(store, "demo", &password, "demo", now)?
            .map_err(|e| anyhow::anyhow!("the demo account: {e}"))?;
    } else {
        made.map_err(|e| anyhow::anyhow!("the demo account: {e}"))?;
    }
    let (_, token) = tokens::issue(store, "demo", tokens::Scope::Operate, "demo", now)?;
    Ok((password, token))
}

/// Runs the demo until `shutdown` completes.
pub async fn run(
    opts: DemoOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if !opts.external_broker {
        start_embedded_broker(opts.mqtt)?;
    }
    let catalog = Arc::new(Catalog::ganzhou().context("the built-in Ganzhou site does not load")?);
    let keys = crate::keys::Keys::demo(&catalog);
    let settings = Settings {
        gateway_id: "citysense-demo".into(),
        partition: None,
        mqtt: demo_mqtt(opts.mqtt),
        verify: VerifySection::default(),
        http: crate::api::HttpSection {
            listen: opts.http,
            ..Default::default()
        },
        zones: Vec::new(),
        store_path: opts.store.clone(),
        influxdb: None,
        retention: crate::store::Retention::default(),
        commit_interval: crate::store::COMMIT_INTERVAL,
        key_resend: crate::housekeeping::rotation::RESEND,
        aggregate: crate::aggregate::AggregateSettings::default(),
        alerts: crate::config::AlertsSection::default(),
        // The demo's Modbus RTU (gz-p3-rtu) has no slave behind it: `simulator modbus` plays one.
        modbus: crate::source::modbus::ModbusSection {
            enabled: false,
            ..Default::default()
        },
        city_platform: None,
    };
    let gateway = Gateway::start(settings, catalog.clone(), keys).await?;
    let (password, token) = demo_identities(&gateway.store())?;
    println!();
    println!(
        "  CitySense demo: {} devices of the Ganzhou site",
        catalog.site.devices.len()
    );
    println!(
        "  console         http://{}/console/  (log in as demo / {password})",
        gateway.http_addr()
    );
    println!("  MQTT broker     mqtt://{}", opts.mqtt);
    println!(
        "  devices         http://{}/api/v1/devices",
        gateway.http_addr()
    );
    println!(
        "  alerts          http://{}/api/v1/alerts",
        gateway.http_addr()
    );
    println!(
        "  alert events    mosquitto_sub -V mqttv5 -h {} -p {} -t 'cs/v1/alerts/events'",
        opts.mqtt.ip(),
        opts.mqtt.port()
    );
    println!("  API login       the same, by POST /api/v1/login");
    println!("  API token       {token}");
    println!(
        "                  curl -H 'Authorization: Bearer {token}' http://{}/api/v1/devices",
        gateway.http_addr()
    );
    println!("  metrics         http://{}/metrics", gateway.http_addr());
    println!("  local store     {}", opts.store.display());
    println!(
        "  dead letters    mosquitto_sub -V mqttv5 -h {} -p {} -t 'cs/v1/dlq/#'",
        opts.mqtt.ip(),
        opts.mqtt.port()
    );
    println!();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    if opts.traffic {
        let mut o = rumqttc::v5::MqttOptions::new(
            "citysense-demo-traffic",
            opts.mqtt.ip().to_string(),
            opts.mqtt.port(),
        );
        o.set_keep_alive(Duration::from_secs(10));
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(o, 4096);
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    e = eventloop.poll() => if let Err(e) = e {
                        tracing::debug!(error = %e, "demo traffic connection");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        tasks.spawn(traffic::run(client, catalog.clone(), stop_rx.clone()));
    }
    tasks.spawn(summary(
        gateway.registry(),
        gateway.metrics().clone(),
        stop_rx,
    ));
    shutdown.await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    gateway.stop().await;
    Ok(())
}

/// Logs a one-line summary every ten seconds.
async fn summary(
    registry: Arc<std::sync::Mutex<crate::registry::Registry>>,
    metrics: crate::metrics::Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let counts = match registry.lock() {
            Ok(r) => r.presence_counts(crate::clock::now_ms()),
            Err(_) => return,
        };
        let readings: u64 = ["crowd", "traffic", "pipe"]
            .iter()
            .map(|c| metrics.readings.with_label_values(&[c]).get())
            .sum();
        tracing::info!(
            online = counts.online,
            offline = counts.offline,
            unknown = counts.unknown,
            readings,
            dead_letters = metrics.dlq_published.get(),
            "summary"
        );
    }
}

#[cfg(feature = "embedded-broker")]
fn start_embedded_broker(addr: SocketAddr) -> anyhow::Result<()> {
    // Fail clearly if something else holds the port, rather than talking to a stranger's broker.
    std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot start the embedded MQTT broker on {addr} (is another broker running? use --mqtt ADDR)"))?;
    let config: rumqttd::Config = toml::from_str(&format!(
        r#"
        id = 0
        [router]
        id = 0
        max_connections = 10010
        max_outgoing_packet_count = 200
        max_segment_size = 104857600
        max_segment_count = 10
        [v5.1]
        name = "v5-1"
        listen = "{addr}"
        next_connection_delay_ms = 1
        [v5.1.connections]
        connection_timeout_ms = 60000
        max_payload_size = 65536
        max_inflight_count = 500
        dynamic_filters = true
        "#
    ))
    .context("embedded broker config")?;
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })?;
    // Wait until it holds the port (probing by binding, since a probe connection would make
    // the broker log an aborted connect).
    for _ in 0..100 {
        if std::net::TcpListener::bind(addr).is_err() {
            tracing::info!(%addr, "embedded MQTT broker (rumqttd) listening");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("the embedded MQTT broker did not start listening on {addr}")
}

#[cfg(not(feature = "embedded-broker"))]
fn start_embedded_broker(_: SocketAddr) -> anyhow::Result<()> {
    anyhow::bail!(
        "this gateway was built without the embedded-broker feature: pass --external-broker and --mqtt ADDR"
    )
}
