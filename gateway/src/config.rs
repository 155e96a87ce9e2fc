//! The gateway's configuration file: the composition of every component's section.
//!
//! Each component owns its section and its `check()` (the broker's in [`crate::net::mqtt`],
//! the store's in [`crate::store`], each sink's in its folder, ...); this module only puts them
//! together, resolves paths, applies the environment, and reports every problem as
//! FILE:LINE:COLUMN with its key. `[alerts]` is the one composed section: the rule settings
//! (checked here, for [`crate::alert::rule`]) and the notifiers' sections.
//!
//! TOML, unknown keys refused, every field documented here and in `deploy/gateway/*.toml`.
//! Secrets come from the environment (`CITYSENSE_MQTT_PASSWORD`) or a file
//! (`mqtt.password_file`), never from the config itself, and are never logged. [`Config::load`]
//! reads, overrides and validates in one step: every problem names the file, line and key.

use std::path::{Path, PathBuf};

use device_profiles::Catalog;
use device_profiles::file::{LoadError, Problem, TomlFile};
use serde::Deserialize;

use crate::aggregate::AggregateSection;
use crate::alert::Rule;
use crate::alert::rule::DefaultsTuning;
use crate::api::HttpSection;
use crate::decode::VerifySection;
use crate::net::mqtt::MqttSection;
use crate::secret::{Secret, read_password};
use crate::sink::city_platform::CityPlatformSection;
use crate::sink::influxdb::InfluxSection;
use crate::sink::notify::{AlertmanagerSection, WebhookSection};
use crate::source::modbus::ModbusSection;
use crate::store::StoreSection;

/// Environment variable that overrides `mqtt.username`.
pub const ENV_MQTT_USERNAME: &str = "CITYSENSE_MQTT_USERNAME";
/// Environment variable that supplies the MQTT password.
pub const ENV_MQTT_PASSWORD: &str = "CITYSENSE_MQTT_PASSWORD";
/// Environment variable that supplies the InfluxDB API token.
pub const ENV_INFLUX_TOKEN: &str = "CITYSENSE_INFLUX_TOKEN";
/// Environment variable that supplies the city platform's MQTT password.
pub const ENV_CITY_MQTT_PASSWORD: &str = "CITYSENSE_CITY_MQTT_PASSWORD";
/// Environment variable that supplies the city platform's HTTPS bearer token.
pub const ENV_CITY_TOKEN: &str = "CITYSENSE_CITY_TOKEN";

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Who this gateway is.
    pub gateway: GatewaySection,
    /// Where the city's description and the device keys are.
    pub site: SiteSection,
    /// The broker the nodes publish to.
    pub mqtt: MqttSection,
    /// Frame acceptance rules.
    #[serde(default)]
    pub verify: VerifySection,
    /// The HTTP server (metrics, health, API).
    #[serde(default)]
    pub http: HttpSection,
    /// The local store.
    pub store: StoreSection,
    /// The InfluxDB (or VictoriaMetrics) sink; absent means points stay in the local store.
    #[serde(default)]
    pub influxdb: Option<InfluxSection>,
    /// Aggregation tunables.
    #[serde(default)]
    pub aggregate: AggregateSection,
    /// Alert rules and where alerts go.
    #[serde(default)]
    pub alerts: AlertsSection,
    /// Polling the site's Modbus devices.
    #[serde(default)]
    pub modbus: ModbusSection,
    /// Forwarding to the city's data-sharing and exchange platform; absent means none.
    #[serde(default)]
    pub city_platform: Option<CityPlatformSection>,
}

/// Alert rules and notifiers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    /// Rule files (TOML, relative to this file) added to the defaults of the site and profiles;
    /// a rule with a default's id replaces it.
    #[serde(default)]
    pub rule_files: Vec<PathBuf>,
    /// Policy cap on scenic-area capacities (DOMAIN.md §6.1): 1.0, or 0.75 / 0.5 / 0.3 by order.
    #[serde(default = "default_cap_factor")]
    pub cap_factor: f64,
    /// The cap of single scenic areas or choke points by id, instead of `cap_factor`:
    /// `{ S7 = 0.5, S3-bridge = 0.75 }`.
    #[serde(default)]
    pub cap_factor_by_area: std::collections::BTreeMap<String, f64>,
    /// Re-notify open, unacknowledged alerts this often, seconds (0: never).
    #[serde(default = "default_renotify")]
    pub renotify_s: u32,
    /// Publish alerts on the broker: retained state on `cs/v1/alerts/{zone}/{category}/{subject}`
    /// and every transition on `cs/v1/alerts/events`.
    #[serde(default = "default_true")]
    pub mqtt: bool,
    /// Webhooks (generic JSON, DingTalk or WeCom robots).
    #[serde(default)]
    pub webhook: Vec<WebhookSection>,
    /// Prometheus Alertmanager (API v2).
    #[serde(default)]
    pub alertmanager: Option<AlertmanagerSection>,
}

impl Default for AlertsSection {
    fn default() -> Self {
        AlertsSection {
            rule_files: Vec::new(),
            cap_factor: default_cap_factor(),
            cap_factor_by_area: Default::default(),
            renotify_s: default_renotify(),
            mqtt: true,
            webhook: Vec::new(),
            alertmanager: None,
        }
    }
}

impl AlertsSection {
    /// The rules in force: the defaults of the site and profiles with this section's caps, then
    /// the rule files'.
    pub fn rules(&self, catalog: &Catalog) -> anyhow::Result<Vec<Rule>> {
        let tuning = DefaultsTuning {
            cap_factor: self.cap_factor,
            cap_factor_by_area: self.cap_factor_by_area.clone(),
        };
        crate::alert::rule::in_force(catalog, &self.rule_files, tuning)
    }

    /// The rules in force on the local date `date` (`YYYY-MM-DD`): this section's caps with
    /// those of the site's calendar entries of that day, the stricter of each; and what is in
    /// force, for people (None on an ordinary day).
    pub fn rules_on(
        &self,
        catalog: &Catalog,
        date: &str,
    ) -> anyhow::Result<(Vec<Rule>, Option<String>)> {
        let entries = catalog.site.calendar_on(date);
        let mut tuning = DefaultsTuning {
            cap_factor: self.cap_factor,
            cap_factor_by_area: self.cap_factor_by_area.clone(),
        };
        for e in &entries {
            if let Some(c) = e.cap_factor {
                tuning.cap_factor = tuning.cap_factor.min(c);
            }
        }
        let capped: std::collections::BTreeSet<&String> = self
            .cap_factor_by_area
            .keys()
            .chain(entries.iter().flat_map(|e| e.cap_factor_by_area.keys()))
            .collect();
        for area in capped {
            let cap = entries.iter().filter_map(|e| e.cap_of(area)).fold(
                *self
                    .cap_factor_by_area
                    .get(area)
                    .unwrap_or(&self.cap_factor),
                f64::min,
            );
            tuning.cap_factor_by_area.insert(area.clone(), cap);
        }
        let mut rules = crate::alert::rule::in_force(catalog, &self.rule_files, tuning)?;
        let known: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
        for e in &entries {
            if let Some(rule) = e.rule_scale.keys().find(|r| !known.contains(&r.as_str())) {
                anyhow::bail!(
                    "calendar entry \"{}\": rule_scale names \"{rule}\", which is not a rule in force",
                    e.id
                );
            }
        }
        for r in &mut rules {
            for e in &entries {
                if let Some(f) = e.rule_scale.get(&r.id) {
                    for g in &mut r.grades {
                        g.at *= f;
                    }
                }
            }
        }
        let described = (!entries.is_empty()).then(|| {
            entries
                .iter()
                .map(|e| {
                    let mut caps: Vec<String> = e
                        .cap_factor
                        .map(|c| format!("容量上限 {:.0}%", c * 100.0))
                        .into_iter()
                        .collect();
                    caps.extend(
                        e.cap_factor_by_area
                            .iter()
                            .map(|(a, c)| format!("{a} {:.0}%", c * 100.0)),
                    );
                    caps.extend(e.rule_scale.iter().map(|(r, f)| format!("{r} ×{f}")));
                    if caps.is_empty() {
                        format!("{} ({})", e.name, e.id)
                    } else {
                        format!("{} ({}): {}", e.name, e.id, caps.join(", "))
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
        Ok((rules, described))
    }
}

fn default_cap_factor() -> f64 {
    1.0
}

fn default_renotify() -> u32 {
    3600
}

fn default_true() -> bool {
    true
}

/// Identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Unique id of this gateway instance: the MQTT client id and the source id of forwarded
    /// data.
    pub id: String,
    /// The partition this gateway serves, the same on each of its replicas (`zhanggong`): the
    /// `gateway` label of its Alertmanager alerts, so a clustered Alertmanager sees the
    /// replicas' alerts as one and notifies once. Absent: `id`.
    #[serde(default)]
    pub partition: Option<String>,
    /// This gateway is one of several replicas of its partition (deploy/topology.md):
    /// `check-config` then warns of what each replica would do once more (direct webhooks).
    #[serde(default)]
    pub replica: bool,
}

/// Site data.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    /// Folder of device profiles (`device-profiles/profiles`).
    pub profiles: PathBuf,
    /// The site file (`device-profiles/sites/ganzhou.toml`).
    pub site: PathBuf,
    /// The keys file written by `nodectl provision` (see [`crate::keys`]).
    pub keys: PathBuf,
    /// District codes this gateway serves; empty means every district of the site.
    #[serde(default)]
    pub zones: Vec<String>,
}

impl Config {
    /// Reads `path`, applies environment overrides, resolves relative paths against the
    /// config file's folder, and validates.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        Self::load_with_env(path, |name| std::env::var(name).ok())
    }

    /// [`Config::load`] with the environment given as a lookup function.
    pub fn load_with_env(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, LoadError> {
        let file = TomlFile::read(path)?;
        let mut config: Config = file.parse().map_err(|p| LoadError::Invalid(vec![p]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.site.profiles,
            &mut config.site.site,
            &mut config.site.keys,
            &mut config.store.path,
        ]
        .into_iter()
        .chain(config.alerts.rule_files.iter_mut())
        .chain(config.city_platform.iter_mut().flat_map(|c| c.paths_mut()))
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let mut problems: Vec<Problem> = config
            .check()
            .into_iter()
            .map(|(key, reason)| file.problem(&key, reason))
            .collect();
        if let Err((key, p)) = config.apply_environment(base, env) {
            problems.push(file.problem(key, p));
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(LoadError::Invalid(problems))
        }
    }

    fn apply_environment(
        &mut self,
        base: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), (&'static str, String)> {
        if let Some(city) = &mut self.city_platform {
            if let Some(h) = &mut city.https {
                h.token = env(ENV_CITY_TOKEN).map(Secret);
            }
            if let Some(m) = &mut city.mqtt {
                if let Some(pass) = env(ENV_CITY_MQTT_PASSWORD) {
                    m.password = Some(Secret(pass));
                } else if let Some(file) = &m.password_file {
                    m.password = Some(
                        read_password(file).map_err(|e| ("city_platform.mqtt.password_file", e))?,
                    );
                }
            }
        }
        if let Some(user) = env(ENV_MQTT_USERNAME) {
            self.mqtt.username = Some(user);
        }
        if let (Some(influx), Some(token)) = (self.influxdb.as_mut(), env(ENV_INFLUX_TOKEN)) {
            influx.token = token;
        }
        if let Some(pass) = env(ENV_MQTT_PASSWORD) {
            self.mqtt.password = Some(Secret(pass));
        } else if let Some(file) = &self.mqtt.password_file {
            let file = if file.is_relative() {
                base.join(file)
            } else {
                file.clone()
            };
            self.mqtt.password = Some(read_password(&file).map_err(|e| ("mqtt.password_file", e))?);
        }
        Ok(())
    }

    /// Checks values that types alone cannot; returns `(key, reason)` pairs.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let id_ok = !self.gateway.id.is_empty()
            && self.gateway.id.len() <= 64
            && self
                .gateway
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            p.push((
                "gateway.id".into(),
                format!(
                    "gateway id \"{}\" must be 1–64 of A-Z a-z 0-9 - _",
                    self.gateway.id
                ),
            ));
        }
        p.extend(self.mqtt.check());
        p.extend(self.verify.check());
        p.extend(self.http.check());
        p.extend(self.store.check());
        if let Some(influx) = &self.influxdb {
            p.extend(influx.check());
        }
        if let Some(city) = &self.city_platform {
            p.extend(city.check());
        }
        let a = &self.alerts;
        if !(a.cap_factor > 0.0 && a.cap_factor <= 1.0) {
            p.push((
                "alerts.cap_factor".into(),
                format!("cap_factor must be in (0, 1], not {}", a.cap_factor),
            ));
        }
        for (area, f) in &a.cap_factor_by_area {
            if !(*f > 0.0 && *f <= 1.0) {
                p.push((
                    format!("alerts.cap_factor_by_area.{area}"),
                    format!("a cap factor must be in (0, 1], not {f}"),
                ));
            }
        }
        for (i, f) in a.rule_files.iter().enumerate() {
            if let Err(e) = crate::alert::RuleFile::load(f) {
                p.push((format!("alerts.rule_files[{i}]"), e.to_string()));
            }
        }
        for (i, w) in a.webhook.iter().enumerate() {
            p.extend(w.check(i, &a.webhook[..i]));
        }
        if let Some(am) = &a.alertmanager {
            p.extend(am.check());
        }
        for (i, z) in self.site.zones.iter().enumerate() {
            if z.len() != 6 || !z.bytes().all(|b| b.is_ascii_digit()) {
                p.push((
                    format!("site.zones[{i}]"),
                    format!("zone \"{z}\" is not a six-digit GB/T 2260 code"),
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holiday_caps_the_crowd_thresholds_and_the_stricter_cap_of_each_area_wins() {
        let catalog = Catalog::ganzhou().unwrap();
        let section = AlertsSection {
            cap_factor_by_area: [("S4".to_owned(), 0.6)].into(),
            ..AlertsSection::default()
        };
        let occupancy = |rules: &[Rule]| {
            rules
                .iter()
                .find(|r| r.id == "crowd.occupancy")
                .unwrap()
                .clone()
        };
        let (rules, calendar) = section.rules_on(&catalog, "2026-10-02").unwrap();
        assert_eq!(
            calendar.as_deref(),
            Some("国庆节（黄金周） (national-day-2026): 容量上限 75%, S3-bridge 50%")
        );
        let r = occupancy(&rules);
        // 红 at the capped capacity: 75% of the maximum.
        assert_eq!(r.grades.last().unwrap().at, 0.75);
        // S4's own 60% is stricter than the holiday's 75%; the bridge's 50% than the config's 100%.
        assert!((r.scale["S4"] - 0.8).abs() < 1e-9, "{:?}", r.scale);
        assert!(
            (r.scale["S3-bridge"] - 0.5 / 0.75).abs() < 1e-9,
            "{:?}",
            r.scale
        );
        // 五一: the forecast rule's threshold is scaled for those days.
        let (rules, calendar) = section.rules_on(&catalog, "2026-05-02").unwrap();
        assert!(calendar.unwrap().contains("crowd.forecast ×0.9"));
        let forecast = rules.iter().find(|r| r.id == "crowd.forecast").unwrap();
        assert!(
            (forecast.grades[0].at - 0.72).abs() < 1e-9,
            "{:?}",
            forecast.grades
        );
        let (rules, calendar) = section.rules_on(&catalog, "2026-11-02").unwrap();
        assert_eq!(calendar, None);
        assert_eq!(occupancy(&rules).grades.last().unwrap().at, 1.0);
        assert!((occupancy(&rules).scale["S4"] - 0.6).abs() < 1e-9);
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    const MINIMAL: &str = "\
[gateway]
id = \"gw-1\"

[site]
profiles = \"profiles\"
site = \"sites/ganzhou.toml\"
keys = \"keys.toml\"

[store]
path = \"gateway.db\"

[mqtt]
host = \"127.0.0.1\"
";

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cs-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn defaults_are_a_persistent_session_with_expiry() {
        let dir = tempdir("defaults");
        let c = Config::load(&write(&dir, MINIMAL)).unwrap();
        assert!(!c.mqtt.clean_start);
        assert!(c.mqtt.session_expiry_s > 0);
        assert_eq!(c.site.keys, dir.join("keys.toml"));
    }

    #[test]
    fn a_persistent_session_without_expiry_is_refused_with_file_line_and_key() {
        let dir = tempdir("expiry");
        let path = write(&dir, &format!("{MINIMAL}session_expiry_s = 0\n"));
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("gateway.toml:14:1:"), "{err}");
        assert!(err.contains("session_expiry_s > 0"), "{err}");
    }

    #[test]
    fn a_shared_subscription_group_is_refused_with_the_reason() {
        let dir = tempdir("shared");
        let path = write(&dir, &format!("{MINIMAL}shared_group = \"zhanggong\"\n"));
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("gateway.toml:14:1:"), "{err}");
        assert!(
            err.contains("shared subscriptions are no longer supported"),
            "{err}"
        );
        assert!(err.contains("site.zones"), "{err}");
    }

    #[test]
    fn the_city_platform_section_resolves_paths_takes_secrets_from_the_environment_and_names_problems()
     {
        let dir = tempdir("city");
        let text = format!(
            "{MINIMAL}\n[city_platform]\n[city_platform.raw]\nenabled = true\n\
             [city_platform.mqtt]\nhost = \"platform\"\n[city_platform.mqtt.tls]\nca = \"ca.pem\"\n"
        );
        let env = |name: &str| (name == ENV_CITY_MQTT_PASSWORD).then(|| "pw".to_owned());
        let c = Config::load_with_env(&write(&dir, &text), env).unwrap();
        let city = c.city_platform.unwrap();
        let mqtt = city.mqtt.unwrap();
        assert_eq!(mqtt.tls.unwrap().ca, dir.join("ca.pem"));
        assert_eq!(mqtt.password, Some(Secret("pw".into())));
        assert_eq!(mqtt.port, 8883);
        assert!(city.raw.enabled == Some(true));

        let both = format!(
            "{MINIMAL}\n[city_platform]\n[city_platform.https]\nurl = \"http://platform\"\n"
        );
        let err = Config::load(&write(&dir, &both)).unwrap_err().to_string();
        assert!(err.contains("must start with https://"), "{err}");
        assert!(err.contains("gateway.toml:17:1"), "{err}");
    }

    #[test]
    fn an_influxdb_section_with_zero_intervals_or_a_bad_url_is_refused_by_key() {
        let dir = tempdir("influx");
        let text = format!(
            "{MINIMAL}\n[influxdb]\nurl = \"127.0.0.1:8428\"\norg = \"o\"\nbucket = \"b\"\n\
             flush_ms = 0\nbatch_lines = 0\ntimeout_ms = 0\n"
        );
        let err = Config::load(&write(&dir, &text)).unwrap_err();
        let reasons: Vec<&str> = err.problems().iter().map(|p| p.reason.as_str()).collect();
        assert_eq!(reasons.len(), 4, "{err}");
        for (reason, says) in reasons.iter().zip([
            "\"127.0.0.1:8428\" is not a URL",
            "batch_lines must be > 0",
            "flush_ms must be > 0: it is the shortest time between two writes",
            "timeout_ms must be > 0",
        ]) {
            assert!(reason.contains(says), "{reason} does not say {says}");
        }
        // Each named at its line in the file.
        assert!(err.to_string().contains("gateway.toml:19:"), "{err}");
        let fine = format!(
            "{MINIMAL}\n[influxdb]\nurl = \"http://127.0.0.1:8428\"\norg = \"o\"\nbucket = \"b\"\n"
        );
        let c = Config::load(&write(&dir, &fine)).unwrap();
        assert_eq!(
            c.influxdb.unwrap().flush_ms,
            crate::sink::influxdb::DEFAULT_FLUSH_MS
        );
    }

    #[test]
    fn a_commit_interval_longer_than_a_second_is_refused() {
        let dir = tempdir("commit-interval");
        let text = MINIMAL.replace(
            "path = \"gateway.db\"\n",
            "path = \"gateway.db\"\ncommit_interval_ms = 5000\n",
        );
        let err = Config::load(&write(&dir, &text)).unwrap_err().to_string();
        assert!(
            err.contains("store.commit_interval_ms") || err.contains("gateway.toml:11:"),
            "{err}"
        );
        assert!(err.contains("must be at most 1000"), "{err}");
        let c = Config::load(&write(&dir, MINIMAL)).unwrap();
        assert_eq!(c.store.commit_interval(), crate::store::COMMIT_INTERVAL);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempdir("unknown");
        let path = write(&dir, &format!("{MINIMAL}keepalive = 5\n"));
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains(":14:1: unknown field `keepalive`"), "{err}");
    }

    #[test]
    fn the_environment_supplies_secrets_and_overrides_the_user() {
        let dir = tempdir("env");
        std::fs::write(dir.join("pw"), "from-file\n").unwrap();
        let path = write(
            &dir,
            &format!("{MINIMAL}username = \"u\"\npassword_file = \"pw\"\n"),
        );
        let c = Config::load_with_env(&path, |_| None).unwrap();
        assert_eq!(c.mqtt.password, Some(Secret("from-file".into())));
        let c = Config::load_with_env(&path, |k| Some(format!("env:{k}"))).unwrap();
        assert_eq!(
            c.mqtt.username.as_deref(),
            Some("env:CITYSENSE_MQTT_USERNAME")
        );
        assert_eq!(
            c.mqtt.password,
            Some(Secret("env:CITYSENSE_MQTT_PASSWORD".into()))
        );
        assert!(
            !format!("{c:?}").contains("env:CITYSENSE_MQTT_PASSWORD"),
            "secrets are never printed"
        );
    }

    #[test]
    fn a_missing_password_file_is_named() {
        let dir = tempdir("pwmissing");
        let path = write(&dir, &format!("{MINIMAL}password_file = \"nope\"\n"));
        let err = Config::load_with_env(&path, |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read password file") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn every_sample_config_in_deploy_loads_and_checks() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gateway");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".toml") || name.starts_with("keys") {
                continue;
            }
            n += 1;
            match Config::load_with_env(&path, |_| None) {
                Ok(_) => {
                    crate::check_config(&path).unwrap_or_else(|e| panic!("{name}:\n{e:#}"));
                }
                // The samples point at the production state folder, which a development machine
                // may not have: that must then be the one problem, named with its key.
                Err(e) => {
                    let problems = e.problems();
                    assert_eq!(problems.len(), 1, "{name}:\n{e}");
                    assert!(
                        problems[0].reason.contains("/var/lib/citysense")
                            && problems[0].reason.contains("does not exist"),
                        "{name}:\n{e}"
                    );
                }
            }
        }
        assert!(n >= 1, "no sample configs in {}", dir.display());
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s = Secret("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
