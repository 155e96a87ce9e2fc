//! `nodectl`: provision, inspect, flash and listen to CitySense nodes. See `nodectl --help`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use device_profiles::Catalog;

/// Field tool for CitySense nodes: give a node its identity, check it, flash it, and hear it.
///
/// A typical day: `nodectl provision --device gz-p1-press --out prov/` in the office, then on
/// site `nodectl flash --firmware node.elf --config prov/gz-p1-press.cscb`, and
/// `nodectl listen gz-p1-press --keys keys.toml` until its first verified frame shows.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Give a device of the site its key and config block, and register it with the gateway and
    /// the broker.
    ///
    /// Writes OUT/DEVICE.cscb (the config block image) and appends the device to the gateway's
    /// keys file, Mosquitto's password file and its ACL file (each created if missing; a device
    /// already present is refused). The key is generated unless --key imports one. The tag salt
    /// of the site is read from OUT/site-salt.hex, created on first use: every gate of a site
    /// must share it.
    Provision {
        /// Device id, as in the site file (e.g. gz-p1-press).
        #[arg(long)]
        device: String,
        /// The site file [default: the built-in Ganzhou site].
        #[arg(long, requires = "profiles")]
        site: Option<PathBuf>,
        /// The profiles folder (with --site).
        #[arg(long)]
        profiles: Option<PathBuf>,
        /// Import this key (64 hex digits) instead of generating one.
        #[arg(long)]
        key: Option<String>,
        /// The broker as the node will reach it, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        /// Report interval in seconds [default: the profile's].
        #[arg(long)]
        report_interval_s: Option<u32>,
        /// Where the image and the site salt go.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The gateway's keys file to append to.
        #[arg(long, default_value = "keys.toml")]
        keys: PathBuf,
        /// Mosquitto's password file to append to.
        #[arg(long, default_value = "mosquitto.passwd")]
        passwd: PathBuf,
        /// Mosquitto's ACL file to append to.
        #[arg(long, default_value = "mosquitto.acl")]
        acl: PathBuf,
        /// Also issue the device a certificate from the site CA in this folder (`nodectl ca
        /// init`): OUT/DEVICE.pem and OUT/DEVICE.key, for the broker's TLS listener.
        #[arg(long, value_name = "CA_DIR")]
        tls: Option<PathBuf>,
    },
    /// Write Mosquitto's password file, ACL and listeners for every device of the site.
    ///
    /// From the site file and the gateway's keys file: OUT/citysense.passwd (mode 600; the
    /// gateway and every device with a key, its password derived from the key as `provision`
    /// derives it), OUT/citysense.acl (each device publishes only to its own up and status
    /// topics and reads only its own down topic; the gateway reads all reports and sends
    /// downlinks) and OUT/citysense-listeners.conf (anonymous clients refused; with --ca, a TLS
    /// listener that requires a certificate from the site CA). Run it again whenever devices
    /// are added: lines of users that are not devices of the site are kept. Copy the files to
    /// --install-dir on the broker's host and include the .conf from /etc/mosquitto/conf.d/.
    BrokerConfig {
        /// The site file [default: the built-in Ganzhou site].
        #[arg(long, requires = "profiles")]
        site: Option<PathBuf>,
        /// The profiles folder (with --site).
        #[arg(long)]
        profiles: Option<PathBuf>,
        /// The gateway's keys file.
        #[arg(long, default_value = "keys.toml")]
        keys: PathBuf,
        /// Where the files are written.
        #[arg(long, default_value = "broker")]
        out: PathBuf,
        /// The gateway's broker user; its password comes from CITYSENSE_MQTT_PASSWORD, or is
        /// generated into OUT/gateway.env (mode 600) for /etc/citysense/gateway.env.
        #[arg(long, default_value = "gateway")]
        gateway_user: String,
        /// The password listener, HOST:PORT.
        #[arg(long, default_value = "0.0.0.0:1883")]
        listen: String,
        /// The site CA folder (`nodectl ca init`): adds the TLS listener and copies ca.pem,
        /// broker.pem and broker.key to OUT.
        #[arg(long, value_name = "CA_DIR")]
        ca: Option<PathBuf>,
        /// The TLS listener, HOST:PORT (with --ca).
        #[arg(long, default_value = "0.0.0.0:8883")]
        tls_listen: String,
        /// Where the files will be on the broker's host (the paths in the .conf).
        #[arg(long, default_value = "/etc/mosquitto/citysense")]
        install_dir: String,
    },
    /// The site's certificate authority for the broker's TLS listener.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Decode and check a config block image (the key is shown only by its fingerprint).
    Inspect {
        /// The image (DEVICE.cscb).
        image: PathBuf,
    },
    /// Flash the firmware and the config block with probe-rs (`cargo install probe-rs-tools`).
    Flash {
        /// The firmware ELF.
        #[arg(long)]
        firmware: PathBuf,
        /// The config block image.
        #[arg(long)]
        config: PathBuf,
        /// The chip, as probe-rs names it.
        #[arg(long, default_value = "STM32F407VGTx")]
        chip: String,
        /// Print the commands instead of running them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show the node's first frames from the broker, decoded and verified: is it alive?
    ///
    /// Exits 0 once --count frames verified with the key from --keys, 1 otherwise.
    Listen {
        /// Device id.
        device: String,
        /// The broker, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        /// The gateway's keys file (to verify the frames).
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Stop after this many frames.
        #[arg(long, default_value_t = 3)]
        count: usize,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
        /// Broker user name (password from CITYSENSE_MQTT_PASSWORD).
        #[arg(long)]
        username: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Make the site CA and the broker's certificate: OUT/ca.pem, OUT/ca.key (mode 600; keep
    /// it offline), OUT/broker.pem and OUT/broker.key (mode 600). Refuses to replace an
    /// existing CA: every device certificate it issued would stop working.
    Init {
        /// Where the files go.
        #[arg(long, default_value = "ca")]
        out: PathBuf,
        /// The site's name, in the CA's common name.
        #[arg(long, default_value = "Ganzhou")]
        site_name: String,
        /// A name or IP address the broker is reached by (repeat for several).
        #[arg(long = "broker-host", required = true)]
        broker_hosts: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn broker(s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("broker \"{s}\" must be HOST:PORT"))?;
    let port = port
        .parse()
        .with_context(|| format!("broker port \"{port}\" is not a number"))?;
    Ok((host.to_owned(), port))
}

/// Opens `path` for `options` as a file only its owner reads and writes (mode 600 when it is
/// made, whatever the umask; an existing file is narrowed to 600, and said so): keys, broker
/// passwords, the images that carry a key, the tag salt.
fn open_private(path: &Path, options: &mut std::fs::OpenOptions) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = options
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let mode = f.metadata()?.permissions().mode() & 0o777;
    if mode != 0o600 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private (chmod 600)", path.display()))?;
        eprintln!(
            "{} was readable by others (mode {mode:o}): now 600, owner only",
            path.display()
        );
    }
    Ok(f)
}

/// Writes `bytes` to `path`, made private (see [`open_private`]).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = open_private(
        path,
        std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true),
    )?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Appends `text` to `path` unless `marker` is already in it; a `secret` file is kept private
/// (see [`open_private`]).
fn append_once(
    path: &Path,
    marker: &str,
    (text, secret): (&str, bool),
    what: &str,
) -> anyhow::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    if existing
        .lines()
        .any(|l| l.trim() == marker || l.starts_with(marker))
    {
        bail!(
            "{} already has {what}; remove it first to provision again",
            path.display()
        );
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    let mut f = if secret {
        open_private(path, &mut options)?
    } else {
        options
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?
    };
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn site_salt(out: &Path) -> anyhow::Result<[u8; 16]> {
    let path = out.join("site-salt.hex");
    let hex_salt = match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().to_owned(),
        Err(_) => {
            let mut salt = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt);
            let s = hex::encode(salt);
            write_private(&path, format!("{s}\n").as_bytes())?;
            eprintln!("created the site's tag salt in {}", path.display());
            s
        }
    };
    let bytes = hex::decode(&hex_salt)
        .ok()
        .filter(|b| b.len() == 16)
        .with_context(|| format!("{} must hold 16 bytes in hex", path.display()))?;
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&bytes);
    Ok(salt)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Provision {
            device,
            site,
            profiles,
            key,
            broker: b,
            report_interval_s,
            out,
            keys,
            passwd,
            acl,
            tls,
        } => {
            let catalog = load_catalog(site, profiles)?;
            let (broker_host, broker_port) = broker(&b)?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let p = nodectl::provision(
                &catalog,
                &nodectl::Request {
                    device: device.clone(),
                    key,
                    broker_host,
                    broker_port,
                    password: None,
                    report_interval_s,
                    tag_salt: site_salt(&out)?,
                },
            )?;
            append_once(
                &keys,
                &format!("id = \"{device}\""),
                (&p.keys_entry, true),
                "a key for this device",
            )?;
            append_once(
                &passwd,
                &format!("{device}:"),
                (&p.passwd_line, true),
                "a password for this device",
            )?;
            append_once(
                &acl,
                &format!("user {device}"),
                (&p.acl_block, false),
                "an ACL for this device",
            )?;
            let image = out.join(format!("{device}.cscb"));
            write_private(&image, &p.image)?;
            if let Some(ca_dir) = tls {
                let (cert, key) = (ca_dir.join("ca.pem"), ca_dir.join("ca.key"));
                let issued = nodectl::ca::issue_device(&read(&cert)?, &read(&key)?, &device)
                    .with_context(|| {
                        format!("cannot issue a certificate from {}", ca_dir.display())
                    })?;
                std::fs::write(out.join(format!("{device}.pem")), &issued.cert_pem)?;
                write_private(
                    &out.join(format!("{device}.key")),
                    issued.key_pem.as_bytes(),
                )?;
                println!(
                    "certificate {} and {} (mode 600), from the CA in {}",
                    out.join(format!("{device}.pem")).display(),
                    out.join(format!("{device}.key")).display(),
                    ca_dir.display()
                );
            }
            println!("{}", nodectl::inspect(&p.image)?);
            println!("image       {}", image.display());
            println!("keys file   {} (mode 600, owner only)", keys.display());
            println!(
                "broker      {} (mode 600: chown it to the broker's user) and {} (reload Mosquitto)",
                passwd.display(),
                acl.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::BrokerConfig {
            site,
            profiles,
            keys,
            out,
            gateway_user,
            listen,
            ca,
            tls_listen,
            install_dir,
        } => broker_config(
            &load_catalog(site, profiles)?,
            &keys,
            &out,
            &gateway_user,
            nodectl::broker::Listeners {
                plain: listen,
                tls: ca.as_ref().map(|_| tls_listen),
                install_dir,
            },
            ca.as_deref(),
        ),
        Command::Ca(CaCommand::Init {
            out,
            site_name,
            broker_hosts,
        }) => {
            let ca_key = out.join("ca.key");
            if ca_key.exists() {
                bail!(
                    "{} already holds a CA: a new one would invalidate every certificate it issued (move it away to start over)",
                    out.display()
                );
            }
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let (ca, broker) = nodectl::ca::init(&site_name, &broker_hosts)?;
            write_private(&ca_key, ca.key_pem.as_bytes())?;
            std::fs::write(out.join("ca.pem"), &ca.cert_pem)?;
            write_private(&out.join("broker.key"), broker.key_pem.as_bytes())?;
            std::fs::write(out.join("broker.pem"), &broker.cert_pem)?;
            println!(
                "site CA     {} (key {}, mode 600: keep it offline)",
                out.join("ca.pem").display(),
                ca_key.display()
            );
            println!(
                "broker      {} for {} (key broker.key, mode 600)",
                out.join("broker.pem").display(),
                broker_hosts.join(", ")
            );
            println!(
                "next        nodectl provision --tls {} ...; nodectl broker-config --ca {}",
                out.display(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { image } => {
            let bytes = std::fs::read(&image)
                .with_context(|| format!("cannot read {}", image.display()))?;
            let summary = nodectl::inspect(&bytes)
                .with_context(|| format!("{} is not a valid config block", image.display()))?;
            print!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Flash {
            firmware,
            config,
            chip,
            dry_run,
        } => {
            let bytes = std::fs::read(&config)
                .with_context(|| format!("cannot read {}", config.display()))?;
            nodectl::inspect(&bytes)
                .with_context(|| format!("refusing to flash {}", config.display()))?;
            let commands = nodectl::flash_commands(
                &chip,
                &firmware.display().to_string(),
                &config.display().to_string(),
            )?;
            for c in &commands {
                println!("{}", c.join(" "));
                if dry_run {
                    continue;
                }
                let status = std::process::Command::new(&c[0])
                    .args(&c[1..])
                    .status()
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot run probe-rs ({e}): install it with `cargo install probe-rs-tools`"
                        )
                    })?;
                if !status.success() {
                    bail!(
                        "probe-rs failed ({status}); is the probe connected and the chip powered?"
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Listen {
            device,
            broker: b,
            keys,
            count,
            timeout_s,
            username,
        } => {
            let (host, port) = broker(&b)?;
            let key =
                match &keys {
                    Some(path) => {
                        let keys: std::collections::HashMap<String, wire::DeviceKey> =
                            device_profiles::keys::load(path)?.into_iter().collect();
                        Some(keys.get(&device).cloned().with_context(|| {
                            format!("{} has no key for {device}", path.display())
                        })?)
                    }
                    None => None,
                };
            let credentials = username.map(|u| {
                (
                    u,
                    std::env::var("CITYSENSE_MQTT_PASSWORD").unwrap_or_default(),
                )
            });
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            println!("listening for {device} on {host}:{port} (up to {timeout_s} s)");
            let heard = runtime.block_on(nodectl::listen(
                &host,
                port,
                credentials,
                &device,
                key,
                count,
                Duration::from_secs(timeout_s),
            ))?;
            for h in &heard {
                println!("{}  {}", h.topic, h.line);
            }
            let verified = heard.iter().filter(|h| h.verified).count();
            if verified >= count || (key_less(&keys) && !heard.is_empty()) {
                println!("{device} is alive: {verified} verified frames");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{device}: {verified} of {count} frames verified within {timeout_s} s");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

fn load_catalog(site: Option<PathBuf>, profiles: Option<PathBuf>) -> anyhow::Result<Catalog> {
    Ok(match (site, profiles) {
        (Some(site), Some(profiles)) => Catalog::load(&profiles, &site)?,
        _ => Catalog::ganzhou()?,
    })
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `nodectl broker-config`: writes the broker's files into `out`.
fn broker_config(
    catalog: &Catalog,
    keys: &Path,
    out: &Path,
    gateway_user: &str,
    listeners: nodectl::broker::Listeners,
    ca: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let keys = device_profiles::keys::load(keys)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let passwd_path = out.join("citysense.passwd");
    // Users of the old file that are not the gateway or devices of the site: set by hand.
    let kept: Vec<String> = std::fs::read_to_string(&passwd_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split_once(':').is_some_and(|(user, _)| {
                user != gateway_user && catalog.site.device(user).is_none()
            })
        })
        .map(str::to_owned)
        .collect();
    let password = match std::env::var("CITYSENSE_MQTT_PASSWORD") {
        Ok(p) if !p.is_empty() => p,
        _ => {
            let mut p = [0u8; 18];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut p);
            let p = hex::encode(p);
            let env = out.join("gateway.env");
            write_private(&env, format!("CITYSENSE_MQTT_PASSWORD={p}\n").as_bytes())?;
            println!(
                "gateway     password generated into {} (for /etc/citysense/gateway.env)",
                env.display()
            );
            p
        }
    };
    let files = nodectl::broker::broker_config(
        catalog,
        &keys,
        &nodectl::broker::GatewayUser {
            name: gateway_user,
            password: &password,
        },
        &listeners,
        &kept,
    );
    write_private(&passwd_path, files.passwd.as_bytes())?;
    std::fs::write(out.join("citysense.acl"), &files.acl)?;
    std::fs::write(out.join("citysense-listeners.conf"), &files.conf)?;
    if let Some(ca) = ca {
        std::fs::copy(ca.join("ca.pem"), out.join("ca.pem"))
            .with_context(|| format!("cannot copy {}", ca.join("ca.pem").display()))?;
        std::fs::copy(ca.join("broker.pem"), out.join("broker.pem"))
            .with_context(|| format!("cannot copy {}", ca.join("broker.pem").display()))?;
        write_private(
            &out.join("broker.key"),
            read(&ca.join("broker.key"))?.as_bytes(),
        )?;
    }
    println!(
        "acl         {} devices, each on its own topics, and the gateway ({gateway_user})",
        files.devices
    );
    println!(
        "passwords   {} devices with a key, {} kept from the old file",
        files.devices - files.without_key.len(),
        kept.len()
    );
    if !files.without_key.is_empty() {
        println!(
            "no key      {} (JSON devices or not provisioned yet): set their passwords with mosquitto_passwd; they are kept the next time",
            files.without_key.join(", ")
        );
    }
    println!(
        "files       {} (install them in {}; the passwd file and broker.key owned by mosquitto, mode 600)",
        out.display(),
        listeners.install_dir
    );
    Ok(ExitCode::SUCCESS)
}

fn key_less(keys: &Option<PathBuf>) -> bool {
    keys.is_none()
}
