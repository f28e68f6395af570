//! Fleet-wide telemetry as the clients see it: client-observed latency (one shared histogram, not
//! one per client, to keep clients small), per-interval rows for the time series.

use std::time::Instant;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::ser::SerializeMap;
use serde::Serialize;

use crate::telemetry::{percentile_ms, LatencySummary};

/// One row of the fleet's time series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetRow {
    pub t_s: f64,
    pub clients: usize,
    /// Responses received per second in the interval.
    pub rps: f64,
    /// Mean declared accuracy of the models that answered in the interval.
    pub mean_accuracy: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub errors: u64,
    /// Clients at each R_i at the end of the interval, ladder order.
    pub per_resolution: Vec<usize>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Requests whose first byte was sent.
    pub sent: u64,
    /// Requests that got a response (any status).
    pub answered: u64,
    /// Transport failures, timeouts and non-ok responses.
    pub errors: u64,
}

impl Counts {
    /// Sent but never answered.
    pub fn unanswered(&self) -> u64 {
        self.sent - self.answered
    }
}

struct Interval {
    latency: Histogram<u64>,
    responses: u64,
    acc_sum: f64,
    acc_n: u64,
    errors: u64,
    last_tick: Instant,
}

struct Inner {
    latency: Histogram<u64>,
    interval: Interval,
    counts: Counts,
    acc_sum: f64,
    acc_n: u64,
    rows: Vec<FleetRow>,
}

pub struct Stats {
    start: Instant,
    inner: Mutex<Inner>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// What one request's outcome contributes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// An `ok` response: its latency (µs) and the declared accuracy of the model that served it.
    Ok { latency_us: u64, accuracy: Option<f32> },
    /// A response with an error status.
    Refused,
    /// No response: connection failure or timeout.
    Failed,
}

impl Stats {
    pub fn new() -> Self {
        let now = Instant::now();
        let interval = Interval { latency: histogram(), responses: 0, acc_sum: 0.0, acc_n: 0, errors: 0, last_tick: now };
        Self {
            start: now,
            inner: Mutex::new(Inner { latency: histogram(), interval, counts: Counts::default(), acc_sum: 0.0, acc_n: 0, rows: Vec::new() }),
        }
    }

    pub fn sent(&self) {
        self.inner.lock().counts.sent += 1;
    }

    pub fn record(&self, o: Outcome) {
        let mut g = self.inner.lock();
        let g = &mut *g;
        match o {
            Outcome::Ok { latency_us, accuracy } => {
                g.counts.answered += 1;
                g.interval.responses += 1;
                g.latency.saturating_record(latency_us.max(1));
                g.interval.latency.saturating_record(latency_us.max(1));
                if let Some(a) = accuracy {
                    g.acc_sum += a as f64;
                    g.acc_n += 1;
                    g.interval.acc_sum += a as f64;
                    g.interval.acc_n += 1;
                }
            }
            Outcome::Refused => {
                g.counts.answered += 1;
                g.counts.errors += 1;
                g.interval.responses += 1;
                g.interval.errors += 1;
            }
            Outcome::Failed => {
                g.counts.errors += 1;
                g.interval.errors += 1;
            }
        }
    }

    /// A request that failed before any byte was sent (e.g. connection refused).
    pub fn failed_to_send(&self) {
        let mut g = self.inner.lock();
        g.counts.errors += 1;
        g.interval.errors += 1;
    }

    pub fn counts(&self) -> Counts {
        self.inner.lock().counts
    }

    /// Client-observed latency of `ok` responses since start.
    pub fn latency(&self) -> LatencySummary {
        LatencySummary::of(&self.inner.lock().latency)
    }

    pub fn mean_accuracy(&self) -> Option<f64> {
        let g = self.inner.lock();
        (g.acc_n > 0).then(|| g.acc_sum / g.acc_n as f64)
    }

    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Closes the interval into a row.
    pub fn tick(&self, clients: usize, per_resolution: Vec<usize>) -> FleetRow {
        let now = Instant::now();
        let mut g = self.inner.lock();
        let i = &mut g.interval;
        let secs = now.duration_since(i.last_tick).as_secs_f64().max(1e-6);
        let row = FleetRow {
            t_s: now.duration_since(self.start).as_secs_f64(),
            clients,
            rps: i.responses as f64 / secs,
            mean_accuracy: (i.acc_n > 0).then(|| i.acc_sum / i.acc_n as f64),
            p50_ms: percentile_ms(&i.latency, 0.5),
            p99_ms: percentile_ms(&i.latency, 0.99),
            errors: i.errors,
            per_resolution,
        };
        i.latency.reset();
        (i.responses, i.acc_sum, i.acc_n, i.errors, i.last_tick) = (0, 0.0, 0, 0, now);
        g.rows.push(row.clone());
        row
    }

    pub fn rows(&self) -> Vec<FleetRow> {
        self.inner.lock().rows.clone()
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// Clients per resolution, serialised as a JSON object in ladder order: `{"224": 3, "192": 1}`.
#[derive(Debug, Clone, PartialEq)]
pub struct PerResolution(pub Vec<(u16, usize)>);

impl Serialize for PerResolution {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (r, n) in &self.0 {
            m.serialize_entry(&r.to_string(), n)?;
        }
        m.end()
    }
}

/// `clients` in the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientsSummary {
    /// Clients running at the end of the run.
    #[serde(rename = "final")]
    pub final_count: usize,
    pub resolutions: PerResolution,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_and_ticked() {
        let s = Stats::new();
        for _ in 0..3 {
            s.sent();
        }
        s.record(Outcome::Ok { latency_us: 10_000, accuracy: Some(70.0) });
        s.record(Outcome::Refused);
        s.record(Outcome::Failed);
        s.failed_to_send();
        let c = s.counts();
        assert_eq!((c.sent, c.answered, c.errors, c.unanswered()), (3, 2, 3, 1));
        let r = s.tick(4, vec![3, 1]);
        assert_eq!((r.clients, r.errors, r.mean_accuracy), (4, 3, Some(70.0)));
        assert!((9.9..=10.1).contains(&r.p50_ms.unwrap()));
        let r2 = s.tick(4, vec![4, 0]);
        assert_eq!((r2.rps, r2.p50_ms, r2.errors), (0.0, None, 0));
        assert_eq!(s.rows().len(), 2);
        assert_eq!(s.mean_accuracy(), Some(70.0));
    }

    #[test]
    fn resolutions_serialise_in_ladder_order() {
        let c = ClientsSummary { final_count: 4, resolutions: PerResolution(vec![(224, 3), (96, 1)]) };
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"final":4,"resolutions":{"224":3,"96":1}}"#);
    }
}
