//! `nodectl` from the built binary: provision a node into a real Mosquitto's password and ACL
//! files, connect as that node, and hear it with `nodectl listen`; inspect and flash refuse a
//! corrupt image.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
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

/// Subscribes as `user` to `filter`; every message's topic, in arrival order.
async fn subscribe_as(
    port: u16,
    user: &str,
    password: &str,
    filter: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let mut o = MqttOptions::new(
        format!("{user}-sub-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    o.set_keep_alive(Duration::from_secs(5))
        .set_credentials(user, password);
    let (client, mut eventloop) = AsyncClient::new(o, 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    let user = user.to_owned();
    tokio::spawn(async move {
        let _client = client;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    if let Some(s) = subscribed_tx.take() {
                        let _ = s.send(());
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let _ = tx.send(String::from_utf8_lossy(&p.topic).into_owned());
                }
                Ok(_) => {}
                Err(e) => panic!("{user} lost the broker: {e}"),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), subscribed)
        .await
        .expect("no SUBACK")
        .unwrap();
    rx
}

/// `mosquitto_pub` over TLS with a client certificate; whether it connected and published.
fn publish_tls(port: u16, ca: &Path, cert: &Path, key: &Path, topic: &str) -> Result<(), String> {
    let out = Command::new(require("mosquitto_pub", "mosquitto-clients"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-V",
            "mqttv5",
        ])
        .arg("--cafile")
        .arg(ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(["-t", topic, "-m", "tls"])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_config_confines_each_device_to_its_topics_and_tls_takes_only_site_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let ca = d.join("ca");
    let run = |args: &mut Command| {
        let out = args.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(nodectl()
        .args(["ca", "init", "--broker-host", "127.0.0.1", "--out"])
        .arg(&ca));
    let again = nodectl()
        .args(["ca", "init", "--broker-host", "127.0.0.1", "--out"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(!again.status.success(), "a second CA replaced the first");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a CA"));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
    assert_eq!(mode(&ca.join("broker.key")), 0o600);
    for device in ["gz-p1-press", "gz-s2-g1"] {
        run(nodectl()
            .args(["provision", "--device", device, "--out"])
            .arg(d.join("prov"))
            .arg("--keys")
            .arg(d.join("keys.toml"))
            .arg("--passwd")
            .arg(d.join("provisioned.passwd"))
            .arg("--acl")
            .arg(d.join("provisioned.acl"))
            .arg("--tls")
            .arg(&ca));
        assert_eq!(mode(&d.join(format!("prov/{device}.key"))), 0o600);
    }
    // A password set by hand for a user that is not a device of the site survives a rerun.
    std::fs::write(d.join("citysense.passwd"), "operator-tool:$7$101$kept\n").unwrap();

    let tls_port = system_tests::services::free_port();
    let (out, keys) = (d.clone(), d.join("keys.toml"));
    let printed = std::sync::Mutex::new(String::new());
    let broker = Mosquitto::start_with_listeners(dir, |port| {
        *printed.lock().unwrap() = run(nodectl()
            .arg("broker-config")
            .arg("--keys")
            .arg(&keys)
            .arg("--out")
            .arg(&out)
            .arg("--ca")
            .arg(&ca)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--tls-listen")
            .arg(format!("127.0.0.1:{tls_port}"))
            .arg("--install-dir")
            .arg(&out)
            .env("CITYSENSE_MQTT_PASSWORD", "gw-pass"));
        std::fs::read_to_string(out.join("citysense-listeners.conf")).unwrap()
    });
    let printed = printed.into_inner().unwrap();
    assert!(
        printed.contains("2 devices with a key, 1 kept"),
        "{printed}"
    );
    let passwd = std::fs::read_to_string(d.join("citysense.passwd")).unwrap();
    assert!(passwd.contains("operator-tool:$7$101$kept"), "{passwd}");
    let port = broker.port;

    // Anonymous clients are refused; the gateway's and the devices' passwords work.
    let mut anonymous = MqttOptions::new("anonymous", "127.0.0.1", port);
    anonymous.set_keep_alive(Duration::from_secs(5));
    let (_c, mut el) = AsyncClient::new(anonymous, 10);
    let refused = tokio::time::timeout(Duration::from_secs(5), el.poll()).await;
    assert!(
        !matches!(refused, Ok(Ok(Event::Incoming(Incoming::ConnAck(ref a)))) if a.code == rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success),
        "an anonymous client was let in: {refused:?}"
    );
    let mut heard = subscribe_as(port, "gateway", "gw-pass", "cs/v1/+/+/+/up").await;
    let image = std::fs::read(d.join("prov/gz-p1-press.cscb")).unwrap();
    let press = node::config::Config::decode(&image).unwrap();
    let own = press.topic(node::config::Stream::Up).to_string();
    let other = "cs/v1/360702/uhf-rfid-gate/gz-s2-g1/up";
    let node = connect_as(port, "gz-p1-press", &press.broker_password)
        .await
        .expect("the password provision put in the image is the one broker-config wrote");
    // Another device's topic first, then its own: only its own arrives.
    for topic in [other, own.as_str()] {
        let _ = node.publish(topic, QoS::AtLeastOnce, false, "x").await;
    }
    let first = tokio::time::timeout(Duration::from_secs(5), heard.recv())
        .await
        .expect("the device's own report did not arrive")
        .unwrap();
    assert_eq!(first, own, "a device published on another device's topic");

    // TLS: a certificate of the site CA is a device's identity; its ACL applies as to its
    // password. A certificate from another CA is refused.
    let (ca_pem, gate_cert, gate_key) = (
        ca.join("ca.pem"),
        d.join("prov/gz-s2-g1.pem"),
        d.join("prov/gz-s2-g1.key"),
    );
    publish_tls(tls_port, &ca_pem, &gate_cert, &gate_key, &own).unwrap();
    publish_tls(tls_port, &ca_pem, &gate_cert, &gate_key, other)
        .expect("a device certificate of the site connects over TLS");
    let next = tokio::time::timeout(Duration::from_secs(5), heard.recv())
        .await
        .expect("the gate's report over TLS did not arrive")
        .unwrap();
    assert_eq!(
        next, other,
        "over TLS, a device published on another's topic"
    );
    let stranger = system_tests::pki::Pki::generate(&d, "stranger");
    let foreign = publish_tls(
        tls_port,
        &ca_pem,
        &stranger.client_cert,
        &stranger.client_key,
        other,
    );
    assert!(foreign.is_err(), "a foreign certificate was accepted");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), heard.recv())
            .await
            .is_err(),
        "a foreign certificate's message arrived"
    );
}
