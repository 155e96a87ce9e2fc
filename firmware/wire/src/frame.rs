//! The frame: a checked view over received bytes ([`Frame`]), and the encoder ([`seal`]).
//!
//! Receiving is three steps, each of which can refuse with a [`FrameError`]:
//! [`Frame::new_checked`] (layout), [`Frame::verify`] (tag, with the key looked up by the
//! frame's device id) and [`Verified::decode`] (body). [`open`] does all three.

use core::ops::Range;

use crate::auth::{DeviceKey, PreparedKey, TAG_LEN};
use crate::body::Body;

/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// The largest frame accepted or produced, in bytes.
pub const MAX_FRAME_LEN: usize = 1024;
/// The longest device id.
pub const MAX_DEVICE_ID_LEN: usize = 32;
/// Fixed header bytes besides the device id.
const FIXED_HEADER_LEN: usize = 21;
/// The largest body that fits in a frame with the longest device id.
pub const MAX_BODY_LEN: usize = MAX_FRAME_LEN - FIXED_HEADER_LEN - MAX_DEVICE_ID_LEN - TAG_LEN;

const FLAG_CLOCK_SYNCED: u8 = 0b0000_0001;

/// Named byte ranges of the header, given the device id length (smoltcp's `field` idea).
mod field {
    use core::ops::Range;

    pub const VERSION: usize = 0;
    pub const FLAGS: usize = 1;
    pub const ID_LEN: usize = 2;
    pub const ID_START: usize = 3;

    pub const fn device_id(id_len: usize) -> Range<usize> {
        ID_START..ID_START + id_len
    }
    pub const fn boot_epoch(id_len: usize) -> Range<usize> {
        ID_START + id_len..ID_START + id_len + 4
    }
    pub const fn sequence(id_len: usize) -> Range<usize> {
        ID_START + id_len + 4..ID_START + id_len + 8
    }
    pub const fn timestamp(id_len: usize) -> Range<usize> {
        ID_START + id_len + 8..ID_START + id_len + 16
    }
    pub const fn body_len(id_len: usize) -> Range<usize> {
        ID_START + id_len + 16..ID_START + id_len + 18
    }
    pub const fn body(id_len: usize, body_len: usize) -> Range<usize> {
        ID_START + id_len + 18..ID_START + id_len + 18 + body_len
    }
}

/// Why received bytes were refused. Small and `Copy`, for firmware as well as the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header and the lengths it declares need.
    Truncated,
    /// More than [`MAX_FRAME_LEN`] bytes.
    Oversized,
    /// A format version this build does not read.
    UnknownVersion(u8),
    /// A reserved flag bit is set.
    ReservedFlags,
    /// The device id is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    BadDeviceId,
    /// Bytes after the tag.
    TrailingBytes,
    /// The tag does not match: wrong key, or altered bytes.
    BadTag,
    /// The body is not a valid encoding of [`Body`] (or has bytes left over).
    MalformedBody,
}

impl FrameError {
    /// A stable label for metrics and dead-letter records.
    pub const fn reason(self) -> &'static str {
        match self {
            FrameError::Truncated => "truncated",
            FrameError::Oversized => "oversized",
            FrameError::UnknownVersion(_) => "unknown_version",
            FrameError::ReservedFlags => "reserved_flags",
            FrameError::BadDeviceId => "bad_device_id",
            FrameError::TrailingBytes => "trailing_bytes",
            FrameError::BadTag => "bad_tag",
            FrameError::MalformedBody => "malformed_body",
        }
    }
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::Truncated => f.write_str("frame is truncated"),
            FrameError::Oversized => write!(f, "frame is longer than {MAX_FRAME_LEN} bytes"),
            FrameError::UnknownVersion(v) => write!(
                f,
                "frame format version {v} is not supported (this build reads {FORMAT_VERSION})"
            ),
            FrameError::ReservedFlags => f.write_str("frame sets reserved flag bits"),
            FrameError::BadDeviceId => {
                f.write_str("frame device id is empty, too long or not ASCII [A-Za-z0-9._-]")
            }
            FrameError::TrailingBytes => f.write_str("frame has bytes after the tag"),
            FrameError::BadTag => f.write_str("frame tag does not verify with the device key"),
            FrameError::MalformedBody => f.write_str("frame body does not decode"),
        }
    }
}

impl core::error::Error for FrameError {}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The device id is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    BadDeviceId,
    /// The encoded body is longer than [`MAX_BODY_LEN`].
    BodyTooLong,
    /// The output buffer is too small for the frame.
    BufferTooSmall,
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            EncodeError::BadDeviceId => "device id is empty, too long or not ASCII [A-Za-z0-9._-]",
            EncodeError::BodyTooLong => "encoded body does not fit in a frame",
            EncodeError::BufferTooSmall => "output buffer is too small for the frame",
        })
    }
}

impl core::error::Error for EncodeError {}

/// When a report was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timestamp {
    /// The node's clock was set (time sync or NTP): Unix time in milliseconds.
    Synced {
        /// Milliseconds since 1970-01-01T00:00:00Z.
        unix_ms: u64,
    },
    /// The node has no wall time yet: milliseconds since boot. The gateway substitutes its
    /// receive time and flags the reading.
    Unsynced {
        /// Milliseconds since boot.
        uptime_ms: u64,
    },
}

/// The authenticated header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header<'a> {
    /// The device's id, as in the site file and the MQTT topic.
    pub device_id: &'a str,
    /// Incremented and persisted by the node at every boot.
    pub boot_epoch: u32,
    /// Frame counter within the boot epoch, from 0.
    pub sequence: u32,
    /// When the report was made.
    pub timestamp: Timestamp,
}

/// A decoded, verified frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Message<'a> {
    /// The header.
    pub header: Header<'a>,
    /// The report.
    pub body: Body,
}

/// A checked view over the bytes of one frame: every accessor is in bounds.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    buf: &'a [u8],
    id_len: usize,
    body_len: usize,
}

fn valid_device_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

impl<'a> Frame<'a> {
    /// Checks the layout of `buf`: version, flags, device id, and that the declared lengths
    /// match the bytes exactly. Does not check the tag.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, FrameError> {
        if buf.len() > MAX_FRAME_LEN {
            return Err(FrameError::Oversized);
        }
        let version = *buf.get(field::VERSION).ok_or(FrameError::Truncated)?;
        if version != FORMAT_VERSION {
            return Err(FrameError::UnknownVersion(version));
        }
        let flags = *buf.get(field::FLAGS).ok_or(FrameError::Truncated)?;
        if flags & !FLAG_CLOCK_SYNCED != 0 {
            return Err(FrameError::ReservedFlags);
        }
        let id_len = usize::from(*buf.get(field::ID_LEN).ok_or(FrameError::Truncated)?);
        if id_len == 0 || id_len > MAX_DEVICE_ID_LEN {
            return Err(FrameError::BadDeviceId);
        }
        let len_field = buf
            .get(field::body_len(id_len))
            .ok_or(FrameError::Truncated)?;
        let body_len = usize::from(u16::from_le_bytes([len_field[0], len_field[1]]));
        let total = field::body(id_len, body_len).end + TAG_LEN;
        if buf.len() < total {
            return Err(FrameError::Truncated);
        }
        if buf.len() > total {
            return Err(FrameError::TrailingBytes);
        }
        if !valid_device_id(&buf[field::device_id(id_len)]) {
            return Err(FrameError::BadDeviceId);
        }
        Ok(Frame {
            buf,
            id_len,
            body_len,
        })
    }

    /// The device id from the header (not yet authenticated: use it to look up the key).
    pub fn device_id(&self) -> &'a str {
        // new_checked allowed only ASCII bytes, which are always valid UTF-8.
        core::str::from_utf8(&self.buf[field::device_id(self.id_len)]).unwrap_or("")
    }

    /// The boot epoch.
    pub fn boot_epoch(&self) -> u32 {
        le_u32(&self.buf[field::boot_epoch(self.id_len)])
    }

    /// The sequence number within the boot epoch.
    pub fn sequence(&self) -> u32 {
        le_u32(&self.buf[field::sequence(self.id_len)])
    }

    /// The timestamp, interpreted by the clock-synced flag.
    pub fn timestamp(&self) -> Timestamp {
        let ms = le_u64(&self.buf[field::timestamp(self.id_len)]);
        if self.buf[field::FLAGS] & FLAG_CLOCK_SYNCED != 0 {
            Timestamp::Synced { unix_ms: ms }
        } else {
            Timestamp::Unsynced { uptime_ms: ms }
        }
    }

    /// All header fields.
    pub fn header(&self) -> Header<'a> {
        Header {
            device_id: self.device_id(),
            boot_epoch: self.boot_epoch(),
            sequence: self.sequence(),
            timestamp: self.timestamp(),
        }
    }

    fn body_range(&self) -> Range<usize> {
        field::body(self.id_len, self.body_len)
    }

    /// The bytes the tag covers: header and body.
    pub fn signed_bytes(&self) -> &'a [u8] {
        &self.buf[..self.body_range().end]
    }

    /// The encoded body.
    pub fn body_bytes(&self) -> &'a [u8] {
        &self.buf[self.body_range()]
    }

    /// The tag.
    pub fn tag(&self) -> &'a [u8] {
        &self.buf[self.body_range().end..]
    }

    /// The whole frame.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Checks the tag with the device's key, in constant time.
    pub fn verify(self, key: &DeviceKey) -> Result<Verified<'a>, FrameError> {
        if key.verify(self.signed_bytes(), self.tag()) {
            Ok(Verified(self))
        } else {
            Err(FrameError::BadTag)
        }
    }

    /// [`Frame::verify`] with a key prepared once for many frames.
    pub fn verify_prepared(self, key: &PreparedKey) -> Result<Verified<'a>, FrameError> {
        if key.verify(self.signed_bytes(), self.tag()) {
            Ok(Verified(self))
        } else {
            Err(FrameError::BadTag)
        }
    }
}

/// A frame whose tag verified: only now is its body worth decoding.
#[derive(Debug, Clone, Copy)]
pub struct Verified<'a>(Frame<'a>);

impl<'a> Verified<'a> {
    /// The underlying frame.
    pub fn frame(&self) -> Frame<'a> {
        self.0
    }

    /// Decodes the body. All of the body bytes must be used.
    pub fn decode(&self) -> Result<Message<'a>, FrameError> {
        let (body, rest) = postcard::take_from_bytes::<Body>(self.0.body_bytes())
            .map_err(|_| FrameError::MalformedBody)?;
        if !rest.is_empty() {
            return Err(FrameError::MalformedBody);
        }
        Ok(Message {
            header: self.0.header(),
            body,
        })
    }
}

/// Checks, verifies and decodes a frame in one step.
pub fn open<'a>(buf: &'a [u8], key: &DeviceKey) -> Result<Message<'a>, FrameError> {
    Frame::new_checked(buf)?.verify(key)?.decode()
}

/// Encodes `body` under `header` into `out`, signs it with `key`, and returns the frame length.
pub fn seal(
    header: &Header<'_>,
    body: &Body,
    key: &DeviceKey,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let id = header.device_id.as_bytes();
    if !valid_device_id(id) {
        return Err(EncodeError::BadDeviceId);
    }
    let id_len = id.len();
    let body_start = field::body(id_len, 0).start;
    if out.len() < body_start + TAG_LEN {
        return Err(EncodeError::BufferTooSmall);
    }
    let room = (out.len() - body_start - TAG_LEN).min(MAX_BODY_LEN);
    let body_len = match postcard::to_slice(body, &mut out[body_start..body_start + room]) {
        Ok(encoded) => encoded.len(),
        Err(postcard::Error::SerializeBufferFull) if room == MAX_BODY_LEN => {
            return Err(EncodeError::BodyTooLong);
        }
        Err(_) => return Err(EncodeError::BufferTooSmall),
    };
    let (flags, ms) = match header.timestamp {
        Timestamp::Synced { unix_ms } => (FLAG_CLOCK_SYNCED, unix_ms),
        Timestamp::Unsynced { uptime_ms } => (0, uptime_ms),
    };
    out[field::VERSION] = FORMAT_VERSION;
    out[field::FLAGS] = flags;
    // valid_device_id bounds id_len by MAX_DEVICE_ID_LEN (32), so it fits a byte.
    out[field::ID_LEN] = id_len as u8;
    out[field::device_id(id_len)].copy_from_slice(id);
    out[field::boot_epoch(id_len)].copy_from_slice(&header.boot_epoch.to_le_bytes());
    out[field::sequence(id_len)].copy_from_slice(&header.sequence.to_le_bytes());
    out[field::timestamp(id_len)].copy_from_slice(&ms.to_le_bytes());
    // body_len ≤ MAX_BODY_LEN < u16::MAX.
    out[field::body_len(id_len)].copy_from_slice(&(body_len as u16).to_le_bytes());
    let signed_end = body_start + body_len;
    let tag = key.tag(&out[..signed_end]);
    out[signed_end..signed_end + TAG_LEN].copy_from_slice(&tag);
    Ok(signed_end + TAG_LEN)
}

#[cfg(feature = "std")]
mod owned {
    use super::*;

    /// Encodes into a new `Vec` (gateway and simulator).
    pub fn seal_to_vec(
        header: &Header<'_>,
        body: &Body,
        key: &DeviceKey,
    ) -> Result<std::vec::Vec<u8>, EncodeError> {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = seal(header, body, key, &mut buf)?;
        Ok(buf[..n].to_vec())
    }
}

#[cfg(feature = "std")]
pub use owned::seal_to_vec;
