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
//!
//! A key rotation under way (`gateway keys rotate`) is in the file too, so that a restart
//! loses nothing: the node's key number (`key_id`, 0 as provisioned) and the key it is being
//! sent (`next_key`, `next_key_id`). The gateway accepts both until the node acknowledges, then
//! writes the file again ([`write`]) with the new key alone.
//!
//! ```toml
//! [[device]]
//! id = "gz-s4-g1"
//! key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
//! key_id = 1
//! next_key = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100"
//! next_key_id = 2
//! ```

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
    #[serde(default)]
    key_id: u16,
    next_key: Option<String>,
    next_key_id: Option<u16>,
}

/// A device's entry: its key and the rotation under way, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The device id.
    pub id: String,
    /// The key its frames are signed with.
    pub key: DeviceKey,
    /// The key's number on the node (0 as provisioned; each rotation adds one).
    pub key_id: u16,
    /// The key being sent to the node and its number, until the node acknowledges it.
    pub next: Option<(u16, DeviceKey)>,
}

/// Reads and checks a keys file: every device with its key, in the file's order.
pub fn load(path: &Path) -> Result<Vec<(String, DeviceKey)>, LoadError> {
    Ok(load_entries(path)?
        .into_iter()
        .map(|e| (e.id, e.key))
        .collect())
}

/// Reads and checks a keys file with the rotations under way.
pub fn load_entries(path: &Path) -> Result<Vec<Entry>, LoadError> {
    parse(&TomlFile::read(path)?)
}

/// Parses keys file text (for tests and `nodectl`); `name` names it in problems.
pub fn from_text(name: &Path, text: &str) -> Result<Vec<(String, DeviceKey)>, LoadError> {
    Ok(parse(&TomlFile::from_text(name, text.to_owned()))?
        .into_iter()
        .map(|e| (e.id, e.key))
        .collect())
}

/// Parses keys file text with the rotations under way.
pub fn entries_from_text(name: &Path, text: &str) -> Result<Vec<Entry>, LoadError> {
    parse(&TomlFile::from_text(name, text.to_owned()))
}

fn parse(file: &TomlFile) -> Result<Vec<Entry>, LoadError> {
    let parsed: KeysFile = file.parse().map_err(|p| LoadError::Invalid(vec![p]))?;
    let mut problems = Vec::new();
    let mut keys: Vec<Entry> = Vec::new();
    for (i, e) in parsed.devices.into_iter().enumerate() {
        let next = match (&e.next_key, e.next_key_id) {
            (None, None) => Ok(None),
            (Some(k), Some(id)) if id > e.key_id => parse_key(k).map(|k| Some((id, k))),
            (Some(_), Some(id)) => Err(format!(
                "next_key_id {id} must be above key_id {}",
                e.key_id
            )),
            _ => Err("next_key and next_key_id go together".to_owned()),
        };
        match (parse_key(&e.key), next) {
            (Err(reason), _) => problems.push(file.problem(
                &format!("device[{i}].key"),
                format!("device \"{}\": {reason}", e.id),
            )),
            (_, Err(reason)) => problems.push(file.problem(
                &format!("device[{i}].next_key"),
                format!("device \"{}\": {reason}", e.id),
            )),
            (Ok(_), Ok(_)) if keys.iter().any(|k| k.id == e.id) => problems.push(file.problem(
                &format!("device[{i}].id"),
                format!("device \"{}\" has a second key entry", e.id),
            )),
            (Ok(key), Ok(next)) => keys.push(Entry {
                id: e.id,
                key,
                key_id: e.key_id,
                next,
            }),
        }
    }
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(LoadError::Invalid(problems))
    }
}

/// The text of a keys file holding `entries`.
pub fn to_text(entries: &[Entry]) -> String {
    let mut text = String::from(
        "# CitySense device keys (nodectl provision appends; gateway keys rotate rewrites).\n\
         # Keep this file private: mode 600, owner the gateway's user.\n",
    );
    for e in entries {
        text.push_str(&entry(&e.id, &e.key));
        if e.key_id != 0 || e.next.is_some() {
            text.push_str(&format!("key_id = {}\n", e.key_id));
        }
        if let Some((id, key)) = &e.next {
            text.push_str(&format!(
                "next_key = \"{}\"\nnext_key_id = {id}\n",
                hex::encode(key.as_bytes())
            ));
        }
    }
    text
}

/// Replaces the keys file at `path` with `entries` atomically: a private temporary file in the
/// same folder, synced, renamed over the old one, and the folder synced. A reader sees the old
/// file or the new one, never a part, and a crash leaves one of them.
pub fn write(path: &Path, entries: &[Entry]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = (|| {
        let mut f = options.open(&temp)?;
        f.write_all(to_text(entries).as_bytes())?;
        f.sync_all()?;
        // Keep the owner (`gateway keys rotate` run by root must not take the gateway's keys
        // file from it).
        #[cfg(unix)]
        if let Ok(old) = std::fs::metadata(path) {
            use std::os::unix::fs::MetadataExt;
            std::os::unix::fs::chown(&temp, Some(old.uid()), Some(old.gid()))?;
        }
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
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

/// One keys-file entry (without a rotation), as `nodectl provision` appends it.
pub fn entry(device: &str, key: &DeviceKey) -> String {
    format!(
        "\n[[device]]\nid = \"{device}\"\nkey = \"{}\"\n",
        hex::encode(key.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_under_way_survives_writing_and_reading() {
        let entries = vec![
            Entry {
                id: "a".into(),
                key: DeviceKey::from_bytes([1; 32]),
                key_id: 0,
                next: None,
            },
            Entry {
                id: "b".into(),
                key: DeviceKey::from_bytes([2; 32]),
                key_id: 3,
                next: Some((4, DeviceKey::from_bytes([5; 32]))),
            },
        ];
        let dir = std::env::temp_dir().join(format!("cs-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.toml");
        write(&path, &entries).unwrap();
        assert_eq!(load_entries(&path).unwrap(), entries);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            // Rewritten by another user (root), the file keeps its owner: the gateway's user
            // (here `nobody`, where the test may give files away; else the test's own user).
            let _ = std::os::unix::fs::chown(&path, Some(65_534), Some(65_534));
            let owner = std::fs::metadata(&path).unwrap().uid();
            write(&path, &entries).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().uid(), owner);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_next_key_needs_a_higher_number() {
        let text = format!(
            "[[device]]\nid = \"a\"\nkey = \"{k}\"\nkey_id = 2\nnext_key = \"{k}\"\nnext_key_id = 2\n",
            k = "00".repeat(32)
        );
        let err = entries_from_text(Path::new("keys.toml"), &text).unwrap_err();
        assert!(
            err.to_string()
                .contains("device \"a\": next_key_id 2 must be above key_id 2"),
            "{err}"
        );
    }
}
