//! Headless mode: the server without a UI, one status line per interval on stdout, summary and
//! time series written at exit. For scripted runs and for serving real devices at an edge site.
//! With `--clients`/`--ramp`, the built-in fleet runs against the server's own listener.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::config::Config;
use crate::fleet::stats::FleetRow;
use crate::fleet::Fleet;
use crate::service::Service;
use crate::telemetry::summary::{self, Summary};
use crate::telemetry::Row;

#[derive(Debug, Clone, Default)]
pub struct HeadlessOptions {
    pub duration: Option<Duration>,
    pub summary: Option<PathBuf>,
    pub timeseries: Option<PathBuf>,
}

/// What a headless run produced, for callers that want more than the files (tests).
#[derive(Debug)]
pub struct Report {
    pub summary: Summary,
    pub rows: Vec<Row>,
    /// The fleet's time series, row for row with `rows`; empty without a fleet.
    pub fleet_rows: Vec<FleetRow>,
}

pub async fn run(config: Config, opts: HeadlessOptions) -> Result<Report> {
    let service = Service::start(config).await?;
    print_banner(&service);
    drive(service, opts).await
}

/// Runs a started service until the deadline or a signal, with the fleet when the config asks
/// for one, then stops both (the fleet first, so every request it sent is answered).
pub async fn drive(service: Service, opts: HeadlessOptions) -> Result<Report> {
    let interval = Duration::from_millis(service.config.headless.status_interval_ms);
    let fc = &service.config.fleet;
    let fleet = if fc.clients > 0 || fc.ramp_at_start {
        let f = Fleet::start(fc, service.addr, Some(service.telemetry.clone())).await?;
        service.control.attach_fleet(f.clone());
        Some(f)
    } else {
        None
    };
    let tick = |fleet: &Option<Arc<Fleet>>| {
        let depths = service.engine.dispatcher.snapshot().iter().map(|q| q.depth).collect();
        let row = service.telemetry.tick(depths, fleet.as_ref().map_or(0, |f| f.count()));
        match fleet {
            Some(f) => say(&format!("{}{}", status_line(&row), fleet_suffix(&f.tick(), f.resolutions()))),
            None => say(&status_line(&row)),
        }
    };
    run_until(interval, opts.duration, || tick(&fleet)).await;
    let clients = fleet.as_ref().map(|f| f.clients_summary());
    if let Some(f) = &fleet {
        f.shutdown().await;
    }
    let telemetry = service.telemetry.clone();
    let engine = service.engine.clone();
    service.stop().await;
    // The last row: what was answered while stopping.
    let last = telemetry.tick(engine.dispatcher.snapshot().iter().map(|q| q.depth).collect(), 0);
    let last_fleet = fleet.as_ref().map(|f| f.tick());
    say(&format!("{}{}", status_line(&last), last_fleet.as_ref().zip(fleet.as_ref()).map(|(r, f)| fleet_suffix(r, f.resolutions())).unwrap_or_default()));
    let mut sum = summary::build(&engine, &telemetry);
    if let Some(f) = &fleet {
        sum.client_latency_ms = Some(f.stats().latency());
        sum.client_requests = Some(f.counts());
        sum.clients = clients;
    }
    say(&done_line(&sum));
    if let (Some(f), Some(lat)) = (&fleet, &sum.client_latency_ms) {
        let c = f.counts();
        say(&format!(
            "edgeinfer: fleet: {} sent, {} answered, {} errors, {} unanswered, client p50 {} ms p99 {} ms",
            c.sent,
            c.answered,
            c.errors,
            c.unanswered(),
            fmt_opt(lat.p50, 1),
            fmt_opt(lat.p99, 1)
        ));
    }
    if let Some(p) = &opts.summary {
        summary::write_json(p, &sum)?;
    }
    let rows = telemetry.rows();
    let fleet_rows = fleet.as_ref().map(|f| f.rows()).unwrap_or_default();
    if let Some(p) = &opts.timeseries {
        let names: Vec<String> = engine.ladder.iter().map(|m| m.name.clone()).collect();
        let fleet_series = fleet.as_ref().map(|f| (f.resolutions(), fleet_rows.as_slice()));
        summary::write_csv_with_fleet(p, &rows, &names, fleet_series)?;
    }
    Ok(Report { summary: sum, rows, fleet_rows })
}

/// Calls `on_tick` every `interval` until `duration` has passed or a stop signal arrives.
pub async fn run_until(interval: Duration, duration: Option<Duration>, mut on_tick: impl FnMut()) {
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let stop = crate::server::shutdown::signal();
    tokio::pin!(stop);
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);
    loop {
        tokio::select! {
            _ = &mut stop => { eprintln!("edgeinfer: signal received, shutting down"); break; }
            _ = &mut until_deadline => break,
            _ = ticker.tick() => on_tick(),
        }
    }
}

/// Prints a line on stdout, ignoring a closed stdout: a reader that went away must not take
/// the server down with it (`println!` would panic on EPIPE).
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn print_banner(s: &Service) {
    let e = &s.engine;
    say(&format!("edgeinfer: listening on {}", s.addr));
    say(&format!("edgeinfer: backend {}", e.backend.describe()));
    say(&format!("edgeinfer: {} models, policy {}, T = {} ms", e.ladder.len(), e.policy_name(), e.dispatcher.bound_ms()));
    if e.any_synthetic() {
        say("edgeinfer: SYNTHETIC WEIGHTS: MobileNet-v1 graphs with random weights; compute cost is real, predictions are meaningless, accuracies are the published figures");
    } else {
        let names: Vec<&str> = e.ladder.iter().map(|m| m.name.as_str()).collect();
        say(&format!("edgeinfer: pretrained weights: {}", names.join(", ")));
    }
}

/// The closing line of a run (headless and console).
pub fn done_line(sum: &summary::Summary) -> String {
    format!(
        "edgeinfer: done: {} requests, {} errors, mean accuracy {}, p99 {} ms, SLO attainment {}",
        sum.requests,
        sum.errors,
        fmt_opt(sum.mean_accuracy, 2),
        fmt_opt(sum.latency_ms.p99, 1),
        fmt_opt(sum.slo_attainment, 4)
    )
}

pub fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "-".into())
}

/// `[   12s] clients    8 | rps   85.0 | acc 68.12 | p50 8.3 ms p99 32.0 ms | err 0 | q 2 1 0 ...`
pub fn status_line(r: &Row) -> String {
    let queues: Vec<String> = r.queue_depths.iter().map(|d| d.to_string()).collect();
    let head = interval_line(r.t_s, r.clients, r.rps, r.mean_accuracy, r.p50_ms, r.p99_ms, r.errors);
    format!("{head} (overloaded {}) | q {}", r.overloaded, queues.join(" "))
}

/// The part of a status line that the server's and the fleet's lines share.
pub fn interval_line(t_s: f64, clients: usize, rps: f64, acc: Option<f64>, p50: Option<f64>, p99: Option<f64>, errors: u64) -> String {
    format!(
        "[{t_s:>6.0}s] clients {clients:>4} | rps {rps:>7.1} | acc {:>5} | p50 {:>6} ms p99 {:>6} ms | err {errors}",
        fmt_opt(acc, 2),
        fmt_opt(p50, 1),
        fmt_opt(p99, 1),
    )
}

/// The fleet's view appended to the server's line: ` | client p50 120.3 ms p99 250.0 ms | res 224:3 192:1 …`
pub fn fleet_suffix(r: &FleetRow, resolutions: &[u16]) -> String {
    format!(" | client p50 {:>6} ms p99 {:>6} ms | res {}", fmt_opt(r.p50_ms, 1), fmt_opt(r.p99_ms, 1), per_resolution(r, resolutions))
}

/// `224:3 192:1 160:0`
pub fn per_resolution(r: &FleetRow, resolutions: &[u16]) -> String {
    resolutions.iter().zip(&r.per_resolution).map(|(res, n)| format!("{res}:{n}")).collect::<Vec<_>>().join(" ")
}
