//! Headless mode: the server without a UI, one status line per interval on stdout, summary and
//! time series written at exit. For scripted runs and for serving real devices at an edge site.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::config::Config;
use crate::service::Service;
use crate::telemetry::{summary, Row};

#[derive(Debug, Clone, Default)]
pub struct HeadlessOptions {
    pub duration: Option<Duration>,
    pub summary: Option<PathBuf>,
    pub timeseries: Option<PathBuf>,
}

pub async fn run(config: Config, opts: HeadlessOptions) -> Result<()> {
    let interval = Duration::from_millis(config.headless.status_interval_ms);
    let service = Service::start(config).await?;
    print_banner(&service);
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let stop = crate::server::shutdown::signal();
    tokio::pin!(stop);
    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => { eprintln!("edgeinfer: signal received, shutting down"); break; }
            _ = until_deadline => break,
            _ = ticker.tick() => {
                let row = service.telemetry.tick(service.engine.dispatcher.snapshot().iter().map(|q| q.depth).collect(), 0);
                say(&status_line(&row));
            }
        }
    }
    let telemetry = service.telemetry.clone();
    let engine = service.engine.clone();
    service.stop().await;
    let last = telemetry.tick(engine.dispatcher.snapshot().iter().map(|q| q.depth).collect(), 0);
    say(&status_line(&last));
    let sum = summary::build(&engine, &telemetry);
    say(&done_line(&sum));
    if let Some(p) = &opts.summary {
        summary::write_json(p, &sum)?;
    }
    if let Some(p) = &opts.timeseries {
        let names: Vec<String> = engine.ladder.iter().map(|m| m.name.clone()).collect();
        summary::write_csv(p, &telemetry.rows(), &names)?;
    }
    Ok(())
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

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "-".into())
}

/// `[   12s] rps   85.0 | acc 68.12 | p50 8.3 ms p99 32.0 ms | err 0 | q 2 1 0 ...`
pub fn status_line(r: &Row) -> String {
    let queues: Vec<String> = r.queue_depths.iter().map(|d| d.to_string()).collect();
    format!(
        "[{:>6.0}s] clients {:>4} | rps {:>7.1} | acc {:>5} | p50 {:>6} ms p99 {:>6} ms | err {} (overloaded {}) | q {}",
        r.t_s,
        r.clients,
        r.rps,
        fmt_opt(r.mean_accuracy, 2),
        fmt_opt(r.p50_ms, 1),
        fmt_opt(r.p99_ms, 1),
        r.errors,
        r.overloaded,
        queues.join(" ")
    )
}
