//! What every node does: number, stamp, seal and queue its reports, keep its boot epoch, answer
//! downlinks, and hand queued frames to the [`Uplink`] in order.

use serde::{Deserialize, Serialize};
use wire::auth::KEY_LEN;
use wire::{
    AckOutcome, Body, DeviceKey, DeviceStatus, Downlink, DownlinkAck, FirmwareVersion, Header,
    MAX_FRAME_LEN, Timestamp,
};

use crate::config::{Config, Stream};
use crate::queue::{MAX_QUEUED_FRAME, OfflineQueue};

/// This firmware's version, reported in status frames.
pub const FIRMWARE: FirmwareVersion = FirmwareVersion {
    major: 0,
    minor: 1,
    patch: 0,
};

/// What survives a reboot besides the config block (a small flash or EEPROM record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// The boot epoch of the last boot.
    pub boot_epoch: u32,
    /// The key in use (differs from the config block's after a rotation).
    pub key: [u8; KEY_LEN],
    /// The id of that key (0: the provisioned one).
    pub key_id: u16,
    /// The report interval in force, seconds.
    pub report_interval_s: u32,
}

/// A write to [`Storage`] failed (flash worn, brown-out during the write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageFailed;

/// Where [`Persisted`] lives.
pub trait Storage {
    /// The record, if one was saved and reads back intact.
    fn load(&mut self) -> Option<Persisted>;
    /// Saves the record.
    fn save(&mut self, record: &Persisted) -> Result<(), StorageFailed>;
}

/// A [`Storage`] in RAM: the record lives as long as the value (host tools, the simulator,
/// tests; a board keeps its record in flash).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RamStorage(pub Option<Persisted>);

impl Storage for RamStorage {
    fn load(&mut self) -> Option<Persisted> {
        self.0.clone()
    }
    fn save(&mut self, record: &Persisted) -> Result<(), StorageFailed> {
        self.0 = Some(record.clone());
        Ok(())
    }
}

/// Polls `f` once with a waker that does nothing: the result of a future that never waits
/// (an [`Uplink`] that answers at once, as in the simulator and the self-checks), or `None`.
pub fn poll_once<F: core::future::Future>(f: F) -> Option<F::Output> {
    let mut f = core::pin::pin!(f);
    let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        core::task::Poll::Ready(v) => Some(v),
        core::task::Poll::Pending => None,
    }
}

/// The way out to the broker: QoS 1, `Ok` only once the broker acknowledged.
#[allow(async_fn_in_trait)] // single-threaded embedded executors; no Send bound wanted
pub trait Uplink {
    /// Why a publish failed (the frame stays queued).
    type Error;
    /// Publishes `payload` on `topic` and waits for the acknowledgement.
    async fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), Self::Error>;
}

/// Why a report could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportError {
    /// The body does not fit a frame.
    TooLarge,
    /// The queue refused it (full of alarms, and this one is routine).
    QueueFull,
}

/// Why a downlink was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownlinkError {
    /// Not a valid frame, or not signed with this node's key.
    Refused(wire::FrameError),
    /// Addressed to another device.
    NotForUs,
    /// An old or repeated downlink.
    Replayed,
    /// Not a downlink body.
    NotADownlink,
}

/// Counters a node reports in its logs and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames sealed.
    pub sealed: u32,
    /// Frames the broker acknowledged.
    pub published: u32,
    /// Publish attempts that failed.
    pub publish_errors: u32,
}

/// The node's state. `Q` is the offline queue's length in frames.
#[derive(Debug)]
pub struct Node<const Q: usize> {
    config: Config,
    key: DeviceKey,
    key_id: u16,
    boot_epoch: u32,
    sequence: u32,
    /// Unix ms minus uptime ms, once the gateway set the clock.
    clock_offset_ms: Option<i64>,
    report_interval_s: u32,
    /// The last downlink accepted: (boot epoch, sequence) of the gateway's frame.
    last_downlink: Option<(u32, u32)>,
    storage_failed: bool,
    /// Frames waiting for the broker.
    pub queue: OfflineQueue<Q>,
    /// Counters.
    pub counters: Counters,
}

impl<const Q: usize> Node<Q> {
    /// Boots: restores the persisted record (or starts from the config block), moves to the
    /// next boot epoch and saves it, so no (epoch, sequence) is ever used twice.
    pub fn boot(config: Config, storage: &mut impl Storage) -> Self {
        let record = storage.load().unwrap_or(Persisted {
            boot_epoch: 0,
            key: config.key,
            key_id: 0,
            report_interval_s: config.report_interval_s,
        });
        let next = Persisted {
            boot_epoch: record.boot_epoch.wrapping_add(1),
            ..record
        };
        let storage_failed = storage.save(&next).is_err();
        Node {
            key: DeviceKey::from_bytes(next.key),
            key_id: next.key_id,
            boot_epoch: next.boot_epoch,
            sequence: 0,
            clock_offset_ms: None,
            report_interval_s: next.report_interval_s,
            last_downlink: None,
            storage_failed,
            queue: OfflineQueue::new(),
            counters: Counters::default(),
            config,
        }
    }

    /// The provisioned configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The boot epoch of this run.
    pub fn boot_epoch(&self) -> u32 {
        self.boot_epoch
    }

    /// The next sequence number.
    pub fn sequence(&self) -> u32 {
        self.sequence
    }

    /// The report interval in force, seconds.
    pub fn report_interval_s(&self) -> u32 {
        self.report_interval_s
    }

    /// The key in use.
    pub fn key(&self) -> &DeviceKey {
        &self.key
    }

    /// Whether saving the persisted record failed at boot (reported in status).
    pub fn storage_failed(&self) -> bool {
        self.storage_failed
    }

    /// Sets the clock from a time source of the node's own (GNSS, NTP, a battery-backed RTC):
    /// `unix_ms` is the time at `uptime_ms`.
    pub fn set_clock(&mut self, unix_ms: u64, uptime_ms: u64) {
        self.clock_offset_ms = Some(unix_ms as i64 - uptime_ms as i64);
    }

    /// The timestamp of an event at `uptime_ms`: Unix time once synced.
    pub fn timestamp(&self, uptime_ms: u64) -> Timestamp {
        match self.clock_offset_ms {
            Some(off) => Timestamp::Synced {
                unix_ms: (uptime_ms as i64 + off).max(0) as u64,
            },
            None => Timestamp::Unsynced { uptime_ms },
        }
    }

    /// Seals `body` as the next frame, stamped at `uptime_ms`, and queues it; `alarm` frames
    /// are kept over routine ones when the queue is full.
    pub fn report(&mut self, body: &Body, uptime_ms: u64, alarm: bool) -> Result<(), ReportError> {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let header = Header {
            device_id: &self.config.device_id,
            boot_epoch: self.boot_epoch,
            sequence: self.sequence,
            timestamp: self.timestamp(uptime_ms),
        };
        let n =
            wire::seal(&header, body, &self.key, &mut buf).map_err(|_| ReportError::TooLarge)?;
        if n > MAX_QUEUED_FRAME {
            return Err(ReportError::TooLarge);
        }
        self.sequence = self.sequence.wrapping_add(1);
        self.counters.sealed += 1;
        if self.queue.push(&buf[..n], alarm) {
            Ok(())
        } else {
            Err(ReportError::QueueFull)
        }
    }

    /// Queues a status report.
    pub fn report_status(
        &mut self,
        uptime_ms: u64,
        battery_pct: Option<u8>,
        signal_dbm: i8,
    ) -> Result<(), ReportError> {
        let body = Body::Status(DeviceStatus {
            battery_pct,
            signal_dbm,
            uptime_s: (uptime_ms / 1000) as u32,
            firmware: FIRMWARE,
            key_fingerprint: self.key.fingerprint(),
        });
        self.report(&body, uptime_ms, false)
    }

    /// Handles a frame from the `down` topic: verifies it with the node's key, applies it,
    /// persists what must survive a reboot, and queues the acknowledgement.
    pub fn handle_downlink(
        &mut self,
        frame: &[u8],
        uptime_ms: u64,
        storage: &mut impl Storage,
    ) -> Result<AckOutcome, DownlinkError> {
        let message = wire::open(frame, &self.key).map_err(DownlinkError::Refused)?;
        if message.header.device_id != self.config.device_id.as_str() {
            return Err(DownlinkError::NotForUs);
        }
        let at = (message.header.boot_epoch, message.header.sequence);
        if self.last_downlink.is_some_and(|last| at <= last) {
            return Err(DownlinkError::Replayed);
        }
        let Body::Downlink(downlink) = message.body else {
            return Err(DownlinkError::NotADownlink);
        };
        self.last_downlink = Some(at);
        let mut next_key = None;
        let outcome = match downlink {
            Downlink::ConfigChange { report_interval_s } => {
                if report_interval_s == 0 || report_interval_s > 86_400 {
                    AckOutcome::OutOfRange
                } else {
                    self.report_interval_s = report_interval_s;
                    self.persist(storage, self.key.clone(), self.key_id)
                }
            }
            Downlink::TimeSync { unix_ms } => {
                self.clock_offset_ms = Some(unix_ms as i64 - uptime_ms as i64);
                AckOutcome::Applied
            }
            Downlink::KeyRotation {
                key_id,
                wrapped_key,
            } => {
                if key_id <= self.key_id {
                    AckOutcome::OutOfRange
                } else {
                    let new = self.key.unwrap_rotation(key_id, &wrapped_key);
                    let outcome = self.persist(storage, new.clone(), key_id);
                    if outcome == AckOutcome::Applied {
                        next_key = Some((new, key_id));
                    }
                    outcome
                }
            }
        };
        let ack = Body::Ack(DownlinkAck {
            sequence: message.header.sequence,
            outcome,
        });
        // The acknowledgement is the last frame under the old key; an alarm, so it is kept.
        let _ = self.report(&ack, uptime_ms, true);
        if let Some((key, id)) = next_key {
            self.key = key;
            self.key_id = id;
        }
        Ok(outcome)
    }

    fn persist(&mut self, storage: &mut impl Storage, key: DeviceKey, key_id: u16) -> AckOutcome {
        let record = Persisted {
            boot_epoch: self.boot_epoch,
            key: *key.as_bytes(),
            key_id,
            report_interval_s: self.report_interval_s,
        };
        match storage.save(&record) {
            Ok(()) => AckOutcome::Applied,
            Err(StorageFailed) => AckOutcome::StorageFailed,
        }
    }

    /// Publishes queued frames in order until the queue is empty or the uplink fails (the
    /// failed frame stays first in the queue). Returns how many were published.
    pub async fn flush<U: Uplink>(&mut self, uplink: &mut U) -> Result<usize, U::Error> {
        let topic = self.config.topic(Stream::Up);
        let mut n = 0;
        while let Some(q) = self.queue.front() {
            match uplink.publish(&topic, &q.frame).await {
                Ok(()) => {
                    self.queue.pop();
                    self.counters.published += 1;
                    n += 1;
                }
                Err(e) => {
                    self.counters.publish_errors += 1;
                    return Err(e);
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::tests::sample;

    /// Storage in RAM that can be told to fail.
    #[derive(Debug, Default)]
    pub(crate) struct Ram {
        pub record: Option<Persisted>,
        pub fail: bool,
    }

    impl Storage for Ram {
        fn load(&mut self) -> Option<Persisted> {
            self.record.clone()
        }
        fn save(&mut self, record: &Persisted) -> Result<(), StorageFailed> {
            if self.fail {
                return Err(StorageFailed);
            }
            self.record = Some(record.clone());
            Ok(())
        }
    }

    /// An uplink that records, and fails while `down`.
    #[derive(Debug, Default)]
    struct Recorder {
        sent: std::vec::Vec<(std::string::String, std::vec::Vec<u8>)>,
        down: bool,
    }

    impl Uplink for Recorder {
        type Error = ();
        async fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), ()> {
            if self.down {
                return Err(());
            }
            self.sent.push((topic.into(), payload.to_vec()));
            Ok(())
        }
    }

    pub(crate) fn block_on<F: core::future::Future>(f: F) -> F::Output {
        super::poll_once(f).expect("the futures here never wait")
    }

    fn pipe_body(v: f32) -> Body {
        let mut readings = heapless::Vec::new();
        readings
            .push(wire::PipeReading {
                quantity: wire::Quantity::Pressure,
                value: v,
            })
            .unwrap();
        Body::PipeReadings(wire::PipeReadings {
            trigger: wire::Trigger::Periodic,
            readings,
        })
    }

    fn gateway_frame(node: &Node<8>, sequence: u32, downlink: Downlink) -> std::vec::Vec<u8> {
        let header = Header {
            device_id: &node.config().device_id,
            boot_epoch: 77,
            sequence,
            timestamp: Timestamp::Synced { unix_ms: 1 },
        };
        wire::frame::seal_to_vec(&header, &Body::Downlink(downlink), node.key()).unwrap()
    }

    #[test]
    fn every_boot_is_a_new_epoch_and_frames_verify_at_the_gateway() {
        let mut ram = Ram::default();
        let first = Node::<8>::boot(sample(), &mut ram);
        assert_eq!(first.boot_epoch(), 1);
        let mut node = Node::<8>::boot(sample(), &mut ram);
        assert_eq!(node.boot_epoch(), 2, "the epoch survives in storage");
        node.report(&pipe_body(0.3), 5_000, false).unwrap();
        node.report(&pipe_body(0.31), 6_000, false).unwrap();
        let mut up = Recorder::default();
        assert_eq!(block_on(node.flush(&mut up)), Ok(2));
        let key = sample().device_key();
        let m = wire::open(&up.sent[1].1, &key).unwrap();
        assert_eq!((m.header.boot_epoch, m.header.sequence), (2, 1));
        assert_eq!(m.header.timestamp, Timestamp::Unsynced { uptime_ms: 6_000 });
        assert_eq!(up.sent[0].0, "cs/v1/360702/water-pressure/gz-p1-press/up");
    }

    #[test]
    fn a_failed_publish_keeps_the_frame_first_in_line() {
        let mut ram = Ram::default();
        let mut node = Node::<8>::boot(sample(), &mut ram);
        node.report(&pipe_body(0.3), 0, false).unwrap();
        node.report(&pipe_body(0.2), 1, true).unwrap();
        let mut up = Recorder {
            down: true,
            ..Recorder::default()
        };
        assert_eq!(block_on(node.flush(&mut up)), Err(()));
        assert_eq!(node.queue.len(), 2);
        up.down = false;
        assert_eq!(block_on(node.flush(&mut up)), Ok(2));
        let seqs: std::vec::Vec<u32> = up
            .sent
            .iter()
            .map(|(_, f)| wire::Frame::new_checked(f).unwrap().sequence())
            .collect();
        assert_eq!(seqs, std::vec![0, 1]);
    }

    #[test]
    fn downlinks_change_the_interval_set_the_clock_and_rotate_the_key() {
        let mut ram = Ram::default();
        let mut node = Node::<8>::boot(sample(), &mut ram);
        let f = gateway_frame(
            &node,
            1,
            Downlink::ConfigChange {
                report_interval_s: 30,
            },
        );
        assert_eq!(
            node.handle_downlink(&f, 0, &mut ram),
            Ok(AckOutcome::Applied)
        );
        assert_eq!(node.report_interval_s(), 30);
        assert_eq!(ram.record.as_ref().unwrap().report_interval_s, 30);
        assert_eq!(
            node.handle_downlink(&f, 0, &mut ram),
            Err(DownlinkError::Replayed)
        );
        let zero = gateway_frame(
            &node,
            2,
            Downlink::ConfigChange {
                report_interval_s: 0,
            },
        );
        assert_eq!(
            node.handle_downlink(&zero, 0, &mut ram),
            Ok(AckOutcome::OutOfRange)
        );

        let sync = gateway_frame(
            &node,
            3,
            Downlink::TimeSync {
                unix_ms: 1_800_000_000_000,
            },
        );
        node.handle_downlink(&sync, 10_000, &mut ram).unwrap();
        assert_eq!(
            node.timestamp(11_000),
            Timestamp::Synced {
                unix_ms: 1_800_000_001_000
            }
        );

        let old = sample().device_key();
        let new = DeviceKey::from_bytes([0xAB; KEY_LEN]);
        let rotate = gateway_frame(
            &node,
            4,
            Downlink::KeyRotation {
                key_id: 1,
                wrapped_key: old.wrap(1, &new),
            },
        );
        assert_eq!(
            node.handle_downlink(&rotate, 12_000, &mut ram),
            Ok(AckOutcome::Applied)
        );
        assert_eq!(node.key().as_bytes(), new.as_bytes());
        assert_eq!(ram.record.as_ref().unwrap().key_id, 1);
        // The acks went out under the old key, the next report under the new one.
        node.report(&pipe_body(0.3), 13_000, false).unwrap();
        let mut up = Recorder::default();
        block_on(node.flush(&mut up)).unwrap();
        let acks: std::vec::Vec<AckOutcome> = up.sent[..4]
            .iter()
            .map(|(_, f)| match wire::open(f, &old).unwrap().body {
                Body::Ack(a) => a.outcome,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            acks,
            std::vec![
                AckOutcome::Applied,
                AckOutcome::OutOfRange,
                AckOutcome::Applied,
                AckOutcome::Applied
            ]
        );
        assert!(wire::open(&up.sent[4].1, &new).is_ok());
        // A reboot keeps the rotated key.
        let rebooted = Node::<8>::boot(sample(), &mut ram);
        assert_eq!(rebooted.key().as_bytes(), new.as_bytes());
    }

    #[test]
    fn a_forged_downlink_is_refused() {
        let mut ram = Ram::default();
        let mut node = Node::<8>::boot(sample(), &mut ram);
        let header = Header {
            device_id: "gz-p1-press",
            boot_epoch: 1,
            sequence: 1,
            timestamp: Timestamp::Synced { unix_ms: 1 },
        };
        let forged = wire::frame::seal_to_vec(
            &header,
            &Body::Downlink(Downlink::ConfigChange {
                report_interval_s: 1,
            }),
            &DeviceKey::from_bytes([9; KEY_LEN]),
        )
        .unwrap();
        assert_eq!(
            node.handle_downlink(&forged, 0, &mut ram),
            Err(DownlinkError::Refused(wire::FrameError::BadTag))
        );
        assert_eq!(node.report_interval_s(), 60);
    }

    #[test]
    fn a_failing_storage_is_reported_not_fatal() {
        let mut ram = Ram {
            fail: true,
            ..Ram::default()
        };
        let mut node = Node::<8>::boot(sample(), &mut ram);
        assert!(node.storage_failed());
        let f = gateway_frame(
            &node,
            1,
            Downlink::ConfigChange {
                report_interval_s: 30,
            },
        );
        assert_eq!(
            node.handle_downlink(&f, 0, &mut ram),
            Ok(AckOutcome::StorageFailed)
        );
    }
}
