//! The provisioned config block: who the node is, its key, where it reports, how often.
//!
//! `nodectl provision` writes it; the node reads it at boot from a flash page of its own
//! ([`BLOCK_LEN`] bytes). Layout, little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `CSCB` |
//! | 4 | 2 | layout version ([`LAYOUT_VERSION`]) |
//! | 6 | 2 | body length `n` |
//! | 8 | n | body: [`Config`] in postcard |
//! | 8 + n | 4 | CRC-32 (ISO-HDLC) of bytes `0 .. 8 + n` |
//! | … | | `0xFF` (erased flash) up to [`BLOCK_LEN`] |

use heapless::String;
use serde::{Deserialize, Serialize};
use wire::DeviceKey;
use wire::auth::KEY_LEN;

/// Size of the config page.
pub const BLOCK_LEN: usize = 512;
/// The block's magic.
pub const MAGIC: [u8; 4] = *b"CSCB";
/// Layout version this firmware reads.
pub const LAYOUT_VERSION: u16 = 1;
const HEADER_LEN: usize = 8;
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// What a node does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A gate reader: tags read are visitors passing in `direction`.
    Gate {
        /// 1 entry, 2 exit, 3 both (the reader's antenna order decides).
        direction: GateRole,
    },
    /// A traffic detector on `lanes`, with two sensors per lane `spacing_mm` apart (0: one).
    Traffic {
        /// Lane numbers, 1-based from the kerb.
        lanes: heapless::Vec<u8, 8>,
        /// Distance between the two sensors of a lane, millimetres (0: no speed).
        spacing_mm: u32,
    },
    /// A pipe, well or cover sensor.
    Pipe,
}

/// Which way a gate reader counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GateRole {
    /// Everything read is an entry.
    Entry,
    /// Everything read is an exit.
    Exit,
    /// Two antennas: the order they see a tag in gives the direction.
    Both,
}

/// The provisioned configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Device id (as in the site file).
    pub device_id: String<32>,
    /// District code (GB/T 2260).
    pub zone: String<6>,
    /// Device kind (profile).
    pub kind: String<32>,
    /// The device key (frame HMAC).
    pub key: [u8; KEY_LEN],
    /// Broker host name or address.
    pub broker_host: String<64>,
    /// Broker port.
    pub broker_port: u16,
    /// Broker user name (the device id by convention) and password.
    pub broker_password: String<64>,
    /// Periodic report interval, seconds.
    pub report_interval_s: u32,
    /// Status report interval, seconds.
    pub status_interval_s: u32,
    /// Site salt for hashing ticket tags (no raw ticket id leaves the node).
    pub tag_salt: [u8; 16],
    /// What the node does.
    pub role: Role,
}

/// Why a config block was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// Not a config block (erased page or something else).
    BadMagic,
    /// A layout this firmware does not read.
    UnsupportedVersion(u16),
    /// The body length runs past the block.
    BadLength,
    /// The CRC does not match: a corrupt or half-written page.
    BadCrc,
    /// The body does not decode, or a field is invalid.
    Malformed,
    /// The config does not fit a block.
    TooLarge,
}

impl ConfigError {
    /// What to tell a field engineer.
    pub const fn reason(self) -> &'static str {
        match self {
            ConfigError::BadMagic => "not a config block (bad magic: erased or foreign page)",
            ConfigError::UnsupportedVersion(_) => "config layout version not supported",
            ConfigError::BadLength => "body length runs past the block",
            ConfigError::BadCrc => "CRC mismatch: corrupt or half-written block",
            ConfigError::Malformed => "body does not decode or has an invalid field",
            ConfigError::TooLarge => "config does not fit the block",
        }
    }
}

/// Which topic of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Reports.
    Up,
    /// Retained presence (`online` / `offline`).
    Status,
    /// Downlinks from the gateway.
    Down,
}

impl Config {
    /// The node's key.
    pub fn device_key(&self) -> DeviceKey {
        DeviceKey::from_bytes(self.key)
    }

    /// `cs/v1/{zone}/{kind}/{device}/{up|status|down}`.
    pub fn topic(&self, stream: Stream) -> String<96> {
        let mut t = String::new();
        let suffix = match stream {
            Stream::Up => "up",
            Stream::Status => "status",
            Stream::Down => "down",
        };
        for part in [
            "cs/v1/",
            &self.zone,
            "/",
            &self.kind,
            "/",
            &self.device_id,
            "/",
            suffix,
        ] {
            // 6 + 6 + 32 + 32 + 3 + 6 < 96: always fits.
            let _ = t.push_str(part);
        }
        t
    }

    fn valid(&self) -> bool {
        let id_ok = !self.device_id.is_empty()
            && self
                .device_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        id_ok
            && self.zone.len() == 6
            && self.zone.bytes().all(|b| b.is_ascii_digit())
            && !self.kind.is_empty()
            && self.broker_port != 0
            && self.report_interval_s > 0
            && self.status_interval_s > 0
    }

    /// Writes the block into `out` (erased bytes `0xFF` after the CRC).
    pub fn encode(&self, out: &mut [u8; BLOCK_LEN]) -> Result<(), ConfigError> {
        if !self.valid() {
            return Err(ConfigError::Malformed);
        }
        out.fill(0xFF);
        let room = BLOCK_LEN - HEADER_LEN - 4;
        let n = postcard::to_slice(self, &mut out[HEADER_LEN..HEADER_LEN + room])
            .map_err(|_| ConfigError::TooLarge)?
            .len();
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        // n ≤ room < u16::MAX.
        out[6..8].copy_from_slice(&(n as u16).to_le_bytes());
        let crc = CRC.checksum(&out[..HEADER_LEN + n]);
        out[HEADER_LEN + n..HEADER_LEN + n + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Reads and checks a block.
    pub fn decode(block: &[u8]) -> Result<Config, ConfigError> {
        if block.len() < HEADER_LEN || block[..4] != MAGIC {
            return Err(ConfigError::BadMagic);
        }
        let version = u16::from_le_bytes([block[4], block[5]]);
        if version != LAYOUT_VERSION {
            return Err(ConfigError::UnsupportedVersion(version));
        }
        let n = usize::from(u16::from_le_bytes([block[6], block[7]]));
        let end = HEADER_LEN + n;
        if end + 4 > block.len() {
            return Err(ConfigError::BadLength);
        }
        let stored =
            u32::from_le_bytes([block[end], block[end + 1], block[end + 2], block[end + 3]]);
        if CRC.checksum(&block[..end]) != stored {
            return Err(ConfigError::BadCrc);
        }
        let config: Config =
            postcard::from_bytes(&block[HEADER_LEN..end]).map_err(|_| ConfigError::Malformed)?;
        if config.valid() {
            Ok(config)
        } else {
            Err(ConfigError::Malformed)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Config {
        Config {
            device_id: String::try_from("gz-p1-press").unwrap(),
            zone: String::try_from("360702").unwrap(),
            kind: String::try_from("water-pressure").unwrap(),
            key: core::array::from_fn(|i| i as u8),
            broker_host: String::try_from("10.20.0.5").unwrap(),
            broker_port: 8883,
            broker_password: String::try_from("s3cret").unwrap(),
            report_interval_s: 60,
            status_interval_s: 3600,
            tag_salt: [7; 16],
            role: Role::Pipe,
        }
    }

    #[test]
    fn a_block_round_trips_and_names_its_topics() {
        let mut block = [0u8; BLOCK_LEN];
        sample().encode(&mut block).unwrap();
        assert_eq!(&block[..4], b"CSCB");
        assert_eq!(*block.last().unwrap(), 0xFF, "erased after the CRC");
        let back = Config::decode(&block).unwrap();
        assert_eq!(back, sample());
        assert_eq!(
            back.topic(Stream::Up).as_str(),
            "cs/v1/360702/water-pressure/gz-p1-press/up"
        );
    }

    #[test]
    fn every_damage_is_named() {
        let mut block = [0u8; BLOCK_LEN];
        sample().encode(&mut block).unwrap();
        assert_eq!(
            Config::decode(&[0xFF; BLOCK_LEN]),
            Err(ConfigError::BadMagic)
        );
        let mut v = block;
        v[4] = 9;
        assert_eq!(Config::decode(&v), Err(ConfigError::UnsupportedVersion(9)));
        let mut l = block;
        l[6..8].copy_from_slice(&600u16.to_le_bytes());
        assert_eq!(Config::decode(&l), Err(ConfigError::BadLength));
        let mut c = block;
        c[20] ^= 1;
        assert_eq!(Config::decode(&c), Err(ConfigError::BadCrc));
        let mut bad = sample();
        bad.zone = String::try_from("36070x").unwrap();
        assert_eq!(bad.encode(&mut block), Err(ConfigError::Malformed));
    }
}
