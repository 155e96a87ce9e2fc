//! `gateway store backup` and `restore` with the real binary, a real Mosquitto and a gateway
//! under load: the backup is taken while reports stream in, a restore refuses while the
//! gateway runs, and once it is SIGKILLed the restored store holds every report the gateway
//! had acknowledged before the backup began (the SIGKILL test's check), and starts a gateway.

use std::process::Command;
use std::time::Duration;

use gateway::store::Store;
use system_tests::proxy::MqttProxy;
use system_tests::services::{Mosquitto, VictoriaMetrics, free_port};
use wire::Quantity;

use crate::gateway_ingest::gateway_binary;
use crate::store_durability::{spawn_gateway, write_config};
use crate::support::*;

const DEVICES: &[&str] = &["gz-p1-press", "gz-p2-press"];
const PER_DEVICE: u32 = 500;

fn store_command(args: &[&str], config: &std::path::Path) -> std::process::Output {
    Command::new(gateway_binary())
        .arg("store")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_everything_acknowledged_before_it() {
    let broker = Mosquitto::start();
    let vm = VictoriaMetrics::start();
    let proxy = MqttProxy::start(broker.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let config = write_config(dir.path(), proxy.port, http, &vm.url());
    let mut gw = spawn_gateway(&config, http);
    let (node, _) = client("backup-node", broker.port, false).await;
    let start = (gateway::clock::now_ms() - 30 * 60_000).div_euclid(60_000) * 60_000;
    let load = tokio::spawn(async move {
        for seq in 0..PER_DEVICE {
            for d in DEVICES {
                let t = start + i64::from(seq) * 1000;
                let body = pipe(Quantity::Pressure, 0.3);
                publish(&node, &up_topic(d), frame_at(d, 1, seq, t, &body)).await;
            }
            // A steady stream, so that the backup is taken in the middle of it.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    wait_for(
        "the gateway acknowledged a first hundred reports",
        Duration::from_secs(30),
        || async { proxy.acked_payloads().len() >= 100 },
    )
    .await;
    let acked_before = proxy.acked_payloads();
    let copy = dir.path().join("backup.db");
    let made = store_command(&["backup", copy.to_str().unwrap()], &config);
    let said = String::from_utf8_lossy(&made.stdout);
    assert!(
        made.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert!(
        said.contains("backup of") && said.contains("readings"),
        "{said}"
    );
    assert!(
        !load.is_finished(),
        "the load ended before the backup: nothing was taken under load"
    );

    // A restore while the gateway runs changes nothing.
    let refused = store_command(&["restore", copy.to_str().unwrap()], &config);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(err.contains("a gateway is running on"), "{err}");

    load.await.unwrap();
    gw.kill().unwrap(); // SIGKILL
    gw.wait().unwrap();
    let restored = store_command(&["restore", copy.to_str().unwrap()], &config);
    let said = String::from_utf8_lossy(&restored.stdout);
    assert!(
        restored.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert!(said.contains("the store it replaced is kept as"), "{said}");

    {
        let (store, report) = Store::open(&dir.path().join("gateway.db")).unwrap();
        assert_eq!(report.moved_corrupt_file, None);
        let ledgers = store.ledgers().unwrap();
        let stored: std::collections::HashSet<(String, i64)> = store
            .readings_after(0, 1_000_000)
            .unwrap()
            .into_iter()
            .map(|(_, r)| (r.device.to_string(), r.time_ms))
            .collect();
        for payload in &acked_before {
            let f = wire::Frame::new_checked(payload).unwrap();
            let time_ms = start + i64::from(f.sequence()) * 1000;
            assert!(
                stored.contains(&(f.device_id().to_string(), time_ms)),
                "{} sequence {} was acknowledged before the backup but its reading is not in it",
                f.device_id(),
                f.sequence()
            );
            // The ledger remembers the last 64 sequences of a device: within them, it says
            // accepted too (so that a node's retry after the restore is not taken twice).
            let ledger = &ledgers
                .iter()
                .find(|(d, _)| d == f.device_id())
                .unwrap_or_else(|| panic!("no ledger for {}", f.device_id()))
                .1;
            assert_ne!(
                ledger.was_accepted(f.boot_epoch(), f.sequence()),
                Some(false),
                "{} sequence {} was acknowledged before the backup but its ledger says not",
                f.device_id(),
                f.sequence()
            );
        }
        assert_eq!(store.quarantined().unwrap(), 0);
    }
    // A gateway starts on the restored store.
    let http = free_port();
    let config = write_config(dir.path(), proxy.port, http, &vm.url());
    let mut gw = spawn_gateway(&config, http);
    gw.kill().unwrap();
    gw.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_the_same_store_refuses_to_start_and_names_it() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gateway.db");
    let first = {
        let db = db.clone();
        start_gateway_settings("store-first", broker.port, move |s| s.store_path = db).await
    };
    let mut settings = test_settings("store-second", broker.port);
    settings.store_path = db.clone();
    let catalog = catalog();
    let keys = gateway::keys::Keys::demo(&catalog);
    let refused = gateway::app::Gateway::start(settings, catalog.clone(), keys.clone())
        .await
        .expect_err("a second gateway started on the first one's store");
    let text = refused.to_string();
    assert!(
        text.contains("another gateway is running on the local store"),
        "{text}"
    );
    assert!(text.contains("gateway.db"), "{text}");
    // Once the first one stops, the store is free.
    first.stop().await;
    let mut settings = test_settings("store-second", broker.port);
    settings.store_path = db;
    let second = gateway::app::Gateway::start(settings, catalog, keys)
        .await
        .unwrap();
    second.stop().await;
}
