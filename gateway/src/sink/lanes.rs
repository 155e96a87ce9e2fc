//! Pure state of the sink runtime: the [`Lanes`] of a cursor (a catch-up lane beside live data
//! after an outage) and the [`Bucket`] that limits items per second.
//!
//! **Lanes.** When the backlog grows past a threshold (an outage), what is stored at that moment
//! becomes the catch-up lane and everything after it the live lane. Every round sends a live
//! batch first, then a catch-up batch, so live data keeps flowing while the backlog drains; with
//! a rate limit, catch-up gets what live leaves.

use std::time::{Duration, Instant};

use crate::store::{Store, StoreError};

/// Where one sink's delivery stands; persisted as the cursors `{cursor}` and, with a catch-up
/// lane, `{cursor}:split` and `{cursor}:live`.
///
/// Everything up to `done` is confirmed. While catching up (`split > 0`), the catch-up lane
/// sends `(done, split]` and the live lane `(live, newest]`; when the catch-up lane reaches
/// `split`, everything up to `live` is confirmed and the lanes merge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lanes {
    /// Confirmed up to here.
    pub done: i64,
    /// The end of the backlog being caught up; 0 when not catching up.
    pub split: i64,
    /// Confirmed up to here after `split` (live lane).
    pub live: i64,
}

/// Which lane a batch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Records stored after the backlog.
    Live,
    /// The backlog.
    CatchUp,
}

impl Lanes {
    /// Opens a catch-up lane when more than `threshold` records wait: what is stored now is the
    /// backlog. While the platform stays down nothing moves, so the backlog grows with it (the
    /// live lane starts at the newest record when sending resumes). Returns whether the lanes
    /// changed.
    pub fn open_catch_up(&mut self, newest: i64, threshold: u64) -> bool {
        let backlog_from = match (self.catching_up(), self.live == self.split) {
            (false, _) => self.done,
            (true, true) => self.split,
            // The live lane made progress: its own backlog is sent in order.
            (true, false) => return false,
        };
        if newest - backlog_from > threshold as i64 {
            self.split = newest;
            self.live = newest;
            true
        } else {
            false
        }
    }

    /// Whether a backlog is being caught up.
    pub fn catching_up(&self) -> bool {
        self.split > 0
    }

    /// The ids `(after, until]` the lane sends next, if any.
    pub fn range(&self, lane: Lane, newest: i64) -> Option<(i64, i64)> {
        let (after, until) = match (lane, self.catching_up()) {
            (Lane::Live, true) => (self.live, newest),
            (Lane::Live, false) => (self.done, newest),
            (Lane::CatchUp, true) => (self.done, self.split),
            (Lane::CatchUp, false) => return None,
        };
        (after < until).then_some((after, until))
    }

    /// The lane's records up to `upto` were confirmed (or skipped).
    pub fn sent(&mut self, lane: Lane, upto: i64) {
        match (lane, self.catching_up()) {
            (Lane::Live, true) => self.live = self.live.max(upto),
            (Lane::Live, false) | (Lane::CatchUp, false) => self.done = self.done.max(upto),
            (Lane::CatchUp, true) => {
                self.done = self.done.max(upto);
                if self.done >= self.split {
                    self.done = self.done.max(self.live);
                    self.split = 0;
                    self.live = 0;
                }
            }
        }
    }

    /// Records (by id) not yet confirmed.
    pub fn pending(&self, newest: i64) -> i64 {
        if self.catching_up() {
            (self.split - self.done) + (newest - self.live).max(0)
        } else {
            (newest - self.done).max(0)
        }
    }

    /// Reads the lanes of `cursor` from the store; with `with_lanes` false only the confirmed
    /// prefix exists.
    pub fn load(store: &Store, cursor: &str, with_lanes: bool) -> Result<Lanes, StoreError> {
        let done = store.cursor(cursor)?;
        if !with_lanes {
            return Ok(Lanes {
                done,
                ..Lanes::default()
            });
        }
        Ok(Lanes {
            done,
            split: store.cursor(&format!("{cursor}:split"))?,
            live: store.cursor(&format!("{cursor}:live"))?,
        })
    }

    /// Persists the lanes of `cursor` with the items refused for good, in one transaction.
    pub fn save(
        &self,
        store: &Store,
        cursor: &str,
        with_lanes: bool,
        refused: &[(i64, String, String)],
    ) -> Result<(), StoreError> {
        if !with_lanes {
            return store.advance(cursor, self.done, refused);
        }
        store.set_cursors(
            cursor,
            &[
                (cursor, self.done),
                (&format!("{cursor}:split"), self.split),
                (&format!("{cursor}:live"), self.live),
            ],
            refused,
        )
    }
}

/// A token bucket over records: `rate` per second, up to one second's worth at once.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate_per_s: u32) -> Bucket {
        Bucket {
            rate: f64::from(rate_per_s),
            tokens: f64::from(rate_per_s),
            at: Instant::now(),
        }
    }

    fn unlimited(&self) -> bool {
        self.rate <= 0.0
    }

    /// Whole records that may go now.
    pub fn available(&mut self) -> usize {
        if self.unlimited() {
            return usize::MAX;
        }
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate)
            .min(self.rate.max(1.0));
        self.at = now;
        self.tokens.floor() as usize
    }

    pub fn take(&mut self, n: usize) {
        if !self.unlimited() {
            self.tokens -= n as f64;
        }
    }

    /// Until one record may go.
    pub fn wait(&self) -> Duration {
        if self.unlimited() {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(((1.0 - self.tokens).max(0.0) / self.rate).max(0.001))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_opens_a_catch_up_lane_and_live_data_goes_first() {
        let mut l = Lanes::default();
        assert!(!l.open_catch_up(10, 100), "a small backlog is just sent");
        assert_eq!(l.range(Lane::Live, 10), Some((0, 10)));
        assert_eq!(l.range(Lane::CatchUp, 10), None);
        l.sent(Lane::Live, 10);
        assert_eq!(l.done, 10);

        // An outage: 500 records wait, then 500 more while the platform stays down.
        assert!(l.open_catch_up(510, 100));
        assert!(
            l.open_catch_up(1010, 100),
            "the backlog grows while nothing moves"
        );
        assert_eq!((l.split, l.live), (1010, 1010));
        assert!(l.catching_up());
        assert_eq!(l.range(Lane::CatchUp, 1010), Some((10, 1010)));
        assert_eq!(l.range(Lane::Live, 1010), None, "nothing live yet");
        // Live records arrive and are sent while the backlog drains.
        assert_eq!(l.range(Lane::Live, 1015), Some((1010, 1015)));
        l.sent(Lane::Live, 1015);
        assert!(
            !l.open_catch_up(2000, 100),
            "live made progress: no new split"
        );
        l.sent(Lane::CatchUp, 510);
        assert_eq!(l.pending(1020), 500 + 5);
        assert_eq!(
            l.done, 510,
            "the confirmed prefix only moves with the backlog"
        );
        // The backlog ends: the lanes merge at the live cursor.
        l.sent(Lane::CatchUp, 1010);
        assert!(!l.catching_up());
        assert_eq!(l.done, 1015);
        assert_eq!(l.range(Lane::Live, 1020), Some((1015, 1020)));
        assert_eq!(l.pending(1020), 5);
    }

    #[test]
    fn the_bucket_gives_one_second_of_records_then_paces() {
        let mut b = Bucket::new(100);
        assert_eq!(b.available(), 100);
        b.take(100);
        assert_eq!(b.available(), 0);
        assert!(b.wait() >= Duration::from_millis(5), "{:?}", b.wait());
        assert_eq!(Bucket::new(0).available(), usize::MAX);
    }
}
