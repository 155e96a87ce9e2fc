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
//! - [`node`]: boot epoch and sequence numbers, sealing, the offline [`queue`], downlinks,
//!   status, the [`node::Uplink`] and [`node::Storage`] traits.
//! - [`rfid`]: gate readers (MFRC522 over SPI, a UHF module over UART with our [`uhf`] codec),
//!   salted tag hashing, debouncing, batching.
//! - [`qmc5883l`] and [`traffic`]: the magnetometer driver and vehicle detection (baseline,
//!   drift, hysteresis, occupancy, speed), interval reports.
//! - [`pipe`]: ADS1115 transducers with calibration, a Modbus RTU master, thresholds with
//!   immediate reports, the report schedule.
//! - [`mqtt`] (feature `mqtt`): the MQTT 5 session (minimq) behind [`node::Uplink`].
//! - `selftest` (feature `selftest`): checks that run on the host and in QEMU.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

pub mod config;
#[cfg(feature = "mqtt")]
pub mod mqtt;
pub mod node;
pub mod pipe;
pub mod qmc5883l;
pub mod queue;
pub mod rfid;
#[cfg(any(test, feature = "selftest"))]
pub mod selftest;
pub mod traffic;
pub mod uhf;

pub use config::Config;
pub use node::{Node, Storage, Uplink};
