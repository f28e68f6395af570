//! The benches, `edgeinfer bench …`, one module each; `bench models` is this one: the paper's
//! Figure 1 as a table. For every ladder model, the declared accuracy and the inference time on
//! this machine and backend, measured twice: in a bare `session.run` loop, and through the
//! executor's own path to a model (`worker::execute`).

use std::time::Instant;

pub mod connections;
pub mod console;
pub mod fleet;
pub mod frontends;
pub mod overhead;

use anyhow::Result;
use serde::Serialize;

use crate::config::Config;
use crate::dispatch::{policy::Paper, Dispatcher};
use crate::engine::session::ModelSession;
use crate::engine::worker::execute;
use crate::engine::{backend, warm_up};
use crate::models::Ladder;

#[derive(Debug, Clone, Serialize)]
pub struct ModelBench {
    pub name: String,
    pub accuracy: f32,
    pub input: u32,
    pub bare_p50_ms: f64,
    pub bare_p99_ms: f64,
    /// Mean of the bare runs: what a model costs per request on average, the figure a
    /// throughput (k / mean cost) is made of.
    pub bare_mean_ms: f64,
    pub server_p50_ms: f64,
    pub server_p99_ms: f64,
    /// (server p50 − bare p50) / bare p50, percent.
    pub overhead_pct: f64,
    /// p50 of one inference while every executor worker runs this model at once: what a rung
    /// costs when all cores infer (shared caches and memory bandwidth), as they do under load.
    pub all_cores_p50_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub intra_threads: usize,
    pub iterations: usize,
    /// Threads that ran each model at once for `all_cores_p50_ms`.
    pub all_cores: usize,
    pub synthetic_weights: bool,
    pub models: Vec<ModelBench>,
}

/// The executor's path against the bare loop: (server p50 − bare p50) / bare p50, percent.
pub fn overhead_pct(bare_p50_ms: f64, server_p50_ms: f64) -> f64 {
    (server_p50_ms - bare_p50_ms) / bare_p50_ms * 100.0
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub fn run_models(cfg: &Config, iterations: usize) -> Result<BenchReport> {
    let iterations = iterations.max(1);
    let info = backend::init(&cfg.engine)?;
    let mut ladder = Ladder::load(&cfg.models.manifest)?;
    ladder.ensure_files(&crate::dirs::data_dir().join("models"))?;
    let all_cores = cfg.engine.pool_workers();
    let mut models = Vec::new();
    for spec in &ladder.models {
        let mut bare_session = ModelSession::load(spec, cfg.engine.intra_threads)?;
        let input = vec![0.25f32; bare_session.input_len()];
        warm_up(&mut bare_session, 5)?;
        // The executor's own path to a model: timing, panic guard, top-k and bookkeeping.
        let mut worker_session = ModelSession::load(spec, cfg.engine.intra_threads)?;
        warm_up(&mut worker_session, 5)?;
        let d = Dispatcher::new(Box::new(Paper), 1, cfg.dispatch.ewma_weight, 1e9);
        let mut bare = Vec::with_capacity(iterations);
        let mut server = Vec::with_capacity(iterations);
        // Alternate the two paths so that load from elsewhere on the machine hits both alike.
        for _ in 0..iterations {
            let t = Instant::now();
            bare_session.run(&input)?;
            bare.push(t.elapsed().as_secs_f64() * 1e3);
            d.begin(0);
            let (result, inference_us, _) = execute(&mut worker_session, 0, &input, &d, cfg.server.top_k);
            result.map_err(anyhow::Error::msg)?;
            server.push(inference_us as f64 / 1e3);
        }
        bare.sort_by(f64::total_cmp);
        server.sort_by(f64::total_cmp);
        let (b50, s50) = (percentile(&bare, 0.5), percentile(&server, 0.5));
        let together = all_at_once(spec, cfg.engine.intra_threads, all_cores, iterations)?;
        let row = ModelBench {
            name: spec.name.clone(),
            accuracy: spec.accuracy,
            input: spec.input.size,
            bare_p50_ms: b50,
            bare_p99_ms: percentile(&bare, 0.99),
            bare_mean_ms: bare.iter().sum::<f64>() / bare.len() as f64,
            server_p50_ms: s50,
            server_p99_ms: percentile(&server, 0.99),
            overhead_pct: overhead_pct(b50, s50),
            all_cores_p50_ms: together,
        };
        eprintln!(
            "  {:<24} bare p50 {:>8.3} ms   server p50 {:>8.3} ms   all cores p50 {:>8.3} ms",
            row.name, row.bare_p50_ms, row.server_p50_ms, row.all_cores_p50_ms
        );
        models.push(row);
    }
    Ok(BenchReport {
        backend: info.describe(),
        intra_threads: cfg.engine.intra_threads,
        iterations,
        all_cores,
        synthetic_weights: ladder.any_synthetic(),
        models,
    })
}

/// p50 of one inference of `spec` while `threads` threads, each with its own session, run it
/// at the same time (started together at a barrier), ms.
fn all_at_once(spec: &crate::models::ModelSpec, intra: usize, threads: usize, iterations: usize) -> Result<f64> {
    let barrier = std::sync::Barrier::new(threads);
    let mut times = std::thread::scope(|scope| -> Result<Vec<f64>> {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                scope.spawn(move || -> Result<Vec<f64>> {
                    let loaded = ModelSession::load(spec, intra).and_then(|mut s| warm_up(&mut s, 5).map(|_| s));
                    // Every thread reaches the barrier, even one whose load failed, so none waits forever.
                    barrier.wait();
                    let mut session = loaded?;
                    let input = vec![0.25f32; session.input_len()];
                    let mut t = Vec::with_capacity(iterations);
                    for _ in 0..iterations {
                        let start = Instant::now();
                        session.run(&input)?;
                        t.push(start.elapsed().as_secs_f64() * 1e3);
                    }
                    Ok(t)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(threads * iterations);
        for h in handles {
            all.extend(h.join().map_err(|_| anyhow::anyhow!("benchmark thread panicked"))??);
        }
        Ok(all)
    })?;
    times.sort_by(f64::total_cmp);
    Ok(percentile(&times, 0.5))
}

/// Markdown table, as pasted into the README.
pub fn table(r: &BenchReport) -> String {
    let mut s = format!(
        "backend: {} · intra-op threads: {} · {} runs per model{}\n\n",
        r.backend,
        r.intra_threads,
        r.iterations,
        if r.synthetic_weights { " · synthetic weights (declared accuracies)" } else { "" }
    );
    s.push_str(&format!(
        "| model | top-1 % | input | bare p50 ms | bare p99 ms | server p50 ms | server p99 ms | server vs bare | {} at once p50 ms |\n",
        r.all_cores
    ));
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for m in &r.models {
        s.push_str(&format!(
            "| {} | {:.1} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:+.1}% | {:.3} |\n",
            m.name, m.accuracy, m.input, m.bare_p50_ms, m.bare_p99_ms, m.server_p50_ms, m.server_p99_ms, m.overhead_pct, m.all_cores_p50_ms
        ));
    }
    s
}

/// Resident set size of a process, in KiB, from /proc (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
