//! The CitySense wire frame: what a sensor node sends to the gateway, and what the gateway sends
//! back, over MQTT.
//!
//! A frame is a small fixed header, a [postcard]-encoded [`Body`] and an HMAC-SHA256 tag made with
//! the device's own 32-byte key. Nodes, the gateway and the simulator all use this crate, and all
//! of them test against the same [golden vectors](golden).
//!
//! The crate is `no_std` and never allocates: frames are parsed through a checked view over the
//! received bytes ([`Frame::new_checked`], after smoltcp's `new_checked`), and bodies decode into
//! fixed-capacity [`heapless`] collections. Parsing untrusted bytes never panics; every refusal
//! is a [`FrameError`] whose [`FrameError::reason`] is a stable label for metrics and the DLQ.
//!
//! # Byte layout (format version 1)
//!
//! All multi-byte header integers are little-endian.
//!
//! | offset      | size | field                                                              |
//! |-------------|------|--------------------------------------------------------------------|
//! | 0           | 1    | format version, `1`                                                |
//! | 1           | 1    | flags: bit 0 = clock synced; bits 1–7 reserved, must be 0          |
//! | 2           | 1    | device id length `L`, 1..=32                                       |
//! | 3           | L    | device id, ASCII `[A-Za-z0-9._-]`                                  |
//! | 3+L         | 4    | boot epoch (`u32`): incremented and persisted at every boot        |
//! | 7+L         | 4    | sequence (`u32`): per boot epoch, starts at 0                      |
//! | 11+L        | 8    | timestamp (`u64` ms): Unix time if synced, else uptime since boot  |
//! | 19+L        | 2    | body length `B` (`u16`)                                            |
//! | 21+L        | B    | body: postcard encoding of [`Body`]                                |
//! | 21+L+B      | 16   | tag: HMAC-SHA256(device key, bytes `0 .. 21+L+B`), first 16 bytes  |
//!
//! A frame is at most [`MAX_FRAME_LEN`] bytes. The header overhead is `37 + L` bytes.
//!
//! The body is postcard: enum variants are encoded as a varint index in declaration order, and
//! integers other than `u8`/`i8` as varints (zig-zag for signed). Appending a variant at the end of
//! an enum is compatible; any other change to the bytes bumps [`FORMAT_VERSION`].
//!
//! # Authentication and replay
//!
//! The tag covers the header and the body, so the device id, boot epoch and sequence cannot be
//! altered without the key. The tag is compared in constant time. The gateway keeps a replay
//! window per device on `(boot epoch, sequence)` and uses the same pair to count what it never
//! received; this crate only carries the numbers.
//!
//! # Layout
//!
//! - [`frame`]: the checked view over received bytes and the encoder ([`seal`], [`open`]).
//! - [`body`]: the report kinds: gate events and counts, traffic lane intervals, pipe readings,
//!   device status, downlink messages and their acknowledgements.
//! - [`auth`]: device keys, tags, fingerprints and key wrapping for rotation.
//! - [`golden`]: the checked-in test vectors.

#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_code)]

pub mod auth;
pub mod body;
pub mod frame;
pub mod golden;

pub use auth::{DeviceKey, KeyFingerprint, PreparedKey, TAG_LEN};
pub use body::{
    AckOutcome, Body, DeviceStatus, Direction, Downlink, DownlinkAck, FirmwareVersion, GateCounts,
    GateEvent, GateEvents, LaneInterval, PipeReading, PipeReadings, Quantity, TagHash,
    TrafficInterval, Trigger,
};
pub use frame::{
    EncodeError, FORMAT_VERSION, Frame, FrameError, Header, MAX_BODY_LEN, MAX_DEVICE_ID_LEN,
    MAX_FRAME_LEN, Message, Timestamp, Verified, open, seal,
};
