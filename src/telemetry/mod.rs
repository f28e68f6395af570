//! Telemetry: what every answered request cost and which model served it, aggregated into
//! cumulative histograms, per-interval rows (the time series) and an event log.
//!
//! Writers (connection tasks) take a short lock per request; readers (status line, console)
//! take snapshots, so neither ever waits on the other for long.

pub mod metrics;
pub mod summary;

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use crate::protocol::{Status, Timings};

/// Latencies are recorded in µs between 1 µs and 10 minutes, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.max(1));
}

/// Percentile of a histogram in milliseconds; `None` when empty.
pub fn percentile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

/// One answered request, as the server saw it.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord {
    pub status: Status,
    /// Queue (ladder index) that served it.
    pub model: Option<usize>,
    pub timings: Timings,
    /// The dispatcher's predicted latency when it chose the queue, µs.
    pub estimate_us: Option<f64>,
}

/// One row of the time series: an interval's traffic, sampled at its end.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    pub t_s: f64,
    pub clients: usize,
    pub rps: f64,
    /// Mean declared accuracy of the requests served in the interval.
    pub mean_accuracy: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub queue_depths: Vec<usize>,
    /// Requests each model served in the interval, ladder order.
    pub served: Vec<u64>,
    pub errors: u64,
    /// Of `errors`, those refused by admission control (`overloaded`).
    pub overloaded: u64,
    /// Fraction of the interval's served requests within T.
    pub slo_attainment: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub t_s: f64,
    pub text: String,
}

struct ModelStats {
    served: u64,
    inference: Histogram<u64>,
}

struct Inner {
    latency: Histogram<u64>,
    interval_latency: Histogram<u64>,
    interval_served: Vec<u64>,
    interval_acc_sum: f64,
    interval_requests: u64,
    interval_errors: u64,
    interval_overloaded: u64,
    interval_within_bound: u64,
    last_tick: Instant,
    models: Vec<ModelStats>,
    requests: u64,
    errors_by_status: BTreeMap<&'static str, u64>,
    within_bound: u64,
    acc_sum: f64,
    estimate_error: Histogram<u64>,
    rows: Vec<Row>,
    events: VecDeque<Event>,
}

pub struct Telemetry {
    start: Instant,
    accuracies: Vec<f32>,
    inner: Mutex<Inner>,
    connections: ConnectionCounters,
    /// Prometheus counters and gauges (`GET /metrics`), fed by every recorded request.
    pub metrics: metrics::Metrics,
}

/// Connection-level counts, kept apart from the per-request lock.
#[derive(Default)]
struct ConnectionCounters {
    open: AtomicUsize,
    refused: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConnectionStats {
    /// Open right now.
    pub open: usize,
    /// Refused over `server.max_connections`.
    pub refused: u64,
    /// Dropped for stalling mid-frame or not reading responses.
    pub dropped: u64,
}

const MAX_EVENTS: usize = 500;

impl Telemetry {
    /// `accuracies`: declared accuracy per ladder rung, most accurate first.
    pub fn new(accuracies: Vec<f32>) -> Self {
        let n = accuracies.len();
        let now = Instant::now();
        Self {
            start: now,
            accuracies,
            inner: Mutex::new(Inner {
                latency: histogram(),
                interval_latency: histogram(),
                interval_served: vec![0; n],
                interval_acc_sum: 0.0,
                interval_requests: 0,
                interval_errors: 0,
                interval_overloaded: 0,
                interval_within_bound: 0,
                last_tick: now,
                models: (0..n).map(|_| ModelStats { served: 0, inference: histogram() }).collect(),
                requests: 0,
                errors_by_status: BTreeMap::new(),
                within_bound: 0,
                acc_sum: 0.0,
                estimate_error: histogram(),
                rows: Vec::new(),
                events: VecDeque::new(),
            }),
            connections: ConnectionCounters::default(),
            metrics: metrics::Metrics::new(),
        }
    }

    pub fn set_open_connections(&self, n: usize) {
        self.connections.open.store(n, Ordering::Relaxed);
    }

    pub fn count_refused_connection(&self) {
        self.connections.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_dropped_connection(&self) {
        self.connections.dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connections(&self) -> ConnectionStats {
        let c = &self.connections;
        ConnectionStats {
            open: c.open.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }

    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Records an answered request; `bound_ms` is T at the time, for SLO attainment.
    pub fn record(&self, r: &RequestRecord, bound_ms: f64) {
        self.book(r, bound_ms);
        self.metrics.request(None, r.status.as_str(), r, bound_ms);
    }

    /// Records a request that addressed a model by name (the Open Inference Protocol), with
    /// its status label; `bound_ms` is the bound it was held to (T or its own timeout).
    pub fn record_named(&self, model: &str, status: &str, r: &RequestRecord, bound_ms: f64) {
        self.book(r, bound_ms);
        self.metrics.request(Some(model), status, r, bound_ms);
    }

    fn book(&self, r: &RequestRecord, bound_ms: f64) {
        let total = r.timings.total_us as u64;
        let mut g = self.inner.lock();
        g.requests += 1;
        g.interval_requests += 1;
        if r.status != Status::Ok {
            *g.errors_by_status.entry(r.status.as_str()).or_default() += 1;
            g.interval_errors += 1;
            if r.status == Status::Overloaded {
                g.interval_overloaded += 1;
            }
            return;
        }
        record(&mut g.latency, total);
        record(&mut g.interval_latency, total);
        if (total as f64) <= bound_ms * 1000.0 {
            g.within_bound += 1;
            g.interval_within_bound += 1;
        }
        if let Some(m) = r.model.filter(|m| *m < self.accuracies.len()) {
            let acc = self.accuracies[m] as f64;
            g.acc_sum += acc;
            g.interval_acc_sum += acc;
            g.interval_served[m] += 1;
            g.models[m].served += 1;
            record(&mut g.models[m].inference, r.timings.inference_us as u64);
        }
        if let Some(est) = r.estimate_us {
            // Error of the dispatcher's prediction against queue wait + inference, the part it predicts.
            let actual = (r.timings.queue_us + r.timings.inference_us) as f64;
            record(&mut g.estimate_error, (est - actual).abs() as u64);
        }
    }

    /// Closes the current interval into a time-series row and returns it.
    pub fn tick(&self, queue_depths: Vec<usize>, clients: usize) -> Row {
        let now = Instant::now();
        let mut g = self.inner.lock();
        let secs = now.duration_since(g.last_tick).as_secs_f64().max(1e-6);
        let served_total: u64 = g.interval_served.iter().sum();
        let row = Row {
            t_s: now.duration_since(self.start).as_secs_f64(),
            clients,
            rps: g.interval_requests as f64 / secs,
            mean_accuracy: (served_total > 0).then(|| g.interval_acc_sum / served_total as f64),
            p50_ms: percentile_ms(&g.interval_latency, 0.5),
            p99_ms: percentile_ms(&g.interval_latency, 0.99),
            queue_depths,
            served: std::mem::replace(&mut g.interval_served, vec![0; self.accuracies.len()]),
            errors: g.interval_errors,
            overloaded: g.interval_overloaded,
            slo_attainment: (served_total > 0).then(|| g.interval_within_bound as f64 / served_total as f64),
        };
        g.interval_latency.reset();
        g.interval_acc_sum = 0.0;
        g.interval_requests = 0;
        g.interval_errors = 0;
        g.interval_overloaded = 0;
        g.interval_within_bound = 0;
        g.last_tick = now;
        g.rows.push(row.clone());
        row
    }

    pub fn event(&self, text: impl Into<String>) {
        let text = text.into();
        tracing::info!(event = %text);
        let mut g = self.inner.lock();
        if g.events.len() == MAX_EVENTS {
            g.events.pop_front();
        }
        g.events.push_back(Event { t_s: self.start.elapsed().as_secs_f64(), text });
    }

    pub fn events(&self) -> Vec<Event> {
        self.inner.lock().events.iter().cloned().collect()
    }

    /// The last `n` rows of the time series.
    pub fn recent_rows(&self, n: usize) -> Vec<Row> {
        let g = self.inner.lock();
        g.rows[g.rows.len().saturating_sub(n)..].to_vec()
    }

    pub fn rows(&self) -> Vec<Row> {
        self.inner.lock().rows.clone()
    }

    /// Cumulative figures since start.
    pub fn totals(&self) -> Totals {
        let g = self.inner.lock();
        let served: u64 = g.models.iter().map(|m| m.served).sum();
        Totals {
            requests: g.requests,
            errors: g.errors_by_status.values().sum(),
            errors_by_status: g.errors_by_status.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            served,
            slo_attainment: (served > 0).then(|| g.within_bound as f64 / served as f64),
            mean_accuracy: (served > 0).then(|| g.acc_sum / served as f64),
            latency_ms: LatencySummary::of(&g.latency),
            estimate_error_ms: LatencySummary::of(&g.estimate_error),
            per_model: g
                .models
                .iter()
                .map(|m| ModelTotals { served: m.served, inference_p50_ms: percentile_ms(&m.inference, 0.5) })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
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

#[derive(Debug, Clone)]
pub struct ModelTotals {
    pub served: u64,
    pub inference_p50_ms: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub errors_by_status: BTreeMap<String, u64>,
    pub served: u64,
    pub slo_attainment: Option<f64>,
    pub mean_accuracy: Option<f64>,
    pub latency_ms: LatencySummary,
    pub estimate_error_ms: LatencySummary,
    pub per_model: Vec<ModelTotals>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(model: usize, total_us: u32) -> RequestRecord {
        RequestRecord {
            status: Status::Ok,
            model: Some(model),
            timings: Timings { queue_us: 0, preprocess_us: 0, inference_us: total_us / 2, total_us },
            estimate_us: Some(total_us as f64 / 2.0),
        }
    }

    #[test]
    fn totals_and_slo() {
        let t = Telemetry::new(vec![70.0, 50.0]);
        t.record(&ok(0, 10_000), 20.0);
        t.record(&ok(1, 30_000), 20.0);
        t.record(&RequestRecord { status: Status::BadRequest, model: None, timings: Timings::default(), estimate_us: None }, 20.0);
        let s = t.totals();
        assert_eq!((s.requests, s.errors, s.served), (3, 1, 2));
        assert_eq!(s.slo_attainment, Some(0.5));
        assert_eq!(s.mean_accuracy, Some(60.0));
        assert_eq!(s.errors_by_status["bad_request"], 1);
        assert_eq!(s.per_model[1].served, 1);
        let max = s.latency_ms.max.unwrap();
        assert!((29.9..=30.1).contains(&max), "{max}");
    }

    #[test]
    fn tick_closes_intervals() {
        let t = Telemetry::new(vec![70.0, 50.0]);
        t.record(&ok(0, 5_000), 20.0);
        t.record(&ok(1, 5_000), 20.0);
        let r1 = t.tick(vec![3, 0], 7);
        assert_eq!(r1.mean_accuracy, Some(60.0));
        assert_eq!(r1.slo_attainment, Some(1.0));
        assert_eq!(r1.served, vec![1, 1]);
        assert_eq!((r1.clients, r1.queue_depths.clone()), (7, vec![3, 0]));
        let r2 = t.tick(vec![0, 0], 7);
        assert_eq!(r2.mean_accuracy, None);
        assert_eq!(r2.rps, 0.0);
        assert_eq!(t.rows().len(), 2);
        assert_eq!(t.recent_rows(1), vec![r2]);
    }

    #[test]
    fn events_are_bounded() {
        let t = Telemetry::new(vec![1.0]);
        for i in 0..(MAX_EVENTS + 10) {
            t.event(format!("e{i}"));
        }
        let ev = t.events();
        assert_eq!(ev.len(), MAX_EVENTS);
        assert_eq!(ev[0].text, "e10");
    }
}
