//! The CitySense gateway: ingests node reports over MQTT, verifies and decodes them against the
//! device profiles and keys, aggregates them into time series, keeps them in a durable local
//! store, forwards points to InfluxDB, keeps a registry of every device, and serves metrics and
//! an API.
//!
//! ```text
//! broker ──▶ mqtt (session, reconnect, watchdog) ──▶ pipeline: verify & decode ──▶ Readings
//!                                                      │          └──▶ cs/v1/dlq/{zone} (rejections with reasons)
//! Readings ──▶ aggregate (crowd, traffic, pipe, device health) ──▶ Points
//! Readings + Points + ledgers ──▶ store (one fsync'd commit) ──▶ ack to the broker
//!                                   ├──▶ influxdb sink (own cursor)
//!                                   ├──▶ city_platform sink (a cursor per dataset: aggregates, alerts, raw)
//!                                   └──▶ http: /api/v1/series, /api/v1/devices[/{id}]
//! http: /metrics /healthz /readyz
//! ```
//!
//! # Layout
//!
//! - [`config`]: the config file; [`keys`]: the device keys file.
//! - [`mqtt`]: the MQTT source; [`pipeline`]: batches, verification, aggregation, commit,
//!   acknowledgement.
//! - [`verify`]: topics, frames and JSON to [`reading::Reading`]s, or a rejection reason.
//! - [`registry`] and [`ledger`]: device state, replay window, completeness.
//! - [`aggregate`]: event-time windows to [`point::Point`]s. [`store`]: the local store.
//!   [`influxdb`]: the InfluxDB sink. [`city_platform`]: forwarding to the city platform.
//! - [`metrics`], [`http`]: what operators scrape and query.
//! - [`demo`] and [`traffic`]: `gateway demo`, the whole system in one process.

pub mod aggregate;
pub mod alert;
pub mod city_platform;
pub mod config;
pub mod demo;
pub mod heap;
pub mod http;
pub mod influxdb;
pub mod keys;
pub mod ledger;
pub mod metrics;
pub mod modbus;
pub mod mqtt;
pub mod pipeline;
pub mod point;
pub mod reading;
pub mod registry;
pub mod store;
mod tls;
pub mod traffic;
pub mod verify;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use device_profiles::Catalog;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::{Config, MqttSection, VerifySection};
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::registry::{Presence, Registry};
use crate::store::Store;

/// What a gateway instance needs besides the catalog and keys.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Instance id (MQTT client id).
    pub gateway_id: String,
    /// Broker and session.
    pub mqtt: MqttSection,
    /// Acceptance rules.
    pub verify: VerifySection,
    /// HTTP listen address (port 0 picks a free port).
    pub http_listen: SocketAddr,
    /// Served zones; empty means all.
    pub zones: Vec<String>,
    /// The local store's database file (`:memory:` for a store that dies with the process).
    pub store_path: std::path::PathBuf,
    /// Retention and size bound of the local store.
    pub retention: store::Retention,
    /// Aggregation tunables.
    pub aggregate: aggregate::AggregateSettings,
    /// The InfluxDB sink, if any.
    pub influxdb: Option<influxdb::InfluxSection>,
    /// Alert rules and notifiers.
    pub alerts: config::AlertsSection,
    /// Modbus polling.
    pub modbus: modbus::ModbusSection,
    /// Forwarding to the city platform, if any.
    pub city_platform: Option<city_platform::CityPlatformSection>,
}

impl Settings {
    /// The settings of a config file.
    pub fn from_config(c: &Config) -> Settings {
        Settings {
            gateway_id: c.gateway.id.clone(),
            mqtt: c.mqtt.clone(),
            verify: c.verify.clone(),
            http_listen: c.http.listen,
            zones: c.site.zones.clone(),
            store_path: c.store.path.clone(),
            retention: c.store.retention(),
            aggregate: c.aggregate.settings(),
            influxdb: c.influxdb.clone(),
            alerts: c.alerts.clone(),
            modbus: c.modbus.clone(),
            city_platform: c.city_platform.clone(),
        }
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    http_addr: SocketAddr,
    registry: Arc<Mutex<Registry>>,
    store: Arc<Store>,
    metrics: Metrics,
    alerts: alert::Alerts,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// The rules in force: the defaults of the site and profiles, then the rule files'.
pub fn load_rules(
    catalog: &Catalog,
    section: &config::AlertsSection,
) -> anyhow::Result<Vec<alert::Rule>> {
    let files = section
        .rule_files
        .iter()
        .map(|f| alert::RuleFile::load(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tuning = alert::rule::DefaultsTuning {
        cap_factor: section.cap_factor,
        cap_factor_by_area: section.cap_factor_by_area.clone(),
    };
    let unknown: Vec<&String> = tuning
        .cap_factor_by_area
        .keys()
        .filter(|id| {
            !catalog
                .site
                .scenic_areas
                .iter()
                .any(|a| a.id == **id || a.choke_points.iter().any(|c| c.id == **id))
        })
        .collect();
    anyhow::ensure!(
        unknown.is_empty(),
        "alerts.cap_factor_by_area names no scenic area or choke point of the site: {unknown:?}"
    );
    let defaults = alert::rule::defaults(catalog, &tuning);
    let rules = alert::rule::merge(defaults, &files);
    let problems = alert::rule::check_against(catalog, &rules);
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(rules)
}

impl Gateway {
    /// Starts the HTTP server, the MQTT session, the pipeline and the presence sweep.
    pub async fn start(
        settings: Settings,
        catalog: Arc<Catalog>,
        keys: Keys,
    ) -> anyhow::Result<Gateway> {
        let mut registry = Registry::new(&catalog, &keys, &settings.zones);
        let (store, opened) = Store::open(&settings.store_path)?;
        if let Some(moved) = opened.moved_corrupt_file {
            tracing::error!(moved_to = %moved.display(), "the local store was corrupt and was replaced");
        }
        registry.restore_ledgers(store.ledgers()?);
        let mut aggregators = aggregate::Aggregators::with_settings(&catalog, settings.aggregate);
        let replayed = replay_recent(&store, &mut aggregators)?;
        if replayed > 0 {
            tracing::info!(
                readings = replayed,
                "aggregation state rebuilt from the local store"
            );
        }
        let store = Arc::new(store);
        anyhow::ensure!(
            !registry.is_empty(),
            "no devices in the served zones {:?}",
            settings.zones
        );
        let wire_without_key: Vec<&str> = registry
            .iter()
            .filter(|d| d.info.encoding == device_profiles::Encoding::Wire && !d.info.has_key)
            .map(|d| &*d.info.id)
            .collect();
        if !wire_without_key.is_empty() {
            tracing::warn!(devices = ?wire_without_key, "devices without a key in the keys file: their reports will be rejected (no_key)");
        }
        let filters = mqtt::filters(registry.zones(), settings.mqtt.shared_group.as_deref());
        let registry = Arc::new(Mutex::new(registry));
        let metrics = Metrics::new();
        let mut engine = alert::Engine::new(
            &catalog,
            load_rules(&catalog, &settings.alerts)?,
            settings.alerts.renotify_s,
        );
        let dropped = engine.restore(store.alert_states()?);
        if !dropped.is_empty() {
            tracing::warn!(states = ?dropped, "alert states of rules no longer in force were ignored");
        }
        let open = engine.open_alerts().len();
        if open > 0 {
            tracing::info!(open, "open alerts restored from the local store");
        }
        let alerts = alert::Alerts::new(engine, metrics.clone());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();

        let not_ready = influxdb::NotReady::default();
        let listener = tokio::net::TcpListener::bind(settings.http_listen)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", settings.http_listen))?;
        let http_addr = listener.local_addr()?;
        let app = http::router(http::AppState {
            registry: registry.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            not_ready: not_ready.clone(),
            alerts: alerts.clone(),
        });
        let mut http_shutdown = shutdown_rx.clone();
        tasks.spawn(async move {
            let stop = async move {
                let _ = http_shutdown.changed().await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });

        // Commits that hold points wake the InfluxDB sink.
        let (points_committed, points_rx) = watch::channel(());
        if let Some(influx) = settings.influxdb.clone() {
            tasks.spawn(influxdb::run(
                influx,
                store.clone(),
                metrics.clone(),
                not_ready.clone(),
                points_rx,
                shutdown_rx.clone(),
            ));
        }
        let mut sinks: Vec<String> = settings
            .influxdb
            .iter()
            .map(|_| influxdb::SINK.to_owned())
            .collect();
        let mut sinks_for_alerts = sinks.clone();
        let notifiers = notifiers(&settings, &alerts)?;
        let mut notifier_cursors: Vec<String> = notifiers
            .iter()
            .map(|n| format!("alerts:{}", n.name()))
            .collect();
        let mut raw_sinks = Vec::new();
        if let Some(city) = &settings.city_platform {
            let forwarders =
                city_forwarders(city, &settings, &catalog, &store, &metrics, &not_ready)?;
            for f in forwarders {
                tasks.spawn(f.run(shutdown_rx.clone()));
            }
            let (points, readings, events) = city.retention_cursors();
            sinks.extend(points);
            raw_sinks.extend(readings);
            notifier_cursors.extend(events);
            sinks_for_alerts.extend(city.sink_names());
        }
        for n in notifiers {
            tasks.spawn(alert::notify::run(
                n,
                store.clone(),
                metrics.clone(),
                alerts.subscribe(),
                shutdown_rx.clone(),
            ));
        }
        tasks.spawn(maintain_store(
            store.clone(),
            settings.retention,
            (sinks, raw_sinks),
            notifier_cursors,
            metrics.clone(),
            shutdown_rx.clone(),
        ));
        let options = mqtt::options(&settings.mqtt, &settings.gateway_id)?;
        let (client, eventloop) = mqtt::client(options);
        let (inbound_tx, inbound_rx) = mpsc::channel(pipeline::MAX_BATCH * 4);
        let (polled_tx, polled_rx) = mpsc::channel(64);
        if settings.modbus.enabled {
            let mut buses: HashMap<(String, u32), Vec<modbus::Device>> = HashMap::new();
            for device in modbus::devices(&catalog, &settings.zones, &settings.modbus)? {
                tracing::info!(device = %device.id, endpoint = ?device.endpoint, interval_s = device.interval.as_secs(), "polling Modbus device");
                match device.endpoint.clone() {
                    modbus::Endpoint::Tcp(_) => {
                        tasks.spawn(modbus::poll(
                            device,
                            settings.modbus.clone(),
                            polled_tx.clone(),
                            metrics.clone(),
                            shutdown_rx.clone(),
                        ));
                    }
                    modbus::Endpoint::Rtu { path, baud } => {
                        buses.entry((path, baud)).or_default().push(device);
                    }
                }
            }
            // One poller per RS-485 port: the bus is shared, one request at a time.
            for ((path, baud), devices) in buses {
                tasks.spawn(modbus::poll_bus(
                    path,
                    baud,
                    devices,
                    settings.modbus.clone(),
                    polled_tx.clone(),
                    metrics.clone(),
                    shutdown_rx.clone(),
                ));
            }
        }
        drop(polled_tx);
        let pipeline = pipeline::Pipeline {
            verifier: Arc::new(verify::Verifier::new(
                &catalog,
                keys,
                settings.verify.clone(),
            )),
            registry: registry.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            client: client.clone(),
            aggregators: Arc::new(Mutex::new(aggregators)),
            alerts: alerts.clone(),
            points_committed,
        };
        tasks.spawn(pipeline.run(inbound_rx, polled_rx));
        tasks.spawn(mqtt::run(
            eventloop,
            client,
            settings.mqtt.clone(),
            filters,
            inbound_tx,
            metrics.clone(),
            shutdown_rx.clone(),
        ));
        tasks.spawn(sweep_presence(
            registry.clone(),
            alerts.clone(),
            store.clone(),
            metrics.clone(),
            (sinks_for_alerts, not_ready.clone()),
            shutdown_rx,
        ));
        tracing::info!(http = %http_addr, broker = %format!("{}:{}", settings.mqtt.host, settings.mqtt.port), "gateway started");
        Ok(Gateway {
            http_addr,
            registry,
            store,
            metrics,
            alerts,
            shutdown,
            tasks,
        })
    }

    /// The alert engine.
    pub fn alerts(&self) -> &alert::Alerts {
        &self.alerts
    }

    /// Where HTTP listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The device registry.
    pub fn registry(&self) -> Arc<Mutex<Registry>> {
        self.registry.clone()
    }

    /// The store boundary.
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops every task: disconnects from the broker (keeping the session), finishes the batch
    /// in hand, stops HTTP.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// One forwarder per enabled dataset of the city platform, each with its own connection.
fn city_forwarders(
    city: &city_platform::CityPlatformSection,
    settings: &Settings,
    catalog: &Catalog,
    store: &Arc<Store>,
    metrics: &Metrics,
    not_ready: &influxdb::NotReady,
) -> anyhow::Result<Vec<city_platform::Forwarder>> {
    use city_platform::transport::Transport;
    let region = city
        .region
        .clone()
        .unwrap_or_else(|| catalog.site.site.region.clone());
    let exchange = Arc::new(city_platform::exchange::Exchange::new(
        catalog,
        &settings.gateway_id,
        &store.instance()?,
        &region,
    ));
    let section = Arc::new(city.clone());
    let mut out = Vec::new();
    for d in city_platform::Dataset::ALL {
        if !city.enabled(d) {
            continue;
        }
        let transport =
            Transport::new(city, &format!("{}-city-{}", settings.gateway_id, d.name()))?;
        tracing::info!(dataset = d.name(), id = %city.dataset_id(d), endpoint = %transport.endpoint(), "forwarding to the city platform");
        out.push(city_platform::Forwarder {
            dataset: d,
            section: section.clone(),
            store: store.clone(),
            exchange: exchange.clone(),
            transport,
            metrics: metrics.clone(),
            not_ready: not_ready.clone(),
            lateness_ms: settings.aggregate.lateness_ms,
        });
    }
    Ok(out)
}

/// The notifiers the settings ask for.
fn notifiers(
    settings: &Settings,
    alerts: &alert::Alerts,
) -> anyhow::Result<Vec<alert::notify::Notifier>> {
    use alert::notify::{AlertmanagerNotifier, MqttNotifier, Notifier, WebhookNotifier};
    let mut out = Vec::new();
    if settings.alerts.mqtt {
        let options = mqtt::options(&settings.mqtt, &format!("{}-alerts", settings.gateway_id))?;
        out.push(Notifier::Mqtt(Box::new(MqttNotifier::new(
            options,
            alerts.engine.clone(),
        ))));
    }
    for w in &settings.alerts.webhook {
        out.push(Notifier::Webhook(WebhookNotifier::new(w.clone())?));
    }
    if let Some(am) = &settings.alerts.alertmanager {
        out.push(Notifier::Alertmanager(AlertmanagerNotifier::new(
            am.clone(),
            &settings.gateway_id,
            alerts.engine.clone(),
        )?));
    }
    Ok(out)
}

/// Feeds the last day of stored readings to fresh aggregators, so windows open at a restart and
/// the day's crowd counts continue. The points this emits were stored before; they are dropped.
fn replay_recent(store: &Store, aggregators: &mut aggregate::Aggregators) -> anyhow::Result<usize> {
    let since = pipeline::now_ms() - 24 * 3600 * 1000;
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
            .filter(|r| r.time_ms >= since)
            .collect();
        n += recent.len();
        aggregators.ingest(&recent);
    }
}
/// Applies retention and the size bound every ten seconds, and exports the store's size, the
/// runway (time) left at the current write rate, drops and quarantined records.
async fn maintain_store(
    store: Arc<Store>,
    rules: store::Retention,
    (sinks, raw_sinks): (Vec<String>, Vec<String>),
    notifiers: Vec<String>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    let mut last: Option<(std::time::Instant, u64)> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let (s, sinks2, raw2, notifiers2) = (
            store.clone(),
            sinks.clone(),
            raw_sinks.clone(),
            notifiers.clone(),
        );
        let done = tokio::task::spawn_blocking(move || {
            let now = pipeline::now_ms();
            let (points, raw): (Vec<&str>, Vec<&str>) = (
                sinks2.iter().map(String::as_str).collect(),
                raw2.iter().map(String::as_str).collect(),
            );
            let r = s.enforce(now, &rules, &points, &raw)?;
            s.expire_alert_events(now - rules.points_ms, &notifiers2)?;
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
            took_ms = pipeline::millis(r.took),
            devices_ms = pipeline::millis(r.devices_took),
            devices_written = r.devices_written,
            "store maintenance"
        );
        if r.took >= pipeline::SLOW_COMMIT {
            tracing::warn!(
                took_ms = pipeline::millis(r.took),
                devices_ms = pipeline::millis(r.devices_took),
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
/// Updates the presence gauges, logs devices coming and going, and runs the presence rules.
async fn sweep_presence(
    registry: Arc<Mutex<Registry>>,
    alerts: alert::Alerts,
    store: Arc<Store>,
    metrics: Metrics,
    (sinks, not_ready): (Vec<String>, influxdb::NotReady),
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last: HashMap<Arc<str>, Presence> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let now = pipeline::now_ms();
        let refused: Vec<(&str, bool)> = {
            let down = not_ready.lock().map(|m| m.clone()).unwrap_or_default();
            sinks
                .iter()
                .map(|s| (s.as_str(), down.contains_key(s)))
                .collect()
        };
        let checked = alerts
            .apply(&store, |e| {
                if let Ok(r) = registry.lock() {
                    e.on_presence(now, &r);
                    let zone = r.zones().first().map_or("000000", |z| &**z);
                    e.on_sinks(now, zone, &refused);
                }
            })
            .await;
        if let Err(e) = checked {
            tracing::error!(error = %e, "presence rules failed");
        }
        let Ok(registry) = registry.lock() else {
            return;
        };
        let counts = registry.presence_counts(now);
        for (state, n) in [
            ("online", counts.online),
            ("offline", counts.offline),
            ("unknown", counts.unknown),
        ] {
            metrics.devices.with_label_values(&[state]).set(n as i64);
        }
        metrics
            .ledger_missing
            .set(registry.missing_reports() as i64);
        for d in registry.iter() {
            let now_presence = d.presence(now);
            let before = match last.get_mut(&d.info.id) {
                Some(p) => std::mem::replace(p, now_presence),
                None => {
                    last.insert(d.info.id.clone(), now_presence);
                    Presence::Unknown
                }
            };
            if before != now_presence {
                match now_presence {
                    Presence::Online => {
                        tracing::info!(device = %d.info.id, kind = %d.info.kind, zone = %d.info.zone, "device online")
                    }
                    Presence::Offline => {
                        tracing::warn!(device = %d.info.id, kind = %d.info.kind, zone = %d.info.zone, "device offline")
                    }
                    Presence::Unknown => {}
                }
            }
        }
    }
}

/// `gateway run`: loads the config's files and runs until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let catalog = Catalog::load(&config.site.profiles, &config.site.site)?;
    let keys = Keys::load(&config.site.keys)?;
    let gateway = Gateway::start(Settings::from_config(&config), Arc::new(catalog), keys).await?;
    shutdown.await;
    tracing::info!("shutting down");
    gateway.stop().await;
    Ok(())
}

/// `gateway check-config`: loads the config and everything it names; a summary, or every
/// problem.
pub fn check_config(path: &std::path::Path) -> anyhow::Result<String> {
    let config = Config::load(path)?;
    let catalog = Catalog::load(&config.site.profiles, &config.site.site)?;
    let keys = Keys::load(&config.site.keys)?;
    let registry = Registry::new(&catalog, &keys, &config.site.zones);
    anyhow::ensure!(
        !registry.is_empty(),
        "{}: no devices in the served zones {:?}",
        path.display(),
        config.site.zones
    );
    let rules = load_rules(&catalog, &config.alerts).with_context(|| path.display().to_string())?;
    let polled = if config.modbus.enabled {
        modbus::devices(&catalog, &config.site.zones, &config.modbus)
            .with_context(|| path.display().to_string())?
            .len()
    } else {
        0
    };
    let mut notifiers: Vec<String> = Vec::new();
    if config.alerts.mqtt {
        notifiers.push("mqtt".into());
    }
    notifiers.extend(
        config
            .alerts
            .webhook
            .iter()
            .map(|w| format!("webhook:{}", w.name)),
    );
    if config.alerts.alertmanager.is_some() {
        notifiers.push("alertmanager".into());
    }
    let city = match &config.city_platform {
        Some(city) => {
            // Build the transport: certificate and key files are read and checked now.
            let endpoint = city_platform::transport::Transport::new(city, "check")?.endpoint();
            let datasets: Vec<String> = city_platform::Dataset::ALL
                .into_iter()
                .filter(|d| city.enabled(*d))
                .map(|d| city.dataset_id(d))
                .collect();
            format!("{endpoint} ({})", datasets.join(", "))
        }
        None => "none".to_owned(),
    };
    let unknown_keys: Vec<String> = catalog
        .site
        .devices
        .iter()
        .map(|d| d.id.clone())
        .filter(|id| keys.get(id).is_none())
        .collect();
    Ok(format!(
        "{}: ok — gateway {}, broker {}:{}, {} devices in zones {:?}, {} with keys, {} polled over Modbus; {} alert rules, notifiers: {}; city platform: {city}; devices without a key: {}",
        path.display(),
        config.gateway.id,
        config.mqtt.host,
        config.mqtt.port,
        registry.len(),
        registry.zones(),
        keys.len(),
        polled,
        rules.len(),
        if notifiers.is_empty() {
            "none".to_owned()
        } else {
            notifiers.join(", ")
        },
        if unknown_keys.is_empty() {
            "none".to_owned()
        } else {
            unknown_keys.join(", ")
        }
    ))
}

/// The catalog and alert settings of a config file, or the built-in Ganzhou site.
fn rules_context(
    config: Option<&std::path::Path>,
) -> anyhow::Result<(Catalog, config::AlertsSection)> {
    match config {
        Some(path) => {
            let c = Config::load(path)?;
            Ok((Catalog::load(&c.site.profiles, &c.site.site)?, c.alerts))
        }
        None => Ok((Catalog::ganzhou()?, config::AlertsSection::default())),
    }
}

/// `gateway rules test`: runs the test cases of rule files. Returns the report and whether
/// every case passed.
pub fn rules_test(
    files: &[std::path::PathBuf],
    config: Option<&std::path::Path>,
) -> anyhow::Result<(String, bool)> {
    use std::fmt::Write;
    let (catalog, section) = rules_context(config)?;
    let base = load_rules(&catalog, &section)?;
    let (mut report, mut passed, mut failed) = (String::new(), 0, 0);
    for path in files {
        let file = alert::RuleFile::load(path)?;
        let rules = alert::rule::merge(base.clone(), std::slice::from_ref(&file));
        if file.test.is_empty() {
            let _ = writeln!(report, "{}: no [[test]] cases", path.display());
        }
        for case in &file.test {
            match alert::engine::run_case(&rules, case, section.renotify_s) {
                Ok(n) => {
                    passed += 1;
                    let _ = writeln!(
                        report,
                        "ok     {}: {} ({n} transitions)",
                        path.display(),
                        case.name
                    );
                }
                Err(diff) => {
                    failed += 1;
                    let _ = writeln!(
                        report,
                        "FAILED {}: {} (rule {})\n{diff}",
                        path.display(),
                        case.name,
                        case.rule
                    );
                }
            }
        }
    }
    let _ = writeln!(report, "rule tests: {passed} passed, {failed} failed");
    Ok((report, failed == 0))
}

/// `gateway rules list`: one line per rule in force.
pub fn rules_list(config: Option<&std::path::Path>) -> anyhow::Result<String> {
    use std::fmt::Write;
    let (catalog, section) = rules_context(config)?;
    let mut out = String::new();
    for r in load_rules(&catalog, &section)? {
        let grades: Vec<String> = r
            .grades
            .iter()
            .map(|g| format!("{} {}", g.name, g.at))
            .collect();
        let _ = writeln!(
            out,
            "{:<28} {:<8} {:<9} {:<16} {:<6} [{}] — {}",
            r.id,
            r.category.name(),
            format!("{:?}", r.source).to_lowercase(),
            if r.field.is_empty() { "-" } else { &r.field },
            format!("{:?}", r.side).to_lowercase(),
            grades.join(", "),
            r.description
        );
    }
    Ok(out)
}
