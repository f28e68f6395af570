//! End-of-run outputs: the JSON summary and the per-interval CSV time series.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{LatencySummary, Row, Telemetry};
use crate::engine::Engine;

#[derive(Debug, Serialize)]
pub struct BackendSummary {
    pub name: &'static str,
    pub version: String,
}

#[derive(Debug, Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub accuracy: f32,
    pub served: u64,
    pub ewma_ms: f64,
    pub p50_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub backend: BackendSummary,
    /// True when any ladder model has generated random weights: accuracies are declared, not measured.
    pub synthetic_weights: bool,
    pub latency_bound_ms: f64,
    pub policy: String,
    pub duration_s: f64,
    pub models: Vec<ModelSummary>,
    pub requests: u64,
    pub errors: u64,
    pub errors_by_status: std::collections::BTreeMap<String, u64>,
    /// Server side, from a request frame's arrival to its response being written.
    pub latency_ms: LatencySummary,
    /// Fraction of served requests whose server latency was within T.
    pub slo_attainment: Option<f64>,
    /// Mean declared accuracy over served requests.
    pub mean_accuracy: Option<f64>,
    pub throughput_rps: f64,
    /// |dispatcher's predicted latency − actual queue wait + inference|.
    pub estimate_error_ms: LatencySummary,
    pub connections: super::ConnectionStats,
}

pub fn build(engine: &Engine, telemetry: &Telemetry) -> Summary {
    let totals = telemetry.totals();
    let views = engine.dispatcher.snapshot();
    let duration_s = telemetry.elapsed_s();
    Summary {
        backend: BackendSummary { name: engine.backend.name.as_str(), version: engine.backend.version.clone() },
        synthetic_weights: engine.any_synthetic(),
        latency_bound_ms: engine.dispatcher.bound_ms(),
        policy: engine.policy_name().to_string(),
        duration_s,
        models: engine
            .ladder
            .iter()
            .zip(&totals.per_model)
            .zip(&views)
            .map(|((spec, t), v)| ModelSummary {
                name: spec.name.clone(),
                accuracy: spec.accuracy,
                served: t.served,
                ewma_ms: v.ewma_us / 1000.0,
                p50_ms: t.inference_p50_ms,
            })
            .collect(),
        requests: totals.requests,
        errors: totals.errors,
        errors_by_status: totals.errors_by_status,
        latency_ms: totals.latency_ms,
        slo_attainment: totals.slo_attainment,
        mean_accuracy: totals.mean_accuracy,
        throughput_rps: totals.requests as f64 / duration_s.max(1e-9),
        estimate_error_ms: totals.estimate_error_ms,
        connections: telemetry.connections(),
    }
}

pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_default()
}

/// `t_s, clients, rps, mean_accuracy, p50_ms, p99_ms`, then one queue-length column per model.
pub fn write_csv(path: &Path, rows: &[Row], model_names: &[String]) -> Result<()> {
    let mut out = Vec::new();
    write!(out, "t_s,clients,rps,mean_accuracy,p50_ms,p99_ms")?;
    for name in model_names {
        write!(out, ",q_{name}")?;
    }
    writeln!(out)?;
    for r in rows {
        write!(out, "{:.3},{},{:.2},{},{},{}", r.t_s, r.clients, r.rps, opt(r.mean_accuracy), opt(r.p50_ms), opt(r.p99_ms))?;
        for d in &r.queue_depths {
            write!(out, ",{d}")?;
        }
        writeln!(out)?;
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_header_and_one_column_per_queue() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ts.csv");
        let row = Row {
            t_s: 1.0,
            clients: 2,
            rps: 10.0,
            mean_accuracy: Some(65.25),
            p50_ms: None,
            p99_ms: Some(3.0),
            queue_depths: vec![1, 0],
            served: vec![5, 5],
            errors: 0,
            overloaded: 0,
        };
        write_csv(&p, &[row], &["a".into(), "b".into()]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "t_s,clients,rps,mean_accuracy,p50_ms,p99_ms,q_a,q_b");
        assert_eq!(lines[1], "1.000,2,10.00,65.250,,3.000,1,0");
    }
}
