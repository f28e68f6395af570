//! One telemetry window: the cumulative and per-interval bookkeeping that the server (what it
//! answered) and the fleet (what its clients saw) both keep, and the time-series [`Row`] an
//! interval closes into. Each owner keeps its window behind its own lock.

use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram: µs between 1 µs and 10 minutes, 3 significant digits. Every latency
/// histogram in edgeinfer is one of these.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Records `us` (at least 1 µs; past the top, the top).
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.max(1));
}

/// Percentile of a histogram in milliseconds; `None` when empty.
pub fn percentile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

/// An optional figure with `digits` decimals, "-" when there is none (yet).
pub fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "-".into())
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: percentile_ms(h, 0.5),
            p90: percentile_ms(h, 0.9),
            p99: percentile_ms(h, 0.99),
            max: (!h.is_empty()).then(|| h.max() as f64 / 1000.0),
        }
    }
}

/// One row of a time series: an interval's traffic, sampled at its end. The server's rows fill
/// the queue, per-model and SLO columns; the fleet's the per-resolution one.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    pub t_s: f64,
    pub clients: usize,
    /// Answers per second, whatever their status.
    pub rps: f64,
    /// Mean declared accuracy of the requests served in the interval.
    pub mean_accuracy: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Queue lengths at the end of the interval, ladder order (server).
    pub queue_depths: Vec<usize>,
    /// Requests each model served in the interval, ladder order (server).
    pub served: Vec<u64>,
    /// Inference time each model spent on those requests, ms, ladder order (server): with
    /// `served`, what the models cost on this machine while the interval's load ran.
    pub inference_ms: Vec<f64>,
    pub errors: u64,
    /// Of `errors`, those refused `overloaded`.
    pub overloaded: u64,
    /// Fraction of the interval's served requests within T (server).
    pub slo_attainment: Option<f64>,
    /// Clients at each resolution at the end of the interval, ladder order (fleet).
    pub per_resolution: Vec<usize>,
}

/// What one request's outcome adds to a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Answered `ok`: its latency (µs), the rung that served it, that rung's declared accuracy
    /// and its inference time (µs) when known, and whether the latency was within the bound
    /// (windows that judge one).
    Served { latency_us: u64, model: Option<usize>, accuracy: Option<f32>, inference_us: u64, within_bound: bool },
    /// Answered with an error status.
    Refused { overloaded: bool },
    /// Never answered: connection failure or timeout.
    Failed,
}

/// The counts of one span: since start, or since the last tick.
struct Tally {
    latency: Histogram<u64>,
    answered: u64,
    errors: u64,
    overloaded: u64,
    /// Served requests whose model's accuracy is known, and the sum of those accuracies.
    scored: u64,
    acc_sum: f64,
    within_bound: u64,
    /// Per rung, ladder order (empty where rungs are not tracked): requests, inference µs.
    served: Vec<u64>,
    inference_us: Vec<u64>,
}

impl Tally {
    fn new(rungs: usize) -> Self {
        Self {
            latency: histogram(),
            answered: 0,
            errors: 0,
            overloaded: 0,
            scored: 0,
            acc_sum: 0.0,
            within_bound: 0,
            served: vec![0; rungs],
            inference_us: vec![0; rungs],
        }
    }

    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Served { latency_us, model, accuracy, inference_us, within_bound } => {
                self.answered += 1;
                record_us(&mut self.latency, latency_us);
                self.within_bound += u64::from(within_bound);
                if let Some(a) = accuracy {
                    self.scored += 1;
                    self.acc_sum += a as f64;
                }
                if let Some(m) = model.filter(|&m| m < self.served.len()) {
                    self.served[m] += 1;
                    self.inference_us[m] += inference_us;
                }
            }
            Outcome::Refused { overloaded } => {
                self.answered += 1;
                self.errors += 1;
                self.overloaded += u64::from(overloaded);
            }
            Outcome::Failed => self.errors += 1,
        }
    }

    fn mean_accuracy(&self) -> Option<f64> {
        (self.scored > 0).then(|| self.acc_sum / self.scored as f64)
    }

    fn slo_attainment(&self) -> Option<f64> {
        (self.scored > 0).then(|| self.within_bound as f64 / self.scored as f64)
    }
}

/// Cumulative figures of a window since it started.
#[derive(Debug, Clone)]
pub struct WindowTotals {
    pub answered: u64,
    pub errors: u64,
    /// Of `errors`, those refused `overloaded`.
    pub overloaded: u64,
    /// Served requests whose model's accuracy is known.
    pub served: u64,
    pub mean_accuracy: Option<f64>,
    /// `None` for a window that judges no bound.
    pub slo_attainment: Option<f64>,
    pub latency_ms: LatencySummary,
    /// Per rung, ladder order.
    pub served_per_rung: Vec<u64>,
}

/// Cumulative and per-interval counts of answered requests, and the rows closed so far.
pub struct Window {
    start: Instant,
    last_tick: Instant,
    /// Whether latencies are judged against a bound (the server's T): rows then carry SLO attainment.
    bounded: bool,
    total: Tally,
    interval: Tally,
    rows: Vec<Row>,
}

impl Window {
    /// `rungs`: ladder rungs to count served requests for (0: none); `bounded`: see [`Window`].
    pub fn new(start: Instant, rungs: usize, bounded: bool) -> Self {
        Self { start, last_tick: start, bounded, total: Tally::new(rungs), interval: Tally::new(rungs), rows: Vec::new() }
    }

    pub fn record(&mut self, o: Outcome) {
        self.total.add(o);
        self.interval.add(o);
    }

    /// Closes the interval at `now` into a row (kept, and returned).
    pub fn tick(&mut self, now: Instant, clients: usize, queue_depths: Vec<usize>, per_resolution: Vec<usize>) -> Row {
        let secs = now.duration_since(self.last_tick).as_secs_f64().max(1e-6);
        let rungs = self.interval.served.len();
        let i = std::mem::replace(&mut self.interval, Tally::new(rungs));
        let row = Row {
            t_s: now.duration_since(self.start).as_secs_f64(),
            clients,
            rps: i.answered as f64 / secs,
            mean_accuracy: i.mean_accuracy(),
            p50_ms: percentile_ms(&i.latency, 0.5),
            p99_ms: percentile_ms(&i.latency, 0.99),
            queue_depths,
            errors: i.errors,
            overloaded: i.overloaded,
            slo_attainment: i.slo_attainment().filter(|_| self.bounded),
            served: i.served,
            inference_ms: i.inference_us.iter().map(|&us| us as f64 / 1000.0).collect(),
            per_resolution,
        };
        self.last_tick = now;
        self.rows.push(row.clone());
        row
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub fn totals(&self) -> WindowTotals {
        let t = &self.total;
        WindowTotals {
            answered: t.answered,
            errors: t.errors,
            overloaded: t.overloaded,
            served: t.scored,
            mean_accuracy: t.mean_accuracy(),
            slo_attainment: t.slo_attainment().filter(|_| self.bounded),
            latency_ms: LatencySummary::of(&t.latency),
            served_per_rung: t.served.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(latency_us: u64, model: usize, accuracy: f32, within_bound: bool) -> Outcome {
        Outcome::Served { latency_us, model: Some(model), accuracy: Some(accuracy), inference_us: latency_us / 10, within_bound }
    }

    #[test]
    fn intervals_and_totals_count_the_same_outcomes() {
        let start = Instant::now();
        let mut w = Window::new(start, 2, true);
        w.record(served(10_000, 0, 70.0, true));
        w.record(served(30_000, 1, 50.0, false));
        w.record(Outcome::Refused { overloaded: true });
        w.record(Outcome::Failed);
        let r = w.tick(start + std::time::Duration::from_secs(2), 4, vec![1, 0], vec![]);
        assert_eq!((r.rps, r.errors, r.overloaded, r.served.clone()), (1.5, 2, 1, vec![1, 1]));
        assert_eq!(r.inference_ms, vec![1.0, 3.0], "each rung's inference time, ms");
        assert_eq!((r.mean_accuracy, r.slo_attainment), (Some(60.0), Some(0.5)));
        assert!((29.9..=30.1).contains(&r.p99_ms.unwrap()));
        let r2 = w.tick(start + std::time::Duration::from_secs(3), 4, vec![0, 0], vec![]);
        assert_eq!((r2.rps, r2.p50_ms, r2.mean_accuracy, r2.served.clone()), (0.0, None, None, vec![0, 0]));
        assert_eq!(r2.inference_ms, vec![0.0, 0.0], "a new interval starts from nothing");
        let t = w.totals();
        assert_eq!((t.answered, t.errors, t.served, t.served_per_rung), (3, 2, 2, vec![1, 1]));
        assert_eq!((t.mean_accuracy, t.slo_attainment), (Some(60.0), Some(0.5)));
        assert_eq!(w.rows().len(), 2);
    }

    #[test]
    fn an_unbounded_window_has_no_slo() {
        let start = Instant::now();
        let mut w = Window::new(start, 0, false);
        w.record(Outcome::Served { latency_us: 5_000, model: None, accuracy: Some(70.0), inference_us: 0, within_bound: false });
        let r = w.tick(start + std::time::Duration::from_secs(1), 1, vec![], vec![1]);
        assert_eq!((r.slo_attainment, r.mean_accuracy, r.per_resolution.clone()), (None, Some(70.0), vec![1]));
        assert_eq!(w.totals().slo_attainment, None);
    }
}
