//! Online key rotation (等保 2.0: keys updated remotely).
//!
//! `gateway keys rotate` writes each chosen device's new key into the keys file as its
//! `next_key` and reloads the gateway. From then on the gateway accepts frames under either
//! key, and this task sends the node its new key as the downlink the firmware verifies: a
//! `KeyRotation` frame signed with the current key, the new key wrapped under it, on the
//! device's `down` topic. The node persists the key and answers with an acknowledgement, the
//! last frame under its old key; then, or as soon as a frame verifies only under the new key
//! (the acknowledgement was lost), the new key becomes the only one: in memory, and in the keys
//! file, replaced atomically. A node that does not answer keeps its old key, stays pending
//! (`gateway keys list`, `citysense_key_rotations_pending`) and is sent the downlink again
//! every `resend`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, watch};
use wire::{AckOutcome, Body, Downlink, Header, Timestamp};

use crate::decode::Verifier;
use crate::keys::KeyNews;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{AuditEntry, Store};

/// How often an unanswered rotation is sent again.
pub const RESEND: Duration = Duration::from_secs(300);

/// What the rotation task works with.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The keys file to rewrite when a node takes its new key (None: in memory only, demo).
    pub keys_file: Arc<Mutex<Option<PathBuf>>>,
    /// The verifier, whose keys are replaced on promotion.
    pub verifier: Arc<ArcSwap<Verifier>>,
    /// Where each device's `down` topic is.
    pub registry: Arc<Mutex<Registry>>,
    /// Publishes the downlinks.
    pub client: AsyncClient,
    /// The audit trail.
    pub store: Arc<Store>,
    /// Counters.
    pub metrics: Metrics,
    /// Held while the verifier is replaced (shared with reloads).
    pub swapping: Arc<tokio::sync::Mutex<()>>,
    /// How often an unanswered rotation is sent again.
    pub resend: Duration,
}

/// A downlink sent and not answered.
#[derive(Debug, Clone, Copy)]
struct Sent {
    key_id: u16,
    sequence: u32,
    at: Instant,
}

/// Runs until shutdown: sends pending rotations when the keys change and every `resend`,
/// promotes keys as nodes answer.
pub async fn run(
    r: Rotation,
    mut news: mpsc::UnboundedReceiver<KeyNews>,
    mut keys_changed: watch::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Downlinks are numbered (epoch, sequence); the node takes only newer ones. The epoch is
    // this start's wall-clock second, so a restarted gateway is always ahead of its past.
    let epoch = u32::try_from(crate::clock::now_ms() / 1000).unwrap_or(u32::MAX);
    let mut sequence: u32 = 0;
    let mut sent: FxHashMap<Box<str>, Sent> = FxHashMap::default();
    let mut tick = tokio::time::interval(r.resend.min(Duration::from_secs(60)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keys_changed.mark_changed();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(n) = news.recv() => r.on_news(n, &mut sent).await,
            Ok(()) = keys_changed.changed() => r.send_due(epoch, &mut sequence, &mut sent, true).await,
            _ = tick.tick() => r.send_due(epoch, &mut sequence, &mut sent, false).await,
        }
    }
}

impl Rotation {
    /// Sends the rotations never sent (or sent for another key), and those unanswered for
    /// `resend` unless `only_new`.
    async fn send_due(
        &self,
        epoch: u32,
        sequence: &mut u32,
        sent: &mut FxHashMap<Box<str>, Sent>,
        only_new: bool,
    ) {
        let verifier = self.verifier.load_full();
        let keys = verifier.keys();
        let pending = keys.pending();
        sent.retain(|d, _| pending.contains(&&**d));
        self.metrics.key_rotations_pending.set(pending.len() as i64);
        for device in pending {
            let Some((next_id, next, _)) = keys.next(device) else {
                continue;
            };
            let due = match sent.get(device) {
                None => true,
                Some(s) if s.key_id != next_id => true,
                Some(s) => !only_new && s.at.elapsed() >= self.resend,
            };
            let Some(current) = keys.get(device).filter(|_| due) else {
                continue;
            };
            let Some(topic) = self.down_topic(device) else {
                continue; // not served here
            };
            *sequence = sequence.wrapping_add(1);
            let header = Header {
                device_id: device,
                boot_epoch: epoch,
                sequence: *sequence,
                timestamp: Timestamp::Synced {
                    unix_ms: u64::try_from(crate::clock::now_ms()).unwrap_or(0),
                },
            };
            let body = Body::Downlink(Downlink::KeyRotation {
                key_id: next_id,
                wrapped_key: current.wrap(next_id, next),
            });
            let frame = match wire::frame::seal_to_vec(&header, &body, current) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(device, error = ?e, "cannot seal the key rotation downlink");
                    continue;
                }
            };
            if let Err(e) = self
                .client
                .publish(topic, QoS::AtLeastOnce, false, frame)
                .await
            {
                tracing::warn!(device, error = %e, "key rotation downlink not sent; retried later");
                continue;
            }
            tracing::info!(device, key_id = next_id, "new key sent to the node");
            self.metrics
                .key_rotations
                .with_label_values(&["sent"])
                .inc();
            sent.insert(
                device.into(),
                Sent {
                    key_id: next_id,
                    sequence: *sequence,
                    at: Instant::now(),
                },
            );
        }
    }

    async fn on_news(&self, news: KeyNews, sent: &mut FxHashMap<Box<str>, Sent>) {
        let device = match news {
            KeyNews::Answered {
                device,
                sequence,
                outcome,
            } => {
                if sent.get(&device).is_none_or(|s| s.sequence != sequence) {
                    return; // an answer to another downlink, or to one of a past start
                }
                if outcome != AckOutcome::Applied {
                    tracing::error!(device = %device, ?outcome, "the node refused its new key; it keeps the old one");
                    self.metrics
                        .key_rotations
                        .with_label_values(&["refused"])
                        .inc();
                    self.audit(&device, "refused", &format!("{outcome:?}"));
                    return;
                }
                device
            }
            KeyNews::SignsWithNext { device } => device,
        };
        sent.remove(&device);
        self.promote(&device).await;
    }

    /// The node took its new key: it becomes the only one, in the keys file first.
    async fn promote(&self, device: &str) {
        let _one = self.swapping.lock().await;
        let verifier = self.verifier.load_full();
        let mut keys = verifier.keys().clone();
        let Some(key_id) = keys.next(device).map(|(id, _, _)| id) else {
            return; // promoted already
        };
        let file = self.keys_file.lock().ok().and_then(|f| f.clone());
        if let Some(path) = file
            && let Err(e) = promote_in_file(&path, device, &keys)
        {
            // Both keys stay accepted; the next frame under the new key tries again.
            tracing::error!(device, path = %path.display(), error = %e, "cannot write the new key to the keys file");
            return;
        }
        keys.promote(device);
        let pending = keys.pending().len();
        self.verifier.store(Arc::new(verifier.with_keys(keys)));
        self.metrics.key_rotations_pending.set(pending as i64);
        self.metrics
            .key_rotations
            .with_label_values(&["applied"])
            .inc();
        tracing::info!(
            device,
            key_id,
            "the node uses its new key; the old one is no longer accepted"
        );
        self.audit(device, "ok", &format!("key {key_id} in use"));
    }

    fn down_topic(&self, device: &str) -> Option<String> {
        let registry = self.registry.lock().ok()?;
        let d = registry.get(device)?;
        Some(format!(
            "cs/v1/{}/{}/{}/down",
            d.info.zone, d.info.kind, d.info.id
        ))
    }

    fn audit(&self, device: &str, outcome: &str, detail: &str) {
        let entry = AuditEntry {
            actor: "gateway".into(),
            source: "downlink".into(),
            action: "key.rotate".into(),
            target: device.into(),
            outcome: outcome.into(),
            detail: detail.into(),
        };
        if let Err(e) = self.store.audit(crate::clock::now_ms(), &entry) {
            tracing::error!(error = %e, "the key rotation could not be written to the audit trail");
        }
    }
}

/// Makes the rotation of `device` final in the keys file at `path`, as the file is now (others
/// may have changed it since it was read): under the file's lock, replaced atomically.
fn promote_in_file(
    path: &std::path::Path,
    device: &str,
    keys: &crate::keys::Keys,
) -> anyhow::Result<()> {
    let _locked = crate::keys::lock_file(path)?;
    let mut entries = device_profiles::keys::load_entries(path)?;
    let (next_id, next, _) = keys
        .next(device)
        .ok_or_else(|| anyhow::anyhow!("no rotation under way"))?;
    match entries.iter_mut().find(|e| e.id == device) {
        Some(e)
            if e.next
                .as_ref()
                .is_some_and(|(id, k)| *id == next_id && k == next) =>
        {
            e.key = next.clone();
            e.key_id = next_id;
            e.next = None;
        }
        Some(e) if e.key_id == next_id && e.key == *next => {} // written already
        _ => anyhow::bail!(
            "the keys file no longer holds the key sent to {device}; it was edited meanwhile"
        ),
    }
    device_profiles::keys::write(path, &entries)?;
    Ok(())
}
