//! The scenario's faults: when each is on, and the ones the fleet does to the broker itself
//! (replaying a node's recent frames, frames sealed with a wrong key). Link loss, lost reads
//! and outages act where the nodes publish (`Fleet::step`).

use wire::{DeviceKey, Header, Quantity, Timestamp, Trigger};

use super::world::minutes_into;
use super::{Fleet, Out};
use crate::scenario::{FaultKind, Scenario};

/// Whether a fault of `kind` on `device` is on at local minute `m` (a broker outage is on for
/// every device): its index in the scenario and its value. A fault without an end lasts a
/// minute.
pub(super) fn fault_on(
    scenario: &Scenario,
    kind: FaultKind,
    device: &str,
    m: f64,
) -> Option<(usize, f64)> {
    scenario.faults.iter().enumerate().find_map(|(i, f)| {
        let everyone = kind == FaultKind::BrokerOutage;
        if f.kind != kind || (!everyone && f.device != device) {
            return None;
        }
        minutes_into(&f.at, f.until.as_deref(), 1.0, m)?;
        Some((i, f.value.unwrap_or(0.0)))
    })
}

impl Fleet {
    /// Replays and forgeries due at `t`, each once.
    pub(super) fn apply_faults(&mut self, t: i64, out: &mut impl Out) {
        for i in 0..self.nodes.len() {
            let id = self.nodes[i].id.clone();
            for kind in [FaultKind::Replay, FaultKind::Forged] {
                let Some((f, value)) = self.fault(kind, &id, t) else {
                    continue;
                };
                if self.faults_done[f] {
                    continue;
                }
                self.faults_done[f] = true;
                let vn = &self.nodes[i];
                let n = value.max(1.0) as usize;
                match kind {
                    FaultKind::Replay => {
                        let old: Vec<Vec<u8>> = vn.recent.iter().take(n).cloned().collect();
                        for frame in old {
                            if out.publish(&vn.topic, frame) {
                                self.counts.replayed += 1;
                            }
                        }
                    }
                    _ => {
                        let wrong = DeviceKey::from_bytes([0xEE; 32]);
                        for k in 0..n {
                            let header = Header {
                                device_id: &vn.id,
                                boot_epoch: vn.node.boot_epoch(),
                                sequence: vn.node.sequence() + 10_000 + k as u32,
                                timestamp: Timestamp::Synced { unix_ms: t as u64 },
                            };
                            let body =
                                node::pipe::report(Trigger::Periodic, &[(Quantity::Gas, 0.0)]);
                            if let Ok(frame) = wire::frame::seal_to_vec(&header, &body, &wrong)
                                && out.publish(&vn.topic, frame)
                            {
                                self.counts.forged += 1;
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        toml::from_str(
            r#"
            name = "t"
            [time]
            start = "08:00"
            end = "12:00"
            acceleration = 60
            [[fault]]
            kind = "link_down"
            device = "gz-s4-g1"
            at = "09:00"
            until = "09:20"
            [[fault]]
            kind = "replay"
            device = "gz-p1-press"
            at = "10:00"
            value = 3.0
            [[fault]]
            kind = "broker_outage"
            at = "11:00"
            until = "11:05"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn a_fault_is_on_for_its_device_between_its_start_and_its_end() {
        let s = scenario();
        let link = |device: &str, m: f64| fault_on(&s, FaultKind::LinkDown, device, m);
        assert_eq!(link("gz-s4-g1", 539.9), None);
        assert_eq!(link("gz-s4-g1", 540.0), Some((0, 0.0)));
        assert_eq!(link("gz-s4-g1", 560.0), None, "until is exclusive");
        assert_eq!(link("gz-s4-g2", 545.0), None, "another device");
    }

    #[test]
    fn a_fault_without_an_end_lasts_a_minute_and_carries_its_value() {
        let s = scenario();
        let replay = |m: f64| fault_on(&s, FaultKind::Replay, "gz-p1-press", m);
        assert_eq!(replay(600.5), Some((1, 3.0)));
        assert_eq!(replay(601.0), None);
    }

    #[test]
    fn a_broker_outage_is_on_for_every_device() {
        let s = scenario();
        for device in ["gz-s4-g1", "anything", ""] {
            assert_eq!(
                fault_on(&s, FaultKind::BrokerOutage, device, 662.0),
                Some((2, 0.0))
            );
        }
    }
}
