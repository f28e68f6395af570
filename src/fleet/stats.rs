//! Fleet-wide telemetry as the clients see it: one telemetry window (client-observed latency in
//! one shared histogram, not one per client, to keep clients small) plus the requests sent.

use std::time::Instant;

use parking_lot::Mutex;

use crate::telemetry::summary::Counts;
use crate::telemetry::window::{Outcome, Window};
use crate::telemetry::{LatencySummary, Row};

struct Inner {
    window: Window,
    sent: u64,
}

pub struct Stats {
    start: Instant,
    inner: Mutex<Inner>,
}

impl Stats {
    pub fn new() -> Self {
        let now = Instant::now();
        // No rungs (the clients see only the answering model's accuracy) and no bound of its own.
        Self { start: now, inner: Mutex::new(Inner { window: Window::new(now, 0, false), sent: 0 }) }
    }

    pub fn sent(&self) {
        self.inner.lock().sent += 1;
    }

    pub fn record(&self, o: Outcome) {
        self.inner.lock().window.record(o);
    }

    pub fn counts(&self) -> Counts {
        let g = self.inner.lock();
        let t = g.window.totals();
        Counts { sent: g.sent, answered: t.answered, errors: t.errors, overloaded: t.overloaded }
    }

    /// Client-observed latency of `ok` responses since start.
    pub fn latency(&self) -> LatencySummary {
        self.inner.lock().window.totals().latency_ms
    }

    pub fn mean_accuracy(&self) -> Option<f64> {
        self.inner.lock().window.totals().mean_accuracy
    }

    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Closes the interval into a row.
    pub fn tick(&self, clients: usize, per_resolution: Vec<usize>) -> Row {
        self.inner.lock().window.tick(Instant::now(), clients, Vec::new(), per_resolution)
    }

    pub fn rows(&self) -> Vec<Row> {
        self.inner.lock().window.rows().to_vec()
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_and_ticked() {
        let s = Stats::new();
        for _ in 0..4 {
            s.sent();
        }
        s.record(Outcome::Served { latency_us: 10_000, model: None, accuracy: Some(70.0), inference_us: 0, within_bound: false });
        s.record(Outcome::Refused { overloaded: false });
        s.record(Outcome::Refused { overloaded: true });
        s.record(Outcome::Failed);
        // A request that failed before any byte was sent (e.g. connection refused).
        s.record(Outcome::Failed);
        let c = s.counts();
        assert_eq!((c.sent, c.answered, c.errors, c.overloaded, c.unanswered()), (4, 3, 4, 1, 1));
        assert_eq!(c.to_string(), "4 sent, 3 answered, 4 errors (1 overloaded), 1 unanswered");
        let r = s.tick(4, vec![3, 1]);
        assert_eq!((r.clients, r.errors, r.overloaded, r.mean_accuracy, r.slo_attainment), (4, 4, 1, Some(70.0), None));
        assert!((9.9..=10.1).contains(&r.p50_ms.unwrap()));
        let r2 = s.tick(4, vec![4, 0]);
        assert_eq!((r2.rps, r2.p50_ms, r2.errors), (0.0, None, 0));
        assert_eq!(s.rows().len(), 2);
        assert_eq!(s.mean_accuracy(), Some(70.0));
    }
}
