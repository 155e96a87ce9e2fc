//! Sources: where device messages come from.
//!
//! - [`mqtt`]: the persistent MQTT 5 session that receives the nodes' reports and status.
//! - [`modbus`]: the pollers of the site's Modbus devices (TCP, and RTU buses shared one
//!   request at a time).

pub mod modbus;
pub mod mqtt;
