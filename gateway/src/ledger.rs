//! Replay window and completeness ledger of one device, from `(boot epoch, sequence)`.
//!
//! Nodes number their frames from 0 in each boot epoch and persist the epoch across reboots.
//! The gateway accepts each `(epoch, sequence)` once: a newer epoch starts a fresh window; in
//! the current epoch, a sequence above the highest seen is new, and one up to [`WINDOW`] below
//! it is accepted if it was not seen yet (QoS1 redelivery after a reconnect can reorder);
//! anything else is a replay. The same numbers tell what never arrived: from the first frame
//! seen, every sequence number up to the highest was expected.
//!
//! Plain state, no clock, no I/O (STYLE.md §6).

use serde::{Deserialize, Serialize};

/// How far below the highest sequence a not-yet-seen frame is still accepted.
pub const WINDOW: u32 = 64;

/// Sequence state and counts for one device.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ledger {
    /// Boot epoch of the newest accepted frame.
    pub epoch: u32,
    /// Highest sequence accepted in `epoch`.
    pub highest: u32,
    /// Bit `i` set: sequence `highest - i` was accepted.
    seen: u64,
    /// Whether any frame was accepted yet.
    pub started: bool,
    /// Frames that should have arrived, from the first frame seen.
    pub expected: u64,
    /// Frames accepted.
    pub received: u64,
    /// Frames refused as replays.
    pub replayed: u64,
}

/// A frame that was already accepted, or is too old to tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed;

impl Ledger {
    /// Whether `(epoch, sequence)` would be accepted, without recording it.
    pub fn check(&self, epoch: u32, sequence: u32) -> Result<(), Replayed> {
        if !self.started || epoch > self.epoch {
            return Ok(());
        }
        if epoch < self.epoch {
            return Err(Replayed);
        }
        if sequence > self.highest {
            return Ok(());
        }
        let behind = self.highest - sequence;
        if behind < WINDOW && self.seen & (1u64 << behind) == 0 {
            Ok(())
        } else {
            Err(Replayed)
        }
    }

    /// Records an accepted frame (call after [`Ledger::check`] succeeded).
    pub fn accept(&mut self, epoch: u32, sequence: u32) {
        if !self.started {
            *self = Ledger {
                epoch,
                highest: sequence,
                seen: 1,
                started: true,
                expected: 1,
                received: 1,
                ..*self
            };
            return;
        }
        if epoch > self.epoch {
            self.epoch = epoch;
            self.highest = sequence;
            self.seen = 1;
            self.expected += u64::from(sequence) + 1;
        } else if sequence > self.highest {
            let ahead = sequence - self.highest;
            self.seen = if ahead >= 64 { 0 } else { self.seen << ahead };
            self.seen |= 1;
            self.highest = sequence;
            self.expected += u64::from(ahead);
        } else {
            self.seen |= 1u64 << (self.highest - sequence);
        }
        self.received += 1;
    }

    /// Whether `(epoch, sequence)` was accepted: `None` when it is outside what the window
    /// remembers (another epoch, or more than [`WINDOW`] below the highest).
    pub fn was_accepted(&self, epoch: u32, sequence: u32) -> Option<bool> {
        if !self.started || epoch != self.epoch {
            return None;
        }
        if sequence > self.highest {
            return Some(false);
        }
        let behind = self.highest - sequence;
        (behind < WINDOW).then(|| self.seen & (1u64 << behind) != 0)
    }

    /// Counts a refused replay.
    pub fn count_replay(&mut self) {
        self.replayed += 1;
    }

    /// Frames expected but not (yet) received.
    pub fn missing(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(l: &mut Ledger, epoch: u32, seq: u32) -> Result<(), Replayed> {
        l.check(epoch, seq)?;
        l.accept(epoch, seq);
        Ok(())
    }

    #[test]
    fn replayed_frame_is_rejected() {
        let mut l = Ledger::default();
        feed(&mut l, 1, 0).unwrap();
        feed(&mut l, 1, 1).unwrap();
        assert_eq!(feed(&mut l, 1, 1), Err(Replayed));
        assert_eq!(feed(&mut l, 1, 0), Err(Replayed));
        assert_eq!(l.missing(), 0);
    }

    #[test]
    fn a_gap_is_counted_and_filled_by_a_late_frame() {
        let mut l = Ledger::default();
        feed(&mut l, 1, 10).unwrap();
        feed(&mut l, 1, 13).unwrap();
        assert_eq!((l.expected, l.received, l.missing()), (4, 2, 2));
        feed(&mut l, 1, 11).unwrap();
        assert_eq!(l.missing(), 1);
        assert_eq!(feed(&mut l, 1, 11), Err(Replayed));
        assert_eq!(l.was_accepted(1, 12), Some(false));
        assert_eq!(l.was_accepted(1, 11), Some(true));
        assert_eq!(l.was_accepted(2, 11), None);
    }

    #[test]
    fn frames_far_behind_the_window_are_replays() {
        let mut l = Ledger::default();
        feed(&mut l, 1, 0).unwrap();
        feed(&mut l, 1, 100).unwrap();
        assert_eq!(feed(&mut l, 1, 100 - WINDOW), Err(Replayed));
        feed(&mut l, 1, 100 - WINDOW + 1).unwrap();
    }

    #[test]
    fn a_reboot_starts_a_new_window_and_an_old_epoch_is_a_replay() {
        let mut l = Ledger::default();
        feed(&mut l, 3, 50).unwrap();
        feed(&mut l, 4, 2).unwrap();
        assert_eq!((l.expected, l.received), (4, 2)); // 50, then 0..=2 of the new epoch
        assert_eq!(feed(&mut l, 3, 51), Err(Replayed));
        feed(&mut l, 4, 0).unwrap();
    }

    #[test]
    fn a_jump_beyond_the_window_forgets_old_bits() {
        let mut l = Ledger::default();
        feed(&mut l, 1, 0).unwrap();
        feed(&mut l, 1, 200).unwrap();
        feed(&mut l, 1, 199).unwrap();
        assert_eq!(l.missing(), 199 - 1);
    }
}
