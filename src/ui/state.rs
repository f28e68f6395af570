//! The console's view model: one consistent picture built from snapshots (telemetry, the
//! dispatcher's queues, the fleet) at each frame. Rendering reads only this, so every panel can
//! be tested with ratatui's `TestBackend` and no server.

use crate::control::{Control, FleetSnapshot};
use crate::engine::Engine;
use crate::telemetry::Event;

/// What does not change while the node runs.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub addr: String,
    /// Backend name and version, e.g. "onnxruntime 1.32.0".
    pub backend: String,
    /// ONNX Runtime was wanted but tract is in use (the reason is in the events panel).
    pub fallback: bool,
    pub synthetic: bool,
    /// Ladder order: name and declared accuracy.
    pub models: Vec<(String, f32)>,
}

impl NodeInfo {
    pub fn of(engine: &Engine, addr: std::net::SocketAddr) -> NodeInfo {
        let b = engine.backend;
        NodeInfo {
            addr: addr.to_string(),
            backend: format!("{} {}", b.name.as_str(), b.version),
            fallback: b.fallback_reason.is_some(),
            synthetic: engine.any_synthetic(),
            models: engine.ladder.iter().map(|m| (m.name.clone(), m.accuracy)).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueRow {
    pub name: String,
    pub accuracy: f32,
    pub depth: usize,
    pub ewma_ms: f64,
    /// Fraction of the requests served over the recent rows.
    pub share: f64,
    /// Has a backlog or served requests in the last interval.
    pub in_use: bool,
}

/// One second of the time series, as the chart plots it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub t_s: f64,
    pub accuracy: Option<f64>,
    pub clients: usize,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct UiState {
    pub node: NodeInfo,
    pub bound_ms: f64,
    pub uptime_s: f64,
    /// Last closed interval.
    pub rps: Option<f64>,
    pub accuracy: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Since start.
    pub slo_attainment: Option<f64>,
    pub requests: u64,
    pub errors: u64,
    pub queues: Vec<QueueRow>,
    pub series: Vec<Point>,
    /// `None` when no built-in fleet is attached.
    pub fleet: Option<FleetSnapshot>,
    pub events: Vec<Event>,
}

/// Rows (seconds) the queue panel's "share" column covers.
const SHARE_ROWS: usize = 10;
/// Events kept per frame; more never fit on screen.
const EVENT_ROWS: usize = 100;

impl UiState {
    /// Builds the picture from the live node. Each source is read under its own short lock.
    pub fn capture(node: &NodeInfo, control: &Control, window_s: usize) -> UiState {
        let t = &control.telemetry;
        let rows = t.recent_rows(window_s.max(SHARE_ROWS));
        let totals = t.totals();
        let last = rows.last();
        let recent = &rows[rows.len().saturating_sub(SHARE_ROWS)..];
        let served: Vec<u64> = (0..node.models.len()).map(|i| recent.iter().map(|r| r.served.get(i).copied().unwrap_or(0)).sum()).collect();
        let all: u64 = served.iter().sum();
        let queues = control
            .dispatcher
            .snapshot()
            .iter()
            .zip(&node.models)
            .enumerate()
            .map(|(i, (q, (name, acc)))| QueueRow {
                name: name.clone(),
                accuracy: *acc,
                depth: q.depth,
                ewma_ms: q.ewma_us / 1000.0,
                share: if all == 0 { 0.0 } else { served[i] as f64 / all as f64 },
                in_use: q.depth > 0 || last.is_some_and(|r| r.served.get(i).is_some_and(|s| *s > 0)),
            })
            .collect();
        let series = rows[rows.len().saturating_sub(window_s)..]
            .iter()
            .map(|r| Point { t_s: r.t_s, accuracy: r.mean_accuracy, clients: r.clients, p99_ms: r.p99_ms })
            .collect();
        let events = t.events();
        UiState {
            node: node.clone(),
            bound_ms: control.bound_ms(),
            uptime_s: t.elapsed_s(),
            rps: last.map(|r| r.rps),
            accuracy: last.and_then(|r| r.mean_accuracy),
            p50_ms: last.and_then(|r| r.p50_ms),
            p99_ms: last.and_then(|r| r.p99_ms),
            slo_attainment: totals.slo_attainment,
            requests: totals.requests,
            errors: totals.errors,
            queues,
            series,
            fleet: control.fleet().map(|f| f.snapshot()),
            events: events[events.len().saturating_sub(EVENT_ROWS)..].to_vec(),
        }
    }
}
