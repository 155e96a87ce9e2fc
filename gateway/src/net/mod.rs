//! The gateway's network connections that are not a source or a sink of their own: MQTT
//! connection options, the confirmed publisher and the silent-broker watchdog ([`mqtt`]), and
//! TLS client settings ([`tls`]).

pub mod mqtt;
pub mod tls;
