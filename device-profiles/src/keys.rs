//! The keys file: which key each device signs its frames with.
//!
//! Written by `nodectl provision` (one [`entry`] appended per device) and read by the gateway
//! at start and by `simulator run --keys`. Keep it readable by its owner only (mode 0600).
//!
//! ```toml
//! # CitySense device keys.
//! [[device]]
//! id = "gz-s4-g1"
//! key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"  # 32 bytes, hex
//! ```
//!
//! A device may appear once. Devices with third-party JSON profiles have no key: the broker's
//! per-device credentials and ACLs authenticate them.

use std::path::Path;

use serde::Deserialize;
use wire::DeviceKey;

use crate::file::{LoadError, TomlFile};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default, rename = "device")]
    devices: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    /// The device id, as in the site file.
    id: String,
    /// 32 bytes, hex.
    key: String,
}

/// Reads and checks a keys file: every device with its key, in the file's order.
pub fn load(path: &Path) -> Result<Vec<(String, DeviceKey)>, LoadError> {
    parse(&TomlFile::read(path)?)
}

/// Parses keys file text (for tests and `nodectl`); `name` names it in problems.
pub fn from_text(name: &Path, text: &str) -> Result<Vec<(String, DeviceKey)>, LoadError> {
    parse(&TomlFile::from_text(name, text.to_owned()))
}

fn parse(file: &TomlFile) -> Result<Vec<(String, DeviceKey)>, LoadError> {
    let parsed: KeysFile = file.parse().map_err(|p| LoadError::Invalid(vec![p]))?;
    let mut problems = Vec::new();
    let mut keys: Vec<(String, DeviceKey)> = Vec::new();
    for (i, e) in parsed.devices.into_iter().enumerate() {
        match parse_key(&e.key) {
            Err(reason) => problems.push(file.problem(
                &format!("device[{i}].key"),
                format!("device \"{}\": {reason}", e.id),
            )),
            Ok(_) if keys.iter().any(|(id, _)| *id == e.id) => problems.push(file.problem(
                &format!("device[{i}].id"),
                format!("device \"{}\" has a second key entry", e.id),
            )),
            Ok(key) => keys.push((e.id, key)),
        }
    }
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(LoadError::Invalid(problems))
    }
}

/// Parses 64 hex digits into a key.
pub fn parse_key(hex_key: &str) -> Result<DeviceKey, String> {
    let bytes = hex::decode(hex_key.trim()).map_err(|e| format!("key is not hex ({e})"))?;
    let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "key must be 32 bytes (64 hex digits), not {} bytes",
            bytes.len()
        )
    })?;
    Ok(DeviceKey::from_bytes(arr))
}

/// One keys-file entry, as `nodectl provision` appends it.
pub fn entry(device: &str, key: &DeviceKey) -> String {
    format!(
        "\n[[device]]\nid = \"{device}\"\nkey = \"{}\"\n",
        hex::encode(key.as_bytes())
    )
}
