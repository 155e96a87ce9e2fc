//! The keys file: which key each device signs its frames with.
//!
//! Written by `nodectl provision` (one entry appended per device) and read by the gateway at
//! start. Keep it readable by the gateway's user only (mode 0600); the gateway warns otherwise.
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

use device_profiles::file::{LoadError, TomlFile};
use rustc_hash::FxHashMap;
use serde::Deserialize;
use wire::{DeviceKey, PreparedKey};

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

/// Device keys by device id, each also prepared for verifying frames.
#[derive(Debug, Default, Clone)]
pub struct Keys(FxHashMap<Box<str>, (DeviceKey, PreparedKey)>);

impl Keys {
    /// The demo keys of every wire device of `catalog` ([`device_profiles::demo`]): for
    /// `gateway demo`, rehearsals and tests on loopback, never for a deployment.
    pub fn demo(catalog: &device_profiles::Catalog) -> Keys {
        let mut keys = Keys::default();
        for (device, key) in device_profiles::demo::keys(catalog) {
            keys.insert(device, key);
        }
        keys
    }

    /// Reads and checks a keys file.
    pub fn load(path: &Path) -> Result<Keys, LoadError> {
        let file = TomlFile::read(path)?;
        let keys = Self::parse(&file)?;
        warn_if_readable_by_others(path);
        Ok(keys)
    }

    /// Parses keys file text (for tests and `nodectl`).
    pub fn from_text(name: &Path, text: &str) -> Result<Keys, LoadError> {
        Self::parse(&TomlFile::from_text(name, text.to_owned()))
    }

    fn parse(file: &TomlFile) -> Result<Keys, LoadError> {
        let parsed: KeysFile = file.parse().map_err(|p| LoadError::Invalid(vec![p]))?;
        let mut problems = Vec::new();
        let mut keys = Keys::default();
        for (i, e) in parsed.devices.into_iter().enumerate() {
            match parse_key(&e.key) {
                Err(reason) => problems.push(file.problem(
                    &format!("device[{i}].key"),
                    format!("device \"{}\": {reason}", e.id),
                )),
                Ok(key) => {
                    if keys.insert(&e.id, key).is_some() {
                        problems.push(file.problem(
                            &format!("device[{i}].id"),
                            format!("device \"{}\" has a second key entry", e.id),
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(keys)
        } else {
            Err(LoadError::Invalid(problems))
        }
    }

    /// The key of a device.
    pub fn get(&self, device: &str) -> Option<&DeviceKey> {
        self.0.get(device).map(|(key, _)| key)
    }

    /// The key of a device, prepared for verifying its frames.
    pub fn prepared(&self, device: &str) -> Option<&PreparedKey> {
        self.0.get(device).map(|(_, prepared)| prepared)
    }

    /// Adds or replaces a key (key rotation, demo); the key it replaced, if any.
    pub fn insert(&mut self, device: &str, key: DeviceKey) -> Option<DeviceKey> {
        let prepared = key.prepare();
        self.0
            .insert(device.into(), (key, prepared))
            .map(|(old, _)| old)
    }

    /// How many devices have keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no device has a key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "keys file is readable by other users; chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_written_by_entry_parse_back() {
        let key = DeviceKey::from_bytes([9; 32]);
        let text = format!(
            "# keys{}{}",
            entry("a", &key),
            entry("b", &DeviceKey::from_bytes([1; 32]))
        );
        let keys = Keys::from_text(Path::new("keys.toml"), &text).unwrap();
        assert_eq!(keys.get("a"), Some(&key));
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn a_short_key_is_refused_with_its_line() {
        let err = Keys::from_text(
            Path::new("keys.toml"),
            "[[device]]\nid = \"a\"\nkey = \"0011\"\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "keys.toml:3:1: device \"a\": key must be 32 bytes (64 hex digits), not 2 bytes"
        );
    }

    #[test]
    fn a_second_entry_for_one_device_is_refused() {
        let k = DeviceKey::from_bytes([1; 32]);
        let text = format!("{}{}", entry("a", &k), entry("a", &k));
        let err = Keys::from_text(Path::new("k.toml"), &text).unwrap_err();
        assert!(err.to_string().contains("second key entry"), "{err}");
    }
}
