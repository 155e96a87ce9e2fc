//! Golden test vectors: frame bytes, the key that signed them, and what they mean.
//!
//! These bytes are the contract between nodes, gateway and simulator. Every part tests against
//! them (host, the emulated Cortex-M4, the gateway's decoder). If a test here fails after a change,
//! the change altered the wire format: bump [`crate::FORMAT_VERSION`] and add new vectors rather
//! than editing these.

use heapless::Vec;

use crate::auth::KeyFingerprint;
use crate::body::*;
use crate::frame::{Header, Message, Timestamp};

/// One golden vector.
#[derive(Debug)]
pub struct GoldenVector {
    /// A short name.
    pub name: &'static str,
    /// What the vector shows.
    pub description: &'static str,
    /// The device key that signed the frame.
    pub key: [u8; 32],
    /// The frame bytes.
    pub frame: &'static [u8],
    /// What the frame decodes to.
    pub meaning: fn() -> Message<'static>,
}

/// Key of the golden vectors: bytes 0x00, 0x01, …, 0x1f.
pub const KEY: [u8; 32] = {
    let mut k = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        k[i] = i as u8;
        i += 1;
    }
    k
};

fn vec_of<T: Copy, const N: usize>(items: &[T]) -> Vec<T, N> {
    let mut v = Vec::new();
    for item in items {
        // Golden vectors stay within capacity by construction.
        let _ = v.push(*item);
    }
    v
}

fn gate_events() -> Message<'static> {
    Message {
        header: Header {
            device_id: "gz-s4-g1",
            boot_epoch: 3,
            sequence: 41,
            // 2025-10-01 10:00:00 +08:00, Golden Week day one at 通天岩.
            timestamp: Timestamp::Synced {
                unix_ms: 1_759_284_000_000,
            },
        },
        body: Body::GateEvents(GateEvents {
            events: vec_of(&[
                GateEvent {
                    tag: TagHash([0xde, 0xad, 0xbe, 0xef, 0x00, 0x11, 0x22, 0x33]),
                    direction: Direction::Entry,
                    offset_ms: 0,
                },
                GateEvent {
                    tag: TagHash([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08]),
                    direction: Direction::Exit,
                    offset_ms: 1500,
                },
            ]),
        }),
    }
}

fn traffic_interval() -> Message<'static> {
    Message {
        header: Header {
            device_id: "gz-r1-d1",
            boot_epoch: 1,
            sequence: 0,
            timestamp: Timestamp::Unsynced { uptime_ms: 30_000 },
        },
        body: Body::TrafficInterval(TrafficInterval {
            interval_s: 30,
            lanes: vec_of(&[
                LaneInterval {
                    lane: 1,
                    vehicles: 12,
                    occupancy_permille: 185,
                    mean_speed_dkmh: Some(423),
                },
                LaneInterval {
                    lane: 2,
                    vehicles: 0,
                    occupancy_permille: 0,
                    mean_speed_dkmh: None,
                },
            ]),
        }),
    }
}

fn pipe_threshold() -> Message<'static> {
    Message {
        header: Header {
            device_id: "gz-p1-press",
            boot_epoch: 7,
            sequence: 1000,
            timestamp: Timestamp::Synced {
                unix_ms: 1_759_305_600_000,
            },
        },
        body: Body::PipeReadings(PipeReadings {
            trigger: Trigger::Threshold,
            readings: vec_of(&[
                PipeReading {
                    quantity: Quantity::Pressure,
                    value: 0.125,
                },
                PipeReading {
                    quantity: Quantity::Flow,
                    value: 310.5,
                },
            ]),
        }),
    }
}

fn status() -> Message<'static> {
    Message {
        header: Header {
            device_id: "gz-m1-cover",
            boot_epoch: 2,
            sequence: 5,
            timestamp: Timestamp::Synced {
                unix_ms: 1_759_284_060_000,
            },
        },
        body: Body::Status(DeviceStatus {
            battery_pct: Some(87),
            signal_dbm: -71,
            uptime_s: 86_400,
            firmware: FirmwareVersion {
                major: 0,
                minor: 1,
                patch: 0,
            },
            key_fingerprint: KeyFingerprint([0x63, 0x0d, 0xcd, 0x29, 0x66, 0xc4, 0x33, 0x66]),
        }),
    }
}

fn gate_counts() -> Message<'static> {
    Message {
        header: Header {
            device_id: "gz-s1-c1",
            boot_epoch: 1,
            sequence: 77,
            timestamp: Timestamp::Synced {
                unix_ms: 1_759_284_000_000,
            },
        },
        body: Body::GateCounts(GateCounts {
            interval_s: 60,
            entries: 420,
            exits: 35,
        }),
    }
}

fn key_rotation() -> Message<'static> {
    Message {
        header: Header {
            device_id: "gz-s4-g1",
            boot_epoch: 0,
            sequence: 9,
            timestamp: Timestamp::Synced {
                unix_ms: 1_759_284_000_000,
            },
        },
        body: Body::Downlink(Downlink::KeyRotation {
            key_id: 2,
            wrapped_key: [0x5a; 32],
        }),
    }
}

fn ack() -> Message<'static> {
    Message {
        header: Header {
            device_id: "gz-s4-g1",
            boot_epoch: 3,
            sequence: 42,
            timestamp: Timestamp::Synced {
                unix_ms: 1_759_284_001_000,
            },
        },
        body: Body::Ack(DownlinkAck {
            sequence: 9,
            outcome: AckOutcome::Applied,
        }),
    }
}

/// Every golden vector.
pub const VECTORS: &[GoldenVector] = &[
    GoldenVector {
        name: "gate_events",
        description: "two tag reads at an RFID gate, clock synced",
        key: KEY,
        frame: GATE_EVENTS,
        meaning: gate_events,
    },
    GoldenVector {
        name: "traffic_interval",
        description: "a 30 s loop interval on two lanes, one without speed, clock unsynced",
        key: KEY,
        frame: TRAFFIC_INTERVAL,
        meaning: traffic_interval,
    },
    GoldenVector {
        name: "pipe_threshold",
        description: "an immediate low-pressure report with flow",
        key: KEY,
        frame: PIPE_THRESHOLD,
        meaning: pipe_threshold,
    },
    GoldenVector {
        name: "status",
        description: "a battery-powered manhole cover reporting its health",
        key: KEY,
        frame: STATUS,
        meaning: status,
    },
    GoldenVector {
        name: "gate_counts",
        description: "one minute of counts from a counting gate",
        key: KEY,
        frame: GATE_COUNTS,
        meaning: gate_counts,
    },
    GoldenVector {
        name: "key_rotation",
        description: "a gateway downlink rotating the key",
        key: KEY,
        frame: KEY_ROTATION,
        meaning: key_rotation,
    },
    GoldenVector {
        name: "ack",
        description: "the node acknowledging the rotation",
        key: KEY,
        frame: ACK,
        meaning: ack,
    },
];

#[rustfmt::skip]
const GATE_EVENTS: &[u8] = &[
    // version 1, flags 0x01 (clock synced), device id length 8
    0x01, 0x01, 0x08,
    // device id 'gz-s4-g1'
    0x67, 0x7a, 0x2d, 0x73, 0x34, 0x2d, 0x67, 0x31,
    // boot epoch 3, sequence 41
    0x03, 0x00, 0x00, 0x00, 0x29, 0x00, 0x00, 0x00,
    // timestamp 1759284000000 ms
    0x00, 0x75, 0x7f, 0x9d, 0x99, 0x01, 0x00, 0x00,
    // body length 23
    0x17, 0x00,
    // body: variant 0 GateEvents; 2 events; tag deadbeef00112233, Entry(0), offset 0; tag 0102030405060708, Exit(1), offset 1500 (varint dc 0b)
    0x00, 0x02, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x11, 0x22, 0x33, 0x00, 0x00,
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x01, 0xdc, 0x0b,
    // tag: HMAC-SHA256(KEY, all of the above)[..16]
    0x1f, 0x9f, 0xf5, 0x1c, 0x51, 0x7a, 0x3f, 0xa8,
    0x66, 0xa8, 0xd6, 0x48, 0xdb, 0xab, 0xf6, 0xdf,
];

#[rustfmt::skip]
const TRAFFIC_INTERVAL: &[u8] = &[
    // version 1, flags 0x00 (unsynced), device id length 8
    0x01, 0x00, 0x08,
    // device id 'gz-r1-d1'
    0x67, 0x7a, 0x2d, 0x72, 0x31, 0x2d, 0x64, 0x31,
    // boot epoch 1, sequence 0
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    // timestamp 30000 ms
    0x30, 0x75, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    // body length 14
    0x0e, 0x00,
    // body: variant 2 TrafficInterval; interval 30; 2 lanes; lane 1, 12 veh, occ 185 (b9 01), Some(423) (01 a7 03); lane 2, 0, 0, None
    0x02, 0x1e, 0x02, 0x01, 0x0c, 0xb9, 0x01, 0x01, 0xa7, 0x03, 0x02, 0x00,
    0x00, 0x00,
    // tag: HMAC-SHA256(KEY, all of the above)[..16]
    0xf2, 0x9f, 0xdc, 0xdb, 0xd1, 0xa0, 0x72, 0xf4,
    0x9b, 0x2e, 0x02, 0x39, 0x4c, 0x5c, 0xe0, 0x68,
];

#[rustfmt::skip]
const PIPE_THRESHOLD: &[u8] = &[
    // version 1, flags 0x01 (clock synced), device id length 11
    0x01, 0x01, 0x0b,
    // device id 'gz-p1-press'
    0x67, 0x7a, 0x2d, 0x70, 0x31, 0x2d, 0x70, 0x72, 0x65, 0x73, 0x73,
    // boot epoch 7, sequence 1000
    0x07, 0x00, 0x00, 0x00, 0xe8, 0x03, 0x00, 0x00,
    // timestamp 1759305600000 ms
    0x00, 0x0c, 0xc9, 0x9e, 0x99, 0x01, 0x00, 0x00,
    // body length 13
    0x0d, 0x00,
    // body: variant 3 PipeReadings; Threshold(1); 2 readings; Pressure(0) 0.125f32 LE; Flow(7) 310.5f32 LE
    0x03, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x3e, 0x07, 0x00, 0x40, 0x9b,
    0x43,
    // tag: HMAC-SHA256(KEY, all of the above)[..16]
    0xc7, 0x0d, 0x09, 0x7c, 0xb9, 0x01, 0x3d, 0xa5,
    0x0b, 0xe2, 0xa4, 0xa8, 0x16, 0x83, 0x10, 0x65,
];

#[rustfmt::skip]
const STATUS: &[u8] = &[
    // version 1, flags 0x01 (clock synced), device id length 11
    0x01, 0x01, 0x0b,
    // device id 'gz-m1-cover'
    0x67, 0x7a, 0x2d, 0x6d, 0x31, 0x2d, 0x63, 0x6f, 0x76, 0x65, 0x72,
    // boot epoch 2, sequence 5
    0x02, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
    // timestamp 1759284060000 ms
    0x60, 0x5f, 0x80, 0x9d, 0x99, 0x01, 0x00, 0x00,
    // body length 18
    0x12, 0x00,
    // body: variant 4 Status; Some(87); -71 dBm as i8 (b9); uptime 86400 (80 a3 05); fw 0.1.0; fingerprint 630dcd2966c43366
    0x04, 0x01, 0x57, 0xb9, 0x80, 0xa3, 0x05, 0x00, 0x01, 0x00, 0x63, 0x0d,
    0xcd, 0x29, 0x66, 0xc4, 0x33, 0x66,
    // tag: HMAC-SHA256(KEY, all of the above)[..16]
    0xb8, 0x19, 0x1f, 0x25, 0x53, 0x23, 0x2d, 0xdd,
    0x53, 0x0d, 0xa8, 0xb4, 0x39, 0x00, 0x01, 0x09,
];

#[rustfmt::skip]
const GATE_COUNTS: &[u8] = &[
    // version 1, flags 0x01 (clock synced), device id length 8
    0x01, 0x01, 0x08,
    // device id 'gz-s1-c1'
    0x67, 0x7a, 0x2d, 0x73, 0x31, 0x2d, 0x63, 0x31,
    // boot epoch 1, sequence 77
    0x01, 0x00, 0x00, 0x00, 0x4d, 0x00, 0x00, 0x00,
    // timestamp 1759284000000 ms
    0x00, 0x75, 0x7f, 0x9d, 0x99, 0x01, 0x00, 0x00,
    // body length 5
    0x05, 0x00,
    // body: variant 1 GateCounts; interval 60; entries 420 (a4 03); exits 35
    0x01, 0x3c, 0xa4, 0x03, 0x23,
    // tag: HMAC-SHA256(KEY, all of the above)[..16]
    0x8a, 0x85, 0x68, 0x81, 0x45, 0x21, 0xdb, 0xbf,
    0x09, 0xef, 0x0b, 0xa8, 0x5b, 0xeb, 0x64, 0x1d,
];

#[rustfmt::skip]
const KEY_ROTATION: &[u8] = &[
    // version 1, flags 0x01 (clock synced), device id length 8
    0x01, 0x01, 0x08,
    // device id 'gz-s4-g1'
    0x67, 0x7a, 0x2d, 0x73, 0x34, 0x2d, 0x67, 0x31,
    // boot epoch 0, sequence 9
    0x00, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00,
    // timestamp 1759284000000 ms
    0x00, 0x75, 0x7f, 0x9d, 0x99, 0x01, 0x00, 0x00,
    // body length 35
    0x23, 0x00,
    // body: variant 5 Downlink; variant 2 KeyRotation; key_id 2; wrapped key 32 x 0x5a
    0x05, 0x02, 0x02, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
    0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
    0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
    // tag: HMAC-SHA256(KEY, all of the above)[..16]
    0x59, 0xff, 0xce, 0xbf, 0x26, 0x06, 0xfa, 0x37,
    0x36, 0x90, 0xe1, 0xd6, 0xdf, 0x1a, 0xd2, 0xbe,
];

#[rustfmt::skip]
const ACK: &[u8] = &[
    // version 1, flags 0x01 (clock synced), device id length 8
    0x01, 0x01, 0x08,
    // device id 'gz-s4-g1'
    0x67, 0x7a, 0x2d, 0x73, 0x34, 0x2d, 0x67, 0x31,
    // boot epoch 3, sequence 42
    0x03, 0x00, 0x00, 0x00, 0x2a, 0x00, 0x00, 0x00,
    // timestamp 1759284001000 ms
    0xe8, 0x78, 0x7f, 0x9d, 0x99, 0x01, 0x00, 0x00,
    // body length 3
    0x03, 0x00,
    // body: variant 6 Ack; sequence 9; Applied(0)
    0x06, 0x09, 0x00,
    // tag: HMAC-SHA256(KEY, all of the above)[..16]
    0xe5, 0x4e, 0x83, 0xff, 0x14, 0x88, 0x5b, 0x9c,
    0x7c, 0x76, 0x8a, 0x64, 0x80, 0xdd, 0xea, 0x6e,
];
