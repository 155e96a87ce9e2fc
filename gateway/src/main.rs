//! `gateway`: the CitySense edge gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::config::Config;
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
    /// List the rules in force: the defaults of the site and profiles plus the config's rule
    /// files.
    List {
        /// The config file [default: the built-in Ganzhou site, no rule files].
        #[arg(long)]
        config: Option<PathBuf>,
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
            Command::Run { config } => {
                let config = Config::load(&config)?;
                gateway::run(config, shutdown_signal()).await
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
                command: RulesCommand::List { config },
            } => gateway::rules_list(config.as_deref()).map(|list| print!("{list}")),
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
