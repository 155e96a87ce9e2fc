//! The gateway decodes the wire crate's golden vectors through its real receive path.

use std::sync::{Arc, Mutex};

use gateway::decode::Verifier;
use gateway::decode::VerifySection;
use gateway::keys::Keys;
use gateway::registry::Registry;
use wire::DeviceKey;
use wire::golden::VECTORS;

use crate::support::catalog;

#[test]
fn gateway_accepts_the_golden_uplink_vectors() {
    let catalog = catalog();
    let mut keys = Keys::default();
    for v in VECTORS {
        let frame = wire::Frame::new_checked(v.frame).unwrap();
        keys.insert(frame.device_id(), DeviceKey::from_bytes(v.key));
    }
    let registry = Arc::new(Mutex::new(Registry::new(&catalog, &keys, &[])));
    // The golden timestamps are from 2025: accept them by age.
    let rules = VerifySection {
        max_age_s: 100 * 365 * 24 * 3600,
        ..VerifySection::default()
    };
    let verifier = Verifier::new(&catalog, keys, rules);
    let mut accepted = 0;
    for v in VECTORS {
        let m = (v.meaning)();
        if matches!(m.body, wire::Body::Downlink(_)) {
            continue; // gateway → node
        }
        let device = catalog
            .site
            .device(m.header.device_id)
            .unwrap_or_else(|| panic!("{}: golden device not in the site", v.name));
        let topic = format!("cs/v1/{}/{}/{}/up", device.zone, device.profile, device.id);
        let now = gateway::clock::now_ms();
        let readings = verifier
            .report(&mut registry.lock().unwrap(), &topic, v.frame, now)
            .unwrap_or_else(|r| panic!("{}: rejected: {} ({})", v.name, r.reason, r.detail))
            .readings;
        accepted += 1;
        if let wire::Body::GateEvents(g) = &m.body {
            assert_eq!(readings.len(), g.events.len(), "{}", v.name);
        }
    }
    assert_eq!(accepted, VECTORS.len() - 1);
}
