//! The CitySense simulator: the Ganzhou network as virtual nodes that run the real node logic
//! (`firmware/node`) against simulated sensors behind embedded-hal, publishing real signed
//! frames over MQTT 5; scenarios with expectations checked against the gateway; load tests.
//!
//! ```text
//! scenario.toml ──▶ Fleet (visitors, vehicles, pipes; one node::Node per device)
//!                     └─ frames ──▶ MQTT 5 broker ──▶ gateway
//! gateway: cs/v1/alerts/events + /api/v1/alerts + /api/v1/devices ──▶ oracle ──▶ report, exit code
//! ```
//!
//! # Layout
//! - [`scenario`]: scenario files. [`fleet`]: the virtual city and its nodes.
//! - [`hardware`]: simulated QMC5883L and ADS1115 chips for the real drivers.
//! - [`run`]: publishing, pacing and the oracle. [`load`]: `simulator load`, its latency
//!   [`probe`], and the generated site both publish on ([`load_site`]).
//! - [`modbus`]: Modbus slaves for the register-map profiles, with faults.

pub mod clock;
pub mod fleet;
pub mod hardware;
pub mod load;
pub mod load_site;
pub mod modbus;
pub mod probe;
pub mod run;
pub mod scenario;
