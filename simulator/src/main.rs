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
        /// The keys file the nodes sign with (as `nodectl provision` writes it, and the gateway
        /// reads) [default: the demo keys]. Every simulated device needs its key there.
        #[arg(long)]
        keys: Option<PathBuf>,
        /// The gateway's API token with the operate scope (`gateway tokens add simulator
        /// --scope operate`; `gateway demo` prints one) [default: $CITYSENSE_TOKEN].
        #[arg(long)]
        token: Option<String>,
    },
    /// Load-test a gateway: N pressure loggers at R frames/s for D seconds; compares what was
    /// published with the gateway's own counters and times alerts under load.
    ///
    /// The devices belong to a generated site: first `simulator load --write-site DIR
    /// --devices N`, start `gateway run --config DIR/gateway.toml`, then run the load.
    Load {
        /// Devices.
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Frames per second, all devices together.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Seconds.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Broker connections shared by the devices.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// One broker connection per device instead (connection-scale tests).
        #[arg(long)]
        connection_per_device: bool,
        /// Publish reports at QoS 0 instead of 1.
        #[arg(long)]
        qos0: bool,
        /// The broker, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:1883")]
        mqtt: String,
        /// The gateway's HTTP base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        gateway: String,
        /// Write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Only write the site, keys and gateway config for N devices into this folder.
        #[arg(long)]
        write_site: Option<PathBuf>,
    },
    /// Serve a Modbus slave for a site device with a register map (e.g. gz-p3-rtu), over TCP
    /// or over RTU on a serial device (a UART, or one end of a pseudo-terminal).
    Modbus {
        /// The site device.
        #[arg(long, default_value = "gz-p3-rtu")]
        device: String,
        /// Listen for Modbus TCP here.
        #[arg(long, conflicts_with = "serial")]
        listen: Option<String>,
        /// Serve Modbus RTU on this serial device.
        #[arg(long)]
        serial: Option<PathBuf>,
        /// Baud rate (RTU).
        #[arg(long, default_value_t = 9600)]
        baud: u32,
        /// A fault: `slow:MS`, `exception:CODE` (1, 2, 3, 4, 6), `silence` or `unit:ID`
        /// (replies carry another unit id; TCP).
        #[arg(long)]
        fault: Option<String>,
    },
}

fn parse_fault(s: &str) -> anyhow::Result<simulator::modbus::Fault> {
    use simulator::modbus::Fault;
    use tokio_modbus::ExceptionCode as E;
    let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
    Ok(match kind {
        "slow" => Fault::Slow(Duration::from_millis(
            arg.parse()
                .map_err(|_| anyhow::anyhow!("slow:MS needs milliseconds"))?,
        )),
        "silence" => Fault::Silence,
        "unit" => Fault::WrongUnit(
            arg.parse()
                .map_err(|_| anyhow::anyhow!("unit:ID needs a unit id 0–255"))?,
        ),
        "exception" => Fault::Exception(match arg {
            "1" => E::IllegalFunction,
            "2" => E::IllegalDataAddress,
            "3" => E::IllegalDataValue,
            "4" => E::ServerDeviceFailure,
            "6" => E::ServerDeviceBusy,
            other => anyhow::bail!("exception code {other}: use 1, 2, 3, 4 or 6"),
        }),
        other => anyhow::bail!("fault \"{other}\": slow:MS, exception:CODE, silence or unit:ID"),
    })
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
                keys,
                token,
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
                        token: token.or_else(|| std::env::var("CITYSENSE_TOKEN").ok()),
                        keys: keys
                            .map(|k| device_profiles::keys::load(&k))
                            .transpose()?
                            .map(|entries| entries.into_iter().collect()),
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
            Command::Load {
                devices,
                rate,
                duration,
                connections,
                connection_per_device,
                qos0,
                mqtt,
                gateway,
                report,
                write_site,
            } => {
                if let Some(dir) = write_site {
                    let site = simulator::load_site::write_site(&dir, devices, &mqtt)?;
                    println!(
                        "wrote {} ({devices} devices), keys.toml and gateway.toml: gateway run --config {}",
                        site.display(),
                        dir.join("gateway.toml").display()
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                let (mqtt_host, mqtt_port) = split_host(&mqtt)?;
                let r = simulator::load::load(&simulator::load::LoadOptions {
                    mqtt_host,
                    mqtt_port,
                    gateway,
                    devices,
                    rate,
                    duration: Duration::from_secs(duration),
                    connections,
                    per_device: connection_per_device,
                    qos: if qos0 {
                        rumqttc::v5::mqttbytes::QoS::AtMostOnce
                    } else {
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce
                    },
                    progress: true,
                })
                .await?;
                println!(
                    "published {} in {:.1} s ({:.0}/s of {:.0}/s target) over {} connections\n\
                     gateway received {} ({:.0}/s), {} readings; lost {} ({:.3} % of published)\n\
                     alert latency publish → cs/v1/alerts/events: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)\n                     \x20 publish → broker's delivery beside the gateway: p50 {:.2} ms, p99 {:.2} ms\n                     \x20 that delivery → alert (gateway and back): p50 {:.2} ms, p99 {:.2} ms",
                    r.published,
                    r.seconds,
                    r.publish_rate,
                    r.target_rate,
                    r.connections,
                    r.gateway_received,
                    r.gateway_rate,
                    r.gateway_readings,
                    r.lost,
                    100.0 * r.lost as f64 / r.published.max(1) as f64,
                    r.alert_p50_ms,
                    r.alert_p99_ms,
                    r.alert_max_ms,
                    r.alert_samples,
                    r.alert_to_broker_p50_ms,
                    r.alert_to_broker_p99_ms,
                    r.alert_from_broker_p50_ms,
                    r.alert_from_broker_p99_ms,
                );
                if let Some(path) = report {
                    std::fs::write(&path, serde_json::to_string_pretty(&r)?)?;
                    println!("report written to {}", path.display());
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Modbus {
                device,
                listen,
                serial,
                baud,
                fault,
            } => {
                let catalog = Catalog::ganzhou()?;
                let d = catalog
                    .site
                    .device(&device)
                    .ok_or_else(|| anyhow::anyhow!("device \"{device}\" is not in the site"))?;
                let map = catalog
                    .profiles
                    .get(&d.profile)
                    .and_then(|p| p.modbus.clone())
                    .ok_or_else(|| anyhow::anyhow!("device {device} has no register map"))?;
                let unit = d.modbus.as_ref().and_then(|m| m.unit_id).unwrap_or(map.unit_id);
                let slave = simulator::modbus::Slave::new(
                    unit,
                    &map,
                    &[
                        ("pressure", 0.30),
                        ("flow", 200.0),
                        ("total_volume", 1_234_567.0),
                        ("well_level", 1.9),
                        ("temperature", 18.0),
                        ("pump_running", 1.0),
                    ],
                );
                if let Some(f) = fault {
                    slave.set_fault(parse_fault(&f)?);
                }
                match (listen, serial) {
                    (_, Some(path)) => {
                        println!("Modbus RTU slave {unit} for {device} on {} at {baud} baud", path.display());
                        simulator::modbus::serve_rtu(&path, baud, slave).await?;
                    }
                    (listen, None) => {
                        let addr = listen.unwrap_or_else(|| "127.0.0.1:5020".into());
                        let listener = tokio::net::TcpListener::bind(&addr).await?;
                        println!("Modbus TCP slave {unit} for {device} on {addr}");
                        simulator::modbus::serve_tcp(listener, slave).await?;
                    }
                }
                Ok(ExitCode::SUCCESS)
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
