//! `edgeinfer client --connect ADDR`: only the fleet, against a server elsewhere, with the same
//! status lines, summary and time series as headless mode, from the clients' side.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cmd::headless::{interval_line, per_resolution, run_until, HeadlessOptions};
use crate::config::Config;
use crate::fleet::Fleet;
use crate::telemetry::summary;
use crate::telemetry::summary::{ClientsSummary, Counts};
use crate::telemetry::{fmt_opt, LatencySummary, Row};

#[derive(Debug, Serialize)]
pub struct ClientRunSummary {
    pub target: String,
    pub duration_s: f64,
    pub client_requests: Counts,
    pub unanswered: u64,
    pub throughput_rps: f64,
    /// Mean declared accuracy of the models that answered.
    pub mean_accuracy: Option<f64>,
    pub client_latency_ms: LatencySummary,
    pub clients: ClientsSummary,
}

pub async fn run(config: Config, connect: &str, opts: HeadlessOptions) -> Result<ClientRunSummary> {
    let addr = tokio::net::lookup_host(connect)
        .await
        .with_context(|| format!("cannot resolve {connect}"))?
        .next()
        .with_context(|| format!("{connect} resolves to no address"))?;
    let interval = Duration::from_millis(config.headless.status_interval_ms);
    let fleet = Fleet::start(&config.fleet, addr, None).await?;
    println!("edgeinfer: fleet of {} clients → {addr}", fleet.count());
    run_until(interval, opts.duration, || println!("{}", status_line(&fleet.tick(), fleet.resolutions()))).await;
    let clients = fleet.clients_summary();
    fleet.shutdown().await;
    println!("{}", status_line(&fleet.tick(), fleet.resolutions()));
    let stats = fleet.stats();
    let counts = stats.counts();
    let duration_s = stats.elapsed_s();
    let sum = ClientRunSummary {
        target: addr.to_string(),
        duration_s,
        client_requests: counts,
        unanswered: counts.unanswered(),
        throughput_rps: counts.answered as f64 / duration_s.max(1e-9),
        mean_accuracy: stats.mean_accuracy(),
        client_latency_ms: stats.latency(),
        clients,
    };
    println!(
        "edgeinfer: done: {counts}, mean accuracy {}, client p50 {} ms p99 {} ms",
        fmt_opt(sum.mean_accuracy, 2),
        fmt_opt(sum.client_latency_ms.p50, 1),
        fmt_opt(sum.client_latency_ms.p99, 1)
    );
    if let Some(p) = &opts.summary {
        summary::write_json(p, &sum)?;
    }
    if let Some(p) = &opts.timeseries {
        summary::write_fleet_csv(p, fleet.resolutions(), &fleet.rows())?;
    }
    Ok(sum)
}

/// `[   12s] clients   40 | rps   85.0 | acc 68.12 | p50 120.3 ms p99 250.0 ms | err 0 | res 224:3 …`
pub fn status_line(r: &Row, resolutions: &[u16]) -> String {
    let head = interval_line(r.t_s, r.clients, r.rps, r.mean_accuracy, r.p50_ms, r.p99_ms, r.errors);
    format!("{head} | res {}", per_resolution(r, resolutions))
}
