//! What the measuring binaries share.

use gateway::Settings;

use crate::services::Mosquitto;

/// A gateway for a benchmark: `broker`'s subscriber with a clean session, its store in
/// `store_dir`, HTTP on a free loopback port, Modbus off, no sink but the local store.
pub fn gateway_settings(broker: &Mosquitto, store_dir: &std::path::Path, id: &str) -> Settings {
    let mut mqtt = gateway::demo::demo_mqtt(broker.addr());
    mqtt.clean_start = true;
    Settings {
        gateway_id: id.to_owned(),
        partition: None,
        mqtt,
        verify: Default::default(),
        http: gateway::api::HttpSection {
            listen: ([127, 0, 0, 1], 0).into(),
            ..Default::default()
        },
        zones: Vec::new(),
        store_path: store_dir.join("gateway.db"),
        retention: Default::default(),
        commit_interval: gateway::store::COMMIT_INTERVAL,
        key_resend: gateway::housekeeping::rotation::RESEND,
        aggregate: Default::default(),
        influxdb: None,
        alerts: Default::default(),
        modbus: gateway::source::modbus::ModbusSection {
            enabled: false,
            ..Default::default()
        },
        city_platform: None,
    }
}
