//! The command-line jobs besides the daemon's wiring: `gateway run`, `check-config`,
//! `rules test` and `rules list`. `main.rs` parses the arguments and calls these.

pub mod keys;

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

/// `gateway run`: loads the config file at `path` and what it names, and runs until
/// `shutdown` completes; every `reloads` item reloads the keys, rules and site from the file.
pub async fn run(
    path: &std::path::Path,
    shutdown: impl Future<Output = ()>,
    mut reloads: tokio::sync::mpsc::Receiver<&'static str>,
) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let catalog = Catalog::load(&config.site.profiles, &config.site.site)?;
    let keys = Keys::load(&config.site.keys)?;
    let gateway = Gateway::start(Settings::from_config(&config), Arc::new(catalog), keys).await?;
    gateway.started_from(config);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(source) = reloads.recv() => {
                // The outcome is logged and audited by the reload itself.
                let _ = gateway.reload(path, source).await;
            }
        }
    }
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
    let straddling = catalog.site.straddling(&config.site.zones);
    anyhow::ensure!(
        straddling.is_empty(),
        "{}: site.zones {:?} cut subjects in two:\n  {}",
        path.display(),
        config.site.zones,
        straddling.join("\n  ")
    );
    let registry = Registry::new(&catalog, &keys, &config.site.zones);
    anyhow::ensure!(
        !registry.is_empty(),
        "{}: no devices in the served zones {:?}",
        path.display(),
        config.site.zones
    );
    let rules = load_rules(&catalog, &config.alerts).with_context(|| path.display().to_string())?;
    for (i, w) in config.alerts.webhook.iter().enumerate() {
        for g in &w.grids {
            anyhow::ensure!(
                catalog.site.grids.iter().any(|x| x.id == *g),
                "{}: alerts.webhook[{i}].grids: \"{g}\" is not a [[grid]] of the site (grids: {})",
                path.display(),
                catalog
                    .site
                    .grids
                    .iter()
                    .map(|x| x.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
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
    let mut warnings = Vec::new();
    if config.gateway.replica {
        for w in &config.alerts.webhook {
            warnings.push(format!(
                "warning: webhook \"{}\" on a replica: every replica of the partition posts each transition, so its receiver gets it once per replica; make it an Alertmanager receiver (deploy/topology.md)",
                w.name
            ));
        }
    }
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
    ) + &warnings
        .iter()
        .map(|w| format!("\n{w}"))
        .collect::<String>())
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
            match alert::cases::run_case(&rules, case, section.renotify_s, &catalog) {
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
pub fn rules_list(config: Option<&std::path::Path>, date: Option<&str>) -> anyhow::Result<String> {
    use std::fmt::Write;
    let (catalog, section) = rules_context(config)?;
    let date = match date {
        Some(d) => {
            anyhow::ensure!(
                device_profiles::calendar::days_from_civil(d).is_some(),
                "--date \"{d}\" is not a date YYYY-MM-DD"
            );
            d.to_owned()
        }
        None => device_profiles::calendar::local_date(
            crate::clock::now_ms(),
            catalog.site.site.utc_offset.ms(),
        ),
    };
    let (rules, calendar) = section.rules_on(&catalog, &date)?;
    let mut out = match calendar {
        Some(c) => format!("{date}: {c}\n\n"),
        None => format!("{date}: an ordinary day (no calendar entry)\n\n"),
    };
    for r in rules {
        let grades: Vec<String> = r
            .grades
            .iter()
            .map(|g| format!("{} {}", g.name, crate::alert::cases::round(g.at)))
            .collect();
        let scaled: Vec<String> = r
            .scale
            .iter()
            .map(|(subject, f)| format!("{subject} ×{}", crate::alert::cases::round(*f)))
            .collect();
        let _ = writeln!(
            out,
            "{:<28} {:<8} {:<9} {:<16} {:<6} [{}]{} — {}",
            r.id,
            r.category.name(),
            format!("{:?}", r.source).to_lowercase(),
            if r.field.is_empty() { "-" } else { &r.field },
            format!("{:?}", r.side).to_lowercase(),
            grades.join(", "),
            if scaled.is_empty() {
                String::new()
            } else {
                format!(" ({})", scaled.join(", "))
            },
            r.description
        );
    }
    Ok(out)
}

/// The local store a `users`, `tokens` or `audit` command works on: `store`, or the config's.
pub fn open_store(
    config: Option<&std::path::Path>,
    store: Option<&std::path::Path>,
) -> anyhow::Result<crate::store::Store> {
    Ok(crate::store::Store::open(&store_path(config, store)?)?.0)
}

/// The store file a command names: `store` (which must exist: a typo must not make a second,
/// empty store), or the config's `store.path`.
pub fn store_path(
    config: Option<&std::path::Path>,
    store: Option<&std::path::Path>,
) -> anyhow::Result<std::path::PathBuf> {
    match (store, config) {
        (Some(s), _) => {
            anyhow::ensure!(
                s.exists(),
                "no local store at {} (give the gateway's --config, which makes it where the gateway will look)",
                s.display()
            );
            Ok(s.to_owned())
        }
        // The configured store: made here when the first admin is made before the first start.
        (None, Some(c)) => Ok(Config::load(c)?.store.path),
        (None, None) => {
            anyhow::bail!("name the gateway's config (--config FILE) or its store (--store FILE)")
        }
    }
}

/// `gateway store backup`: a consistent copy of the store at `store` into the new file `to`,
/// while the gateway runs; a summary.
pub fn store_backup(store: &std::path::Path, to: &std::path::Path) -> anyhow::Result<String> {
    let c = crate::store::backup(store, to)?;
    Ok(format!(
        "backup of {} written to {}: {} bytes, {} readings (the newest #{}), format {}",
        store.display(),
        to.display(),
        c.bytes,
        c.readings,
        c.last_reading,
        c.schema
    ))
}

/// `gateway store restore`: the backup `from` in place of the store at `store`, with no gateway
/// running on it; a summary.
pub fn store_restore(store: &std::path::Path, from: &std::path::Path) -> anyhow::Result<String> {
    let c = crate::store::restore(from, store)?;
    let aside = c.moved_aside.map_or_else(
        || "there was no store before".to_owned(),
        |p| format!("the store it replaced is kept as {}", p.display()),
    );
    Ok(format!(
        "{} restored from {}: {} readings (the newest #{}), format {}; {aside}. Start the gateway: \
         the broker redelivers what it had not acknowledged, and what it had acknowledged after \
         the backup is lost",
        store.display(),
        from.display(),
        c.readings,
        c.last_reading,
        c.schema
    ))
}

/// A password from standard input (`from_stdin`: its first line), or typed twice at a terminal
/// without echo.
pub fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal};
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    anyhow::ensure!(
        std::io::stdin().is_terminal(),
        "no terminal to type the password at: give it on standard input with --password-stdin"
    );
    let first = rpassword::prompt_password("password: ")?;
    let again = rpassword::prompt_password("again: ")?;
    anyhow::ensure!(first == again, "the two passwords differ");
    Ok(first)
}

/// `gateway users list`: a table of the accounts.
pub fn users_list(store: &crate::store::Store) -> anyhow::Result<String> {
    let now = crate::clock::now_ms();
    let mut out = format!(
        "{:<24} {:<9} {:<9} {}\n",
        "NAME", "ROLE", "STATE", "FAILED LOGINS"
    );
    for a in store.accounts()? {
        let state = if a.disabled {
            "disabled"
        } else if a.locked_until_ms > now {
            "locked"
        } else {
            "active"
        };
        out.push_str(&format!(
            "{:<24} {:<9} {:<9} {}\n",
            a.name, a.role, state, a.failures
        ));
    }
    Ok(out)
}

/// `gateway tokens list`: a table of the API tokens (never their secrets).
pub fn tokens_list(store: &crate::store::Store) -> anyhow::Result<String> {
    let mut out = format!("{:<10} {:<8} {:<8} {}\n", "ID", "SCOPE", "STATE", "NAME");
    for t in store.tokens()? {
        let state = if t.revoked_ms.is_some() {
            "revoked"
        } else {
            "live"
        };
        out.push_str(&format!(
            "{:<10} {:<8} {:<8} {}\n",
            t.id, t.scope, state, t.name
        ));
    }
    Ok(out)
}

/// `gateway audit export --since`: the records as JSON lines. `since`: an RFC 3339 time or a
/// span back from now (`7d`, `12h`).
pub fn audit_export(store: &crate::store::Store, since: &str) -> anyhow::Result<String> {
    let since_ms = match humantime::parse_rfc3339_weak(since) {
        Ok(t) => t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        Err(_) => {
            let span = humantime::parse_duration(since).with_context(|| {
                format!("--since \"{since}\": an RFC 3339 time (2026-12-01T00:00:00Z) or a span back from now (7d, 12h)")
            })?;
            crate::clock::now_ms() - span.as_millis() as i64
        }
    };
    let mut out = String::new();
    for r in store.audit_since(since_ms)? {
        out.push_str(&serde_json::to_string(&r)?);
        out.push('\n');
    }
    Ok(out)
}
