//! `nodectl`: what a field engineer does with a CitySense node.
//!
//! - [`provision`]: from the site file and a device id, a key (generated or imported), the
//!   config block image the node reads at boot, and the lines for the gateway's keys file and
//!   Mosquitto's password and ACL files.
//! - [`inspect`]: decode and check a config block image.
//! - [`flash_commands`]: the `probe-rs download` commands for the firmware and the config block.
//! - [`listen`]: the node's first frames from the broker, decoded and verified: "is my node
//!   alive".
//! - [`broker`]: Mosquitto's password file, ACL and listeners for the whole site.
//! - [`ca`]: the site's certificate authority, the broker's and each device's certificate.

pub mod broker;
pub mod ca;

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use device_profiles::{Catalog, Encoding};
use node::config::{BLOCK_LEN, Config, GateRole, Role};
use rand::RngCore;
use wire::DeviceKey;

/// Where the config block goes on the supported chips (its own flash sector, which the
/// firmware only reads).
pub fn config_address(chip: &str) -> Option<u32> {
    let chip = chip.to_ascii_uppercase();
    if chip.starts_with("STM32F407") || chip.starts_with("STM32F405") {
        Some(0x080E_0000) // sector 11 (128 KiB), the last of 1 MiB parts
    } else if chip.starts_with("STM32F411") {
        Some(0x0806_0000) // sector 7 (128 KiB), the last of 512 KiB parts
    } else {
        None
    }
}

/// What `provision` is asked for.
#[derive(Debug, Clone)]
pub struct Request {
    /// Device id from the site file.
    pub device: String,
    /// A key to import (64 hex digits); generated when absent.
    pub key: Option<String>,
    /// Broker host as the node sees it.
    pub broker_host: String,
    /// Broker port.
    pub broker_port: u16,
    /// Broker password; derived from the key when absent ([`broker::device_password`]), so
    /// `nodectl broker-config` can write the password file again from the keys file.
    pub password: Option<String>,
    /// Report interval; the profile's when absent.
    pub report_interval_s: Option<u32>,
    /// The site's tag salt (gates of one site share it).
    pub tag_salt: [u8; 16],
}

/// Everything provisioning produced.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The config.
    pub config: Config,
    /// The config block image.
    pub image: [u8; BLOCK_LEN],
    /// The key, hex.
    pub key_hex: String,
    /// The broker password (show once, store in the node's block only).
    pub password: String,
    /// `[[device]]` entry for the gateway's keys file.
    pub keys_entry: String,
    /// A line for Mosquitto's password file.
    pub passwd_line: String,
    /// A block for Mosquitto's ACL file.
    pub acl_block: String,
}

/// Parses a 32-byte key in hex, naming what is wrong.
pub fn parse_key(hex_key: &str) -> anyhow::Result<[u8; 32]> {
    let hex_key = hex_key.trim();
    ensure!(
        hex_key.len() == 64,
        "a key is 32 bytes, 64 hex digits; this one has {} characters",
        hex_key.len()
    );
    let bytes = hex::decode(hex_key).context("a key is 64 hex digits (0-9, a-f)")?;
    let mut key = [0u8; 32];
    key.copy_from_slice(&bytes);
    Ok(key)
}

fn suggest(catalog: &Catalog, device: &str) -> String {
    let prefix: String = device.chars().take(5).collect();
    let near: Vec<&str> = catalog
        .site
        .devices
        .iter()
        .map(|d| d.id.as_str())
        .filter(|id| id.starts_with(&prefix))
        .take(6)
        .collect();
    if near.is_empty() {
        String::new()
    } else {
        format!(" (did you mean one of {}?)", near.join(", "))
    }
}

/// `s` as a bounded string of the config block, or an error naming the field.
fn text<const N: usize>(s: &str, what: &str) -> anyhow::Result<heapless::String<N>> {
    heapless::String::try_from(s)
        .map_err(|_| anyhow::anyhow!("{what} \"{s}\" is longer than the config block's {N} bytes"))
}

/// Provisions one device of the site.
pub fn provision(catalog: &Catalog, req: &Request) -> anyhow::Result<Provisioned> {
    let site = &catalog.site;
    let Some(device) = site.device(&req.device) else {
        bail!(
            "device \"{}\" is not in site {}{}",
            req.device,
            site.site.id,
            suggest(catalog, &req.device)
        );
    };
    let profile = catalog
        .profiles
        .get(&device.profile)
        .with_context(|| format!("profile {} of {} is missing", device.profile, device.id))?;
    ensure!(
        profile.encoding == Encoding::Wire,
        "device {} uses the {} profile ({:?} encoding): it does not run CitySense firmware, so there is nothing to provision; give it broker credentials and an ACL by hand",
        device.id,
        profile.kind,
        profile.encoding
    );
    let key = match &req.key {
        Some(k) => parse_key(k)?,
        None => {
            let mut k = [0u8; 32];
            rand::rng().fill_bytes(&mut k);
            k
        }
    };
    let password = req
        .password
        .clone()
        .unwrap_or_else(|| broker::device_password(&DeviceKey::from_bytes(key)));
    ensure!(
        !password.is_empty() && password.len() <= 64,
        "the broker password must be 1–64 characters"
    );
    let role = if let Some(g) = site.gates.iter().find(|g| g.device == device.id) {
        use device_profiles::site::GateDirection;
        Role::Gate {
            direction: match g.direction {
                GateDirection::Entry => GateRole::Entry,
                GateDirection::Exit => GateRole::Exit,
                GateDirection::Both => GateRole::Both,
            },
        }
    } else if let Some(d) = site
        .road_segments
        .iter()
        .flat_map(|r| &r.detectors)
        .find(|d| d.device == device.id)
    {
        Role::Traffic {
            lanes: d.lanes.iter().copied().take(8).collect(),
            spacing_mm: d.spacing_m.map_or(0, |m| (m * 1000.0).round() as u32),
        }
    } else {
        Role::Pipe
    };
    let config = Config {
        device_id: text(&device.id, "device id")?,
        zone: text(&device.zone, "zone")?,
        kind: text(&profile.kind, "kind")?,
        key,
        broker_host: text(&req.broker_host, "broker host")?,
        broker_port: req.broker_port,
        broker_password: text(&password, "password")?,
        report_interval_s: req.report_interval_s.unwrap_or(profile.report_interval_s),
        status_interval_s: 3600,
        tag_salt: req.tag_salt,
        role,
    };
    let mut image = [0u8; BLOCK_LEN];
    config
        .encode(&mut image)
        .map_err(|e| anyhow::anyhow!("cannot build the config block: {}", e.reason()))?;
    let key_hex = hex::encode(key);
    let fingerprint = hex::encode(DeviceKey::from_bytes(key).fingerprint().0);
    let keys_entry = format!(
        "\n[[device]]\nid = \"{}\"\nkey = \"{key_hex}\"  # fingerprint {fingerprint}\n",
        device.id
    );
    let passwd_line = format!("{}:{}\n", device.id, mosquitto_hash(&password));
    let base = format!("cs/v1/{}/{}/{}", device.zone, profile.kind, device.id);
    let acl_block = format!(
        "\nuser {id}\ntopic write {base}/up\ntopic write {base}/status\ntopic read {base}/down\n",
        id = device.id
    );
    Ok(Provisioned {
        config,
        image,
        key_hex,
        password,
        keys_entry,
        passwd_line,
        acl_block,
    })
}

/// A Mosquitto password-file hash (`$7$`: PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt),
/// as `mosquitto_passwd` writes it.
pub fn mosquitto_hash(password: &str) -> String {
    let mut salt = [0u8; 12];
    rand::rng().fill_bytes(&mut salt);
    mosquitto_hash_with(password, &salt, 101)
}

fn mosquitto_hash_with(password: &str, salt: &[u8], iterations: u32) -> String {
    use base64::Engine as _;
    let mut hash = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), salt, iterations, &mut hash);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!("$7${iterations}${}${}", b64.encode(salt), b64.encode(hash))
}

/// Decodes and checks a config block image; a readable summary (the key shown only by its
/// fingerprint).
pub fn inspect(image: &[u8]) -> anyhow::Result<String> {
    ensure!(
        image.len() == BLOCK_LEN,
        "a config block image is {BLOCK_LEN} bytes; this file has {}",
        image.len()
    );
    let c = Config::decode(image).map_err(|e| anyhow::anyhow!("{}", e.reason()))?;
    let mut out = String::new();
    let fp = hex::encode(c.device_key().fingerprint().0);
    let _ = writeln!(out, "device      {}", c.device_id);
    let _ = writeln!(out, "zone        {}", c.zone);
    let _ = writeln!(out, "kind        {}", c.kind);
    let _ = writeln!(out, "role        {:?}", c.role);
    let _ = writeln!(out, "broker      {}:{}", c.broker_host, c.broker_port);
    let _ = writeln!(
        out,
        "intervals   report {} s, status {} s",
        c.report_interval_s, c.status_interval_s
    );
    let _ = writeln!(out, "key         fingerprint {fp}");
    let _ = writeln!(
        out,
        "topics      {} (down: {})",
        c.topic(node::config::Stream::Up),
        c.topic(node::config::Stream::Down)
    );
    let _ = writeln!(out, "block       ok (layout 1, CRC matches)");
    Ok(out)
}

/// The `probe-rs` commands that flash the firmware and then the config block.
pub fn flash_commands(
    chip: &str,
    firmware: &str,
    config_image: &str,
) -> anyhow::Result<Vec<Vec<String>>> {
    let Some(address) = config_address(chip) else {
        bail!(
            "no config-block address known for chip {chip}: supported are STM32F405/F407 (0x080E0000) and STM32F411 (0x08060000)"
        );
    };
    Ok(vec![
        vec![
            "probe-rs".into(),
            "download".into(),
            "--chip".into(),
            chip.into(),
            firmware.into(),
        ],
        vec![
            "probe-rs".into(),
            "download".into(),
            "--chip".into(),
            chip.into(),
            "--binary-format".into(),
            "bin".into(),
            "--base-address".into(),
            format!("{address:#010x}"),
            config_image.into(),
        ],
    ])
}

/// One frame heard from the node.
#[derive(Debug, Clone)]
pub struct Heard {
    /// The topic it came on.
    pub topic: String,
    /// One line for the engineer.
    pub line: String,
    /// Whether it verified with the node's key.
    pub verified: bool,
}

/// Subscribes to the node's topics and returns what it heard: up to `count` frames, or what
/// came within `wait`.
pub async fn listen(
    broker_host: &str,
    broker_port: u16,
    credentials: Option<(String, String)>,
    device: &str,
    key: Option<DeviceKey>,
    count: usize,
    wait: Duration,
) -> anyhow::Result<Vec<Heard>> {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
    let mut o = MqttOptions::new(
        format!("nodectl-{}-{}", device, std::process::id()),
        broker_host,
        broker_port,
    );
    o.set_keep_alive(Duration::from_secs(10));
    if let Some((u, p)) = credentials {
        o.set_credentials(u, p);
    }
    let (client, mut eventloop) = AsyncClient::new(o, 100);
    client
        .subscribe(format!("cs/v1/+/+/{device}/+"), QoS::AtLeastOnce)
        .await?;
    let mut heard = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while heard.len() < count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, eventloop.poll()).await {
            Err(_) => break,
            Ok(Err(e)) => bail!("broker {broker_host}:{broker_port}: {e}"),
            Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                heard.push(describe(&topic, &p.payload, key.as_ref()));
            }
            Ok(Ok(_)) => {}
        }
    }
    Ok(heard)
}

/// One line about one message from the node.
pub fn describe(topic: &str, payload: &[u8], key: Option<&DeviceKey>) -> Heard {
    if topic.ends_with("/status") {
        return Heard {
            topic: topic.into(),
            line: format!("status  {}", String::from_utf8_lossy(payload)),
            verified: false,
        };
    }
    let frame = match wire::Frame::new_checked(payload) {
        Ok(f) => f,
        Err(e) => {
            return Heard {
                topic: topic.into(),
                line: format!("NOT A FRAME ({}): {} bytes", e.reason(), payload.len()),
                verified: false,
            };
        }
    };
    let head = format!(
        "epoch {} seq {} {:?}",
        frame.boot_epoch(),
        frame.sequence(),
        frame.timestamp()
    );
    let Some(key) = key else {
        return Heard {
            topic: topic.into(),
            line: format!("{head}  (no key given: not verified)"),
            verified: false,
        };
    };
    match frame.verify(key).and_then(|v| v.decode()) {
        Ok(m) => Heard {
            topic: topic.into(),
            line: format!("{head}  verified  {:?}", m.body),
            verified: true,
        },
        Err(e) => Heard {
            topic: topic.into(),
            line: format!(
                "{head}  REFUSED: {} (wrong key in the keys file, or a forged frame)",
                e.reason()
            ),
            verified: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(device: &str) -> Request {
        Request {
            device: device.into(),
            key: None,
            broker_host: "10.20.0.5".into(),
            broker_port: 1883,
            password: None,
            report_interval_s: None,
            tag_salt: [5; 16],
        }
    }

    #[test]
    fn a_gate_a_detector_and_a_pipe_sensor_get_their_roles() {
        let catalog = Catalog::ganzhou().unwrap();
        let gate = provision(&catalog, &request("gz-s4-g3")).unwrap();
        assert_eq!(
            gate.config.role,
            Role::Gate {
                direction: GateRole::Exit
            }
        );
        let detector = provision(&catalog, &request("gz-r1-d1")).unwrap();
        assert!(
            matches!(detector.config.role, Role::Traffic { ref lanes, .. } if lanes.len() == 4)
        );
        let pipe = provision(&catalog, &request("gz-p1-press")).unwrap();
        assert_eq!(pipe.config.role, Role::Pipe);
        assert_eq!(Config::decode(&pipe.image).unwrap(), pipe.config);
        assert!(
            inspect(&pipe.image)
                .unwrap()
                .contains("device      gz-p1-press")
        );
        assert!(
            pipe.acl_block
                .contains("topic write cs/v1/360702/water-pressure/gz-p1-press/up")
        );
    }

    #[test]
    fn wrong_inputs_are_named() {
        let catalog = Catalog::ganzhou().unwrap();
        let e = provision(&catalog, &request("gz-s4-g9"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("device \"gz-s4-g9\" is not in site"), "{e}");
        assert!(e.contains("did you mean one of gz-s4-g1"), "{e}");
        let mut short = request("gz-p1-press");
        short.key = Some("abcd".into());
        let e = provision(&catalog, &short).unwrap_err().to_string();
        assert_eq!(
            e,
            "a key is 32 bytes, 64 hex digits; this one has 4 characters"
        );
        let e = provision(&catalog, &request("gz-m9-cover"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not run CitySense firmware"), "{e}");
        let mut image = provision(&catalog, &request("gz-p1-press")).unwrap().image;
        image[40] ^= 0xFF;
        assert_eq!(
            inspect(&image).unwrap_err().to_string(),
            "CRC mismatch: corrupt or half-written block"
        );
        assert_eq!(
            inspect(&image[..100]).unwrap_err().to_string(),
            "a config block image is 512 bytes; this file has 100"
        );
        assert!(flash_commands("nRF52840", "fw.elf", "c.bin").is_err());
    }

    #[test]
    fn the_keys_entry_is_read_by_the_gateway() {
        let catalog = Catalog::ganzhou().unwrap();
        let mut req = request("gz-t1-gas");
        req.key = Some("00".repeat(31) + "ff");
        let p = provision(&catalog, &req).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, format!("# CitySense device keys\n{}", p.keys_entry)).unwrap();
        let keys = gateway::keys::Keys::load(&path).unwrap();
        assert_eq!(keys.get("gz-t1-gas").unwrap().as_bytes()[31], 0xff);
    }

    #[test]
    fn the_mosquitto_hash_matches_the_pbkdf2_format() {
        // `$7$`, iterations, 12-byte salt and 64-byte SHA-512 output, standard base64.
        let h = mosquitto_hash_with("secret", &[0u8; 12], 101);
        let parts: Vec<&str> = h.split('$').collect();
        assert_eq!(parts[..3], ["", "7", "101"]);
        assert_eq!(parts[3], "AAAAAAAAAAAAAAAA");
        assert_eq!(parts[4].len(), 88);
    }

    #[test]
    fn flashing_writes_the_firmware_then_the_config_sector() {
        let c = flash_commands("STM32F407VGTx", "node.elf", "gz-p1-press.cscb").unwrap();
        assert_eq!(
            c[0].join(" "),
            "probe-rs download --chip STM32F407VGTx node.elf"
        );
        assert_eq!(
            c[1].join(" "),
            "probe-rs download --chip STM32F407VGTx --binary-format bin --base-address 0x080e0000 gz-p1-press.cscb"
        );
    }
}
