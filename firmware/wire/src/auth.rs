//! Device keys and frame authentication.
//!
//! Every node has its own 32-byte key, provisioned by `nodectl` into the node's config block and
//! into the gateway's keys file. Frames carry the first [`TAG_LEN`] bytes of
//! HMAC-SHA256(key, header ‖ body); verification is constant-time (`hmac`'s
//! `verify_truncated_left`).

use hmac::{Hmac, HmacCore, Mac};
use sha2::{Digest, Sha256};

/// Length of the truncated HMAC-SHA256 tag at the end of every frame.
pub const TAG_LEN: usize = 16;

/// Length of a device key in bytes.
pub const KEY_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// A device's secret key. `Debug` prints only its fingerprint, so keys never reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceKey([u8; KEY_LEN]);

impl DeviceKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes (for writing a config block or a keys file).
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The first 8 bytes of SHA-256(key): safe to publish, enough to tell keys apart.
    pub fn fingerprint(&self) -> KeyFingerprint {
        let digest = Sha256::digest(self.0);
        let mut out = [0u8; 8];
        out.copy_from_slice(&digest[..8]);
        KeyFingerprint(out)
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
        match <HmacSha256 as Mac>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC-SHA256 accepts every key length"),
        }
    }

    /// The truncated tag over `signed`.
    pub fn tag(&self, signed: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac();
        mac.update(signed);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// Checks `tag` against `signed` in constant time.
    pub fn verify(&self, signed: &[u8], tag: &[u8]) -> bool {
        verify_with(self.mac(), signed, tag)
    }

    /// The key with its HMAC pads already hashed, for a verifier that checks many frames of
    /// one device: each check then hashes only the frame (two SHA-256 blocks fewer).
    pub fn prepare(&self) -> PreparedKey {
        PreparedKey(self.mac().decompose().0)
    }

    /// Encrypts `new` for a key-rotation downlink: `new XOR HMAC-SHA256(self, label ‖ key_id)`.
    ///
    /// The downlink frame that carries the result is itself authenticated with `self` (the
    /// current key), so the node knows who sent it. A `key_id` must never be reused with the
    /// same current key: the gateway increments it with every rotation.
    pub fn wrap(&self, key_id: u16, new: &DeviceKey) -> [u8; KEY_LEN] {
        let pad = self.rotation_pad(key_id);
        let mut out = [0u8; KEY_LEN];
        for (o, (k, p)) in out.iter_mut().zip(new.0.iter().zip(pad.iter())) {
            *o = k ^ p;
        }
        out
    }

    /// Recovers the new key from a key-rotation downlink (the inverse of [`DeviceKey::wrap`]).
    pub fn unwrap_rotation(&self, key_id: u16, wrapped: &[u8; KEY_LEN]) -> DeviceKey {
        let pad = self.rotation_pad(key_id);
        let mut out = [0u8; KEY_LEN];
        for (o, (w, p)) in out.iter_mut().zip(wrapped.iter().zip(pad.iter())) {
            *o = w ^ p;
        }
        DeviceKey(out)
    }

    fn rotation_pad(&self, key_id: u16) -> [u8; KEY_LEN] {
        let mut mac = self.mac();
        mac.update(b"citysense/v1 key rotation");
        mac.update(&key_id.to_le_bytes());
        let mut pad = [0u8; KEY_LEN];
        pad.copy_from_slice(&mac.finalize().into_bytes());
        pad
    }
}

fn verify_with(mut mac: HmacSha256, signed: &[u8], tag: &[u8]) -> bool {
    if tag.len() != TAG_LEN {
        return false;
    }
    mac.update(signed);
    mac.verify_truncated_left(tag).is_ok()
}

/// A [`DeviceKey`] ready to verify tags: the HMAC state after the key (80 bytes, without a
/// block buffer: a gateway keeps one per device), copied for every frame. `Debug` prints
/// nothing of the key.
#[derive(Clone)]
pub struct PreparedKey(HmacCore<Sha256>);

impl PreparedKey {
    /// Checks `tag` against `signed` in constant time, as [`DeviceKey::verify`] does.
    pub fn verify(&self, signed: &[u8], tag: &[u8]) -> bool {
        verify_with(HmacSha256::from_core(self.0.clone()), signed, tag)
    }
}

impl core::fmt::Debug for PreparedKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PreparedKey(..)")
    }
}

impl core::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "DeviceKey({})", self.fingerprint())
    }
}

/// A published identifier of a key: the first 8 bytes of its SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KeyFingerprint(pub [u8; 8]);

impl core::fmt::Display for KeyFingerprint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl core::fmt::Debug for KeyFingerprint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "KeyFingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_test_case_2() {
        // RFC 4231 §4.3: key "Jefe", data "what do ya want for nothing?".
        let mut mac = <HmacSha256 as Mac>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let expected =
            hex::decode("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
                .unwrap();
        assert_eq!(mac.finalize().into_bytes().as_slice(), expected.as_slice());
    }

    #[test]
    fn tag_verifies_and_any_flipped_bit_is_refused() {
        let key = DeviceKey::from_bytes([7; 32]);
        let tag = key.tag(b"header and body");
        assert!(key.verify(b"header and body", &tag));
        for i in 0..TAG_LEN * 8 {
            let mut bad = tag;
            bad[i / 8] ^= 1 << (i % 8);
            assert!(!key.verify(b"header and body", &bad), "bit {i}");
        }
        assert!(!key.verify(b"header and body", &tag[..15]));
        assert!(!DeviceKey::from_bytes([8; 32]).verify(b"header and body", &tag));
        let prepared = key.prepare();
        assert!(prepared.verify(b"header and body", &tag));
        assert!(prepared.verify(b"header and body", &tag), "a second check");
        assert!(!prepared.verify(b"header and bodY", &tag));
        assert!(!prepared.verify(b"header and body", &tag[..15]));
        assert!(
            !DeviceKey::from_bytes([8; 32])
                .prepare()
                .verify(b"header and body", &tag)
        );
    }

    #[test]
    fn wrapped_key_unwraps_only_with_the_same_key_id() {
        let current = DeviceKey::from_bytes([1; 32]);
        let next = DeviceKey::from_bytes([2; 32]);
        let wrapped = current.wrap(5, &next);
        assert_ne!(&wrapped, next.as_bytes());
        assert_eq!(current.unwrap_rotation(5, &wrapped), next);
        assert_ne!(current.unwrap_rotation(6, &wrapped), next);
    }

    #[test]
    fn debug_shows_the_fingerprint_and_never_the_key() {
        let key = DeviceKey::from_bytes([0xab; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("abab"), "{shown}");
        assert!(shown.contains(&key.fingerprint().to_string()));
    }
}
