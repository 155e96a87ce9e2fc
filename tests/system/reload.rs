//! Live reload and online key rotation against `gateway run` and a real Mosquitto:
//! `gateway reload` (SIGHUP) takes a new key, a new device and new rules without dropping the
//! broker session, refuses what it cannot do and changes nothing then; `gateway keys rotate`
//! sends a node running the real node logic its new key over the air, and a silent node keeps
//! its old one, pending.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use node::config::{Config as NodeConfig, Role, Stream};
use node::lifecycle::{Node, RamStorage, Uplink};
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use system_tests::services::{Mosquitto, free_port};
use wire::Quantity;

use crate::support::*;

const PRESS: &str = "gz-p1-press";
const OTHER: &str = "gz-p2-press";

/// A gateway process on `dir`'s config, killed when dropped.
struct Running {
    child: Child,
    http: std::net::SocketAddr,
    config: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// The sum of every series of the metric `name`.
    async fn metric(&self, name: &str) -> f64 {
        let (_, text) = system_tests::http::get(self.http, "/metrics").await;
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn gateway(&self, args: &[&str]) -> std::process::Output {
        Command::new(workspace_binary("gateway"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
    }
}

/// The Ganzhou site and rules copied into `dir` (to be edited), keys for `keyed`, and a config
/// naming them; then `gateway run` on it.
fn start(dir: &Path, broker_port: u16, keyed: &[&str]) -> Running {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::copy(
        root.join("device-profiles/sites/ganzhou.toml"),
        dir.join("site.toml"),
    )
    .unwrap();
    std::fs::write(dir.join("rules.toml"), "").unwrap();
    write_keys(dir, keyed);
    let http = free_port();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"gw-reload\"\n\n[site]\nprofiles = \"{}\"\nsite = \"site.toml\"\nkeys = \"keys.toml\"\n\
             zones = [\"360702\"]\n\n[store]\npath = \"gateway.db\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\n\
             keep_alive_s = 5\n\n[http]\nlisten = \"127.0.0.1:{http}\"\n\n[alerts]\nrule_files = [\"rules.toml\"]\n",
            root.join("device-profiles/profiles").display(),
        ),
    )
    .unwrap();
    let child = crate::store_durability::spawn_gateway(&config, http);
    Running {
        child,
        http: std::net::SocketAddr::from(([127, 0, 0, 1], http)),
        config,
    }
}

fn write_keys(dir: &Path, keyed: &[&str]) {
    let keys: String = keyed
        .iter()
        .map(|d| device_profiles::keys::entry(d, &device_profiles::demo::key(d)))
        .collect();
    let path = dir.join("keys.toml");
    std::fs::write(&path, keys).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Publishes one pressure report of `device` under its demo key; waits until the gateway has
/// accepted or rejected one more message.
async fn report(gw: &Running, node: &AsyncClient, device: &str, seq: u32) -> bool {
    let (accepted, rejected) = (
        gw.metric("citysense_readings_accepted_total").await,
        gw.metric("citysense_messages_rejected_total").await,
    );
    publish(
        node,
        &up_topic(device),
        frame(device, 1, seq, &pipe(Quantity::Pressure, 0.3)),
    )
    .await;
    let mut outcome = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while outcome.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "{device}'s report was not handled"
        );
        if gw.metric("citysense_readings_accepted_total").await > accepted {
            outcome = Some(true);
        } else if gw.metric("citysense_messages_rejected_total").await > rejected {
            outcome = Some(false);
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    outcome.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_takes_keys_devices_and_rules_without_a_reconnect_and_a_refused_one_changes_nothing()
 {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = start(d, broker.port, &[OTHER]);
    wait_for("gateway connected", Duration::from_secs(10), || async {
        gw.metric("citysense_broker_connected").await == 1.0
    })
    .await;
    let (node, _) = client("reload-node", broker.port, true).await;
    assert!(
        !report(&gw, &node, PRESS, 1).await,
        "a device without a key was accepted"
    );

    // A key added, a rule added, a device added to the site: one reload.
    write_keys(d, &[OTHER, PRESS]);
    std::fs::write(
        d.join("rules.toml"),
        "[[rule]]\nid = \"pipe.pressure_reload_test\"\ncategory = \"pipe\"\nsource = \"reading\"\n\
         field = \"pressure\"\nkinds = [\"water-pressure\"]\nside = \"above\"\n\
         grades = [{ name = \"warning\", label = \"预警\", at = 0.9 }]\n",
    )
    .unwrap();
    let site = std::fs::read_to_string(d.join("site.toml")).unwrap();
    std::fs::write(
        d.join("site.toml"),
        format!(
            "{site}\n[[device]]\nid = \"gz-p9-press\"\nprofile = \"water-pressure\"\nzone = \"360702\"\n\n\
             [[pipe_asset]]\nid = \"P9\"\nname = \"新增供水管\"\nzone = \"360702\"\nlocation = [25.85, 114.93]\n\
             kind = \"water_main\"\ndevices = [\"gz-p9-press\"]\n"
        ),
    )
    .unwrap();
    let out = gw.gateway(&["reload"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("keys 1 -> 2 (1 changed)"), "{said}");
    assert!(said.contains("devices +1 -0"), "{said}");
    assert!(
        said.contains("site changed (aggregation rebuilt)"),
        "{said}"
    );
    let rules: Vec<u32> = said
        .split("rules ")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .split(" -> ")
        .map(|n| n.trim().parse().unwrap())
        .collect();
    assert_eq!(rules[1], rules[0] + 1, "{said}");
    assert!(
        report(&gw, &node, PRESS, 2).await,
        "the reloaded key was not used"
    );

    // Refused reloads change nothing and say why: a device moved to another district (the
    // gateway refuses), and a keys file that does not parse (refused before it is sent).
    let site = std::fs::read_to_string(d.join("site.toml")).unwrap();
    let moved = site
        .replacen(
            "id = \"gz-p2-press\"\nprofile = \"water-pressure\"\nzone = \"360702\"",
            "id = \"gz-p2-press\"\nprofile = \"water-pressure\"\nzone = \"360703\"",
            1,
        )
        .replacen(
            "id = \"P2\"\nname = \"长征大道 DN400 供水管\"\nzone = \"360702\"",
            "id = \"P2\"\nname = \"长征大道 DN400 供水管\"\nzone = \"360703\"",
            1,
        );
    assert_ne!(
        moved, site,
        "the site file changed its layout: update the test"
    );
    std::fs::write(d.join("site.toml"), &moved).unwrap();
    write_keys(d, &[]);
    let out = gw.gateway(&["reload"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("gz-p2-press moves from district 360702 to 360703"),
        "{}",
        text(&out)
    );
    std::fs::write(d.join("site.toml"), &site).unwrap();
    std::fs::write(
        d.join("keys.toml"),
        "[[device]]\nid = \"x\"\nkey = \"00\"\n",
    )
    .unwrap();
    let out = gw.gateway(&["reload"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("keys.toml:3:1: device \"x\": key must be 32 bytes")
            && text(&out).contains("nothing was sent to the gateway"),
        "{}",
        text(&out)
    );
    assert!(
        report(&gw, &node, PRESS, 3).await,
        "a refused reload changed the keys"
    );
    assert!(report(&gw, &node, OTHER, 1).await);

    // A signal alone (systemctl reload) is refused the same way when the files do not check.
    let before = gw.metric("citysense_config_reloads_total").await;
    assert!(
        Command::new("kill")
            .args(["-HUP", &gw.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_for("the SIGHUP's reload", Duration::from_secs(10), || async {
        gw.metric("citysense_config_reloads_total").await > before
    })
    .await;
    assert!(report(&gw, &node, PRESS, 4).await);

    // The broker session stayed up throughout, and each reload the gateway saw is in the audit
    // trail (the one refused before it was sent is not its to record).
    assert_eq!(gw.metric("citysense_broker_disconnects_total").await, 0.0);
    let audit = gw.gateway(&["audit", "export", "--since", "1h"]);
    let audit = String::from_utf8_lossy(&audit.stdout);
    let reloads: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"config.reload\""))
        .collect();
    assert_eq!(reloads.len(), 3, "{audit}");
    assert!(reloads[0].contains("\"outcome\":\"ok\""), "{}", reloads[0]);
    assert!(
        reloads[1..]
            .iter()
            .all(|r| r.contains("\"outcome\":\"refused\"")),
        "{audit}"
    );
}

/// A node running the real node logic: it reports, and answers its downlinks.
struct LiveNode {
    node: Node<8>,
    ram: RamStorage,
    client: AsyncClient,
    uptime_ms: u64,
}

struct Broker<'a>(&'a AsyncClient);

impl Uplink for Broker<'_> {
    type Error = rumqttc::v5::ClientError;
    async fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), Self::Error> {
        self.0
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .await
    }
}

impl LiveNode {
    fn config(device: &str) -> NodeConfig {
        let c = catalog();
        let d = c.site.device(device).unwrap();
        NodeConfig {
            device_id: device.try_into().unwrap(),
            zone: d.zone.as_str().try_into().unwrap(),
            kind: d.profile.as_str().try_into().unwrap(),
            key: *device_profiles::demo::key(device).as_bytes(),
            broker_host: "127.0.0.1".try_into().unwrap(),
            broker_port: 1883,
            broker_password: heapless::String::new(),
            report_interval_s: 60,
            status_interval_s: 3600,
            tag_salt: [0; 16],
            role: Role::Pipe,
        }
    }

    async fn report(&mut self) {
        self.uptime_ms += 1000;
        self.node
            .report(&pipe(Quantity::Pressure, 0.3), self.uptime_ms, false)
            .unwrap();
        self.node.flush(&mut Broker(&self.client)).await.unwrap();
    }

    async fn downlink(&mut self, frame: &[u8]) {
        self.uptime_ms += 10;
        self.node
            .handle_downlink(frame, self.uptime_ms, &mut self.ram)
            .expect("the node takes the gateway's downlink");
        self.node.flush(&mut Broker(&self.client)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_its_new_key_over_the_air_and_a_silent_one_stays_pending_on_its_old_one() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = start(d, broker.port, &[PRESS, OTHER]);
    wait_for("gateway connected", Duration::from_secs(10), || async {
        gw.metric("citysense_broker_connected").await == 1.0
    })
    .await;
    let config = LiveNode::config(PRESS);
    let down = config.topic(Stream::Down).to_string();
    let (node_client, mut downlinks) = client("rotating-node", broker.port, true).await;
    node_client
        .subscribe(&down, QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut ram = RamStorage::default();
    let mut node = LiveNode {
        node: Node::boot(config, &mut ram),
        ram,
        client: node_client,
        uptime_ms: 0,
    };
    node.report().await;
    let (silent, _) = client("silent-node", broker.port, true).await;

    let out = gw.gateway(&["keys", "rotate", PRESS, OTHER]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("new keys for 2"), "{}", text(&out));
    let (topic, frame) = tokio::time::timeout(Duration::from_secs(10), downlinks.recv())
        .await
        .expect("the gateway sent no key rotation downlink")
        .unwrap();
    assert_eq!(topic, down);
    let old_key = node.node.key().clone();
    let accepted = gw.metric("citysense_readings_accepted_total").await;
    node.downlink(&frame).await;
    assert_ne!(
        node.node.key(),
        &old_key,
        "the node did not take the new key"
    );
    node.report().await;
    wait_for(
        "the gateway makes the new key the only one, and takes the node's report under it",
        Duration::from_secs(10),
        || async {
            gw.metric("citysense_key_rotations_pending").await == 1.0
                && gw.metric("citysense_readings_accepted_total").await > accepted
        },
    )
    .await;
    let listed = text(&gw.gateway(&["keys", "list"]));
    let press = listed.lines().find(|l| l.starts_with(PRESS)).unwrap();
    let other = listed.lines().find(|l| l.starts_with(OTHER)).unwrap();
    assert!(press.contains(" 1 ") && press.ends_with(" -"), "{listed}");
    assert!(
        other.contains(" 0 ") && other.contains("pending: key 1"),
        "{listed}"
    );
    let pending = text(&gw.gateway(&["keys", "list", "--pending"]));
    assert!(
        !pending.contains(PRESS) && pending.contains(OTHER),
        "{pending}"
    );
    // The keys file now holds the node's new key alone, still private.
    let keys = gateway::keys::Keys::load(&d.join("keys.toml")).unwrap();
    assert_eq!(keys.get(PRESS), Some(node.node.key()));
    assert!(keys.next(PRESS).is_none());
    let mode = std::fs::metadata(d.join("keys.toml"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // The old key is refused now; the rotated node's reports go on; the silent node keeps its
    // old key.
    assert!(
        !report(&gw, &silent, PRESS, 99).await,
        "the old key is still accepted"
    );
    let accepted = gw.metric("citysense_readings_accepted_total").await;
    node.report().await;
    wait_for(
        "the node's report under its new key",
        Duration::from_secs(10),
        || async { gw.metric("citysense_readings_accepted_total").await > accepted },
    )
    .await;
    assert!(report(&gw, &silent, OTHER, 1).await);
    assert_eq!(gw.metric("citysense_broker_disconnects_total").await, 0.0);
}
