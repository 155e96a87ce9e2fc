//! CitySense node logic, `no_std` and heap-free, generic over embedded-hal 1.0.
//!
//! The same code runs on a board (see `firmware/boards/`), on the host in tests, in QEMU on an
//! emulated Cortex-M4F (`firmware/boards/qemu`), and in the simulator's virtual nodes.
//!
//! ```text
//! sensors ──▶ rfid / traffic / pipe logic ──▶ wire::Body ──▶ Node::report (seal, number, queue)
//!                                                   Node::flush ──▶ Uplink (MQTT 5, QoS 1)
//! down topic ──▶ Node::handle_downlink (verify, apply, persist, ack)
//! ```
//!
//! # Layout
//! - [`config`]: the provisioned config block (id, zone, key, broker, intervals; version, CRC).
//! - [`lifecycle`]: a node's life from boot to report: boot epoch and sequence numbers, sealing,
//!   the offline [`queue`], downlinks, status, the [`Uplink`] and [`Storage`] traits.
//! - [`drivers`]: the chips (ADS1115, MFRC522, the UHF module codec, a Modbus RTU master,
//!   QMC5883L), knowing nothing of the domain.
//! - [`rfid`]: gates: salted tag hashing, debouncing, batching of what the readers saw.
//! - [`traffic`]: vehicle detection on the magnetometer (baseline, drift, hysteresis,
//!   occupancy, speed), interval reports.
//! - [`pipe`]: transducer calibration, thresholds with immediate reports, the report schedule.
//! - [`mqtt`] (feature `mqtt`): the MQTT 5 session (minimq) behind [`node::Uplink`].
//! - `selftest` (feature `selftest`): checks that run on the host and in QEMU.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

pub mod config;
pub mod drivers;
pub mod lifecycle;
#[cfg(feature = "mqtt")]
pub mod mqtt;
pub mod pipe;
pub mod queue;
pub mod rfid;
#[cfg(any(test, feature = "selftest"))]
pub mod selftest;
pub mod traffic;

pub use config::Config;
pub use lifecycle::{Node, Storage, Uplink};
