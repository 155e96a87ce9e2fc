//! Gate readers: tags in, hashed and debounced passages out, in batches.
//!
//! A ticket's tag id never leaves the node: it is hashed with the site's salt
//! (HMAC-SHA256, first 8 bytes), so the gateway can de-duplicate passages without learning
//! ticket numbers. A tag seen again at the same gate within the debounce window is the same
//! passage (readers see a tag many times while it is in the field). Two-antenna gates decide the
//! direction from the order the antennas saw the tag in.

use heapless::Vec;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use wire::body::MAX_GATE_EVENTS;
use wire::{Body, Direction, GateEvent, GateEvents, TagHash};

use crate::drivers::TagRead;

/// Hashes a tag id with the site salt.
pub fn hash_tag(salt: &[u8; 16], id: &[u8]) -> TagHash {
    // HMAC accepts keys of any length: new_from_slice cannot fail for a 16-byte key.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(salt) {
        Ok(m) => m,
        Err(_) => return TagHash([0; 8]),
    };
    mac.update(id);
    let digest = mac.finalize().into_bytes();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    TagHash(out)
}

/// Remembers the last `N` passages for the debounce window.
#[derive(Debug, Clone)]
pub struct Debouncer<const N: usize> {
    recent: heapless::Deque<(TagHash, u64), N>,
    window_ms: u64,
}

impl<const N: usize> Debouncer<N> {
    /// A tag seen again within `window_ms` is the same passage.
    pub const fn new(window_ms: u64) -> Self {
        Debouncer {
            recent: heapless::Deque::new(),
            window_ms,
        }
    }

    /// Whether this read is a new passage (and remembers it).
    pub fn is_new(&mut self, tag: TagHash, now_ms: u64) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|(_, t)| now_ms.saturating_sub(*t) >= self.window_ms)
        {
            self.recent.pop_front();
        }
        if let Some(entry) = self.recent.iter_mut().find(|(h, _)| *h == tag) {
            // Still in the field: extend the window from the latest read.
            entry.1 = now_ms;
            return false;
        }
        if self.recent.is_full() {
            self.recent.pop_front();
        }
        let _ = self.recent.push_back((tag, now_ms));
        true
    }
}

/// Two antennas, outer (0) and inner (1): outer then inner is an entry, inner then outer an
/// exit. A tag seen by only one antenna within `pair_ms` is not counted.
#[derive(Debug, Clone)]
pub struct AntennaPair<const N: usize> {
    first_seen: heapless::Deque<(TagHash, u8, u64), N>,
    pair_ms: u64,
}

impl<const N: usize> AntennaPair<N> {
    /// Pairs reads within `pair_ms`.
    pub const fn new(pair_ms: u64) -> Self {
        AntennaPair {
            first_seen: heapless::Deque::new(),
            pair_ms,
        }
    }

    /// The direction, once the second antenna saw the tag.
    pub fn observe(&mut self, tag: TagHash, antenna: u8, now_ms: u64) -> Option<Direction> {
        while self
            .first_seen
            .front()
            .is_some_and(|(_, _, t)| now_ms.saturating_sub(*t) > self.pair_ms)
        {
            self.first_seen.pop_front();
        }
        let found = self.first_seen.iter().position(|(h, _, _)| *h == tag);
        match found {
            Some(i) => {
                let first = self.first_seen.iter().nth(i).map_or(antenna, |e| e.1);
                if first == antenna {
                    return None; // the same antenna again
                }
                // Remove it by rotating once around the deque (order kept).
                for j in 0..self.first_seen.len() {
                    if let Some(e) = self.first_seen.pop_front()
                        && j != i
                    {
                        let _ = self.first_seen.push_back(e);
                    }
                }
                Some(if first == 0 {
                    Direction::Entry
                } else {
                    Direction::Exit
                })
            }
            None => {
                if self.first_seen.is_full() {
                    self.first_seen.pop_front();
                }
                let _ = self.first_seen.push_back((tag, antenna, now_ms));
                None
            }
        }
    }
}

/// Collects passages into [`GateEvents`] bodies: full batches at once, partial ones when they
/// are `max_age_ms` old.
#[derive(Debug, Clone, Default)]
pub struct Batcher {
    events: Vec<GateEvent, MAX_GATE_EVENTS>,
    started_ms: u64,
}

impl Batcher {
    /// An empty batch.
    pub const fn new() -> Self {
        Batcher {
            events: Vec::new(),
            started_ms: 0,
        }
    }

    /// Adds a passage; returns a full batch `(start time, body)` to report.
    pub fn push(&mut self, tag: TagHash, direction: Direction, now_ms: u64) -> Option<(u64, Body)> {
        if self.events.is_empty() {
            self.started_ms = now_ms;
        }
        let offset_ms = now_ms
            .saturating_sub(self.started_ms)
            .min(u64::from(u32::MAX)) as u32;
        let _ = self.events.push(GateEvent {
            tag,
            direction,
            offset_ms,
        });
        if self.events.is_full() {
            return self.take();
        }
        None
    }

    /// The partial batch, once it is `max_age_ms` old.
    pub fn due(&mut self, now_ms: u64, max_age_ms: u64) -> Option<(u64, Body)> {
        if !self.events.is_empty() && now_ms.saturating_sub(self.started_ms) >= max_age_ms {
            return self.take();
        }
        None
    }

    fn take(&mut self) -> Option<(u64, Body)> {
        let events = core::mem::take(&mut self.events);
        Some((self.started_ms, Body::GateEvents(GateEvents { events })))
    }
}

/// A gate: reads in, batches out.
#[derive(Debug, Clone)]
pub struct Gate {
    salt: [u8; 16],
    role: crate::config::GateRole,
    debounce: Debouncer<64>,
    pairs: AntennaPair<32>,
    batch: Batcher,
}

impl Gate {
    /// A gate counting in `role`, hashing with `salt`, treating reads within `debounce_ms` as
    /// one passage.
    pub fn new(salt: [u8; 16], role: crate::config::GateRole, debounce_ms: u64) -> Self {
        Gate {
            salt,
            role,
            debounce: Debouncer::new(debounce_ms),
            pairs: AntennaPair::new(2_000),
            batch: Batcher::new(),
        }
    }

    /// One read at `now_ms`; a full batch to report when there is one.
    pub fn read(&mut self, read: &TagRead, now_ms: u64) -> Option<(u64, Body)> {
        use crate::config::GateRole;
        let tag = hash_tag(&self.salt, &read.id);
        let direction = match self.role {
            GateRole::Entry => Direction::Entry,
            GateRole::Exit => Direction::Exit,
            GateRole::Both => self.pairs.observe(tag, read.antenna, now_ms)?,
        };
        if !self.debounce.is_new(tag, now_ms) {
            return None;
        }
        self.batch.push(tag, direction, now_ms)
    }

    /// A partial batch, when it waited long enough.
    pub fn due(&mut self, now_ms: u64, max_age_ms: u64) -> Option<(u64, Body)> {
        self.batch.due(now_ms, max_age_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GateRole;

    fn read(id: &[u8], antenna: u8) -> TagRead {
        TagRead {
            id: Vec::from_slice(id).unwrap(),
            antenna,
        }
    }

    #[test]
    fn one_tag_read_twenty_times_is_one_passage() {
        let mut gate = Gate::new([1; 16], GateRole::Entry, 3_000);
        for i in 0..20 {
            assert!(gate.read(&read(&[0xE2, 0, 1, 2], 0), i * 100).is_none());
        }
        let (start, body) = gate.due(10_000, 5_000).unwrap();
        assert_eq!(start, 0);
        let Body::GateEvents(events) = body else {
            panic!()
        };
        assert_eq!(events.events.len(), 1);
        assert_eq!(events.events[0].direction, Direction::Entry);
        // Out of the field for longer than the window: a new passage.
        assert!(gate.read(&read(&[0xE2, 0, 1, 2], 0), 20_000).is_none());
        assert!(gate.due(30_000, 5_000).is_some());
    }

    #[test]
    fn tag_ids_are_hashed_with_the_site_salt() {
        let a = hash_tag(&[1; 16], b"ticket-0001");
        assert_eq!(a, hash_tag(&[1; 16], b"ticket-0001"));
        assert_ne!(
            a,
            hash_tag(&[2; 16], b"ticket-0001"),
            "another site, another hash"
        );
        assert_ne!(a.0[..], b"ticket-0001"[..8]);
    }

    #[test]
    fn thirty_two_passages_fill_a_batch() {
        let mut gate = Gate::new([1; 16], GateRole::Exit, 3_000);
        let mut full = None;
        for i in 0..32u8 {
            full = gate.read(&read(&[i, 1, 2, 3], 0), u64::from(i) * 10);
        }
        let (_, Body::GateEvents(e)) = full.unwrap() else {
            panic!()
        };
        assert_eq!(e.events.len(), 32);
        assert_eq!(e.events[31].offset_ms, 310);
        assert!(e.events.iter().all(|x| x.direction == Direction::Exit));
    }

    #[test]
    fn two_antennas_tell_the_direction() {
        let mut gate = Gate::new([1; 16], GateRole::Both, 3_000);
        assert!(gate.read(&read(&[1], 0), 0).is_none());
        assert!(
            gate.read(&read(&[1], 0), 100).is_none(),
            "same antenna again"
        );
        assert!(gate.read(&read(&[1], 1), 400).is_none());
        assert!(gate.read(&read(&[2], 1), 500).is_none());
        assert!(gate.read(&read(&[2], 0), 900).is_none());
        assert!(
            gate.read(&read(&[3], 0), 1000).is_none(),
            "never reaches the inner antenna"
        );
        let (_, Body::GateEvents(e)) = gate.due(9_000, 5_000).unwrap() else {
            panic!()
        };
        let dirs: std::vec::Vec<Direction> = e.events.iter().map(|x| x.direction).collect();
        assert_eq!(dirs, std::vec![Direction::Entry, Direction::Exit]);
    }
}
