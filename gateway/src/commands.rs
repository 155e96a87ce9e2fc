//! The command-line jobs besides the daemon's wiring: `gateway run`, `check-config`,
//! `rules test` and `rules list`. `main.rs` parses the arguments and calls these.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use device_profiles::Catalog;

use crate::app::{Gateway, Settings};
use crate::config::{self, Config};
use crate::keys::Keys;
use crate::registry::Registry;
use crate::{alert, sink, source};

/// The rules in force: the defaults of the site and profiles, then the rule files'.
pub fn load_rules(
    catalog: &Catalog,
    section: &config::AlertsSection,
) -> anyhow::Result<Vec<alert::Rule>> {
    section.rules(catalog)
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
        source::modbus::devices(&catalog, &config.site.zones, &config.modbus)
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
            let endpoint =
                sink::city_platform::transport::Transport::new(city, "check")?.endpoint();
            let datasets: Vec<String> = sink::city_platform::Dataset::ALL
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
            match alert::cases::run_case(&rules, case, section.renotify_s) {
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
