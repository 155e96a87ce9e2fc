//! The device keys the gateway verifies frames with: the keys file ([`device_profiles::keys`],
//! written by `nodectl provision`), each key prepared once for verifying. Keep the file readable
//! by the gateway's user only (mode 0600); the gateway warns otherwise.
//!
//! A device whose key is being rotated has two: the one it signs with now and the one it was
//! sent ([`Keys::next`]); frames under either verify until the node acknowledges the new one
//! ([`Keys::promote`]).

use std::path::Path;

use device_profiles::file::LoadError;
use device_profiles::keys::Entry;
use rustc_hash::FxHashMap;
use wire::{DeviceKey, PreparedKey};

/// What the verifier learned about a rotation under way: the rotation service's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyNews {
    /// A node answered a downlink (its acknowledgement is signed with its old key).
    Answered {
        /// The device.
        device: Box<str>,
        /// The downlink's sequence number.
        sequence: u32,
        /// Applied, or why not.
        outcome: wire::AckOutcome,
    },
    /// A frame verified only with the key the device is being sent: the node uses it (its
    /// acknowledgement was lost).
    SignsWithNext {
        /// The device.
        device: Box<str>,
    },
}

/// A device's key, its number on the node, and the key it is being sent.
#[derive(Debug, Clone)]
struct Slot {
    key: DeviceKey,
    prepared: PreparedKey,
    key_id: u16,
    next: Option<(u16, DeviceKey, PreparedKey)>,
}

/// Device keys by device id, each also prepared for verifying frames.
#[derive(Debug, Default, Clone)]
pub struct Keys(FxHashMap<Box<str>, Slot>);

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
        let keys = Self::from_entries(device_profiles::keys::load_entries(path)?);
        warn_if_readable_by_others(path);
        Ok(keys)
    }

    /// Parses keys file text (for tests and `nodectl`).
    pub fn from_text(name: &Path, text: &str) -> Result<Keys, LoadError> {
        Ok(Self::from_entries(
            device_profiles::keys::entries_from_text(name, text)?,
        ))
    }

    fn from_entries(entries: Vec<Entry>) -> Keys {
        let mut keys = Keys::default();
        for e in entries {
            let prepared = e.key.prepare();
            keys.0.insert(
                e.id.into(),
                Slot {
                    prepared,
                    key: e.key,
                    key_id: e.key_id,
                    next: e.next.map(|(id, k)| {
                        let p = k.prepare();
                        (id, k, p)
                    }),
                },
            );
        }
        keys
    }

    /// Every device's entry, in device order, as the keys file holds them.
    pub fn entries(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .0
            .iter()
            .map(|(id, s)| Entry {
                id: id.to_string(),
                key: s.key.clone(),
                key_id: s.key_id,
                next: s.next.as_ref().map(|(id, k, _)| (*id, k.clone())),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The key of a device.
    pub fn get(&self, device: &str) -> Option<&DeviceKey> {
        self.0.get(device).map(|s| &s.key)
    }

    /// The number of a device's key on the node (0 as provisioned).
    pub fn key_id(&self, device: &str) -> Option<u16> {
        self.0.get(device).map(|s| s.key_id)
    }

    /// The key of a device, prepared for verifying its frames.
    pub fn prepared(&self, device: &str) -> Option<&PreparedKey> {
        self.0.get(device).map(|s| &s.prepared)
    }

    /// The key a device is being sent and its number, while its rotation is under way.
    pub fn next(&self, device: &str) -> Option<(u16, &DeviceKey, &PreparedKey)> {
        self.0
            .get(device)
            .and_then(|s| s.next.as_ref().map(|(id, k, p)| (*id, k, p)))
    }

    /// The devices whose rotation is under way, in order.
    pub fn pending(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .0
            .iter()
            .filter(|(_, s)| s.next.is_some())
            .map(|(id, _)| &**id)
            .collect();
        out.sort_unstable();
        out
    }

    /// The node took its new key: it becomes the only one. False if none was under way.
    pub fn promote(&mut self, device: &str) -> bool {
        match self.0.get_mut(device) {
            Some(s) => match s.next.take() {
                Some((id, key, prepared)) => {
                    (s.key_id, s.key, s.prepared) = (id, key, prepared);
                    true
                }
                None => false,
            },
            None => false,
        }
    }

    /// Adds or replaces a key (demo, tests); the key it replaced, if any.
    pub fn insert(&mut self, device: &str, key: DeviceKey) -> Option<DeviceKey> {
        let prepared = key.prepare();
        self.0
            .insert(
                device.into(),
                Slot {
                    key,
                    prepared,
                    key_id: 0,
                    next: None,
                },
            )
            .map(|old| old.key)
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

/// Locks the keys file at `path` against the other writers (`gateway keys rotate`, the
/// gateway promoting a key) until the returned file is dropped: an advisory lock on
/// `{path}.lock`, waited for.
pub fn lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{}.lock", path.display()))?;
    lock.lock()?;
    Ok(lock)
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
