//! Wiring: builds a running [`Gateway`] from its [`Settings`], the catalog and the keys, in the
//! order of the data flow: store and state first, then the HTTP API, the sinks, the sources
//! and the pipeline between them, then the housekeeping tasks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use device_profiles::Catalog;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::{AlertsSection, Config};
use crate::decode::VerifySection;
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::net::mqtt::MqttSection;
use crate::pipeline::alerts::Alerts;
use crate::registry::Registry;
use crate::store::Store;
use crate::{aggregate, alert, api, housekeeping, net, pipeline, sink, source, store};

/// What a gateway instance needs besides the catalog and keys.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Instance id (MQTT client id).
    pub gateway_id: String,
    /// The partition this gateway serves, the same on each of its replicas: the `gateway` label
    /// of its Alertmanager alerts, so the replicas' alerts are one alert there. None: the id.
    pub partition: Option<String>,
    /// Broker and session.
    pub mqtt: MqttSection,
    /// Acceptance rules.
    pub verify: VerifySection,
    /// HTTP listen address (port 0 picks a free port).
    pub http: crate::api::HttpSection,
    /// Served zones; empty means all.
    pub zones: Vec<String>,
    /// The local store's database file (`:memory:` for a store that dies with the process).
    pub store_path: std::path::PathBuf,
    /// Retention and size bound of the local store.
    pub retention: store::Retention,
    /// How long a quiet batch waits for others to share its commit (`store.commit_interval_ms`).
    pub commit_interval: std::time::Duration,
    /// How often a key rotation a node has not answered is sent again.
    pub key_resend: std::time::Duration,
    /// Aggregation tunables.
    pub aggregate: aggregate::AggregateSettings,
    /// The InfluxDB sink, if any.
    pub influxdb: Option<sink::influxdb::InfluxSection>,
    /// Alert rules and notifiers.
    pub alerts: AlertsSection,
    /// Modbus polling.
    pub modbus: source::modbus::ModbusSection,
    /// Forwarding to the city platform, if any.
    pub city_platform: Option<sink::city_platform::CityPlatformSection>,
}

impl Settings {
    /// The settings of a config file.
    pub fn from_config(c: &Config) -> Settings {
        Settings {
            gateway_id: c.gateway.id.clone(),
            partition: c.gateway.partition.clone(),
            mqtt: c.mqtt.clone(),
            verify: c.verify.clone(),
            http: c.http.clone(),
            zones: c.site.zones.clone(),
            store_path: c.store.path.clone(),
            retention: c.store.retention(),
            commit_interval: c.store.commit_interval(),
            key_resend: housekeeping::rotation::RESEND,
            aggregate: c.aggregate.settings(c.store.retention().raw_ms),
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
    alerts: Alerts,
    /// What a live reload replaces.
    live: Arc<crate::reload::Live>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The store's lock, released after everything above is dropped (the store closed).
    _in_use: Option<store::InUse>,
}

impl Gateway {
    /// Starts the HTTP server, the MQTT session, the pipeline and the presence sweep.
    pub async fn start(
        settings: Settings,
        catalog: Arc<Catalog>,
        keys: Keys,
    ) -> anyhow::Result<Gateway> {
        let straddling = catalog.site.straddling(&settings.zones);
        anyhow::ensure!(
            straddling.is_empty(),
            "the served districts {:?} cut subjects in two:\n  {}",
            settings.zones,
            straddling.join("\n  ")
        );
        let mut registry = Registry::new(&catalog, &keys, &settings.zones);
        // One gateway per store file; `gateway store restore` waits for none to run on it.
        let in_use = if settings.store_path == std::path::Path::new(":memory:") {
            None
        } else {
            Some(
                store::InUse::take(&settings.store_path).map_err(|e| match e {
                    store::BackupError::Running(path) => anyhow::anyhow!(
                        "another gateway is running on the local store {}: one store file serves \
                         one gateway (give this one a store.path of its own; the demo: --store)",
                        path.display()
                    ),
                    e => e.into(),
                })?,
            )
        };
        let (store, opened) = Store::open(&settings.store_path)?;
        if let Some(moved) = opened.moved_corrupt_file {
            tracing::error!(moved_to = %moved.display(), "the local store was corrupt and was replaced");
        }
        registry.restore_ledgers(store.ledgers()?);
        let mut aggregators = aggregate::Aggregators::with_settings(&catalog, settings.aggregate);
        let since = crate::clock::now_ms() - settings.retention.raw_ms;
        let skew_ms = i64::try_from(settings.verify.max_clock_skew_s.saturating_mul(1000))
            .unwrap_or(i64::MAX / 2);
        let replayed = housekeeping::replay_recent(&store, &mut aggregators, since, skew_ms)?;
        let corrected = housekeeping::resume_corrections(&store, &mut aggregators, skew_ms)?;
        if replayed > 0 {
            tracing::info!(
                readings = replayed,
                corrected_points = corrected,
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
        let filters = source::mqtt::filters(registry.zones());
        let registry = Arc::new(Mutex::new(registry));
        let metrics = Metrics::new();
        let today = device_profiles::calendar::local_date(
            crate::clock::now_ms(),
            catalog.site.site.utc_offset.ms(),
        );
        let (rules, calendar) = settings.alerts.rules_on(&catalog, &today)?;
        let mut engine = alert::Engine::new(&catalog, rules, settings.alerts.renotify_s);
        if let Some(c) = &calendar {
            tracing::info!(date = %today, calendar = %c, "calendar entries in force");
        }
        engine.set_calendar(calendar);
        let dropped = engine.restore(store.alert_states()?);
        if !dropped.is_empty() {
            tracing::warn!(states = ?dropped, "alert states of rules no longer in force were ignored");
        }
        let open = engine.open_alerts().len();
        if open > 0 {
            tracing::info!(open, "open alerts restored from the local store");
        }
        let alerts = Alerts::new(engine, metrics.clone());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();

        let not_ready = sink::NotReady::default();
        let problems = settings.http.check();
        if let Some((key, reason)) = problems.first() {
            anyhow::bail!("{key}: {reason}");
        }
        let listen = settings.http.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen for HTTP on {listen}"))?;
        let http_addr = listener.local_addr()?;
        let (polled_tx, polled_rx) = mpsc::channel(64);
        // The catalog in force: a reload replaces it.
        let site = Arc::new(arc_swap::ArcSwap::new(catalog.clone()));
        let app = api::router(api::AppState {
            readings: polled_tx.clone(),
            registry: registry.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            not_ready: not_ready.clone(),
            alerts: alerts.clone(),
            catalog: site.clone(),
            sessions: Arc::default(),
            secure_cookies: settings.http.tls.is_some(),
            stopping: shutdown_rx.clone(),
            metrics_need_identity: settings.http.metrics_need_identity,
        });
        let tls = match &settings.http.tls {
            Some(t) => Some(Arc::new(crate::net::tls::server_config(&t.cert, &t.key)?)),
            None => None,
        };
        let mut http_shutdown = shutdown_rx.clone();
        tasks.spawn(async move {
            let stop = async move {
                let _ = http_shutdown.changed().await;
            };
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let served = match tls {
                None => axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
                    .map_err(anyhow::Error::from),
                Some(tls) => api::serve_tls(listener, tls, app, stop).await,
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });

        // Commits wake the sinks: those with points, those with readings, and alert events.
        let (points_committed, points_rx) = watch::channel(());
        let (readings_committed, readings_rx) = watch::channel(());
        let wakes = sink::city_platform::Wakes {
            points: points_rx,
            alerts: alerts.subscribe(),
            readings: readings_rx,
        };
        let cursors = start_sinks(
            &settings,
            &catalog,
            (&store, &metrics, &not_ready, &alerts),
            wakes,
            &shutdown_rx,
            &mut tasks,
        )?;
        let Cursors {
            points: sinks,
            readings: raw_sinks,
            events: notifier_cursors,
            ready: sinks_for_alerts,
        } = cursors;
        tasks.spawn(housekeeping::maintain_store(
            store.clone(),
            settings.retention,
            (sinks, raw_sinks),
            notifier_cursors,
            metrics.clone(),
            shutdown_rx.clone(),
        ));
        let options = net::mqtt::ingest_options(&settings.mqtt, &settings.gateway_id)?;
        let (client, eventloop) = net::mqtt::client(options);
        let (inbound_tx, inbound_rx) = mpsc::channel(pipeline::MAX_BATCH * 4);
        if settings.modbus.enabled {
            let mut buses: HashMap<(String, u32), Vec<source::modbus::Device>> = HashMap::new();
            for device in source::modbus::devices(&catalog, &settings.zones, &settings.modbus)? {
                tracing::info!(device = %device.id, endpoint = ?device.endpoint, interval_s = device.interval.as_secs(), "polling Modbus device");
                match device.endpoint.clone() {
                    source::modbus::Endpoint::Tcp(_) => {
                        tasks.spawn(source::modbus::poll(
                            device,
                            settings.modbus.clone(),
                            polled_tx.clone(),
                            metrics.clone(),
                            shutdown_rx.clone(),
                        ));
                    }
                    source::modbus::Endpoint::Rtu { path, baud } => {
                        buses.entry((path, baud)).or_default().push(device);
                    }
                }
            }
            // One poller per RS-485 port: the bus is shared, one request at a time.
            for ((path, baud), devices) in buses {
                tasks.spawn(source::modbus::poll_bus(
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
        let progress = Arc::new(pipeline::Progress::default());
        let (key_news, key_news_rx) = mpsc::unbounded_channel();
        let verifier = Arc::new(arc_swap::ArcSwap::from_pointee(
            crate::decode::Verifier::new(&catalog, keys, settings.verify.clone())
                .with_news(key_news),
        ));
        let (keys_changed, keys_changed_rx) = watch::channel(());
        let keys_file = Arc::new(Mutex::new(None));
        let swapping = Arc::new(tokio::sync::Mutex::new(()));
        let aggregators = Arc::new(Mutex::new(aggregators));
        let live = Arc::new(crate::reload::Live {
            config: Mutex::new(None),
            zones: settings.zones.clone(),
            alerts_section: Mutex::new((settings.alerts.clone(), today.clone())),
            aggregate: settings.aggregate,
            raw_retention_ms: settings.retention.raw_ms,
            catalog: site.clone(),
            verifier: verifier.clone(),
            registry: registry.clone(),
            aggregators: aggregators.clone(),
            alerts: alerts.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            keys_changed,
            keys_file: keys_file.clone(),
            swapping: swapping.clone(),
        });
        // The calendar's rules of a new day take over at local midnight.
        let day = live.clone();
        let mut day_stop = shutdown_rx.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = day_stop.changed() => break,
                    _ = tick.tick() => {
                        if let Err(e) = day.turn_of_day().await {
                            tracing::error!(error = %e, "the calendar's rules of the new day could not be made; yesterday's stay in force");
                        }
                    }
                }
            }
        });
        tasks.spawn(housekeeping::rotation::run(
            housekeeping::rotation::Rotation {
                keys_file,
                verifier: verifier.clone(),
                registry: registry.clone(),
                client: client.clone(),
                store: store.clone(),
                metrics: metrics.clone(),
                swapping,
                resend: settings.key_resend,
            },
            key_news_rx,
            keys_changed_rx,
            shutdown_rx.clone(),
        ));
        let pipeline = pipeline::Pipeline {
            verifier,
            registry: registry.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            client: client.clone(),
            aggregators,
            alerts: alerts.clone(),
            points_committed,
            readings_committed,
            commit_interval: settings.commit_interval,
            progress: progress.clone(),
        };
        tasks.spawn(pipeline.run(inbound_rx, polled_rx));
        let event_loop = Arc::new(std::sync::atomic::AtomicI64::new(crate::clock::now_ms()));
        let mqtt = &settings.mqtt;
        tasks.spawn(housekeeping::watchdog::notify(
            housekeeping::watchdog::Signs {
                progress,
                event_loop: event_loop.clone(),
                event_loop_limit: mqtt.keep_alive() * 2
                    + std::time::Duration::from_millis(mqtt.reconnect_max_ms)
                    + std::time::Duration::from_secs(10),
            },
            metrics.clone(),
            shutdown_rx.clone(),
        ));
        tasks.spawn(source::mqtt::run(
            eventloop,
            client,
            settings.mqtt.clone(),
            filters,
            (inbound_tx, event_loop),
            metrics.clone(),
            shutdown_rx.clone(),
        ));
        tasks.spawn(housekeeping::sweep_presence(
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
            live,
            shutdown,
            tasks,
            _in_use: in_use,
        })
    }

    /// Records the config the gateway was started with: a reload names the settings that
    /// changed and wait for a restart.
    pub fn started_from(&self, config: crate::config::Config) {
        if let Ok(mut f) = self.live.keys_file.lock() {
            *f = Some(config.site.keys.clone());
        }
        if let Ok(mut c) = self.live.config.lock() {
            *c = Some(config);
        }
    }

    /// Reloads the keys file, the rule files and the site and profiles of the config file at
    /// `path` (see [`crate::reload`]); `source` names who asked. Nothing changes on an error.
    pub async fn reload(
        &self,
        path: &std::path::Path,
        source: &str,
    ) -> anyhow::Result<crate::reload::Reloaded> {
        match crate::reload::Candidate::read(path) {
            Ok(c) => self.live.apply(c, source).await,
            Err(e) => {
                self.live.refused(path, source, &e);
                Err(e)
            }
        }
    }

    /// The alert engine.
    pub fn alerts(&self) -> &Alerts {
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

/// The store cursors that retention waits for, and the sinks whose readiness the presence
/// sweep reports.
#[derive(Debug, Default)]
struct Cursors {
    /// Sinks of points.
    points: Vec<String>,
    /// Sinks of raw readings.
    readings: Vec<String>,
    /// Readers of the alert outbox.
    events: Vec<String>,
    /// Sinks with readiness.
    ready: Vec<String>,
}

/// Starts every sink the settings ask for, each drained by the sink runtime.
fn start_sinks(
    settings: &Settings,
    catalog: &Catalog,
    (store, metrics, not_ready, alerts): (&Arc<Store>, &Metrics, &sink::NotReady, &Alerts),
    wakes: sink::city_platform::Wakes,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Cursors> {
    let mut cursors = Cursors::default();
    if let Some(influx) = settings.influxdb.clone() {
        tasks.spawn(sink::influxdb::run(
            influx,
            store.clone(),
            metrics.clone(),
            not_ready.clone(),
            wakes.points.clone(),
            shutdown.clone(),
        ));
        cursors.points.push(sink::influxdb::SINK.to_owned());
        cursors.ready.push(sink::influxdb::SINK.to_owned());
    }
    if let Some(city) = &settings.city_platform {
        let cx = sink::city_platform::Context {
            gateway_id: settings.gateway_id.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            not_ready: not_ready.clone(),
            lateness_ms: settings.aggregate.late_after_ms,
            shutdown: shutdown.clone(),
        };
        for task in sink::city_platform::start(city, catalog, &cx, wakes.clone())? {
            tasks.spawn(task);
        }
        let (points, readings, events) = city.retention_cursors();
        cursors.points.extend(points);
        cursors.readings.extend(readings);
        cursors.events.extend(events);
        cursors.ready.extend(city.sink_names());
    }
    if settings.alerts.mqtt {
        // Operator actions on a replica reach this one through the subject states.
        let options =
            net::mqtt::options(&settings.mqtt, &format!("{}-peers", settings.gateway_id))?;
        tasks.spawn(pipeline::peers::follow(
            options,
            alerts.clone(),
            store.clone(),
            shutdown.clone(),
        ));
    }
    for n in notifiers(settings, alerts)? {
        cursors.events.push(format!("alerts:{}", n.name()));
        tasks.spawn(sink::notify::run(
            n,
            store.clone(),
            metrics.clone(),
            wakes.alerts.clone(),
            shutdown.clone(),
        ));
    }
    Ok(cursors)
}

/// The notifiers the settings ask for.
fn notifiers(settings: &Settings, alerts: &Alerts) -> anyhow::Result<Vec<sink::notify::Notifier>> {
    use sink::notify::{AlertmanagerNotifier, MqttNotifier, Notifier, WebhookNotifier};
    let mut out = Vec::new();
    if settings.alerts.mqtt {
        let options =
            net::mqtt::options(&settings.mqtt, &format!("{}-alerts", settings.gateway_id))?;
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
            settings
                .partition
                .as_deref()
                .unwrap_or(&settings.gateway_id),
            alerts.engine.clone(),
        )?));
    }
    Ok(out)
}
