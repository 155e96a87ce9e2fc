//! The device keys the gateway verifies frames with: the keys file ([`device_profiles::keys`],
//! written by `nodectl provision`), each key prepared once for verifying. Keep the file readable
//! by the gateway's user only (mode 0600); the gateway warns otherwise.
//!

use std::path::Path;

use device_profiles::file::LoadError;
use rustc_hash::FxHashMap;
use wire::{DeviceKey, PreparedKey};

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

    /// Reads and checks a keys file ([`device_profiles::keys`]).
    pub fn load(path: &Path) -> Result<Keys, LoadError> {
        let keys = Self::from_entries(device_profiles::keys::load(path)?);
        warn_if_readable_by_others(path);
        Ok(keys)
    }

    /// Parses keys file text (for tests and `nodectl`).
    pub fn from_text(name: &Path, text: &str) -> Result<Keys, LoadError> {
        Ok(Self::from_entries(device_profiles::keys::from_text(
            name, text,
        )?))
    }

    fn from_entries(entries: Vec<(String, DeviceKey)>) -> Keys {
        let mut keys = Keys::default();
        for (id, key) in entries {
            keys.insert(&id, key);
        }
        keys
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
    use device_profiles::keys::entry;

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
