//! Support for CitySense's end-to-end tests: real services started on free loopback ports
//! ([`services`]), an MQTT-aware TCP proxy that can black-hole a connection and records which
//! messages a client acknowledged ([`proxy`]), and small HTTP and frame helpers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: failing loudly is the point

pub mod http;
pub mod load_frames;
pub mod pki;
pub mod platform;
pub mod proxy;
pub mod services;
