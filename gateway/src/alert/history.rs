//! Recent values of one field of one subject, for the rules' derived values.

use std::collections::VecDeque;

/// Recent values of one field of one subject, kept as what the derivations ask of them: the
/// largest and the smallest value since any time within the kept span, and the latest value.
///
/// `maxima` holds the values larger than every later one (the suffix maxima), oldest first:
/// the largest value since `from` is the first of them at or after `from`, found by binary
/// search. `minima` likewise. Each value is pushed and popped at most once, so a subject
/// reporting many times a second (a water main with a hundred loggers) costs O(log n) per
/// reading instead of a walk through its whole window.
#[derive(Debug, Clone, Default)]
pub(super) struct History {
    pub(super) maxima: VecDeque<(i64, f64)>,
    pub(super) minima: VecDeque<(i64, f64)>,
    pub(super) latest: Option<(i64, f64)>,
}

impl History {
    #[inline]
    pub(super) fn push(&mut self, time_ms: i64, value: f64, keep_ms: i64) {
        while self.maxima.back().is_some_and(|&(_, v)| v <= value) {
            self.maxima.pop_back();
        }
        self.maxima.push_back((time_ms, value));
        while self.minima.back().is_some_and(|&(_, v)| v >= value) {
            self.minima.pop_back();
        }
        self.minima.push_back((time_ms, value));
        self.latest = Some((time_ms, value));
        for q in [&mut self.maxima, &mut self.minima] {
            while q.front().is_some_and(|&(t, _)| t < time_ms - keep_ms) {
                q.pop_front();
            }
        }
    }

    /// The first kept extremum at or after `from_ms`: the largest (or smallest) value since.
    #[inline]
    pub(super) fn since(q: &VecDeque<(i64, f64)>, from_ms: i64) -> Option<f64> {
        q.get(q.partition_point(|&(t, _)| t < from_ms))
            .map(|&(_, v)| v)
    }

    #[inline]
    pub(super) fn max_since(&self, from_ms: i64) -> Option<f64> {
        Self::since(&self.maxima, from_ms)
    }

    #[inline]
    pub(super) fn min_since(&self, from_ms: i64) -> Option<f64> {
        Self::since(&self.minima, from_ms)
    }

    #[inline]
    pub(super) fn latest_since(&self, from_ms: i64) -> Option<f64> {
        self.latest.filter(|&(t, _)| t >= from_ms).map(|(_, v)| v)
    }
}
