//! The broker's side of a site: Mosquitto's password file, its ACL and its listeners, all from
//! the site file and the gateway's keys file (`nodectl broker-config`).
//!
//! A node's broker password is derived from its device key ([`device_password`]), so the
//! password file can be written again from the keys file at any time and always matches the
//! config blocks `nodectl provision` wrote.

use std::fmt::Write as _;

use device_profiles::{Catalog, Encoding};
use hmac::{Hmac, Mac};
use wire::DeviceKey;

use crate::mosquitto_hash;

/// The MQTT password of the node holding `key`: 32 hex digits of HMAC-SHA256 over a fixed label.
/// Whoever has the key can compute it, and nobody else: the gateway's keys file is the one
/// secret to keep.
pub fn device_password(key: &DeviceKey) -> String {
    let mut mac = match <Hmac<sha2::Sha256> as Mac>::new_from_slice(key.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 accepts every key length"),
    };
    mac.update(b"citysense/mqtt-password/v1");
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// Where the broker listens and where its files will be.
#[derive(Debug, Clone)]
pub struct Listeners {
    /// The password listener, `HOST:PORT` (nodes without TLS, and the gateway).
    pub plain: String,
    /// The TLS listener, `HOST:PORT`, when the site has a CA: clients must show a certificate
    /// the site CA issued, and its common name is their user name for the ACL.
    pub tls: Option<String>,
    /// The folder the files are installed in on the broker's host (paths in the config).
    pub install_dir: String,
}

/// The files of `nodectl broker-config`.
#[derive(Debug, Clone)]
pub struct BrokerFiles {
    /// `citysense.passwd`: the gateway and every device with a key.
    pub passwd: String,
    /// `citysense.acl`: the gateway's block and one block per MQTT device.
    pub acl: String,
    /// `citysense-listeners.conf`: listeners, authentication, TLS.
    pub conf: String,
    /// Devices that talk MQTT but have no key (JSON devices, unprovisioned nodes): their ACL
    /// block is written; their password is set by hand.
    pub without_key: Vec<String>,
    /// MQTT devices in the ACL.
    pub devices: usize,
}

/// The gateway's account on the broker.
#[derive(Debug, Clone)]
pub struct GatewayUser<'a> {
    /// User name (and certificate common name over TLS).
    pub name: &'a str,
    /// Its password.
    pub password: &'a str,
}

/// The broker files for every MQTT device of `catalog`, with the passwords of those in `keys`.
/// `kept` are password lines to carry over (users set by hand, not devices of the site).
pub fn broker_config(
    catalog: &Catalog,
    keys: &[(String, DeviceKey)],
    gateway: &GatewayUser<'_>,
    listeners: &Listeners,
    kept: &[String],
) -> BrokerFiles {
    let mut acl = String::from(
        "# Written by `nodectl broker-config` from the site file: each device may publish only\n\
         # to its own up and status topics and read only its own down topic.\n",
    );
    let _ = write!(
        acl,
        "\n# The gateway reads every device's reports and status, sends downlinks, and publishes\n\
         # alerts, aggregates and dead letters.\nuser {}\n\
         topic read cs/v1/+/+/+/up\ntopic read cs/v1/+/+/+/status\ntopic write cs/v1/+/+/+/down\n\
         topic readwrite cs/v1/alerts/#\ntopic readwrite cs/v1/agg/#\ntopic readwrite cs/v1/dlq/#\n",
        gateway.name
    );
    let mut passwd = format!("{}:{}\n", gateway.name, mosquitto_hash(gateway.password));
    let mut without_key = Vec::new();
    let mut devices = 0;
    for device in &catalog.site.devices {
        let Some(profile) = catalog.profiles.get(&device.profile) else {
            continue;
        };
        if profile.encoding == Encoding::Modbus {
            continue; // polled by the gateway, never on the broker
        }
        devices += 1;
        let base = format!("cs/v1/{}/{}/{}", device.zone, profile.kind, device.id);
        let _ = write!(
            acl,
            "\nuser {id}\ntopic write {base}/up\ntopic write {base}/status\ntopic read {base}/down\n",
            id = device.id
        );
        match keys.iter().find(|(id, _)| *id == device.id) {
            Some((_, key)) => {
                let _ = writeln!(
                    passwd,
                    "{}:{}",
                    device.id,
                    mosquitto_hash(&device_password(key))
                );
            }
            None => without_key.push(device.id.clone()),
        }
    }
    for line in kept {
        let _ = writeln!(passwd, "{line}");
    }
    BrokerFiles {
        passwd,
        acl,
        conf: listeners_conf(listeners),
        without_key,
        devices,
    }
}

/// The Mosquitto 2 listener and authentication section.
fn listeners_conf(l: &Listeners) -> String {
    let dir = l.install_dir.trim_end_matches('/');
    let mut conf = String::from(
        "# Written by `nodectl broker-config`: listeners and authentication for CitySense.\n\
         # Tuning (persistence, queues, nodelay) is in deploy/mosquitto/citysense.conf.\n\
         per_listener_settings false\nallow_anonymous false\n",
    );
    let _ = write!(
        conf,
        "password_file {dir}/citysense.passwd\nacl_file {dir}/citysense.acl\n\n\
         # Nodes and the gateway with their user name and password.\nlistener {}\n",
        port_and_address(&l.plain)
    );
    if let Some(tls) = &l.tls {
        let _ = write!(
            conf,
            "\n# Nodes with a certificate from the site CA (`nodectl provision --tls`); the\n\
             # certificate's common name is the user name the ACL applies to.\nlistener {}\n\
             cafile {dir}/ca.pem\ncertfile {dir}/broker.pem\nkeyfile {dir}/broker.key\n\
             require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n",
            port_and_address(tls)
        );
    }
    conf
}

/// `HOST:PORT` as Mosquitto's `listener PORT HOST`.
fn port_and_address(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && host != "0.0.0.0" => format!("{port} {host}"),
        Some((_, port)) => port.to_owned(),
        None => addr.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mqtt_device_gets_its_own_topics_and_modbus_devices_none() {
        let catalog = Catalog::ganzhou().unwrap();
        let keys = vec![("gz-p1-press".to_owned(), DeviceKey::from_bytes([7; 32]))];
        let files = broker_config(
            &catalog,
            &keys,
            &GatewayUser {
                name: "gateway",
                password: "pw",
            },
            &Listeners {
                plain: "0.0.0.0:1883".into(),
                tls: Some("10.0.0.1:8883".into()),
                install_dir: "/etc/mosquitto/citysense/".into(),
            },
            &["hand:$7$x".to_owned()],
        );
        assert!(files.acl.contains(
            "\nuser gz-p1-press\ntopic write cs/v1/360702/water-pressure/gz-p1-press/up\n"
        ));
        let modbus: Vec<&str> = catalog
            .site
            .devices
            .iter()
            .filter(|d| catalog.profiles[&d.profile].encoding == Encoding::Modbus)
            .map(|d| d.id.as_str())
            .collect();
        assert!(!modbus.is_empty());
        for id in modbus {
            assert!(!files.acl.contains(&format!("user {id}\n")), "{id}");
        }
        assert!(files.passwd.starts_with("gateway:$7$101$"));
        assert!(files.passwd.contains("\ngz-p1-press:$7$"));
        assert!(files.passwd.ends_with("hand:$7$x\n"));
        assert_eq!(files.without_key.len(), files.devices - 1);
        assert!(files.conf.contains("listener 1883\n"));
        assert!(
            files
                .conf
                .contains("listener 8883 10.0.0.1\ncafile /etc/mosquitto/citysense/ca.pem\n")
        );
        assert!(files.conf.contains("use_identity_as_username true"));
    }

    #[test]
    fn the_password_follows_from_the_key_alone() {
        let a = device_password(&DeviceKey::from_bytes([1; 32]));
        assert_eq!(a, device_password(&DeviceKey::from_bytes([1; 32])));
        assert_ne!(a, device_password(&DeviceKey::from_bytes([2; 32])));
        assert_eq!(a.len(), 32);
    }
}
