//! The wire format against its golden vectors, every refusal reason, and property tests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use proptest::prelude::*;
use wire::golden::{KEY, VECTORS};
use wire::*;

fn key() -> DeviceKey {
    DeviceKey::from_bytes(KEY)
}

#[test]
fn every_golden_vector_decodes_to_its_meaning() {
    for v in VECTORS {
        let got = open(v.frame, &DeviceKey::from_bytes(v.key))
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(got, (v.meaning)(), "{}", v.name);
    }
}

#[test]
fn every_golden_meaning_encodes_to_exactly_the_golden_bytes() {
    for v in VECTORS {
        let m = (v.meaning)();
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = seal(&m.header, &m.body, &DeviceKey::from_bytes(v.key), &mut buf).unwrap();
        assert_eq!(&buf[..n], v.frame, "{}: the wire format changed", v.name);
    }
}

#[test]
fn golden_vectors_cover_every_body_kind() {
    let mut kinds: Vec<&str> = VECTORS.iter().map(|v| (v.meaning)().body.kind()).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds.len(), 7, "{kinds:?}");
}

fn golden(name: &str) -> &'static [u8] {
    VECTORS.iter().find(|v| v.name == name).unwrap().frame
}

#[test]
fn every_proper_prefix_is_truncated() {
    let frame = golden("gate_events");
    for n in 0..frame.len() {
        let err = Frame::new_checked(&frame[..n]).unwrap_err();
        assert!(
            matches!(err, FrameError::Truncated | FrameError::BadDeviceId),
            "prefix {n}: {err:?}"
        );
    }
    assert_eq!(Frame::new_checked(&[]).unwrap_err(), FrameError::Truncated);
    assert_eq!(
        Frame::new_checked(&frame[..20]).unwrap_err(),
        FrameError::Truncated
    );
}

#[test]
fn unknown_version_is_named() {
    let mut frame = golden("ack").to_vec();
    frame[0] = 2;
    assert_eq!(
        Frame::new_checked(&frame).unwrap_err(),
        FrameError::UnknownVersion(2)
    );
    assert_eq!(FrameError::UnknownVersion(2).reason(), "unknown_version");
    assert!(
        FrameError::UnknownVersion(2)
            .to_string()
            .contains("version 2")
    );
}

#[test]
fn reserved_flags_are_refused() {
    let mut frame = golden("ack").to_vec();
    frame[1] |= 0x80;
    assert_eq!(
        Frame::new_checked(&frame).unwrap_err(),
        FrameError::ReservedFlags
    );
}

#[test]
fn bad_device_ids_are_refused() {
    let mut frame = golden("ack").to_vec();
    frame[3] = b'/'; // a topic separator inside an id would let a device forge topics
    assert_eq!(
        Frame::new_checked(&frame).unwrap_err(),
        FrameError::BadDeviceId
    );
    let mut frame = golden("ack").to_vec();
    frame[2] = 0;
    assert_eq!(
        Frame::new_checked(&frame).unwrap_err(),
        FrameError::BadDeviceId
    );
    frame[2] = 33;
    assert_eq!(
        Frame::new_checked(&frame).unwrap_err(),
        FrameError::BadDeviceId
    );
}

#[test]
fn trailing_bytes_are_refused() {
    let mut frame = golden("ack").to_vec();
    frame.push(0);
    assert_eq!(
        Frame::new_checked(&frame).unwrap_err(),
        FrameError::TrailingBytes
    );
}

#[test]
fn oversized_input_is_refused_before_anything_else() {
    let mut frame = vec![0u8; MAX_FRAME_LEN + 1];
    frame[0] = 9;
    assert_eq!(
        Frame::new_checked(&frame).unwrap_err(),
        FrameError::Oversized
    );
}

#[test]
fn any_flipped_bit_after_the_layout_fields_fails_the_tag() {
    let frame = golden("pipe_threshold");
    let id_len = usize::from(frame[2]);
    // Flipping bits in the id, epoch, sequence, timestamp, body or tag keeps the layout valid
    // (or changes the id to another valid id) and must be caught by the tag.
    let body_len_field = 3 + id_len + 16..3 + id_len + 18;
    for byte in 3..frame.len() {
        if body_len_field.contains(&byte) {
            continue;
        }
        for bit in 0..8 {
            let mut f = frame.to_vec();
            f[byte] ^= 1 << bit;
            let Ok(view) = Frame::new_checked(&f) else {
                continue; // e.g. an id byte flipped to a forbidden character
            };
            assert_eq!(
                view.verify(&key()).unwrap_err(),
                FrameError::BadTag,
                "byte {byte} bit {bit}"
            );
        }
    }
}

#[test]
fn a_wrong_key_fails_the_tag() {
    let other = DeviceKey::from_bytes([0x42; 32]);
    for v in VECTORS {
        assert_eq!(
            open(v.frame, &other).unwrap_err(),
            FrameError::BadTag,
            "{}",
            v.name
        );
    }
}

#[test]
fn a_signed_body_that_does_not_decode_is_malformed() {
    // A correctly signed frame whose body is garbage: variant index 200 does not exist.
    let header = Header {
        device_id: "gz-x",
        boot_epoch: 0,
        sequence: 0,
        timestamp: Timestamp::Unsynced { uptime_ms: 0 },
    };
    let mut buf = [0u8; 64];
    let n = seal(
        &header,
        &Body::Ack(DownlinkAck {
            sequence: 0,
            outcome: AckOutcome::Applied,
        }),
        &key(),
        &mut buf,
    )
    .unwrap();
    // Rewrite the body's first byte (variant 6) to 200 and re-sign.
    let body_start = 3 + 4 + 18;
    buf[body_start] = 200;
    let tag = key().tag(&buf[..n - TAG_LEN]);
    buf[n - TAG_LEN..n].copy_from_slice(&tag);
    assert_eq!(
        open(&buf[..n], &key()).unwrap_err(),
        FrameError::MalformedBody
    );
}

#[test]
fn a_body_with_more_events_than_capacity_is_malformed_not_a_panic() {
    // Body: GateEvents with a declared count of 33 (> MAX_GATE_EVENTS) and no events.
    let body = [0x00, 33];
    let frame = handmade_frame(&body);
    assert_eq!(open(&frame, &key()).unwrap_err(), FrameError::MalformedBody);
}

#[test]
fn body_bytes_left_over_are_malformed() {
    // Ack { sequence: 0, Applied } followed by one extra byte inside the declared body.
    let frame = handmade_frame(&[0x06, 0x00, 0x00, 0xff]);
    assert_eq!(open(&frame, &key()).unwrap_err(), FrameError::MalformedBody);
}

/// A frame for device "gz-x" with `body` as raw bytes, correctly signed.
fn handmade_frame(body: &[u8]) -> Vec<u8> {
    let mut f = vec![1, 0, 4];
    f.extend_from_slice(b"gz-x");
    f.extend_from_slice(&[0; 16]);
    f.extend_from_slice(&(body.len() as u16).to_le_bytes());
    f.extend_from_slice(body);
    let tag = key().tag(&f);
    f.extend_from_slice(&tag);
    f
}

#[test]
fn sealing_refuses_bad_ids_and_small_buffers() {
    let m = (VECTORS[0].meaning)();
    let mut small = [0u8; 30];
    assert_eq!(
        seal(&m.header, &m.body, &key(), &mut small),
        Err(EncodeError::BufferTooSmall)
    );
    let mut buf = [0u8; MAX_FRAME_LEN];
    for id in ["", "a/b", "x".repeat(33).as_str(), "é"] {
        let header = Header {
            device_id: id,
            ..m.header
        };
        assert_eq!(
            seal(&header, &m.body, &key(), &mut buf),
            Err(EncodeError::BadDeviceId),
            "{id}"
        );
    }
}

#[test]
fn the_largest_body_fits_in_a_frame() {
    let events = (0..body_capacity_events())
        .map(|i| GateEvent {
            tag: TagHash([0xff; 8]),
            direction: Direction::Exit,
            offset_ms: u32::MAX - i,
        })
        .collect::<Vec<_>>();
    let body = Body::GateEvents(GateEvents {
        events: heapless::Vec::from_slice(&events).unwrap(),
    });
    let header = Header {
        device_id: &"d".repeat(MAX_DEVICE_ID_LEN),
        boot_epoch: u32::MAX,
        sequence: u32::MAX,
        timestamp: Timestamp::Synced { unix_ms: u64::MAX },
    };
    let mut buf = [0u8; MAX_FRAME_LEN];
    let n = seal(&header, &body, &key(), &mut buf).unwrap();
    assert!(n <= MAX_FRAME_LEN);
    assert_eq!(open(&buf[..n], &key()).unwrap().body, body);
}

fn body_capacity_events() -> u32 {
    wire::body::MAX_GATE_EVENTS as u32
}

// ---- property tests ----

fn arb_timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        any::<u64>().prop_map(|unix_ms| Timestamp::Synced { unix_ms }),
        any::<u64>().prop_map(|uptime_ms| Timestamp::Unsynced { uptime_ms }),
    ]
}

fn arb_device_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,32}"
}

fn arb_body() -> impl Strategy<Value = Body> {
    let gate_event =
        (any::<[u8; 8]>(), any::<bool>(), any::<u32>()).prop_map(|(t, exit, o)| GateEvent {
            tag: TagHash(t),
            direction: if exit {
                Direction::Exit
            } else {
                Direction::Entry
            },
            offset_ms: o,
        });
    let lane = (
        any::<u8>(),
        any::<u16>(),
        0u16..=1000,
        proptest::option::of(any::<u16>()),
    )
        .prop_map(
            |(lane, vehicles, occupancy_permille, mean_speed_dkmh)| LaneInterval {
                lane,
                vehicles,
                occupancy_permille,
                mean_speed_dkmh,
            },
        );
    let reading = (
        0usize..8,
        any::<f32>().prop_filter("NaN never equals itself", |v| !v.is_nan()),
    )
        .prop_map(|(q, value)| PipeReading {
            quantity: Quantity::ALL[q],
            value,
        });
    prop_oneof![
        proptest::collection::vec(gate_event, 0..=32).prop_map(|e| Body::GateEvents(GateEvents {
            events: heapless::Vec::from_slice(&e).unwrap()
        })),
        (any::<u16>(), any::<u32>(), any::<u32>()).prop_map(|(interval_s, entries, exits)| {
            Body::GateCounts(GateCounts {
                interval_s,
                entries,
                exits,
            })
        }),
        (any::<u16>(), proptest::collection::vec(lane, 0..=8)).prop_map(|(interval_s, l)| {
            Body::TrafficInterval(TrafficInterval {
                interval_s,
                lanes: heapless::Vec::from_slice(&l).unwrap(),
            })
        }),
        (any::<bool>(), proptest::collection::vec(reading, 0..=8)).prop_map(|(t, r)| {
            Body::PipeReadings(PipeReadings {
                trigger: if t {
                    Trigger::Threshold
                } else {
                    Trigger::Periodic
                },
                readings: heapless::Vec::from_slice(&r).unwrap(),
            })
        }),
        (
            proptest::option::of(any::<u8>()),
            any::<i8>(),
            any::<u32>(),
            any::<[u8; 3]>(),
            any::<[u8; 8]>()
        )
            .prop_map(|(battery_pct, signal_dbm, uptime_s, v, fp)| {
                Body::Status(DeviceStatus {
                    battery_pct,
                    signal_dbm,
                    uptime_s,
                    firmware: FirmwareVersion {
                        major: v[0],
                        minor: v[1],
                        patch: v[2],
                    },
                    key_fingerprint: KeyFingerprint(fp),
                })
            }),
        any::<u32>().prop_map(|s| Body::Downlink(Downlink::ConfigChange {
            report_interval_s: s
        })),
        any::<u64>().prop_map(|unix_ms| Body::Downlink(Downlink::TimeSync { unix_ms })),
        (any::<u16>(), any::<[u8; 32]>()).prop_map(|(key_id, wrapped_key)| {
            Body::Downlink(Downlink::KeyRotation {
                key_id,
                wrapped_key,
            })
        }),
        (any::<u32>(), 0u8..3).prop_map(|(sequence, o)| Body::Ack(DownlinkAck {
            sequence,
            outcome: [
                AckOutcome::Applied,
                AckOutcome::OutOfRange,
                AckOutcome::StorageFailed
            ][usize::from(o)],
        })),
    ]
}

proptest! {
    #[test]
    fn every_frame_round_trips(
        id in arb_device_id(),
        boot_epoch in any::<u32>(),
        sequence in any::<u32>(),
        timestamp in arb_timestamp(),
        body in arb_body(),
        key_bytes in any::<[u8; 32]>(),
    ) {
        let key = DeviceKey::from_bytes(key_bytes);
        let header = Header { device_id: &id, boot_epoch, sequence, timestamp };
        let mut buf = [0u8; MAX_FRAME_LEN];
        let n = seal(&header, &body, &key, &mut buf).unwrap();
        let m = open(&buf[..n], &key).unwrap();
        prop_assert_eq!(m.header, header);
        prop_assert_eq!(m.body, body);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
        let _ = open(&bytes, &key());
    }

    #[test]
    fn arbitrary_bodies_under_a_valid_tag_never_panic(body in proptest::collection::vec(any::<u8>(), 0..900)) {
        let _ = open(&handmade_frame(&body), &key());
    }
}
