//! `nodectl` from the built binary: provision a node into a real Mosquitto's password and ACL
//! files, connect as that node, and hear it with `nodectl listen`; inspect and flash refuse a
//! corrupt image.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};
use system_tests::services::{Mosquitto, require};
use wire::{Body, Header, Quantity, Timestamp};

use crate::support::*;

fn nodectl() -> Command {
    Command::new(workspace_binary("nodectl"))
}

/// Connects as `user`; the CONNACK's outcome.
async fn connect_as(port: u16, user: &str, password: &str) -> Result<AsyncClient, String> {
    let mut o = MqttOptions::new(format!("{user}-{}", std::process::id()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5))
        .set_credentials(user, password);
    let (client, mut eventloop) = AsyncClient::new(o, 100);
    match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
        Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => {
            tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
            Ok(client)
        }
        Ok(Ok(other)) => Err(format!("{other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timeout".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisioned_node_connects_with_its_credentials_and_is_heard_verified() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The broker's own files, with a gateway user made by mosquitto_passwd.
    let passwd = d.join("passwd");
    let acl = d.join("acl");
    std::fs::write(&acl, "user gateway\ntopic read cs/v1/#\n").unwrap();
    let status = Command::new(require("mosquitto_passwd", "mosquitto"))
        .args(["-c", "-b"])
        .arg(&passwd)
        .args(["gateway", "gw-pass"])
        .status()
        .unwrap();
    assert!(status.success());
    // The broker's password file as an older nodectl or a careless copy left it.
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Under a umask that takes nothing away: the secrets are private all the same.
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$@\"")
        .arg("nodectl")
        .arg(nodectl().get_program())
        .args([
            "provision",
            "--device",
            "gz-p1-press",
            "--broker",
            "10.20.0.5:1883",
        ])
        .arg("--out")
        .arg(d.join("prov"))
        .arg("--keys")
        .arg(d.join("keys.toml"))
        .arg("--passwd")
        .arg(&passwd)
        .arg("--acl")
        .arg(&acl)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("device      gz-p1-press"), "{stdout}");
    for secret in [
        d.join("keys.toml"),
        passwd.clone(),
        d.join("prov/gz-p1-press.cscb"),
        d.join("prov/site-salt.hex"),
    ] {
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", secret.display());
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was readable by others (mode 644): now 600"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Provisioning the same device twice is refused, naming the file.
    let again = nodectl()
        .args(["provision", "--device", "gz-p1-press", "--out"])
        .arg(d.join("prov"))
        .arg("--keys")
        .arg(d.join("keys.toml"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has a key for this device"));

    let image = std::fs::read(d.join("prov/gz-p1-press.cscb")).unwrap();
    let config = node::config::Config::decode(&image).unwrap();
    let keys = gateway::keys::Keys::load(&d.join("keys.toml")).unwrap();
    let key = keys.get("gz-p1-press").unwrap().clone();
    assert_eq!(
        key.as_bytes(),
        &config.key,
        "the image and the keys file hold one key"
    );

    let broker = Mosquitto::start_with_listeners(dir, move |port| {
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}",
            passwd.display(),
            acl.display()
        )
    });
    let port = broker.port;
    assert_eq!(config.broker_host.as_str(), "10.20.0.5");
    // The node's own credentials work; a wrong password does not.
    let wrong = connect_as(port, "gz-p1-press", "not-the-password").await;
    assert!(wrong.is_err(), "a wrong password was accepted");
    let node_client = connect_as(port, "gz-p1-press", &config.broker_password)
        .await
        .expect("the provisioned password is accepted");

    // `nodectl listen` as the gateway user hears the node's frames, verified with its key.
    let mut listen = nodectl()
        .args([
            "listen",
            "gz-p1-press",
            "--count",
            "2",
            "--timeout-s",
            "20",
            "--broker",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--keys")
        .arg(broker_dir_file(&broker, "keys.toml"))
        .args(["--username", "gateway"])
        .env("CITYSENSE_MQTT_PASSWORD", "gw-pass")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let topic = config.topic(node::config::Stream::Up);
    let started = Instant::now();
    let mut seq = 0;
    while listen.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "nodectl listen did not finish"
        );
        let header = Header {
            device_id: "gz-p1-press",
            boot_epoch: 1,
            sequence: seq,
            timestamp: Timestamp::Synced {
                unix_ms: gateway::clock::now_ms() as u64,
            },
        };
        seq += 1;
        let frame = wire::frame::seal_to_vec(&header, &pipe_body(0.3), &key).unwrap();
        node_client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, frame)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let output = listen.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("verified") && text.contains("gz-p1-press is alive"),
        "{text}"
    );
}

fn pipe_body(v: f32) -> Body {
    pipe(Quantity::Pressure, v)
}

/// The keys file was written next to the broker's files (the broker took over the directory).
fn broker_dir_file(broker: &Mosquitto, name: &str) -> std::path::PathBuf {
    broker.log().parent().unwrap().join(name)
}

#[test]
fn inspect_and_flash_refuse_a_corrupt_image_and_flash_dry_run_prints_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = nodectl()
        .args(["provision", "--device", "gz-r1-d1", "--out"])
        .arg(d)
        .arg("--keys")
        .arg(d.join("keys.toml"))
        .arg("--passwd")
        .arg(d.join("passwd"))
        .arg("--acl")
        .arg(d.join("acl"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = d.join("gz-r1-d1.cscb");
    let dry = nodectl()
        .args(["flash", "--dry-run", "--firmware", "node.elf", "--config"])
        .arg(&image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success());
    assert!(
        text.contains(
            "probe-rs download --chip STM32F407VGTx --binary-format bin --base-address 0x080e0000"
        ),
        "{text}"
    );
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[50] ^= 0x55;
    let corrupt = d.join("corrupt.cscb");
    std::fs::write(&corrupt, &bytes).unwrap();
    for args in [
        vec!["inspect".to_owned(), corrupt.display().to_string()],
        vec![
            "flash".into(),
            "--dry-run".into(),
            "--firmware".into(),
            "node.elf".into(),
            "--config".into(),
            corrupt.display().to_string(),
        ],
    ] {
        let r = nodectl().args(&args).output().unwrap();
        assert!(!r.status.success());
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains("CRC mismatch"), "{args:?}: {err}");
    }
}
