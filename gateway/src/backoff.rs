//! Exponential backoff with full jitter, shared by every reconnecting or retrying task (the
//! MQTT session, the sink runtime, the Modbus pollers), so a fleet of gateways does not retry in
//! step.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `min`, doubles per failure, never above `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            failures: 0,
        }
    }

    /// The delay before the next attempt: uniform in `[min, min·2^failures]` capped at `max`.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let span = ceiling.saturating_sub(self.min).as_millis() as u64;
        self.min
            + Duration::from_millis(if span == 0 {
                0
            } else {
                rng.random_range(0..=span)
            })
    }

    /// A connection succeeded.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter_and_resets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay(&mut rng).as_millis()).collect();
        assert_eq!(delays[0], 100);
        assert!(
            delays.iter().all(|d| (100..=1000).contains(d)),
            "{delays:?}"
        );
        assert!(delays[4..].iter().any(|d| *d > 400), "{delays:?}");
        b.reset();
        assert_eq!(b.next_delay(&mut rng).as_millis(), 100);
    }
}
