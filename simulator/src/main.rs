//! `simulator`: the Ganzhou network in scenarios and load tests. See `simulator --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use device_profiles::Catalog;
use simulator::run::{RunOptions, run};
use simulator::scenario::Scenario;

/// Runs the city's virtual nodes (the real node firmware logic, simulated sensors) against a
/// broker and a gateway.
///
/// Try it with the demo: `cargo run --release -- demo --no-traffic` in one terminal, then
/// `cargo run --release -p simulator -- run --scenario simulator/scenarios/gas-leak-tunnel.toml`.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Play a scenario and check its expectations against the gateway; exit 1 with a diff
    /// when they do not hold.
    Run {
        /// The scenario file (see simulator/scenarios/).
        #[arg(long)]
        scenario: PathBuf,
        /// The site file [default: the built-in Ganzhou site].
        #[arg(long, requires = "profiles")]
        site: Option<PathBuf>,
        /// The profiles folder (with --site).
        #[arg(long)]
        profiles: Option<PathBuf>,
        /// The broker, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:1883")]
        mqtt: String,
        /// The gateway's HTTP base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        gateway: String,
        /// Override the scenario's acceleration (simulated seconds per real second).
        #[arg(long)]
        acceleration: Option<f64>,
        /// Seed of the simulation's randomness (same seed, same visitors).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seconds to wait for the gateway after the last report.
        #[arg(long, default_value_t = 20)]
        settle_s: u64,
    },
}

fn split_host(s: &str) -> anyhow::Result<(String, u16)> {
    let (h, p) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("\"{s}\" must be HOST:PORT"))?;
    Ok((
        h.to_owned(),
        p.parse().map_err(|_| anyhow::anyhow!("port of \"{s}\""))?,
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run {
                scenario,
                site,
                profiles,
                mqtt,
                gateway,
                acceleration,
                seed,
                settle_s,
            } => {
                let catalog = match (site, profiles) {
                    (Some(s), Some(p)) => Catalog::load(&p, &s)?,
                    _ => Catalog::ganzhou()?,
                };
                let scenario = Scenario::load(&scenario)?;
                let (mqtt_host, mqtt_port) = split_host(&mqtt)?;
                let outcome = run(
                    &catalog,
                    &scenario,
                    &RunOptions {
                        mqtt_host,
                        mqtt_port,
                        gateway,
                        acceleration,
                        seed,
                        settle: Duration::from_secs(settle_s),
                        progress: true,
                    },
                )
                .await?;
                print!("{}", outcome.report);
                Ok::<_, anyhow::Error>(if outcome.passed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
