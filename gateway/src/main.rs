//! `gateway`: the CitySense edge gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::demo::DemoOptions;

/// The CitySense edge gateway: MQTT and Modbus ingest, verification, aggregation, alerts, the local
/// store, and forwarding to InfluxDB and the city platform.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway daemon with a config file (see deploy/gateway/gateway.toml).
    ///
    /// Secrets come from the environment: CITYSENSE_MQTT_USERNAME, CITYSENSE_MQTT_PASSWORD,
    /// CITYSENSE_INFLUX_TOKEN, CITYSENSE_CITY_MQTT_PASSWORD, CITYSENSE_CITY_TOKEN.
    /// Stops cleanly on SIGINT or SIGTERM, keeping its broker session.
    Run {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Apply changed keys, rule files and site or profiles to the running gateway, without a
    /// restart and without dropping its broker session.
    ///
    /// Checks the files first as check-config does (nothing is sent if they do not check), then
    /// signals the gateway running on the config's store (SIGHUP; `systemctl reload
    /// citysense-gateway` does the same) and prints what it changed, or why it refused: served
    /// districts and devices moving between districts need a restart; a refused reload changes
    /// nothing. Settings read only at start (broker, HTTP, store, sinks) are named as waiting
    /// for a restart. Every reload is in the audit trail.
    Reload {
        /// The config file the gateway runs with.
        #[arg(long, short)]
        config: PathBuf,
        /// How long to wait for the gateway's answer.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
    /// Device keys: rotate nodes' keys over the air, list them.
    Keys {
        /// The config file the gateway runs with (its site.keys is the keys file).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Validate a config file and everything it names (profiles, site, keys); exit non-zero
    /// with FILE:LINE:COLUMN: REASON for every problem.
    CheckConfig {
        /// The config file.
        config: PathBuf,
    },
    /// Print the JSON Schema (draft 2020-12) of the exchange format the city platform receives:
    /// one record per MQTT message, one batch per HTTPS request.
    ///
    /// Example: gateway exchange-schema > exchange-v1.schema.json
    ExchangeSchema,
    /// Alert rules: run a rule file's test cases, or list the rules in force.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Operators' accounts (roles viewer, operator, admin), in the gateway's local store.
    Users {
        #[command(flatten)]
        at: StoreArgs,
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// API tokens for machines (scopes read, operate).
    Tokens {
        #[command(flatten)]
        at: StoreArgs,
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// The audit trail: every login, acknowledgement, count, account and token change.
    Audit {
        #[command(flatten)]
        at: StoreArgs,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The local store: backups taken while the gateway runs, and restoring one.
    Store {
        #[command(flatten)]
        at: StoreArgs,
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Run the whole system in one process: an embedded MQTT broker, the Ganzhou site, demo
    /// keys, built-in traffic, and HTTP on 127.0.0.1:8080.
    ///
    /// Try: curl http://127.0.0.1:8080/api/v1/devices
    Demo {
        /// Where HTTP (metrics, API) listens [default: 127.0.0.1:8080, or a free port if that
        /// one is taken].
        #[arg(long)]
        http: Option<SocketAddr>,
        /// Where the embedded MQTT broker listens [default: 127.0.0.1:1883, or a free port if a
        /// broker already runs there].
        #[arg(long)]
        mqtt: Option<SocketAddr>,
        /// Start without built-in traffic, so an external simulator or client drives it.
        #[arg(long)]
        no_traffic: bool,
        /// Use a broker already listening at --mqtt (e.g. Mosquitto) instead of the embedded one.
        #[arg(long)]
        external_broker: bool,
        /// The local store's database file [default: citysense-demo.db in the temporary folder].
        #[arg(long)]
        store: Option<PathBuf>,
    },
}

/// Where a `users`, `tokens`, `audit` or `store` command finds the local store.
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// The gateway's config file (its store.path is used).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The local store's database file (instead of --config).
    #[arg(long, global = true)]
    store: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Give devices new keys and send them over the air (等保 2.0: keys updated remotely).
    ///
    /// Each chosen device gets a new random key, written to the keys file as its next_key.
    /// The running gateway is reloaded and sends each node its new key as a KeyRotation
    /// downlink signed with the current key; it accepts both keys until the node acknowledges,
    /// then only the new one, and rewrites the keys file. A node that does not answer keeps its
    /// old key and stays pending (see `gateway keys list --pending`); the downlink is sent
    /// again every 5 minutes and after every restart.
    ///
    /// Two devices: gateway keys rotate gz-p1-press gz-p2-press -c /etc/citysense/gateway.toml
    ///
    /// Every RFID gate: gateway keys rotate --kind uhf-rfid-gate -c /etc/citysense/gateway.toml
    Rotate {
        /// Device ids.
        #[arg(required_unless_present_any = ["kind", "all"], conflicts_with_all = ["kind", "all"])]
        devices: Vec<String>,
        /// Every device of this kind (profile) with a key.
        #[arg(long, conflicts_with = "all")]
        kind: Option<String>,
        /// Every device with a key.
        #[arg(long)]
        all: bool,
        /// How long to wait for the gateway's reload.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
    /// Every device's key number and fingerprint, and the rotations under way.
    List {
        /// Only devices whose rotation is under way.
        #[arg(long)]
        pending: bool,
    },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Make an account. The password (at least 10 characters) is typed twice, or read from
    /// standard input with --password-stdin.
    ///
    /// Example: gateway users add wang.li --role operator --config /etc/citysense/gateway.toml
    Add {
        /// Login name: letters, digits, '.', '_' or '-'.
        name: String,
        /// viewer (reads), operator (also acknowledges, counts), admin (also accounts, tokens).
        #[arg(long)]
        role: gateway::auth::Role,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set an account's password (and lift a lock after failed logins).
    Passwd {
        /// Login name.
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable an account: it can no longer log in.
    Disable {
        /// Login name.
        name: String,
    },
    /// Enable a disabled account again.
    Enable {
        /// Login name.
        name: String,
    },
    /// List the accounts, their roles and states.
    List,
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Make an API token for a machine; it is printed once (cst_…): keep it.
    ///
    /// Example: gateway tokens add simulator --scope operate --config gateway.toml
    Add {
        /// What it is for.
        name: String,
        /// read (as a viewer) or operate (as an operator).
        #[arg(long)]
        scope: gateway::auth::tokens::Scope,
    },
    /// Revoke a token by its id (the 8 hex digits after cst_).
    Revoke {
        /// The token's id.
        id: String,
    },
    /// List the tokens (ids, scopes, states; never the secrets).
    List,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the audit trail's hash chain; exits non-zero naming the first record that was
    /// changed, removed or put out of order.
    Verify,
    /// Write the audit records as JSON lines to standard output.
    ///
    /// Example: gateway audit export --since 30d --config gateway.toml > audit.jsonl
    Export {
        /// An RFC 3339 time (2026-12-01T00:00:00Z) or a span back from now (7d, 12h).
        #[arg(long, default_value = "180d")]
        since: String,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Copy the store into a new file, consistent as of one commit, while the gateway runs
    /// (it keeps committing meanwhile). The copy is checked before it is given its name.
    ///
    /// Example: gateway store backup /var/backups/citysense/gateway-$(date +%F).db --config /etc/citysense/gateway.toml
    Backup {
        /// The new file (never overwritten).
        to: PathBuf,
    },
    /// Put a backup in place of the store. The gateway must be stopped; the store it replaces
    /// is kept beside it (.before-restore-<ms>). What the gateway accepted after the backup was
    /// taken is not in it.
    ///
    /// Example: gateway store restore /var/backups/citysense/gateway-2026-12-01.db --config /etc/citysense/gateway.toml
    Restore {
        /// The backup file.
        from: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Run the [[test]] cases of rule files: each feeds its rows to a rule (from the file, or a
    /// default of the site) and compares the alerts with its [[test.expect]] list. Exits
    /// non-zero with a diff when one fails.
    ///
    /// Example: gateway rules test deploy/rules/ganzhou.toml
    Test {
        /// Rule files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Take the site, profiles and alert settings of this config file [default: the
        /// built-in Ganzhou site].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List the rules in force on a day: the defaults of the site and profiles plus the
    /// config's rule files, with the capacity caps of that day's calendar entries (holidays,
    /// local events) from the site file.
    ///
    /// Example: gateway rules list --date 2026-10-02 --config /etc/citysense/gateway.toml
    List {
        /// The config file [default: the built-in Ganzhou site, no rule files].
        #[arg(long)]
        config: Option<PathBuf>,
        /// The local date, YYYY-MM-DD [default: today in the site's time zone].
        #[arg(long)]
        date: Option<String>,
    },
}

fn main() -> ExitCode {
    let arenas = gateway::heap::limit_arenas();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,rumqttd=warn,rumqttc=warn")
            }),
        )
        .with_target(false)
        .init();
    tracing::debug!(?arenas, "malloc arenas");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => gateway::run(&config, shutdown_signal(), hangups()).await,
            Command::Reload { config, timeout_s } => {
                let changed = tokio::task::spawn_blocking(move || {
                    gateway::commands::keys::reload_running(
                        &config,
                        std::time::Duration::from_secs(timeout_s),
                    )
                })
                .await??;
                println!("reloaded: {changed}");
                Ok(())
            }
            Command::Keys { config, command } => {
                tokio::task::spawn_blocking(move || keys_command(config, command)).await?
            }
            Command::ExchangeSchema => {
                print!("{}", gateway::sink::city_platform::exchange::SCHEMA_JSON);
                Ok(())
            }
            Command::CheckConfig { config } => {
                gateway::check_config(&config).map(|summary| println!("{summary}"))
            }
            Command::Rules {
                command: RulesCommand::Test { files, config },
            } => gateway::rules_test(&files, config.as_deref()).and_then(|(report, ok)| {
                print!("{report}");
                anyhow::ensure!(ok, "some rule tests failed");
                Ok(())
            }),
            Command::Rules {
                command: RulesCommand::List { config, date },
            } => {
                gateway::rules_list(config.as_deref(), date.as_deref()).map(|list| print!("{list}"))
            }
            Command::Users { at, command } => users(&at, command),
            Command::Tokens { at, command } => tokens(&at, command),
            Command::Audit { at, command } => audit(&at, command),
            Command::Store { at, command } => store_command(&at, command),
            Command::Demo {
                http,
                mqtt,
                no_traffic,
                external_broker,
                store,
            } => {
                let store = store.unwrap_or_else(|| std::env::temp_dir().join("citysense-demo.db"));
                let http = http.unwrap_or_else(|| default_or_free("HTTP", 8080));
                let mqtt = mqtt.unwrap_or_else(|| {
                    if external_broker {
                        ([127, 0, 0, 1], 1883).into()
                    } else {
                        default_or_free("MQTT", 1883)
                    }
                });
                let opts = DemoOptions {
                    http,
                    mqtt,
                    traffic: !no_traffic,
                    external_broker,
                    store,
                };
                gateway::demo::run(opts, shutdown_signal()).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line's changes are recorded in the audit trail as done by `cli`.
const CLI: &str = "cli";

fn keys_command(config: Option<PathBuf>, command: KeysCommand) -> anyhow::Result<()> {
    use gateway::commands::keys::{Chosen, list, rotate};
    let config = config.ok_or_else(|| {
        anyhow::anyhow!("give the gateway's config file: --config /etc/citysense/gateway.toml")
    })?;
    match command {
        KeysCommand::List { pending } => print!("{}", list(&config, pending)?),
        KeysCommand::Rotate {
            devices,
            kind,
            all,
            timeout_s,
        } => {
            let chosen = match (kind, all) {
                (Some(k), _) => Chosen::Kind(k),
                (None, true) => Chosen::All,
                (None, false) => Chosen::Devices(devices),
            };
            let r = rotate(&config, &chosen, std::time::Duration::from_secs(timeout_s))?;
            if !r.started.is_empty() {
                println!("new keys for {}: {}", r.started.len(), r.started.join(", "));
            }
            if !r.pending_already.is_empty() {
                println!(
                    "already under way (unchanged): {}",
                    r.pending_already.join(", ")
                );
            }
            match r.reload {
                Ok(_) => println!(
                    "the gateway is sending them; `gateway keys list --pending` shows who has not answered"
                ),
                Err(why) => println!(
                    "the keys file holds them; the gateway was not reloaded ({why}): it sends them when it next starts or reloads"
                ),
            }
        }
    }
    Ok(())
}

fn store(at: &StoreArgs) -> anyhow::Result<gateway::store::Store> {
    gateway::commands::open_store(at.config.as_deref(), at.store.as_deref())
}

fn users(at: &StoreArgs, command: UsersCommand) -> anyhow::Result<()> {
    use gateway::auth::login;
    let store = store(at)?;
    let now = gateway::clock::now_ms();
    let done = match command {
        UsersCommand::Add {
            name,
            role,
            password_stdin,
        } => {
            let pw = gateway::commands::read_password(password_stdin)?;
            login::add(&store, (&name, role, &pw), CLI, now)?
                .map(|()| format!("account {name} ({}) made", role.name()))
        }
        UsersCommand::Passwd {
            name,
            password_stdin,
        } => {
            let pw = gateway::commands::read_password(password_stdin)?;
            login::set_password(&store, &name, &pw, CLI, now)?
                .map(|()| format!("password of {name} set"))
        }
        UsersCommand::Disable { name } => login::set_disabled(&store, &name, true, CLI, now)?
            .map(|()| format!("account {name} disabled")),
        UsersCommand::Enable { name } => login::set_disabled(&store, &name, false, CLI, now)?
            .map(|()| format!("account {name} enabled")),
        UsersCommand::List => Ok(gateway::commands::users_list(&store)?),
    };
    println!("{}", done?.trim_end());
    Ok(())
}

fn tokens(at: &StoreArgs, command: TokensCommand) -> anyhow::Result<()> {
    use gateway::auth::tokens;
    let store = store(at)?;
    let now = gateway::clock::now_ms();
    match command {
        TokensCommand::Add { name, scope } => {
            let (t, token) = tokens::issue(&store, &name, scope, CLI, now)?;
            eprintln!(
                "token {} ({}, {}): shown once, keep it",
                t.id,
                name,
                scope.name()
            );
            println!("{token}");
        }
        TokensCommand::Revoke { id } => {
            anyhow::ensure!(tokens::revoke(&store, &id, CLI, now)?, "no live token {id}");
            println!("token {id} revoked");
        }
        TokensCommand::List => print!("{}", gateway::commands::tokens_list(&store)?),
    }
    Ok(())
}

fn audit(at: &StoreArgs, command: AuditCommand) -> anyhow::Result<()> {
    let store = store(at)?;
    match command {
        AuditCommand::Verify => match store.verify_audit()? {
            Ok(n) => println!("audit trail holds: {n} records"),
            Err(broken) => anyhow::bail!("audit trail broken: {broken}"),
        },
        AuditCommand::Export { since } => {
            print!("{}", gateway::commands::audit_export(&store, &since)?)
        }
    }
    Ok(())
}

fn store_command(at: &StoreArgs, command: StoreCommand) -> anyhow::Result<()> {
    use gateway::commands::{store_backup, store_path, store_restore};
    let summary = match command {
        StoreCommand::Backup { to } => {
            store_backup(&store_path(at.config.as_deref(), at.store.as_deref())?, &to)?
        }
        // A lost store may be restored to where it was: --store need not exist.
        StoreCommand::Restore { from } => {
            let store = match &at.store {
                Some(s) => s.clone(),
                None => store_path(at.config.as_deref(), None)?,
            };
            store_restore(&store, &from)?
        }
    };
    println!("{summary}");
    Ok(())
}

/// 127.0.0.1:`port`, or a free port when something else already listens there (a system
/// Mosquitto on 1883, another web service on 8080): the demo should start anyway, and say where.
fn default_or_free(what: &str, port: u16) -> SocketAddr {
    let wanted = SocketAddr::from(([127, 0, 0, 1], port));
    if std::net::TcpListener::bind(wanted).is_ok() {
        return wanted;
    }
    match std::net::TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()) {
        Ok(free) => {
            eprintln!("note: {wanted} is in use; the demo's {what} listens on {free} instead");
            free
        }
        Err(_) => wanted,
    }
}

/// A reload request for every SIGHUP (`gateway reload`, `systemctl reload`).
fn hangups() -> tokio::sync::mpsc::Receiver<&'static str> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    // One waiting is enough: it reads the files as they are when it runs.
                    let _ = tx.try_send("SIGHUP");
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP: reloads need a restart"),
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
