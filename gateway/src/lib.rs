//! The CitySense gateway: ingests node reports over MQTT and polls Modbus devices, verifies and
//! decodes them against the device profiles and keys, aggregates them into time series, raises
//! alerts, keeps everything in a durable local store, and drains the store into its sinks
//! (InfluxDB, the city platform, the alert notifiers); it serves metrics, an API and health.
//!
//! The folders follow the data flow of DESIGN.md:
//!
//! ```text
//! source/ (mqtt, modbus) ──▶ decode/ (topic, frame, json, verify) ──▶ Readings
//!                                        └──▶ cs/v1/dlq/{zone} (rejections with reasons)
//! pipeline: Readings ──▶ aggregate/ (crowd, traffic, pipe, device health) ──▶ Points
//!           Readings + Points ──▶ alert/ (rules, episodes) ──▶ alert changes
//!           all of it ──▶ store/ (one fsync'd commit) ──▶ ack to the broker
//! store/ ──▶ sink/ (one runtime: cursor, batching, wake, backoff, readiness, dead letters)
//!              ├──▶ influxdb      ├──▶ city_platform      └──▶ notify (mqtt, webhook, alertmanager)
//! store/ ──▶ api/ (/api/v1, /metrics, /healthz, /readyz)
//! ```
//!
//! # Layout
//!
//! Each layer imports only the layers below it; `tests/system/layering.rs` (in the
//! `system-tests` crate) fails on an import from the same layer or one above, and on circles.
//!
//! | layer, lowest first | modules |
//! |---|---|
//! | ground | [`clock`], [`backoff`], [`secret`], [`heap`], [`metrics`], [`reading`], [`point`], [`ledger`], [`keys`] |
//! | connections | [`registry`] (devices, presence, replay windows); [`net`]: MQTT options, the confirmed publisher, the watchdog, TLS |
//! | input | [`decode`]: device messages (frames, JSON, Modbus registers) to verified readings |
//! | state | [`aggregate`], then [`alert`]: pure state, time passed in |
//! | durability | [`store`]: the local store (accept, outbox, cursors, retention, quarantine) |
//! | sources and sinks | [`source`]: the MQTT session and the Modbus pollers; [`sink`]: the sink runtime and its sinks |
//! | flow | [`pipeline`]: batches, verification, aggregation, rules, commit, acknowledgement |
//! | edges | [`api`]: HTTP; [`housekeeping`]: retention, presence, rebuilding state |
//! | wiring | [`config`] composes every component's section; [`app`] starts a [`Gateway`]; [`commands`] and [`demo`] are the CLI's jobs |

pub mod aggregate;
pub mod alert;
pub mod api;
pub mod app;
pub mod auth;
pub mod backoff;
pub mod clock;
pub mod commands;
pub mod config;
pub mod decode;
pub mod demo;
pub mod heap;
pub mod housekeeping;
pub mod keys;
pub mod ledger;
pub mod metrics;
pub mod net;
pub mod pipeline;
pub mod point;
pub mod reading;
pub mod registry;
pub mod reload;
pub mod secret;
pub mod sink;
pub mod source;
pub mod store;

pub use app::{Gateway, Settings};
pub use commands::{check_config, load_rules, rules_list, rules_test, run};
