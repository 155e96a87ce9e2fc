//! Decode: from a device's message (an MQTT payload, or the registers a Modbus poll read) to
//! verified [`Reading`](crate::reading::Reading)s, or a [`Rejection`] with a reason.
//!
//! Checks, in order, each with its own reason label:
//! 1. the topic is `cs/v1/{zone}/{kind}/{device}/up` (`bad_topic`), the device is served
//!    (`unknown_device`) and publishes under its own zone and kind (`wrong_topic`);
//! 2. wire devices: the frame's layout (the [`wire::FrameError`] reasons), that the frame is the
//!    topic's device (`device_mismatch`), its key (`no_key`), tag, body; then the replay window
//!    (`replayed`) and the timestamp (`clock_skew`, `stale`);
//! 3. JSON devices: size (`oversized`), nesting (`too_deep`), syntax (`malformed_json`), the
//!    mapped fields (`missing_field`, `wrong_type`) and the device id (`device_mismatch`);
//! 4. the report suits the device (`unexpected_report`, `unknown_field`) and every value is
//!    inside the profile's range (`out_of_range`, which also catches NaN and infinities). Polled
//!    Modbus readings pass this check too ([`Verifier::polled`]).
//!
//! A rejection touches nothing but the counters of the device it names: other devices, and the
//! device's own replay window, are unchanged.
//!
//! # Layout
//! - [`topic`]: the device topics.
//! - [`frame`]: wire frames (authenticated, replay-checked) to readings.
//! - [`json`]: third-party JSON payloads through the profile's field mapping.
//! - [`registers`]: the words a Modbus poll read to field values.
//! - [`verify`]: the [`Verifier`], its `[verify]` section, and the range check every reading
//!   passes.

pub mod frame;
pub mod json;
pub mod registers;
pub mod topic;
pub mod verify;

use std::sync::Arc;

pub use topic::{DeviceTopic, Stream, parse_topic};
pub use verify::{Accepted, Verifier, VerifySection};

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable label: metrics and the DLQ.
    pub reason: &'static str,
    /// A sentence for people.
    pub detail: String,
    /// Zone from the topic, when it names a served district (the DLQ topic).
    pub zone: Option<Arc<str>>,
}

pub(crate) fn reject(reason: &'static str, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
        zone: None,
    }
}
