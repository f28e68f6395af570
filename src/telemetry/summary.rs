//! End-of-run outputs: the JSON summary (built by the node, `service.rs`) and the
//! per-interval CSV time series.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::ser::SerializeMap;
use serde::Serialize;

use super::{LatencySummary, Row};

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
    /// With the built-in fleet: latency as its clients measured it (uplink + server + return).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_latency_ms: Option<LatencySummary>,
    /// With the built-in fleet: its requests sent, answered, and errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_requests: Option<Counts>,
    /// With the built-in fleet: clients at the end and how many were at each resolution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clients: Option<ClientsSummary>,
}

/// A fleet's requests, as its clients counted them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Requests whose first byte was sent.
    pub sent: u64,
    /// Requests that got a response (any status).
    pub answered: u64,
    /// Transport failures, timeouts and non-ok responses.
    pub errors: u64,
    /// Of `errors`, those refused `overloaded`: the server declining for want of capacity (the
    /// policy shedding a request that could not make its deadline, `server.max_waiting`, the
    /// connection cap, shutting down), not a fault.
    pub overloaded: u64,
}

impl std::fmt::Display for Counts {
    /// `12 sent, 12 answered, 2 errors (1 overloaded), 0 unanswered`: the one wording of a
    /// fleet's counts, in every command that prints them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sent, {} answered, {} errors ({} overloaded), {} unanswered",
            self.sent,
            self.answered,
            self.errors,
            self.overloaded,
            self.unanswered()
        )
    }
}

impl Counts {
    /// Sent but never answered.
    pub fn unanswered(&self) -> u64 {
        self.sent - self.answered
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

pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// A CSV cell: three decimals, or empty when there is no figure.
fn csv_cell(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_default()
}

/// `t_s, clients, rps, mean_accuracy, p50_ms, p99_ms`, then one queue-length column per model.
pub fn write_csv(path: &Path, rows: &[Row], model_names: &[String]) -> Result<()> {
    write_csv_with_fleet(path, rows, model_names, None)
}

/// [`write_csv`], plus with a fleet (its resolution ladder and its rows, one per server row) the
/// client-observed `client_p50_ms, client_p99_ms` and one column per resolution (`r_224`, …:
/// clients at that resolution).
pub fn write_csv_with_fleet(path: &Path, rows: &[Row], model_names: &[String], fleet: Option<(&[u16], &[Row])>) -> Result<()> {
    let mut out = Vec::new();
    write!(out, "t_s,clients,rps,mean_accuracy,p50_ms,p99_ms")?;
    for name in model_names {
        write!(out, ",q_{name}")?;
    }
    if let Some((resolutions, _)) = fleet {
        write!(out, ",client_p50_ms,client_p99_ms")?;
        resolution_headers(&mut out, resolutions)?;
    }
    writeln!(out)?;
    for (i, r) in rows.iter().enumerate() {
        write!(out, "{:.3},{},{:.2},{},{},{}", r.t_s, r.clients, r.rps, csv_cell(r.mean_accuracy), csv_cell(r.p50_ms), csv_cell(r.p99_ms))?;
        for d in &r.queue_depths {
            write!(out, ",{d}")?;
        }
        if let Some((resolutions, fleet_rows)) = fleet {
            match fleet_rows.get(i) {
                Some(f) => {
                    write!(out, ",{},{}", csv_cell(f.p50_ms), csv_cell(f.p99_ms))?;
                    resolution_cells(&mut out, &f.per_resolution)?;
                }
                None => write!(out, ",,{}", ",".repeat(resolutions.len()))?,
            }
        }
        writeln!(out)?;
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

/// The fleet's own time series (`edgeinfer client`, no server here): `t_s, clients, rps,
/// mean_accuracy, p50_ms, p99_ms, errors` as the clients saw them, then `r_224`, ….
pub fn write_fleet_csv(path: &Path, resolutions: &[u16], rows: &[Row]) -> Result<()> {
    let mut out = Vec::new();
    write!(out, "t_s,clients,rps,mean_accuracy,p50_ms,p99_ms,errors")?;
    resolution_headers(&mut out, resolutions)?;
    writeln!(out)?;
    for f in rows {
        write!(
            out,
            "{:.3},{},{:.2},{},{},{},{}",
            f.t_s,
            f.clients,
            f.rps,
            csv_cell(f.mean_accuracy),
            csv_cell(f.p50_ms),
            csv_cell(f.p99_ms),
            f.errors
        )?;
        resolution_cells(&mut out, &f.per_resolution)?;
        writeln!(out)?;
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

fn resolution_headers(out: &mut Vec<u8>, resolutions: &[u16]) -> std::io::Result<()> {
    resolutions.iter().try_for_each(|r| write!(out, ",r_{r}"))
}

fn resolution_cells(out: &mut Vec<u8>, per_resolution: &[usize]) -> std::io::Result<()> {
    per_resolution.iter().try_for_each(|n| write!(out, ",{n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolutions_serialise_in_ladder_order() {
        let c = ClientsSummary { final_count: 4, resolutions: PerResolution(vec![(224, 3), (96, 1)]) };
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"final":4,"resolutions":{"224":3,"96":1}}"#);
    }

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
            inference_ms: vec![2.5, 4.0],
            errors: 0,
            overloaded: 0,
            slo_attainment: None,
            per_resolution: vec![],
        };
        write_csv(&p, &[row], &["a".into(), "b".into()]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "t_s,clients,rps,mean_accuracy,p50_ms,p99_ms,q_a,q_b");
        assert_eq!(lines[1], "1.000,2,10.00,65.250,,3.000,1,0");
    }

    #[test]
    fn csv_with_fleet_has_one_column_per_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ts.csv");
        let row = Row {
            t_s: 1.0,
            clients: 3,
            rps: 10.0,
            mean_accuracy: None,
            p50_ms: None,
            p99_ms: None,
            queue_depths: vec![0],
            served: vec![0],
            inference_ms: vec![0.0],
            errors: 0,
            overloaded: 0,
            slo_attainment: None,
            per_resolution: vec![],
        };
        let f = Row { t_s: 1.0, clients: 3, rps: 9.0, p50_ms: Some(120.0), per_resolution: vec![2, 1], ..Row::default() };
        let rows = [row.clone(), row];
        write_csv_with_fleet(&p, &rows, &["a".into()], Some((&[224, 96], std::slice::from_ref(&f)))).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "t_s,clients,rps,mean_accuracy,p50_ms,p99_ms,q_a,client_p50_ms,client_p99_ms,r_224,r_96");
        assert_eq!(lines[1], "1.000,3,10.00,,,,0,120.000,,2,1");
        // A server row without its fleet row keeps the column count.
        assert_eq!(lines[2].split(',').count(), lines[0].split(',').count());
        write_fleet_csv(&p, &[224, 96], &[f]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text, "t_s,clients,rps,mean_accuracy,p50_ms,p99_ms,errors,r_224,r_96\n1.000,3,9.00,,120.000,,0,2,1\n");
    }
}
