//! How long a client waits after `overloaded` before it tries again: capped exponential backoff
//! with jitter, reset by the next answer that is served. Pure: the client owns one and sleeps
//! for what it says.
//!
//! Why not a fixed pause: the server refuses what cannot make its deadline on any model, and a
//! closed-loop client resending after the same short pause keeps the offered load at its
//! maximum however far past capacity the fleet is. At 1,000 clients against two cores (about
//! fifteen times what they serve within T, link off) a fixed 20 ms pause made ~10,700 refusals
//! a second, and the CPU spent reading, refusing and answering them left ~750 requests a second
//! served; with this backoff ~3,700 refusals and ~1,050 served (README, "The model of a
//! client"). Doubling the wait on each refusal in a row brings the attempts down towards what
//! the server can take, and the jitter keeps clients refused in the same burst from coming
//! back in the same burst. The README asks devices to do the same.

use std::time::Duration;

use crate::rng::SplitMix64;

/// The wait after a first refusal.
pub const FIRST: Duration = Duration::from_millis(20);
/// The longest wait: a few round trips of T, so a client is back soon once the load falls.
pub const CAP: Duration = Duration::from_millis(640);

#[derive(Debug, Clone)]
pub struct Backoff {
    /// Refusals in a row.
    refusals: u32,
    rng: SplitMix64,
}

impl Backoff {
    /// `seed` varies the jitter per client.
    pub fn new(seed: u64) -> Self {
        // The stream key is "backoff" in ASCII: jitter of its own, apart from other streams.
        Backoff { refusals: 0, rng: SplitMix64::for_stream(0x0062_6163_6b6f_6666, seed) }
    }

    /// One more refusal: how long to wait before the next request. The ceiling doubles from
    /// [`FIRST`] to [`CAP`]; the wait is uniform in its upper half, so it never falls below half
    /// the ceiling (a refused client always yields) and two clients refused together spread out.
    pub fn refused(&mut self) -> Duration {
        let ceiling = FIRST.saturating_mul(1 << self.refusals.min(16)).min(CAP);
        self.refusals = self.refusals.saturating_add(1);
        ceiling.mul_f64(0.5 + 0.5 * self.rng.unit() as f64)
    }

    /// An answer was served: the next refusal starts again from [`FIRST`].
    pub fn served(&mut self) {
        self.refusals = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_reset_when_served() {
        let mut b = Backoff::new(7);
        let waits: Vec<Duration> = (0..8).map(|_| b.refused()).collect();
        for (i, w) in waits.iter().enumerate() {
            let ceiling = (FIRST * (1 << i)).min(CAP);
            assert!(*w >= ceiling / 2 && *w <= ceiling, "refusal {i}: {w:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
        }
        // Past the cap the waits stay under it, however long the run of refusals.
        assert!((0..100).map(|_| b.refused()).all(|w| w <= CAP && w >= CAP / 2));
        b.served();
        let w = b.refused();
        assert!(w >= FIRST / 2 && w <= FIRST, "{w:?}");
    }

    #[test]
    fn clients_refused_together_come_back_apart() {
        let waits: Vec<Duration> = (0..50).map(|id| Backoff::new(id).refused()).collect();
        let mut distinct = waits.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() >= 45, "{} distinct waits of 50", distinct.len());
        let (lo, hi) = (distinct[0], distinct[distinct.len() - 1]);
        assert!(hi - lo >= FIRST / 4, "spread {lo:?}..{hi:?}");
    }
}
