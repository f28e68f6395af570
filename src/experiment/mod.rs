//! `edgeinfer experiment`: scripted headless scenarios, in one process, that reproduce the
//! paper's figures and compare policies against the optimum. Writes CSV files, SVG figures and
//! `report.md` into an output folder.

pub mod optimum;
pub mod plot;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::bench::{self, BenchReport};
use crate::config::Config;
use crate::headless::{self, HeadlessOptions, Report};
use crate::service::Service;
use optimum::{optimum, Point};
use plot::Panel;

/// Policies compared on the same ramp; `paper` first (the reference), then the new one.
pub const POLICIES: &[&str] = &["paper", "deadline", "static-best", "static-cheapest"];

#[derive(Debug, Clone)]
pub struct ExperimentOptions {
    pub out: PathBuf,
    pub quick: bool,
}

/// The load shape both variants use: `step` clients every `every_s` up to `max`, then a hold.
#[derive(Debug, Clone, Copy)]
pub struct Ramp {
    pub step: usize,
    pub every_s: f64,
    pub max: usize,
    pub hold_s: f64,
}

impl Ramp {
    pub fn for_mode(quick: bool) -> Ramp {
        if quick {
            Ramp { step: 4, every_s: 3.0, max: 16, hold_s: 3.0 }
        } else {
            Ramp { step: 4, every_s: 8.0, max: 64, hold_s: 8.0 }
        }
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.every_s * (self.max / self.step) as f64 + self.hold_s)
    }
}

/// One policy's numbers at one load level (client count).
#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    pub clients: usize,
    pub slo: Option<f64>,
    pub accuracy: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub rps: f64,
}

/// Groups time-series rows by client count; the first interval at each count is a transition
/// (clients joined during it) and is left out. Accuracy and SLO are weighted by requests served.
pub fn levels(rows: &[crate::telemetry::Row]) -> Vec<Level> {
    let mut out: Vec<Level> = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let n = rows[i].clients;
        let mut j = i;
        while j < rows.len() && rows[j].clients == n {
            j += 1;
        }
        let steady = if j - i > 1 { &rows[i + 1..j] } else { &rows[i..j] };
        let served = |r: &crate::telemetry::Row| r.served.iter().sum::<u64>() as f64;
        let weight: f64 = steady.iter().map(served).sum();
        let wmean = |f: fn(&crate::telemetry::Row) -> Option<f64>| {
            (weight > 0.0).then(|| steady.iter().filter_map(|r| f(r).map(|v| v * served(r))).sum::<f64>() / weight)
        };
        let p50s: Vec<f64> = steady.iter().filter_map(|r| r.p50_ms).collect();
        if n > 0 {
            out.push(Level {
                clients: n,
                slo: wmean(|r| r.slo_attainment),
                accuracy: wmean(|r| r.mean_accuracy),
                p50_ms: (!p50s.is_empty()).then(|| p50s.iter().sum::<f64>() / p50s.len() as f64),
                p99_ms: steady.iter().filter_map(|r| r.p99_ms).reduce(f64::max),
                rps: steady.iter().map(|r| r.rps).sum::<f64>() / steady.len() as f64,
            });
        }
        i = j;
    }
    out
}

struct PolicyRun {
    name: &'static str,
    report: Report,
    levels: Vec<Level>,
}

pub fn run(runtime: &tokio::runtime::Runtime, base: Config, opts: &ExperimentOptions) -> Result<PathBuf> {
    let out = &opts.out;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let ramp = Ramp::for_mode(opts.quick);
    eprintln!("experiment: figure 1 (model costs)…");
    let fig1 = bench::run_models(&base, if opts.quick { 20 } else { 100 })?;
    write_figure1(out, &fig1)?;

    let mut runs = Vec::new();
    for &name in POLICIES {
        eprintln!("experiment: ramp with policy {name} ({:.0} s)…", ramp.duration().as_secs_f64());
        let cfg = ramp_config(&base, name, ramp);
        let report = runtime.block_on(async {
            let service = Service::start(cfg).await?;
            headless::drive(service, HeadlessOptions { duration: Some(ramp.duration()), summary: None, timeseries: None }).await
        })?;
        let names: Vec<String> = fig1.models.iter().map(|m| m.name.clone()).collect();
        crate::telemetry::summary::write_csv(&out.join(format!("ramp_{name}.csv")), &report.rows, &names)?;
        crate::telemetry::summary::write_json(&out.join(format!("summary_{name}.json")), &report.summary)?;
        runs.push(PolicyRun { name, levels: levels(&report.rows), report });
    }
    for r in &runs {
        write_figure3(out, r)?;
    }
    let report = report_md(&base, &fig1, &runs, ramp);
    let path = out.join("report.md");
    std::fs::write(&path, report).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn ramp_config(base: &Config, policy: &str, ramp: Ramp) -> Config {
    let mut c = base.clone();
    c.dispatch.policy = policy.into();
    c.server.listen = "127.0.0.1:0".parse().expect("literal address");
    c.headless.status_interval_ms = 1000;
    // The paper's evaluation: closed-loop clients added steadily, the compute as the bottleneck.
    c.fleet.clients = ramp.step;
    c.fleet.ramp_at_start = true;
    c.fleet.ramp_step = ramp.step;
    c.fleet.ramp_every_s = ramp.every_s;
    c.fleet.max_clients = ramp.max;
    c.fleet.link.enabled = false;
    c
}

fn write_figure1(out: &Path, b: &BenchReport) -> Result<()> {
    let mut csv = String::from("model,input,pixels,accuracy,p50_ms,p99_ms\n");
    for m in &b.models {
        writeln!(csv, "{},{},{},{},{:.4},{:.4}", m.name, m.input, m.input * m.input, m.accuracy, m.server_p50_ms, m.server_p99_ms)?;
    }
    std::fs::write(out.join("figure1.csv"), csv)?;
    let pts: Vec<(f64, f64, String)> = b.models.iter().map(|m| (m.server_p50_ms, m.accuracy as f64, short(&m.name))).collect();
    plot::scatter(&out.join("figure1_accuracy_vs_cost.svg"), "Declared top-1 accuracy vs measured inference time", "inference p50 (ms)", "top-1 accuracy (%)", &pts)?;
    let width1: Vec<(f64, f64, String)> = b
        .models
        .iter()
        .filter(|m| m.name.contains("_1.0_"))
        .map(|m| ((m.input * m.input) as f64 / 1000.0, m.server_p50_ms, format!("{}px", m.input)))
        .collect();
    // Only a ladder with several width-1.0 resolutions (the default one) has this figure.
    if width1.len() >= 2 {
        plot::scatter(&out.join("figure1_time_vs_pixels.svg"), "Inference time vs pixels, width 1.0", "pixels (thousands)", "inference p50 (ms)", &width1)?;
    }
    Ok(())
}

fn short(name: &str) -> String {
    name.trim_start_matches("mobilenet_v1_").to_string()
}

fn write_figure3(out: &Path, r: &PolicyRun) -> Result<()> {
    let rows = &r.report.rows;
    let series = |f: fn(&crate::telemetry::Row) -> Option<f64>| rows.iter().filter_map(|x| f(x).map(|v| (x.t_s, v))).collect::<Vec<_>>();
    let panels = [
        Panel { y_label: "mean accuracy (%)", series: vec![("accuracy".into(), series(|x| x.mean_accuracy))] },
        Panel { y_label: "clients", series: vec![("clients".into(), series(|x| Some(x.clients as f64)))] },
        Panel { y_label: "server latency (ms)", series: vec![("p99".into(), series(|x| x.p99_ms)), ("p50".into(), series(|x| x.p50_ms))] },
    ];
    plot::stacked(&out.join(format!("figure3_{}.svg", r.name)), &format!("Load ramp, policy {}", r.name), "time (s)", &panels)
}

/// Linear least squares of y on x: slope, intercept, R².
pub fn linear_fit(pts: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return None;
    }
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = pts.iter().map(|p| (p.1 - my).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r2 = if syy == 0.0 { 1.0 } else { sxy * sxy / (sxx * syy) };
    Some((slope, my - slope * mx, r2))
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "–".into())
}

fn report_md(cfg: &Config, fig1: &BenchReport, runs: &[PolicyRun], ramp: Ramp) -> String {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let t = cfg.dispatch.latency_bound_ms;
    let points: Vec<Point> = fig1.models.iter().map(|m| Point { cost_ms: m.server_p50_ms, accuracy: m.accuracy as f64 }).collect();
    let mut s = String::new();
    let _ = writeln!(s, "# edgeinfer experiment report\n");
    let _ = writeln!(
        s,
        "Machine: {workers} cores. Backend: {}. T = {t} ms. Ramp: +{} closed-loop clients every {} s up to {}, then {} s at {} (link emulation off, no think time). Accuracies are the published top-1 of the real models{}.\n",
        fig1.backend,
        ramp.step,
        ramp.every_s,
        ramp.max,
        ramp.hold_s,
        ramp.max,
        if fig1.synthetic_weights { "; the weights are synthetic (random), so they are declared, not measured" } else { "" }
    );
    let _ = writeln!(s, "## Figure 1: accuracy vs inference cost\n\n![](figure1_accuracy_vs_cost.svg)\n\n{}", bench::table(fig1));
    let px: Vec<(f64, f64)> = fig1.models.iter().filter(|m| m.name.contains("_1.0_")).map(|m| ((m.input * m.input) as f64, m.server_p50_ms)).collect();
    if let Some((slope, icpt, r2)) = linear_fit(&px) {
        let _ = writeln!(
            s,
            "Inference time vs pixels, width 1.0: {:.3} ms per 1000 pixels + {:.2} ms, R² = {r2:.4} (the paper: linear in pixels). ![](figure1_time_vs_pixels.svg)\n",
            slope * 1000.0,
            icpt
        );
    }
    let _ = writeln!(s, "## Figure 3: accuracy over time under a load ramp\n");
    for r in runs {
        let sum = &r.report.summary;
        let _ = writeln!(
            s,
            "- `{}`: ![](figure3_{}.svg) max server latency {} ms, p99 {} ms, SLO attainment {}, {} requests, {} errors",
            r.name,
            r.name,
            f(sum.latency_ms.max, 1),
            f(sum.latency_ms.p99, 1),
            f(sum.slo_attainment, 4),
            sum.requests,
            sum.errors
        );
    }
    let _ = writeln!(
        s,
        "\n## Policies side by side, against the optimum\n\nOptimum: the best mean accuracy any mix of models can reach when N closed-loop clients share {workers} workers within T (mean inference cost ≤ {workers}·T/N, read on the upper convex hull of measured p50 cost vs accuracy). It counts inference only, not decoding or resizing, so it is optimistic and the fractions below are lower bounds. `*`: past the cheapest model's capacity, no mix meets T.\n"
    );
    for r in runs {
        let _ = writeln!(s, "### `{}`\n\n| clients | SLO attainment | mean accuracy | optimum | of optimum | p50 ms | p99 ms | req/s |\n|---:|---:|---:|---:|---:|---:|---:|---:|", r.name);
        for l in &r.levels {
            let opt = optimum(&points, l.clients, workers, t);
            let frac = l.accuracy.zip(opt).map(|(a, o)| a / o.accuracy * 100.0);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {}{} | {} | {} | {} | {:.0} |",
                l.clients,
                l.slo.map(|v| format!("{:.1}%", v * 100.0)).unwrap_or_else(|| "–".into()),
                f(l.accuracy, 2),
                f(opt.map(|o| o.accuracy), 2),
                if opt.is_some_and(|o| !o.feasible) { "*" } else { "" },
                frac.map(|v| format!("{v:.1}%")).unwrap_or_else(|| "–".into()),
                f(l.p50_ms, 1),
                f(l.p99_ms, 1),
                l.rps
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "## Estimator accuracy\n\n|policy | median error ms | p99 error ms |\n|---|---:|---:|");
    for r in runs {
        let e = &r.report.summary.estimate_error_ms;
        let _ = writeln!(s, "| `{}` | {} | {} |", r.name, f(e.p50, 2), f(e.p99, 2));
    }
    let _ = writeln!(s, "\nError: |predicted − actual| of queue wait + inference per request. `deadline` predicts at the moment a worker takes the request (the wait is known), so only the inference time is a guess.");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Row;

    fn row(clients: usize, acc: f64, served: u64, slo: f64) -> Row {
        Row {
            t_s: 0.0,
            clients,
            rps: served as f64,
            mean_accuracy: Some(acc),
            p50_ms: Some(1.0),
            p99_ms: Some(acc / 10.0),
            queue_depths: vec![],
            served: vec![served],
            errors: 0,
            overloaded: 0,
            slo_attainment: Some(slo),
        }
    }

    #[test]
    fn levels_skip_the_transition_interval_and_weight_by_requests() {
        let rows = [row(4, 10.0, 1, 0.0), row(4, 60.0, 10, 1.0), row(4, 70.0, 30, 0.5), row(8, 50.0, 5, 1.0)];
        let l = levels(&rows);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].clients, 4);
        assert!((l[0].accuracy.unwrap() - 67.5).abs() < 1e-9);
        assert!((l[0].slo.unwrap() - 0.625).abs() < 1e-9);
        assert_eq!(l[0].p99_ms, Some(7.0));
        assert_eq!(l[1].accuracy, Some(50.0), "a single interval is used as it is");
    }

    #[test]
    fn linear_fit_recovers_a_line() {
        let (m, b, r2) = linear_fit(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]).unwrap();
        assert!((m - 2.0).abs() < 1e-12 && (b - 1.0).abs() < 1e-12 && (r2 - 1.0).abs() < 1e-12);
        assert!(linear_fit(&[(1.0, 1.0)]).is_none());
    }

    #[test]
    fn ramp_durations() {
        assert!(Ramp::for_mode(true).duration() < Duration::from_secs(20));
        assert!(Ramp::for_mode(false).duration() <= Duration::from_secs(150));
    }
}
