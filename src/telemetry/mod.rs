//! Telemetry: what every answered request cost and which model served it, aggregated into
//! cumulative histograms, per-interval rows (the time series) and an event log.
//!
//! Writers (connection tasks) take a short lock per request; readers (status line, console)
//! take snapshots, so neither ever waits on the other for long.

pub mod metrics;
pub mod summary;
pub mod window;

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use crate::protocol::{Status, Timings};
pub use window::{fmt_opt, histogram, percentile_ms, LatencySummary, Row};
use window::{record_us, Outcome, Window};

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

/// What an event is, for whoever shows it (the console colours problems).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A change or a milestone: T changed, clients added, the ramp reached its top.
    Info,
    /// Something refused, failed or fallen back: a T change refused, the backend fallback, a theme not found.
    Problem,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub t_s: f64,
    pub kind: EventKind,
    pub text: String,
}

struct Inner {
    /// What was answered: cumulative and per interval, and the rows.
    window: Window,
    errors_by_status: BTreeMap<&'static str, u64>,
    /// Inference time per model, ladder order.
    inference: Vec<Histogram<u64>>,
    estimate_error: Histogram<u64>,
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
    /// Open right now, on all front ends together.
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
                window: Window::new(now, n, true),
                errors_by_status: BTreeMap::new(),
                inference: (0..n).map(|_| histogram()).collect(),
                estimate_error: histogram(),
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
        if r.status != Status::Ok {
            *g.errors_by_status.entry(r.status.as_str()).or_default() += 1;
            g.window.record(Outcome::Refused { overloaded: r.status == Status::Overloaded });
            return;
        }
        let model = r.model.filter(|m| *m < self.accuracies.len());
        g.window.record(Outcome::Served {
            latency_us: total,
            model,
            accuracy: model.map(|m| self.accuracies[m]),
            inference_us: r.timings.inference_us as u64,
            within_bound: (total as f64) <= bound_ms * 1000.0,
        });
        if let Some(m) = model {
            record_us(&mut g.inference[m], r.timings.inference_us as u64);
        }
        if let Some(est) = r.estimate_us {
            // Error of the dispatcher's prediction against queue wait + inference, the part it predicts.
            let actual = (r.timings.queue_us + r.timings.inference_us) as f64;
            record_us(&mut g.estimate_error, (est - actual).abs() as u64);
        }
    }

    /// Closes the current interval into a time-series row and returns it.
    pub fn tick(&self, queue_depths: Vec<usize>, clients: usize) -> Row {
        self.inner.lock().window.tick(Instant::now(), clients, queue_depths, Vec::new())
    }

    /// Logs an event (a change or a milestone) for the console's panel and the log.
    pub fn event(&self, text: impl Into<String>) {
        self.push(EventKind::Info, text.into());
    }

    /// Logs a problem: something refused, failed or fallen back.
    pub fn problem(&self, text: impl Into<String>) {
        self.push(EventKind::Problem, text.into());
    }

    fn push(&self, kind: EventKind, text: String) {
        match kind {
            EventKind::Info => tracing::info!(event = %text),
            EventKind::Problem => tracing::warn!(event = %text),
        }
        let mut g = self.inner.lock();
        if g.events.len() == MAX_EVENTS {
            g.events.pop_front();
        }
        g.events.push_back(Event { t_s: self.start.elapsed().as_secs_f64(), kind, text });
    }

    pub fn events(&self) -> Vec<Event> {
        self.inner.lock().events.iter().cloned().collect()
    }

    /// The last `n` rows of the time series.
    pub fn recent_rows(&self, n: usize) -> Vec<Row> {
        let g = self.inner.lock();
        let rows = g.window.rows();
        rows[rows.len().saturating_sub(n)..].to_vec()
    }

    pub fn rows(&self) -> Vec<Row> {
        self.inner.lock().window.rows().to_vec()
    }

    /// Cumulative figures since start.
    pub fn totals(&self) -> Totals {
        let g = self.inner.lock();
        let w = g.window.totals();
        Totals {
            requests: w.answered,
            errors: w.errors,
            errors_by_status: g.errors_by_status.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            served: w.served,
            slo_attainment: w.slo_attainment,
            mean_accuracy: w.mean_accuracy,
            latency_ms: w.latency_ms,
            estimate_error_ms: LatencySummary::of(&g.estimate_error),
            per_model: w
                .served_per_rung
                .iter()
                .zip(&g.inference)
                .map(|(served, h)| ModelTotals { served: *served, inference_p50_ms: percentile_ms(h, 0.5) })
                .collect(),
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
        t.problem("refused");
        assert_eq!(t.events().last().map(|e| e.kind), Some(EventKind::Problem));
        assert_eq!(ev[0].kind, EventKind::Info);
    }
}
