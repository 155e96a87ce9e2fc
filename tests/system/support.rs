//! Shared helpers: an in-process gateway on a real broker, a publishing node fleet, waiting.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use device_profiles::Catalog;
use gateway::decode::VerifySection;
use gateway::net::mqtt::MqttSection;
use gateway::{Gateway, Settings};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use system_tests::services::Mosquitto;
use tokio::sync::mpsc;
use wire::{Body, Header, Timestamp};

/// The Ganzhou catalog the tests run on.
pub fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::ganzhou().unwrap())
}

/// The Ganzhou catalog with grid `grid` escalating an unacknowledged `grade` after `after_s`
/// seconds, and the demo keys of its devices.
pub fn escalating(grid: &str, grade: &str, after_s: u32) -> (Arc<Catalog>, gateway::keys::Keys) {
    let mut site = (*catalog()).clone();
    site.site
        .grids
        .iter_mut()
        .find(|g| g.id == grid)
        .unwrap_or_else(|| panic!("no grid {grid}"))
        .escalate_after_s
        .insert(grade.into(), after_s);
    let keys = gateway::keys::Keys::demo(&site);
    (Arc::new(site), keys)
}

/// Starts a gateway on `broker_port` with demo keys for every wire device.
pub async fn start_gateway(name: &str, broker_port: u16, keep_alive_s: u64) -> Gateway {
    start_gateway_with(name, broker_port, |m| m.keep_alive_s = keep_alive_s).await
}

/// [`start_gateway`] with changes to the MQTT settings.
pub async fn start_gateway_with(
    name: &str,
    broker_port: u16,
    change: impl FnOnce(&mut MqttSection),
) -> Gateway {
    start_gateway_settings(name, broker_port, |s| change(&mut s.mqtt)).await
}

/// [`start_gateway`] with changes to any setting.
pub async fn start_gateway_settings(
    name: &str,
    broker_port: u16,
    change: impl FnOnce(&mut Settings),
) -> Gateway {
    let catalog = catalog();
    let keys = gateway::keys::Keys::demo(&catalog);
    start_gateway_on(catalog, keys, name, broker_port, change).await
}

/// A gateway on any catalog and keys, with the tests' settings (in-memory store, quick
/// reconnects, no Modbus polling unless a test turns it on) changed by `change`.
pub async fn start_gateway_on(
    catalog: Arc<Catalog>,
    keys: gateway::keys::Keys,
    name: &str,
    broker_port: u16,
    change: impl FnOnce(&mut Settings),
) -> Gateway {
    let mut settings = test_settings(name, broker_port);
    change(&mut settings);
    let gw = Gateway::start(settings, catalog, keys).await.unwrap();
    give_test_token(&gw.store());
    gw
}

/// The settings of a test gateway named `name` on the broker at `broker_port`: loopback HTTP
/// on a free port, an in-memory store, no sinks, Modbus off.
pub fn test_settings(name: &str, broker_port: u16) -> Settings {
    let mut mqtt = gateway::demo::demo_mqtt(([127, 0, 0, 1], broker_port).into());
    mqtt.reconnect_min_ms = 50;
    mqtt.reconnect_max_ms = 500;
    Settings {
        gateway_id: format!("gw-{name}-{}", std::process::id()),
        partition: None,
        mqtt,
        verify: VerifySection::default(),
        http: gateway::api::HttpSection {
            listen: ([127, 0, 0, 1], 0).into(),
            ..Default::default()
        },
        zones: Vec::new(),
        store_path: ":memory:".into(),
        influxdb: None,
        retention: gateway::store::Retention::default(),
        commit_interval: gateway::store::COMMIT_INTERVAL,
        key_resend: gateway::housekeeping::rotation::RESEND,
        aggregate: gateway::aggregate::AggregateSettings::default(),
        alerts: Default::default(),
        // Tests that poll Modbus turn it on with their own slave's endpoint.
        modbus: gateway::source::modbus::ModbusSection {
            enabled: false,
            ..Default::default()
        },
        city_platform: None,
    }
}

/// A logged-in browser's session: its cookie and CSRF token.
pub struct LoggedIn {
    addr: std::net::SocketAddr,
    cookie: String,
    csrf: String,
}

/// Logs `name` in with `password` at `addr` (panics unless 200).
pub async fn log_in(addr: std::net::SocketAddr, name: &str, password: &str) -> LoggedIn {
    let body = serde_json::json!({"name": name, "password": password}).to_string();
    let (status, head, body) =
        system_tests::http::send(addr, "POST", "/api/v1/login", &body, &[]).await;
    assert_eq!(status, 200, "login of {name}: {body}");
    let cookie = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.eq_ignore_ascii_case("set-cookie"))
                .then(|| v.trim().split(';').next().unwrap().to_owned())
        })
        .unwrap_or_else(|| panic!("no session cookie: {head}"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    LoggedIn {
        addr,
        cookie,
        csrf: v["csrf"].as_str().unwrap().to_owned(),
    }
}

impl LoggedIn {
    /// The session's CSRF token.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// `GET path` in the session.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let (s, _, b) =
            system_tests::http::send(self.addr, "GET", path, "", &[("Cookie", &self.cookie)]).await;
        (s, b)
    }

    /// `POST path` in the session, with its CSRF token.
    pub async fn post(&self, path: &str, body: &str) -> (u16, String) {
        let headers = [
            ("Cookie", self.cookie.as_str()),
            ("X-CSRF-Token", &self.csrf),
        ];
        let (s, _, b) = system_tests::http::send(self.addr, "POST", path, body, &headers).await;
        (s, b)
    }

    /// `POST path` in the session without the CSRF token (as a forged form would).
    pub async fn post_without_csrf(&self, path: &str, body: &str) -> (u16, String) {
        let headers = [("Cookie", self.cookie.as_str())];
        let (s, _, b) = system_tests::http::send(self.addr, "POST", path, body, &headers).await;
        (s, b)
    }
}

/// Gives a gateway's store the `operate` token the tests' HTTP helpers send
/// ([`system_tests::http::TEST_TOKEN`]), as `gateway tokens add` would (with a known secret).
pub fn give_test_token(store: &gateway::store::Store) {
    use system_tests::http::{TEST_TOKEN_ID, TEST_TOKEN_SECRET};
    if store.token(TEST_TOKEN_ID).unwrap().is_some() {
        return;
    }
    store
        .add_token(&gateway::store::ApiToken {
            id: TEST_TOKEN_ID.into(),
            name: "system tests".into(),
            scope: "operate".into(),
            hash: gateway::auth::tokens::digest(TEST_TOKEN_SECRET),
            created_ms: gateway::clock::now_ms(),
            revoked_ms: None,
        })
        .unwrap();
}

/// An InfluxDB sink writing to the VictoriaMetrics `vm` (its InfluxDB v2 write API).
pub fn sink_to(
    vm: &system_tests::services::VictoriaMetrics,
) -> gateway::sink::influxdb::InfluxSection {
    gateway::sink::influxdb::InfluxSection {
        url: vm.url(),
        ..sink_to_url_defaults()
    }
}

/// [`sink_to`]'s settings but the URL.
pub fn sink_to_url_defaults() -> gateway::sink::influxdb::InfluxSection {
    gateway::sink::influxdb::InfluxSection {
        url: String::new(),
        org: "ganzhou".into(),
        bucket: "citysense".into(),
        batch_lines: 500,
        flush_ms: 200,
        timeout_ms: 2000,
        gzip: true,
        token: String::new(),
    }
}

/// The `up` topic of a site device.
pub fn up_topic(device: &str) -> String {
    let c = catalog();
    let d = c.site.device(device).unwrap();
    format!("cs/v1/{}/{}/{}/up", d.zone, d.profile, d.id)
}

/// A signed frame of `device` (demo key), synced to now.
pub fn frame(device: &str, epoch: u32, sequence: u32, body: &Body) -> Vec<u8> {
    frame_at(device, epoch, sequence, gateway::clock::now_ms(), body)
}

/// A signed frame of `device` (demo key) stamped `time_ms`.
pub fn frame_at(device: &str, epoch: u32, sequence: u32, time_ms: i64, body: &Body) -> Vec<u8> {
    let header = Header {
        device_id: device,
        boot_epoch: epoch,
        sequence,
        timestamp: Timestamp::Synced {
            unix_ms: time_ms as u64,
        },
    };
    wire::frame::seal_to_vec(&header, body, &device_profiles::demo::key(device)).unwrap()
}

/// A node's status report: how far its clock has come, with nothing to count. A unit's windows
/// close once each of its live devices has reported past them.
pub fn heartbeat() -> Body {
    Body::Status(wire::DeviceStatus {
        battery_pct: None,
        signal_dbm: -60,
        uptime_s: 600,
        firmware: wire::FirmwareVersion {
            major: 1,
            minor: 0,
            patch: 0,
        },
        key_fingerprint: wire::KeyFingerprint([0; 8]),
    })
}

/// A pipe report with one value.
pub fn pipe(quantity: wire::Quantity, value: f32) -> Body {
    let mut readings = heapless::Vec::new();
    readings
        .push(wire::PipeReading { quantity, value })
        .unwrap();
    Body::PipeReadings(wire::PipeReadings {
        trigger: wire::Trigger::Periodic,
        readings,
    })
}

/// An MQTT 5 client whose event loop runs in the background (reconnecting on errors), with
/// the publishes it receives on a channel.
pub async fn client(
    id: &str,
    port: u16,
    clean: bool,
) -> (AsyncClient, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let mut o = MqttOptions::new(format!("{id}-{}", std::process::id()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5))
        .set_clean_start(clean)
        .set_session_expiry_interval(Some(600));
    o.set_max_packet_size(Some(256 * 1024));
    let (client, mut eventloop) = AsyncClient::new(o, 10_000);
    let (tx, rx) = mpsc::unbounded_channel();
    let (connected_tx, mut connected_rx) = mpsc::channel::<()>(1);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(rumqttc::v5::Incoming::ConnAck(_))) => {
                    let _ = connected_tx.try_send(());
                }
                Ok(Event::Incoming(rumqttc::v5::Incoming::Publish(p))) => {
                    let _ = tx.send((
                        String::from_utf8_lossy(&p.topic).into_owned(),
                        p.payload.to_vec(),
                    ));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), connected_rx.recv())
        .await
        .expect("client connects to the broker");
    (client, rx)
}

/// Publishes QoS1.
pub async fn publish(client: &AsyncClient, topic: &str, payload: Vec<u8>) {
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after `limit`.
/// Waits for `client`'s keepalive ping in the log of `broker` (started with
/// [`Mosquitto::start_logging_debug`]) within three 5-s keepalives, and checks that the broker
/// did not drop it as silent before.
pub async fn pings_through_a_quiet_spell(broker: &Mosquitto, client: &str) {
    let log = || std::fs::read_to_string(broker.log()).unwrap_or_default();
    wait_for(
        &format!("a keepalive ping from the quiet connection {client}"),
        Duration::from_secs(15),
        || async { log().contains(&format!("Received PINGREQ from {client}")) },
    )
    .await;
    assert!(
        !log().contains(&format!("Client {client} has exceeded timeout")),
        "the broker dropped the quiet connection {client}:\n{}",
        log()
    );
}

pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Accepted report count of a device.
pub fn accepted(gw: &Gateway, device: &str) -> u64 {
    gw.registry()
        .lock()
        .unwrap()
        .get(device)
        .map_or(0, |d| d.state.accepted)
}

/// A binary of the workspace, built beforehand (`cargo build --workspace --bins`, as
/// deploy/test-all.sh does).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug").join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (deploy/test-all.sh does)",
        bin.display()
    );
    bin
}

/// The DingTalk robot messages a receiver accepted: each one's markdown text and the first
/// mobile number it @-s.
pub fn robot_calls(hook: &system_tests::http::Webhook) -> Vec<(String, String)> {
    hook.accepted
        .lock()
        .unwrap()
        .iter()
        .map(|b| {
            let text = b["markdown"]["text"].as_str().unwrap_or_default();
            let mobile = b["at"]["atMobiles"][0].as_str().unwrap_or_default();
            (text.to_owned(), mobile.to_owned())
        })
        .collect()
}

/// The open alert of `rule` on `gw`, if any.
pub fn open_alert(gw: &Gateway, rule: &str) -> Option<gateway::alert::Alert> {
    gw.alerts()
        .engine
        .lock()
        .unwrap()
        .open_alerts()
        .into_iter()
        .find(|a| a.rule == rule)
}
