//! Prometheus metrics, served at `GET /metrics` on the HTTP front end.
//!
//! Counters and the latency histogram are updated as requests are answered (every front end
//! books its requests through [`Telemetry`](super::Telemetry), which forwards them here); the
//! gauges — queue depths, moving averages, T, connections, the fleet — are read from the live
//! engine at scrape time, so they cost nothing between scrapes. Names follow Prometheus'
//! conventions: `edgeinfer_` prefix, base units (seconds), `_total` on counters.

use parking_lot::RwLock;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::RequestRecord;

/// Latency buckets, seconds: 0.5 ms to 10 s, dense around the tens of milliseconds where T lives.
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0];

/// What the gauges show, read from the running node at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Per rung, ladder order: name, requests queued or running, moving-average inference µs.
    pub queues: Vec<(String, usize, f64)>,
    pub bound_ms: f64,
    /// Requests admitted and not yet answered / waiting at the front door.
    pub in_system: usize,
    pub backlog: usize,
    /// Open connections per front end (`binary`, `http`, `grpc`).
    pub connections: Vec<(&'static str, usize)>,
    /// The built-in fleet, when one is attached: client count and clients per resolution.
    pub fleet: Option<(usize, Vec<(u16, usize)>)>,
}

pub struct Metrics {
    registry: Registry,
    /// The adaptive ladder's model name, the label of binary-protocol requests.
    ladder_name: RwLock<String>,
    rung_names: RwLock<Vec<String>>,
    requests: IntCounterVec,
    latency: HistogramVec,
    slo_misses: IntCounterVec,
    overloaded: IntCounter,
    served: IntCounterVec,
    queue_depth: IntGaugeVec,
    inference_avg: GaugeVec,
    bound: Gauge,
    in_system: IntGauge,
    backlog: IntGauge,
    connections: IntGaugeVec,
    fleet_clients: IntGauge,
    fleet_resolution: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // Registration only fails on a clash of names, which these literals cannot have.
        fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
            r.register(Box::new(m.clone())).expect("metric names are unique");
            m
        }
        let counter =
            |name: &str, help: &str, labels: &[&str]| reg(&registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"));
        let int_gauges =
            |name: &str, help: &str, labels: &[&str]| reg(&registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"));
        let int_gauge = |name: &str, help: &str| reg(&registry, IntGauge::with_opts(Opts::new(name, help)).expect("valid metric"));
        Metrics {
            ladder_name: RwLock::new("edgeinfer".into()),
            rung_names: RwLock::new(Vec::new()),
            requests: counter(
                "edgeinfer_requests_total",
                "Requests answered, by the model they addressed and their status.",
                &["model", "status"],
            ),
            latency: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "edgeinfer_request_duration_seconds",
                        "Server latency of answered requests, from arrival to answer, by addressed model.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["model"],
                )
                .expect("valid metric"),
            ),
            slo_misses: counter(
                "edgeinfer_slo_misses_total",
                "Requests served later than their latency bound (T, or their own timeout).",
                &["model"],
            ),
            overloaded: reg(
                &registry,
                IntCounter::new("edgeinfer_overloaded_total", "Requests refused as overloaded (admission control, shed, shutting down).")
                    .expect("valid metric"),
            ),
            served: counter("edgeinfer_model_served_total", "Requests each ladder rung ran successfully.", &["model"]),
            queue_depth: int_gauges("edgeinfer_queue_depth", "Requests queued at or running on each ladder rung.", &["model"]),
            inference_avg: reg(
                &registry,
                GaugeVec::new(
                    Opts::new("edgeinfer_model_inference_seconds", "Moving average (EWMA) of each rung's inference time."),
                    &["model"],
                )
                .expect("valid metric"),
            ),
            bound: reg(&registry, Gauge::new("edgeinfer_latency_bound_seconds", "The latency bound T.").expect("valid metric")),
            in_system: int_gauge("edgeinfer_requests_in_system", "Requests admitted and not yet answered (bounded by server.max_waiting)."),
            backlog: int_gauge("edgeinfer_backlog_requests", "Requests waiting at the front door for an executor thread."),
            connections: int_gauges("edgeinfer_open_connections", "Open client connections, by front end.", &["protocol"]),
            fleet_clients: int_gauge("edgeinfer_fleet_clients", "Clients of the built-in fleet."),
            fleet_resolution: int_gauges(
                "edgeinfer_fleet_resolution_clients",
                "Built-in fleet clients at each image resolution (pixels).",
                &["resolution"],
            ),
            registry,
        }
    }

    /// Names the adaptive ladder (`models.name`) and its rungs, for labels.
    pub fn name_ladder(&self, name: &str, rungs: Vec<String>) {
        *self.ladder_name.write() = name.to_string();
        *self.rung_names.write() = rungs;
    }

    /// Books one answered request. `model`: the model it addressed (`None`: the adaptive
    /// ladder, as every binary-protocol request does); `status`: its status label.
    pub fn request(&self, model: Option<&str>, status: &str, r: &RequestRecord, bound_ms: f64) {
        let ladder = self.ladder_name.read();
        let model = model.unwrap_or(ladder.as_str());
        self.requests.with_label_values(&[model, status]).inc();
        self.latency.with_label_values(&[model]).observe(r.timings.total_us as f64 / 1e6);
        if status == "overloaded" {
            self.overloaded.inc();
        }
        if status == "ok" {
            if r.timings.total_us as f64 > bound_ms * 1000.0 {
                self.slo_misses.with_label_values(&[model]).inc();
            }
            if let Some(name) = r.model.and_then(|m| self.rung_names.read().get(m).cloned()) {
                self.served.with_label_values(&[&name]).inc();
            }
        }
    }

    /// The exposition text (Prometheus text format 0.0.4) with the gauges set from `s`.
    pub fn render(&self, s: &Scrape) -> String {
        for (name, depth, ewma_us) in &s.queues {
            self.queue_depth.with_label_values(&[name]).set(*depth as i64);
            self.inference_avg.with_label_values(&[name]).set(ewma_us / 1e6);
        }
        self.bound.set(s.bound_ms / 1000.0);
        self.in_system.set(s.in_system as i64);
        self.backlog.set(s.backlog as i64);
        for (proto, n) in &s.connections {
            self.connections.with_label_values(&[proto]).set(*n as i64);
        }
        let (clients, per_res) = s.fleet.clone().unwrap_or_default();
        self.fleet_clients.set(clients as i64);
        for (res, n) in per_res {
            self.fleet_resolution.with_label_values(&[&res.to_string()]).set(n as i64);
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for these metric types.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Status, Timings};

    fn rec(total_us: u32, model: Option<usize>) -> RequestRecord {
        RequestRecord { status: Status::Ok, model, timings: Timings { total_us, ..Default::default() }, estimate_us: None }
    }

    #[test]
    fn requests_are_counted_by_model_and_status_and_slo_misses_against_their_bound() {
        let m = Metrics::new();
        m.name_ladder("ladder", vec!["big".into(), "small".into()]);
        m.request(None, "ok", &rec(10_000, Some(1)), 50.0);
        m.request(None, "ok", &rec(80_000, Some(0)), 50.0);
        m.request(Some("small"), "ok", &rec(8_000, Some(1)), 5.0);
        m.request(None, "overloaded", &rec(100, None), 50.0);
        let s = Scrape { queues: vec![("big".into(), 3, 12_000.0)], bound_ms: 50.0, fleet: Some((2, vec![(224, 2)])), ..Default::default() };
        let text = m.render(&s);
        for line in [
            "edgeinfer_requests_total{model=\"ladder\",status=\"ok\"} 2",
            "edgeinfer_requests_total{model=\"small\",status=\"ok\"} 1",
            "edgeinfer_requests_total{model=\"ladder\",status=\"overloaded\"} 1",
            "edgeinfer_slo_misses_total{model=\"ladder\"} 1",
            "edgeinfer_slo_misses_total{model=\"small\"} 1",
            "edgeinfer_overloaded_total 1",
            "edgeinfer_model_served_total{model=\"small\"} 2",
            "edgeinfer_queue_depth{model=\"big\"} 3",
            "edgeinfer_model_inference_seconds{model=\"big\"} 0.012",
            "edgeinfer_latency_bound_seconds 0.05",
            "edgeinfer_fleet_clients 2",
            "edgeinfer_fleet_resolution_clients{resolution=\"224\"} 2",
            "edgeinfer_request_duration_seconds_count{model=\"ladder\"} 3",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
