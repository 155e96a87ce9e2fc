//! `gateway reload` and `gateway keys`: the running gateway takes new keys, rules and site
//! files, and rotates nodes' keys, without a restart.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use device_profiles::Catalog;
use device_profiles::keys::Entry;
use wire::DeviceKey;

use crate::config::Config;
use crate::reload::Candidate;
use crate::store::{InUse, Store};

/// `gateway reload`: checks the config file and what it names as the gateway will, signals the
/// gateway running on its store (SIGHUP), and waits for the outcome it writes to the audit
/// trail. An error names the cause; a refused reload changed nothing.
pub fn reload_running(path: &Path, timeout: Duration) -> anyhow::Result<String> {
    Candidate::read(path).context("the files do not check; nothing was sent to the gateway")?;
    let config = Config::load(path)?;
    signal_and_wait(&config.store.path, timeout)
}

/// Sends SIGHUP to the gateway running on the store at `store_path` and waits for its reload's
/// audit record.
fn signal_and_wait(store_path: &Path, timeout: Duration) -> anyhow::Result<String> {
    let pid = InUse::holder(store_path).with_context(|| {
        format!(
            "no gateway is running on the local store {}: a gateway reads the files when it starts",
            store_path.display()
        )
    })?;
    let store = Store::open(store_path)?.0;
    let since = crate::clock::now_ms();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .context("cannot run kill")?;
    ensure!(
        status.success(),
        "cannot signal the gateway (pid {pid}): run this as its user (citysense) or root"
    );
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Some(r) = store
            .audit_since(since)?
            .into_iter()
            .find(|r| r.entry.action == "config.reload")
        {
            if r.entry.outcome == "ok" {
                return Ok(r.entry.detail);
            }
            bail!(
                "the gateway refused the reload, nothing changed: {}",
                r.entry.detail
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "the gateway (pid {pid}) did not answer within {} s: see its log (journalctl -u citysense-gateway)",
        timeout.as_secs()
    )
}

/// Which devices `gateway keys rotate` rotates.
#[derive(Debug, Clone)]
pub enum Chosen {
    /// These devices.
    Devices(Vec<String>),
    /// Every device of this kind with a key.
    Kind(String),
    /// Every device with a key.
    All,
}

/// What `gateway keys rotate` did.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// Devices given a new key to be sent.
    pub started: Vec<String>,
    /// Devices whose rotation was already under way (left as they were).
    pub pending_already: Vec<String>,
    /// The running gateway's reload, or why there was none.
    pub reload: Result<String, String>,
}

/// `gateway keys rotate`: gives each chosen device a new key as its `next_key` in the keys file
/// (atomically, under the file's lock), then reloads the running gateway, which sends them.
pub fn rotate(path: &Path, chosen: &Chosen, timeout: Duration) -> anyhow::Result<Rotated> {
    let config = Config::load(path)?;
    let catalog = Catalog::load(&config.site.profiles, &config.site.site)?;
    let keys_path = &config.site.keys;
    let mut rotated = Rotated {
        started: Vec::new(),
        pending_already: Vec::new(),
        reload: Err(String::new()),
    };
    {
        let _locked = crate::keys::lock_file(keys_path)
            .with_context(|| format!("cannot lock {}", keys_path.display()))?;
        let mut entries = device_profiles::keys::load_entries(keys_path)?;
        for id in choose(&catalog, &entries, chosen)? {
            let Some(e) = entries.iter_mut().find(|e| e.id == id) else {
                continue;
            };
            if e.next.is_some() {
                rotated.pending_already.push(id);
                continue;
            }
            let Some(next_id) = e.key_id.checked_add(1) else {
                bail!("{id} has had 65,535 keys: provision it again");
            };
            let mut key = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
            e.next = Some((next_id, DeviceKey::from_bytes(key)));
            rotated.started.push(id);
        }
        if !rotated.started.is_empty() {
            device_profiles::keys::write(keys_path, &entries)
                .with_context(|| format!("cannot write {}", keys_path.display()))?;
        }
    }
    rotated.reload = signal_and_wait(&config.store.path, timeout).map_err(|e| format!("{e:#}"));
    Ok(rotated)
}

/// The device ids `chosen` names, each checked: in the keys file and a wire device of the site.
fn choose(catalog: &Catalog, entries: &[Entry], chosen: &Chosen) -> anyhow::Result<Vec<String>> {
    let kind_of = |id: &str| {
        catalog
            .site
            .device(id)
            .and_then(|d| catalog.profiles.get(&d.profile))
            .map(|p| p.kind.clone())
    };
    let ids: Vec<String> = match chosen {
        Chosen::Devices(ids) => {
            for id in ids {
                ensure!(
                    catalog.site.device(id).is_some(),
                    "device \"{id}\" is not in the site"
                );
                ensure!(
                    entries.iter().any(|e| e.id == *id),
                    "device \"{id}\" has no key in the keys file (not provisioned, or a JSON device): nothing to rotate"
                );
            }
            ids.clone()
        }
        Chosen::Kind(kind) => {
            ensure!(
                catalog.profiles.values().any(|p| p.kind == *kind),
                "no profile of kind \"{kind}\" (kinds: {})",
                catalog
                    .profiles
                    .values()
                    .map(|p| p.kind.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            entries
                .iter()
                .filter(|e| kind_of(&e.id).as_deref() == Some(kind.as_str()))
                .map(|e| e.id.clone())
                .collect()
        }
        Chosen::All => entries
            .iter()
            .filter(|e| kind_of(&e.id).is_some())
            .map(|e| e.id.clone())
            .collect(),
    };
    ensure!(!ids.is_empty(), "no device with a key was chosen");
    Ok(ids)
}

/// `gateway keys list`: every device's key number and fingerprint, and the rotations under
/// way (`pending` alone: only those).
pub fn list(path: &Path, pending: bool) -> anyhow::Result<String> {
    let config = Config::load(path)?;
    let entries = device_profiles::keys::load_entries(&config.site.keys)?;
    let mut out = format!(
        "{:<20} {:>6} {:<17} {}\n",
        "DEVICE", "KEY_ID", "FINGERPRINT", "ROTATION"
    );
    for e in entries.iter().filter(|e| !pending || e.next.is_some()) {
        let rotation = match &e.next {
            Some((id, k)) => format!(
                "pending: key {id} ({}) sent, not acknowledged",
                k.fingerprint()
            ),
            None => "-".to_owned(),
        };
        out.push_str(&format!(
            "{:<20} {:>6} {:<17} {rotation}\n",
            e.id,
            e.key_id,
            e.key.fingerprint().to_string()
        ));
    }
    Ok(out)
}
