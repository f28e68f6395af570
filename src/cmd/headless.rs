//! Headless mode: the server without a UI, one status line per interval on stdout, summary and
//! time series written at exit. For scripted runs and for serving real devices at an edge site.
//! With `--clients`/`--ramp`, the built-in fleet runs against the server's own listener.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::config::Config;
use crate::service::{Report, Service, Tick};
use crate::telemetry::summary::Summary;
use crate::telemetry::{fmt_opt, Row};

#[derive(Debug, Clone, Default)]
pub struct HeadlessOptions {
    pub duration: Option<Duration>,
    pub summary: Option<PathBuf>,
    pub timeseries: Option<PathBuf>,
}

pub async fn run(config: Config, opts: HeadlessOptions) -> Result<Report> {
    let service = Service::start(config).await?;
    print_banner(&service);
    drive(service, opts).await
}

/// Runs a started node until the deadline or a signal, with the built-in fleet when the config
/// asks for one, a status line per interval; then stops it and writes what was asked.
pub async fn drive(mut service: Service, opts: HeadlessOptions) -> Result<Report> {
    let interval = Duration::from_millis(service.config.headless.status_interval_ms);
    service.start_configured_fleet().await?;
    let resolutions = service.fleet().map(|f| f.resolutions().to_vec()).unwrap_or_default();
    run_until(interval, opts.duration, || say(&tick_line(&service.tick(), &resolutions))).await;
    let report = service.stop().await;
    // The last row: what was answered while stopping.
    if let Some(server) = report.rows.last() {
        say(&tick_line(&Tick { server: server.clone(), fleet: report.fleet_rows.last().cloned() }, &resolutions));
    }
    say(&done_line(&report.summary));
    if let (Some(c), Some(lat)) = (&report.summary.client_requests, &report.summary.client_latency_ms) {
        say(&format!("edgeinfer: fleet: {c}, client p50 {} ms p99 {} ms", fmt_opt(lat.p50, 1), fmt_opt(lat.p99, 1)));
    }
    report.write_files(opts.summary.as_deref(), opts.timeseries.as_deref())?;
    Ok(report)
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
    if let Some(a) = s.http_addr {
        say(&format!(
            "edgeinfer: Open Inference Protocol on http://{a}/v2 (models {}), metrics on http://{a}/metrics",
            s.oip.model_names().join(", ")
        ));
    }
    if let Some(a) = s.grpc_addr {
        say(&format!("edgeinfer: Open Inference Protocol over gRPC on {a}"));
    }
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
pub fn done_line(sum: &Summary) -> String {
    format!(
        "edgeinfer: done: {} requests, {} errors, mean accuracy {}, p99 {} ms, SLO attainment {}",
        sum.requests,
        sum.errors,
        fmt_opt(sum.mean_accuracy, 2),
        fmt_opt(sum.latency_ms.p99, 1),
        fmt_opt(sum.slo_attainment, 4)
    )
}

/// The server's status line, with the fleet's view appended when it runs.
fn tick_line(t: &Tick, resolutions: &[u16]) -> String {
    match &t.fleet {
        Some(f) => format!("{}{}", status_line(&t.server), fleet_suffix(f, resolutions)),
        None => status_line(&t.server),
    }
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
pub fn fleet_suffix(r: &Row, resolutions: &[u16]) -> String {
    format!(" | client p50 {:>6} ms p99 {:>6} ms | res {}", fmt_opt(r.p50_ms, 1), fmt_opt(r.p99_ms, 1), per_resolution(r, resolutions))
}

/// `224:3 192:1 160:0`
pub fn per_resolution(r: &Row, resolutions: &[u16]) -> String {
    resolutions.iter().zip(&r.per_resolution).map(|(res, n)| format!("{res}:{n}")).collect::<Vec<_>>().join(" ")
}
