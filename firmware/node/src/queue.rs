//! The offline queue: sealed frames waiting for the broker, bounded.
//!
//! When it is full, the oldest *routine* frame leaves first; frames that carry an alarm (a
//! threshold crossed, a cover lifted) stay. Only when every frame held is an alarm does the
//! oldest alarm go. Every frame dropped is counted, and the gateway sees the gap in the sequence
//! numbers (its completeness ledger).

use heapless::Vec;

/// Largest frame the queue holds (a full gate batch is ~600 bytes).
pub const MAX_QUEUED_FRAME: usize = 640;

/// One queued frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// The sealed frame.
    pub frame: Vec<u8, MAX_QUEUED_FRAME>,
    /// Carries an alarm: kept over routine frames.
    pub alarm: bool,
}

/// A bounded FIFO of `N` frames with the drop policy above.
#[derive(Debug, Clone, Default)]
pub struct OfflineQueue<const N: usize> {
    frames: heapless::Deque<Queued, N>,
    /// Routine frames dropped for room.
    pub dropped_routine: u32,
    /// Alarm frames dropped for room (only when nothing else was left).
    pub dropped_alarm: u32,
}

impl<const N: usize> OfflineQueue<N> {
    /// An empty queue.
    pub const fn new() -> Self {
        OfflineQueue {
            frames: heapless::Deque::new(),
            dropped_routine: 0,
            dropped_alarm: 0,
        }
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Adds a frame, making room by the policy. A frame larger than [`MAX_QUEUED_FRAME`] is
    /// refused (returns `false`).
    pub fn push(&mut self, frame: &[u8], alarm: bool) -> bool {
        let Ok(frame) = Vec::from_slice(frame) else {
            return false;
        };
        if self.frames.is_full() {
            self.make_room(alarm);
        }
        if self.frames.is_full() {
            // Everything held is an alarm and this one is routine: it is the one dropped.
            self.dropped_routine += 1;
            return false;
        }
        self.frames.push_back(Queued { frame, alarm }).is_ok()
    }

    fn make_room(&mut self, incoming_alarm: bool) {
        // One full rotation keeps the order: the oldest routine frame is the one left out.
        let mut removed = false;
        for _ in 0..self.frames.len() {
            let Some(q) = self.frames.pop_front() else {
                return;
            };
            if !removed && !q.alarm {
                removed = true;
                self.dropped_routine += 1;
                continue;
            }
            let _ = self.frames.push_back(q);
        }
        // Only alarms: the oldest alarm goes, for a newer alarm.
        if !removed && incoming_alarm && self.frames.pop_front().is_some() {
            self.dropped_alarm += 1;
        }
    }

    /// The oldest frame, without removing it.
    pub fn front(&self) -> Option<&Queued> {
        self.frames.front()
    }

    /// Removes the oldest frame (after the broker took it).
    pub fn pop(&mut self) -> Option<Queued> {
        self.frames.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents<const N: usize>(q: &mut OfflineQueue<N>) -> std::vec::Vec<u8> {
        let mut out = std::vec::Vec::new();
        while let Some(f) = q.pop() {
            out.push(f.frame[0]);
        }
        out
    }

    #[test]
    fn routine_frames_leave_first_and_alarms_stay() {
        let mut q = OfflineQueue::<4>::new();
        assert!(q.push(&[1], false));
        assert!(q.push(&[2], true));
        assert!(q.push(&[3], false));
        assert!(q.push(&[4], true));
        assert!(q.push(&[5], false), "room is made by dropping frame 1");
        assert!(q.push(&[6], true), "then frame 3");
        assert_eq!(q.dropped_routine, 2);
        assert_eq!(contents(&mut q), std::vec![2, 4, 5, 6], "order kept");
    }

    #[test]
    fn a_queue_full_of_alarms_keeps_the_newest_alarms_and_refuses_routine() {
        let mut q = OfflineQueue::<2>::new();
        q.push(&[1], true);
        q.push(&[2], true);
        assert!(!q.push(&[3], false));
        assert!(q.push(&[4], true));
        assert_eq!((q.dropped_routine, q.dropped_alarm), (1, 1));
        assert_eq!(contents(&mut q), std::vec![2, 4]);
    }
}
