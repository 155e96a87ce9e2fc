//! Demo keys: a key for every wire device derived from its id, so `gateway demo`, the simulator
//! and the tests agree on keys without a keys file. Anyone can derive them: they are for
//! rehearsals on loopback only, never for a deployment (`nodectl provision` makes real ones).

use sha2::{Digest, Sha256};
use wire::DeviceKey;

use crate::{Catalog, Encoding};

/// The demo key of `device`.
pub fn key(device: &str) -> DeviceKey {
    let digest = Sha256::digest(format!("citysense demo key:{device}"));
    let mut k = [0u8; 32];
    k.copy_from_slice(&digest);
    DeviceKey::from_bytes(k)
}

/// Every wire device of the catalog with its demo key.
pub fn keys(catalog: &Catalog) -> impl Iterator<Item = (&str, DeviceKey)> {
    catalog
        .site
        .devices
        .iter()
        .filter(|d| {
            catalog
                .profiles
                .get(&d.profile)
                .is_some_and(|p| p.encoding == Encoding::Wire)
        })
        .map(|d| (d.id.as_str(), key(&d.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_keys_differ_by_device_and_cover_only_wire_devices() {
        let catalog = Catalog::ganzhou().unwrap();
        let keys: Vec<(&str, DeviceKey)> = keys(&catalog).collect();
        assert!(keys.len() > 10);
        assert!(
            keys.iter()
                .all(|(id, k)| key(id).as_bytes() == k.as_bytes())
        );
        assert_ne!(key("a").as_bytes(), key("b").as_bytes());
        let json_devices = catalog
            .site
            .devices
            .iter()
            .filter(|d| catalog.profiles[&d.profile].encoding == Encoding::Json);
        for d in json_devices {
            assert!(
                keys.iter().all(|(id, _)| *id != d.id),
                "{} has no key",
                d.id
            );
        }
    }
}
