//! End-to-end tests of CitySense against real services. One binary; each module is a part.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod alerts;
mod backup;
mod city_platform;
mod console;
mod gateway_ingest;
mod identity;
mod layering;
mod modbus_slaves;
mod modbus_source;
mod nodectl;
mod operations;
mod reload;
mod scale;
mod scenarios;
mod store_durability;
mod support;
mod timeseries;
mod wire_golden;
