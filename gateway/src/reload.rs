//! Live reload (SIGHUP, `gateway reload`): the keys file, the rule files, and the site and
//! profiles take effect without a restart and without dropping the broker session.
//!
//! A reload reads everything first ([`Candidate::read`]: the config file, the catalog, the
//! keys, the rules, each checked as `check-config` checks them), then checks it against the
//! running gateway ([`Live::apply`]): the served districts stay the same and no device moves
//! from one district to another (its history, ledgers and alerts belong to the first). A reload
//! that fails any check changes nothing and says why. Otherwise, holding the commit lock (every
//! batch before it committed, none after it evaluated), it swaps:
//! - the verifier (profiles and keys);
//! - the registry (devices added start unheard, devices kept keep their state);
//! - the aggregation state, only when the site or the profiles changed: rebuilt from the local
//!   store as at a start;
//! - the rule engine: states of rules still in force (open alerts, acknowledgements) are kept;
//! - the catalog the API serves.
//!
//! Settings read only at start (the broker, HTTP, the store, the sinks, Modbus polling) are
//! named in the outcome as waiting for a restart. Every reload is logged, counted
//! (`citysense_reloads_total{outcome}`) and written to the audit trail.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use arc_swap::ArcSwap;
use device_profiles::Catalog;

use crate::aggregate::{AggregateSettings, Aggregators};
use crate::alert::Rule;
use crate::config::Config;
use crate::decode::Verifier;
use crate::housekeeping;
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::pipeline::alerts::Alerts;
use crate::registry::Registry;
use crate::store::{AuditEntry, Store};

/// Everything a reload takes in, read and checked before anything changes.
#[derive(Debug)]
pub struct Candidate {
    path: PathBuf,
    config: Config,
    catalog: Arc<Catalog>,
    keys: Keys,
    rules: Vec<Rule>,
    /// The local date the rules were made for, and its calendar entries.
    date: String,
    calendar: Option<String>,
}

impl Candidate {
    /// Reads the config file at `path` and everything it names, checked as `check-config`
    /// checks them.
    pub fn read(path: &Path) -> anyhow::Result<Candidate> {
        let config = Config::load(path)?;
        let catalog = Catalog::load(&config.site.profiles, &config.site.site)?;
        let keys = Keys::load(&config.site.keys)?;
        let straddling = catalog.site.straddling(&config.site.zones);
        ensure!(
            straddling.is_empty(),
            "site.zones {:?} cut subjects in two:\n  {}",
            config.site.zones,
            straddling.join("\n  ")
        );
        let date = today(&catalog);
        let (rules, calendar) = config
            .alerts
            .rules_on(&catalog, &date)
            .with_context(|| path.display().to_string())?;
        Ok(Candidate {
            path: path.to_owned(),
            config,
            catalog: Arc::new(catalog),
            keys,
            rules,
            date,
            calendar,
        })
    }

    /// The keys it read.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}

/// The site's local date now.
fn today(catalog: &Catalog) -> String {
    device_profiles::calendar::local_date(crate::clock::now_ms(), catalog.site.site.utc_offset.ms())
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Devices with a key, before and after.
    pub keys: (usize, usize),
    /// Keys added, replaced or removed.
    pub keys_changed: usize,
    /// Rules in force, before and after.
    pub rules: (usize, usize),
    /// Served devices added and removed.
    pub devices: (Vec<String>, Vec<String>),
    /// The site or the profiles changed: the aggregation state was rebuilt.
    pub site_changed: bool,
    /// Alert states of rules no longer in force, dropped.
    pub dropped_states: Vec<String>,
    /// Config sections that changed and take effect at the next start.
    pub needs_restart: Vec<&'static str>,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "keys {} -> {} ({} changed); rules {} -> {}; devices +{} -{}; site {}",
            self.keys.0,
            self.keys.1,
            self.keys_changed,
            self.rules.0,
            self.rules.1,
            self.devices.0.len(),
            self.devices.1.len(),
            if self.site_changed {
                "changed (aggregation rebuilt)"
            } else {
                "unchanged"
            }
        )?;
        if !self.dropped_states.is_empty() {
            write!(
                f,
                "; states of removed rules dropped: {}",
                self.dropped_states.join(", ")
            )?;
        }
        if !self.needs_restart.is_empty() {
            write!(
                f,
                "; changed, waiting for a restart: {}",
                self.needs_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

/// The parts of a running gateway a reload replaces, and what it checks against.
#[derive(Debug)]
pub struct Live {
    /// The config in force (None when started from settings alone: demo, tests).
    pub(crate) config: Mutex<Option<Config>>,
    /// The served districts (all when empty).
    pub(crate) zones: Vec<String>,
    /// The alert section in force (rule files, caps, re-notification) and the local date its
    /// rules were made for: the calendar turns them over at midnight.
    pub(crate) alerts_section: Mutex<(crate::config::AlertsSection, String)>,
    pub(crate) aggregate: AggregateSettings,
    pub(crate) raw_retention_ms: i64,
    pub(crate) catalog: Arc<ArcSwap<Catalog>>,
    pub(crate) verifier: Arc<ArcSwap<Verifier>>,
    pub(crate) registry: Arc<Mutex<Registry>>,
    pub(crate) aggregators: Arc<Mutex<Aggregators>>,
    pub(crate) alerts: Alerts,
    pub(crate) store: Arc<Store>,
    pub(crate) metrics: Metrics,
    /// Told when the keys change: the rotation service looks for rotations to send.
    pub(crate) keys_changed: tokio::sync::watch::Sender<()>,
    /// The keys file in force, which key promotions rewrite.
    pub(crate) keys_file: Arc<Mutex<Option<PathBuf>>>,
    /// One reload (or key promotion) at a time.
    pub(crate) swapping: Arc<tokio::sync::Mutex<()>>,
}

impl Live {
    /// Checks `c` against the running gateway and swaps it in, or changes nothing and says why.
    /// `source` names who asked (for the log and the audit trail).
    pub async fn apply(&self, c: Candidate, source: &str) -> anyhow::Result<Reloaded> {
        let outcome = self.swap(&c).await;
        let (result, detail) = match &outcome {
            Ok(r) => {
                tracing::info!(config = %c.path.display(), source, "reloaded: {r}");
                ("ok", r.to_string())
            }
            Err(e) => {
                tracing::error!(config = %c.path.display(), source, "reload refused, nothing changed: {e:#}");
                ("refused", format!("{e:#}"))
            }
        };
        self.record(source, &c.path, result, &detail);
        outcome
    }

    /// Records a reload that could not even be read (`Candidate::read` failed).
    pub fn refused(&self, path: &Path, source: &str, error: &anyhow::Error) {
        tracing::error!(config = %path.display(), source, "reload refused, nothing changed: {error:#}");
        self.record(source, path, "refused", &format!("{error:#}"));
    }

    fn record(&self, source: &str, path: &Path, outcome: &str, detail: &str) {
        let entry = AuditEntry {
            actor: "gateway".into(),
            source: source.into(),
            action: "config.reload".into(),
            target: path.display().to_string(),
            outcome: outcome.into(),
            detail: detail.into(),
        };
        if let Err(e) = self.store.audit(crate::clock::now_ms(), &entry) {
            tracing::error!(error = %e, "the reload could not be written to the audit trail");
        }
        // Counted once it is in the audit trail: whoever watches the counter finds it there.
        self.metrics.reloads.with_label_values(&[outcome]).inc();
    }

    async fn swap(&self, c: &Candidate) -> anyhow::Result<Reloaded> {
        let _one = self.swapping.lock().await;
        let old = self.catalog.load_full();
        self.check(&old, c)?;
        let needs_restart = match &*lock(&self.config)? {
            Some(running) => restart_only_changes(running, &c.config),
            None => Vec::new(),
        };
        let site_changed = !same_site(&old, &c.catalog);
        // Aggregation state for a changed site, rebuilt before the swap so that a store that
        // cannot be read changes nothing; under the commit lock, so that it holds every
        // committed reading and nothing evaluated since.
        let _committed = self.alerts.commit_lock.lock().await;
        let aggregators = if site_changed {
            Some(self.rebuilt_aggregation(&c.catalog)?)
        } else {
            None
        };
        let old_verifier = self.verifier.load_full();
        let mut reloaded = Reloaded {
            keys: (old_verifier.keys().len(), c.keys.len()),
            keys_changed: keys_changed(old_verifier.keys(), &c.keys),
            site_changed,
            needs_restart,
            ..Reloaded::default()
        };
        {
            let mut registry = lock(&self.registry)?;
            let next = registry.reloaded(&c.catalog, &c.keys, &self.zones);
            reloaded.devices = (
                next.iter()
                    .filter(|d| registry.get(&d.info.id).is_none())
                    .map(|d| d.info.id.to_string())
                    .collect(),
                registry
                    .iter()
                    .filter(|d| next.get(&d.info.id).is_none())
                    .map(|d| d.info.id.to_string())
                    .collect(),
            );
            let polled = |ids: &[String], r: &Registry| {
                ids.iter().any(|id| {
                    r.get(id)
                        .is_some_and(|d| d.info.encoding == device_profiles::Encoding::Modbus)
                })
            };
            if polled(&reloaded.devices.0, &next) || polled(&reloaded.devices.1, &registry) {
                reloaded
                    .needs_restart
                    .push("Modbus devices added or removed (polled from the next start)");
            }
            *registry = next;
        }
        let verifier = Verifier::new(&c.catalog, c.keys.clone(), old_verifier.rules().clone());
        self.verifier.store(Arc::new(match old_verifier.news() {
            Some(news) => verifier.with_news(news),
            None => verifier,
        }));
        if let Some(a) = aggregators {
            *lock(&self.aggregators)? = a;
        }
        {
            let mut engine = lock(&self.alerts.engine)?;
            reloaded.rules = (engine.rules().count(), c.rules.len());
            reloaded.dropped_states =
                engine.reload(&c.catalog, c.rules.clone(), c.config.alerts.renotify_s);
            engine.set_calendar(c.calendar.clone());
        }
        *lock(&self.alerts_section)? = (c.config.alerts.clone(), c.date.clone());
        self.catalog.store(c.catalog.clone());
        *lock(&self.config)? = Some(c.config.clone());
        *lock(&self.keys_file)? = Some(c.config.site.keys.clone());
        self.keys_changed.send_replace(());
        Ok(reloaded)
    }

    /// At the first call of a new local day, makes the rules of that day's calendar entries
    /// (capacity caps) the ones in force, keeping the alerts' states. Returns the entries now
    /// in force when it turned the rules over.
    pub async fn turn_of_day(&self) -> anyhow::Result<Option<Option<String>>> {
        let catalog = self.catalog.load_full();
        let date = today(&catalog);
        let section = {
            let held = lock(&self.alerts_section)?;
            if held.1 == date {
                return Ok(None);
            }
            held.0.clone()
        };
        let (rules, calendar) = section.rules_on(&catalog, &date)?;
        let _one = self.swapping.lock().await;
        let _committed = self.alerts.commit_lock.lock().await;
        {
            let mut engine = lock(&self.alerts.engine)?;
            let dropped = engine.reload(&catalog, rules, section.renotify_s);
            if !dropped.is_empty() {
                tracing::warn!(states = ?dropped, "alert states of rules no longer in force were dropped");
            }
            engine.set_calendar(calendar.clone());
        }
        lock(&self.alerts_section)?.1 = date.clone();
        match &calendar {
            Some(c) => {
                tracing::info!(date = %date, calendar = %c, "a new day: its calendar entries are in force")
            }
            None => tracing::info!(date = %date, "a new day: ordinary rules in force"),
        }
        Ok(Some(calendar))
    }

    /// Refuses what a reload cannot do.
    fn check(&self, old: &Catalog, c: &Candidate) -> anyhow::Result<()> {
        if c.config.site.zones != self.zones {
            bail!(
                "site.zones changed from {:?} to {:?}: the served districts change only at a restart",
                self.zones,
                c.config.site.zones
            );
        }
        let moved: Vec<String> = c
            .catalog
            .site
            .devices
            .iter()
            .filter_map(|d| {
                let before = old.site.device(&d.id)?;
                (before.zone != d.zone)
                    .then(|| format!("{} moves from district {} to {}", d.id, before.zone, d.zone))
            })
            .collect();
        if !moved.is_empty() {
            bail!(
                "devices move between districts (their history, ledgers and alerts belong to the first one): restart to move them:\n  {}",
                moved.join("\n  ")
            );
        }
        let served = Registry::new(&c.catalog, &c.keys, &self.zones);
        ensure!(
            !served.is_empty(),
            "no devices in the served zones {:?} in the new site",
            self.zones
        );
        Ok(())
    }

    /// The aggregation state of `catalog`, replayed from the local store as at a start.
    fn rebuilt_aggregation(&self, catalog: &Catalog) -> anyhow::Result<Aggregators> {
        let started = Instant::now();
        let mut a = Aggregators::with_settings(catalog, self.aggregate);
        let skew_ms = self.verifier.load().max_clock_skew_ms();
        let since = crate::clock::now_ms() - self.raw_retention_ms;
        let replayed = housekeeping::replay_recent(&self.store, &mut a, since, skew_ms)
            .context("cannot rebuild the aggregation state from the local store")?;
        housekeeping::resume_corrections(&self.store, &mut a, skew_ms)
            .context("cannot resume the aggregates' corrections")?;
        tracing::info!(
            readings = replayed,
            ms = started.elapsed().as_millis() as u64,
            "the site changed: aggregation state rebuilt from the local store"
        );
        Ok(a)
    }
}

fn lock<T>(m: &Mutex<T>) -> anyhow::Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| anyhow::anyhow!("a lock of the running gateway is poisoned: restart it"))
}

/// Whether two catalogs describe the same site and profiles for aggregation: grids, rosters
/// and calendars aside (they change no aggregate). Both are plain data whose maps are ordered,
/// so their `Debug` renderings are equal exactly when they are.
fn same_site(a: &Catalog, b: &Catalog) -> bool {
    let aggregated = |c: &Catalog| {
        let mut c = c.clone();
        c.site.grids.clear();
        c.site.calendar.clear();
        format!("{c:?}")
    };
    aggregated(a) == aggregated(b)
}

/// How many devices' keys were added, replaced or removed.
fn keys_changed(old: &Keys, new: &Keys) -> usize {
    let old = old.entries();
    let new = new.entries();
    let changed = new
        .iter()
        .filter(|e| !old.iter().any(|o| o.id == e.id && o.key == e.key))
        .count();
    changed
        + old
            .iter()
            .filter(|o| !new.iter().any(|e| e.id == o.id))
            .count()
}

/// The config sections that changed and are read only at start.
fn restart_only_changes(running: &Config, next: &Config) -> Vec<&'static str> {
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut out = Vec::new();
    let sections: [(&'static str, bool); 10] = [
        ("gateway", differs(&running.gateway, &next.gateway)),
        ("mqtt", differs(&running.mqtt, &next.mqtt)),
        ("http", differs(&running.http, &next.http)),
        ("store", differs(&running.store, &next.store)),
        ("verify", differs(&running.verify, &next.verify)),
        ("aggregate", differs(&running.aggregate, &next.aggregate)),
        ("influxdb", differs(&running.influxdb, &next.influxdb)),
        ("modbus", differs(&running.modbus, &next.modbus)),
        (
            "city_platform",
            differs(&running.city_platform, &next.city_platform),
        ),
        (
            "alerts (notifiers)",
            differs(
                &(
                    &running.alerts.webhook,
                    &running.alerts.alertmanager,
                    running.alerts.mqtt,
                ),
                &(
                    &next.alerts.webhook,
                    &next.alerts.alertmanager,
                    next.alerts.mqtt,
                ),
            ),
        ),
    ];
    for (name, changed) in sections {
        if changed {
            out.push(name);
        }
    }
    out
}
