//! The client's resolution controller (Muraru & Raiciu, section 3): pure logic, latency samples
//! in, ladder position out. No clocks are read here; the caller passes `now`, so every rule can be
//! tested with fixed numbers.
//!
//! With the current resolution R_i of the ladder R_1 > … > R_k:
//! 1. latency > TC_upper and i < k → R_{i+1} (smaller, cheaper to send and to decode);
//! 2. latency < TC_lower and i > 1 → R_{i-1};
//!
//! and after a change no new decision is taken until its effect can be measured: at least
//! `hold_responses` responses to requests sent at the new resolution, and `hold` time elapsed.

use std::time::{Duration, Instant};

/// The controller's fixed parameters, shared by every client of a fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerParams {
    /// Resolution ladder in pixels, largest first (R_1 > … > R_k).
    pub resolutions: Vec<u16>,
    pub tc_lower_ms: f64,
    pub tc_upper_ms: f64,
    /// Responses at the new resolution to observe after a change before deciding again.
    pub hold_responses: u32,
    /// Minimum time after a change before deciding again.
    pub hold: Duration,
}

/// Why parameters are unusable; the fleet's config validation turns this into a `KeyError`.
pub fn check(resolutions: &[u16], tc_lower_ms: f64, tc_upper_ms: f64, bound_ms: f64) -> Result<(), (&'static str, String)> {
    if resolutions.is_empty() || resolutions.contains(&0) {
        return Err(("resolutions", "must list at least one positive resolution".into()));
    }
    if resolutions.len() > u8::MAX as usize {
        return Err(("resolutions", "at most 255 resolutions".into()));
    }
    if !resolutions.windows(2).all(|w| w[0] > w[1]) {
        return Err(("resolutions", format!("must be strictly decreasing (R_1 > … > R_k), got {resolutions:?}")));
    }
    if !(tc_lower_ms.is_finite() && tc_upper_ms.is_finite() && tc_lower_ms < tc_upper_ms) {
        return Err(("tc_lower_ms", format!("TC_lower ({tc_lower_ms} ms) must be below TC_upper ({tc_upper_ms} ms)")));
    }
    if tc_lower_ms <= bound_ms {
        return Err((
            "tc_lower_ms",
            format!("TC_lower ({tc_lower_ms} ms) must be above the server's bound T ({bound_ms} ms): the paper requires TC_upper > TC_lower > T so the client and edge loops do not fight"),
        ));
    }
    Ok(())
}

/// One client's controller state: a few bytes, so a thousand clients cost nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Controller {
    /// 0-based ladder index (the paper's i − 1).
    level: u8,
    /// Responses observed at the current level since the last change.
    since_change: u32,
    changed_at: Option<Instant>,
}

/// A decided change of resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Down { from: u16, to: u16 },
    Up { from: u16, to: u16 },
}

impl Controller {
    /// Starts at R_1, the most accurate resolution, as the paper's clients do.
    pub fn new() -> Self {
        Self { level: 0, since_change: 0, changed_at: None }
    }

    pub fn level(&self) -> usize {
        self.level as usize
    }

    pub fn resolution(&self, p: &ControllerParams) -> u16 {
        p.resolutions[self.level()]
    }

    /// Feeds the latency of one response to a request sent at the current resolution.
    pub fn observe(&mut self, p: &ControllerParams, latency_ms: f64, now: Instant) -> Option<Change> {
        self.since_change = self.since_change.saturating_add(1);
        if self.holding(p, now) {
            return None;
        }
        let from = self.resolution(p);
        let k = p.resolutions.len();
        let change = if latency_ms > p.tc_upper_ms && self.level() + 1 < k {
            self.level += 1;
            Change::Down { from, to: self.resolution(p) }
        } else if latency_ms < p.tc_lower_ms && self.level > 0 {
            self.level -= 1;
            Change::Up { from, to: self.resolution(p) }
        } else {
            return None;
        };
        self.since_change = 0;
        self.changed_at = Some(now);
        Some(change)
    }

    /// Whether the last change's effect is still unmeasured.
    fn holding(&self, p: &ControllerParams, now: Instant) -> bool {
        match self.changed_at {
            None => false,
            Some(at) => self.since_change < p.hold_responses || now.saturating_duration_since(at) < p.hold,
        }
    }
}

impl Default for Controller {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(hold_responses: u32, hold_ms: u64) -> ControllerParams {
        ControllerParams {
            resolutions: vec![224, 160, 96],
            tc_lower_ms: 80.0,
            tc_upper_ms: 150.0,
            hold_responses,
            hold: Duration::from_millis(hold_ms),
        }
    }

    #[test]
    fn above_upper_steps_down_until_r_k() {
        let p = params(0, 0);
        let (mut c, t) = (Controller::new(), Instant::now());
        assert_eq!(c.resolution(&p), 224);
        assert_eq!(c.observe(&p, 151.0, t), Some(Change::Down { from: 224, to: 160 }));
        assert_eq!(c.observe(&p, 500.0, t), Some(Change::Down { from: 160, to: 96 }));
        // At R_k there is nowhere further down.
        assert_eq!(c.observe(&p, 500.0, t), None);
        assert_eq!(c.resolution(&p), 96);
    }

    #[test]
    fn below_lower_steps_up_until_r_1() {
        let p = params(0, 0);
        let (mut c, t) = (Controller::new(), Instant::now());
        // At R_1 there is nowhere further up.
        assert_eq!(c.observe(&p, 1.0, t), None);
        c.observe(&p, 200.0, t);
        c.observe(&p, 200.0, t);
        assert_eq!(c.observe(&p, 79.9, t), Some(Change::Up { from: 96, to: 160 }));
        assert_eq!(c.observe(&p, 10.0, t), Some(Change::Up { from: 160, to: 224 }));
        assert_eq!(c.observe(&p, 10.0, t), None);
    }

    #[test]
    fn between_and_on_the_thresholds_nothing_changes() {
        let p = params(0, 0);
        let (mut c, t) = (Controller::new(), Instant::now());
        c.observe(&p, 200.0, t);
        for ms in [80.0, 100.0, 150.0] {
            assert_eq!(c.observe(&p, ms, t), None, "{ms}");
        }
        assert_eq!(c.level(), 1);
    }

    #[test]
    fn hold_off_waits_for_responses_after_a_change() {
        let p = params(3, 0);
        let (mut c, t) = (Controller::new(), Instant::now());
        assert!(c.observe(&p, 200.0, t).is_some());
        // Two responses at the new resolution are not enough to judge it...
        assert_eq!(c.observe(&p, 200.0, t), None);
        assert_eq!(c.observe(&p, 200.0, t), None);
        // ...the third is.
        assert_eq!(c.observe(&p, 200.0, t), Some(Change::Down { from: 160, to: 96 }));
    }

    #[test]
    fn hold_off_waits_for_time_after_a_change() {
        let p = params(1, 500);
        let (mut c, t) = (Controller::new(), Instant::now());
        assert!(c.observe(&p, 200.0, t).is_some());
        assert_eq!(c.observe(&p, 1.0, t + Duration::from_millis(100)), None);
        assert_eq!(c.observe(&p, 1.0, t + Duration::from_millis(499)), None);
        assert_eq!(c.observe(&p, 1.0, t + Duration::from_millis(500)), Some(Change::Up { from: 160, to: 224 }));
    }

    #[test]
    fn first_decision_is_immediate() {
        // No change yet: nothing to wait for, even with a long hold-off.
        let p = params(10, 10_000);
        let mut c = Controller::new();
        assert!(c.observe(&p, 200.0, Instant::now()).is_some());
    }

    #[test]
    fn parameters_follow_the_papers_condition() {
        assert!(check(&[224, 96], 80.0, 150.0, 50.0).is_ok());
        assert_eq!(check(&[224, 96], 150.0, 80.0, 50.0).unwrap_err().0, "tc_lower_ms");
        assert_eq!(check(&[224, 96], 150.0, 150.0, 50.0).unwrap_err().0, "tc_lower_ms");
        let (key, msg) = check(&[224, 96], 50.0, 150.0, 50.0).unwrap_err();
        assert_eq!(key, "tc_lower_ms");
        assert!(msg.contains("above the server's bound T"), "{msg}");
        assert_eq!(check(&[96, 224], 80.0, 150.0, 50.0).unwrap_err().0, "resolutions");
        assert_eq!(check(&[], 80.0, 150.0, 50.0).unwrap_err().0, "resolutions");
        assert_eq!(check(&[224, 224], 80.0, 150.0, 50.0).unwrap_err().0, "resolutions");
    }
}
