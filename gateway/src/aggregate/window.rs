//! Event-time tumbling windows.
//!
//! A reading lands in the window that contains its event time. The watermark is how far the
//! subject's devices have reported (see [`super::progress`]); a window *closes* when the
//! watermark passes its end, and is emitted then, once. Data for a closed window is refused
//! ([`TooLate`]): the caller asks for a correction, which clears the windows from the late one
//! on ([`Windows::clear_from`]) and adds the subject's raw readings again, so every window
//! after it (and what it carries on: occupancy, the speed baseline) is computed as if the data
//! had come in order; the windows emitted again are revisions (same timestamp and tags, so the
//! point overwrites the earlier one). Because everything depends on event time only, replaying
//! a buffered hour in order gives the same windows as live delivery.

/// A sum of floats that does not depend on the order they are added in (floating-point
/// addition does): each value counts to nine decimals of its unit, in an integer. A window
/// whose readings came in another order, or were added again by a correction, sums the same.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExactSum(i128);

impl ExactSum {
    const SCALE: f64 = 1e9;

    /// Adds `v` (a value that is not finite adds nothing).
    #[inline]
    pub fn add(&mut self, v: f64) {
        if v.is_finite() {
            self.0 += (v * Self::SCALE).round() as i128;
        }
    }

    /// The sum.
    pub fn value(self) -> f64 {
        self.0 as f64 / Self::SCALE
    }
}

/// The reading's window was already final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLate;

#[derive(Debug, Clone)]
struct Slot<S> {
    state: S,
    dirty: bool,
    emitted: bool,
    unsynced_clock: bool,
}

/// A window that closed: its bounds, its state, and what the city platform is told about it.
#[derive(Debug)]
pub struct Closed<'a, S> {
    /// Start, Unix ms.
    pub start: i64,
    /// End, Unix ms (the point's timestamp).
    pub end: i64,
    /// The aggregated state.
    pub state: &'a S,
    /// Emitted before: late data changed it.
    pub late: bool,
    /// Some reading in it had an unsynced clock.
    pub unsynced_clock: bool,
}

/// Windows of one size for one subject (an area, a segment, an asset and field, ...).
///
/// Open windows are few (those the slowest live device has not passed), so they are kept in a
/// vector sorted by start, grown one slot at a time: a subject costs a few dozen bytes, which
/// matters with a window series per device (issue 10: ≤ 1 KiB of state per device).
#[derive(Debug, Clone)]
pub struct Windows<S> {
    size_ms: i64,
    slots: Vec<(i64, Slot<S>)>,
    /// The end of the newest window emitted.
    emitted_until: i64,
    /// Windows ending at or before this were emitted before a correction cleared them: emitted
    /// again, they are revisions.
    revised_until: i64,
}

impl<S: Default> Windows<S> {
    /// Windows of `size_ms`.
    pub fn new(size_ms: i64) -> Self {
        Windows {
            size_ms,
            slots: Vec::new(),
            emitted_until: i64::MIN,
            revised_until: i64::MIN,
        }
    }

    /// Forgets the windows starting at or after `start` (a correction adds their readings
    /// again); those emitted before are revisions when emitted again.
    pub fn clear_from(&mut self, start: i64) {
        self.slots.retain(|(s, _)| *s < start);
        self.revised_until = self.revised_until.max(self.emitted_until);
    }

    /// The start of the window containing `t`.
    pub fn start_of(&self, t: i64) -> i64 {
        t.div_euclid(self.size_ms) * self.size_ms
    }

    /// The state of the window containing `t`, to update; `TooLate` when the window closed
    /// under `watermark`.
    pub fn get_mut(&mut self, t: i64, watermark: i64) -> Result<&mut S, TooLate> {
        self.get_mut_from(t, false, watermark)
    }

    /// [`Windows::get_mut`] for a reading that may come from a node with an unsynced clock.
    pub fn get_mut_from(
        &mut self,
        t: i64,
        unsynced_clock: bool,
        watermark: i64,
    ) -> Result<&mut S, TooLate> {
        let start = self.start_of(t);
        if start + self.size_ms <= watermark {
            return Err(TooLate);
        }
        let at = match self.slots.binary_search_by_key(&start, |(s, _)| *s) {
            Ok(at) => at,
            Err(at) => {
                let slot = Slot {
                    state: S::default(),
                    dirty: false,
                    emitted: false,
                    unsynced_clock: false,
                };
                self.slots.reserve_exact(1);
                self.slots.insert(at, (start, slot));
                at
            }
        };
        let slot = &mut self.slots[at].1;
        slot.dirty = true;
        slot.unsynced_clock |= unsynced_clock;
        Ok(&mut slot.state)
    }

    /// Windows that closed (end ≤ watermark) and were not emitted, oldest first; forgets the
    /// windows emitted before.
    pub fn drain_closed(&mut self, watermark: i64) -> Vec<Closed<'_, S>> {
        let size = self.size_ms;
        self.slots
            .retain(|(start, slot)| slot.dirty || start + size > watermark);
        let mut out = Vec::new();
        for (start, slot) in self.slots.iter_mut() {
            let start = *start;
            if start + size <= watermark && slot.dirty {
                slot.dirty = false;
                let late = slot.emitted || start + size <= self.revised_until;
                slot.emitted = true;
                self.emitted_until = self.emitted_until.max(start + size);
                out.push(Closed {
                    start,
                    end: start + size,
                    state: &slot.state,
                    late,
                    unsynced_clock: slot.unsynced_clock,
                });
            }
        }
        out
    }

    /// Windows held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no window is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_emitted_when_the_watermark_passes_its_end() {
        let mut w: Windows<u32> = Windows::new(60_000);
        *w.get_mut(1_000, 1_000).unwrap() += 1;
        *w.get_mut(59_999, 59_999).unwrap() += 1;
        assert!(w.drain_closed(59_999).is_empty());
        let closed: Vec<_> = w
            .drain_closed(60_000)
            .into_iter()
            .map(|c| (c.start, c.end, *c.state))
            .collect();
        assert_eq!(closed, vec![(0, 60_000, 2)]);
        assert!(w.drain_closed(70_000).is_empty(), "emitted once");
    }

    #[test]
    fn data_for_a_closed_window_is_refused() {
        let mut w: Windows<u32> = Windows::new(60_000);
        *w.get_mut(10_000, 10_000).unwrap() += 1;
        assert_eq!(w.drain_closed(61_000).len(), 1);
        assert_eq!(w.get_mut(20_000, 61_000), Err(TooLate));
        assert!(
            w.get_mut(60_000, 61_000).is_ok(),
            "the open window takes it"
        );
    }

    #[test]
    fn old_windows_are_forgotten() {
        let mut w: Windows<u32> = Windows::new(60_000);
        for t in (0..3_600_000).step_by(1000) {
            *w.get_mut(t, t).unwrap() += 1;
            w.drain_closed(t);
        }
        assert!(w.len() <= 3, "{}", w.len());
    }

    #[test]
    fn windows_cleared_for_a_correction_are_revisions_when_emitted_again() {
        let mut w: Windows<u32> = Windows::new(60_000);
        for t in [10_000, 70_000, 130_000] {
            *w.get_mut(t, t).unwrap() += 1;
            w.drain_closed(t);
        }
        assert_eq!(w.get_mut(20_000, 130_000), Err(TooLate));
        w.clear_from(0);
        for t in [10_000, 20_000, 70_000, 130_000] {
            *w.get_mut(t, i64::MIN).unwrap() += 1;
        }
        let again: Vec<_> = w
            .drain_closed(130_000)
            .into_iter()
            .map(|c| (c.start, *c.state, c.late))
            .collect();
        assert_eq!(again, vec![(0, 2, true), (60_000, 1, true)]);
        *w.get_mut(190_000, 190_000).unwrap() += 1;
        let next: Vec<_> = w
            .drain_closed(190_000)
            .into_iter()
            .map(|c| c.late)
            .collect();
        assert_eq!(
            next,
            vec![false],
            "a window never emitted before is no revision"
        );
    }
}
