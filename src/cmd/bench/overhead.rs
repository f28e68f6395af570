//! `edgeinfer bench overhead`: the CPU a request costs beside inference, measured two ways in
//! one run, for JPEG inputs at several resolutions.
//!
//! 1. **Per stage**, on one thread with no sockets: decode, resize + normalise (into the cheapest
//!    model's input; one pass where the server fuses them, see `engine::resample`, with the
//!    two-pass path — fast_image_resize, then normalise — timed beside it), the policy's
//!    decision, and framing (request and response, encoded and decoded, as both ends in one
//!    process do). The `image`-crate path this replaced (full decode, `imageops::resize` with
//!    the triangle filter, a separate normalise pass) is timed beside it on the same pictures,
//!    and the mean absolute difference between the two resizes is reported: what the models see
//!    differently.
//! 2. **From throughput**: the whole server with the in-process fleet, `static-cheapest`,
//!    saturated (16 clients per core): `k / X − c_cheapest`, everything a request costs beside
//!    the model — the stages above plus sockets, the kernel, the async runtime and the fleet.
//!    And one client alone: its round trip minus the model's inference, the serving overhead a
//!    single device sees.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::BytesMut;
use serde::Serialize;

use crate::cmd::headless::{self, HeadlessOptions};
use crate::config::Config;
use crate::dispatch::deadline::{self, Rung, View};
use crate::dispatch::policy::PolicyName;
use crate::engine::preprocess::{self, Preprocessor};
use crate::engine::session::ModelSession;
use crate::engine::{backend, warm_up};
use crate::fleet::config::Subsampling;
use crate::fleet::images::ImageSet;
use crate::models::{Ladder, ModelSpec};
use crate::protocol::{Class, Request, Response, Status, Timings};
use crate::service::Service;

/// A decision's inputs as a busy 2-core server sees them; `i` varies the wait, backlog and draw.
fn sample_view(rungs: &[Rung], i: usize) -> View<'_> {
    View {
        rungs,
        overhead_us: 500.0,
        own_overhead_us: 50.0,
        bound_us: 50_000.0,
        waited_us: (i % 40) as f64 * 1000.0,
        behind: i % 64,
        newest_slack_us: 45_000.0,
        busy_us: 2_000.0,
        workers: 2,
        target: 0.9,
        dither: (i % 97) as f64 / 97.0,
        smoothed_budget_us: None,
    }
}

#[derive(Debug, Serialize)]
pub struct StageTimes {
    pub decode_us: f64,
    /// Resize, and normalise too where `fused` (then `normalise_us` is 0).
    pub resize_us: f64,
    pub normalise_us: f64,
    /// Whether the server resizes and normalises in one pass (`engine::resample`).
    pub fused: bool,
    /// The two-pass path (fast_image_resize, then normalise) on the same pictures, for comparison.
    pub two_pass_resize_normalise_us: f64,
    pub decision_us: f64,
    pub framing_us: f64,
    pub total_us: f64,
}

#[derive(Debug, Serialize)]
pub struct ResolutionRow {
    pub resolution: u16,
    pub subsampling: Subsampling,
    pub jpeg_bytes: usize,
    /// This build's path, per stage, p50 over the iterations.
    pub stages: StageTimes,
    /// The `image`-crate path it replaced: decode, resize, normalise.
    pub previous_decode_resize_us: f64,
    /// Mean |new − previous| of the resized pixels, on a 0–255 scale.
    pub resize_mean_abs_diff: f64,
    /// Saturated `static-cheapest`: requests per second and `k / X − c_cheapest`, ms.
    pub saturated_rps: f64,
    pub overhead_ms: f64,
    /// One client alone: round trip p50 minus inference p50, ms.
    pub one_client_overhead_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct OverheadReport {
    pub cores: usize,
    pub cheapest_model: String,
    pub cheapest_p50_ms: f64,
    pub rows: Vec<ResolutionRow>,
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times the stages for `images` (one JPEG per scene at this resolution).
fn stages(images: &ImageSet, level: usize, spec: &ModelSpec, ladder: &[ModelSpec], iters: usize) -> (StageTimes, f64, f64) {
    let min_side = ladder.iter().map(|m| m.input.size).max().unwrap_or(0);
    let mut pre = Preprocessor::new();
    let mut two_pass = Preprocessor::new().two_pass();
    let mut fused = false;
    let (mut tensor, mut scratch) = (Vec::new(), Vec::new());
    let rungs: Vec<Rung> =
        ladder.iter().enumerate().map(|(i, m)| Rung { cost_us: 400.0 * (ladder.len() - i) as f64, accuracy: m.accuracy as f64 }).collect();
    let mut hull = Vec::new();
    let (mut dec, mut rsz, mut nrm, mut dcs, mut frm, mut prev, mut two) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut diff = 0.0;
    let mut buf = BytesMut::new();
    let us = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1e6;
    for i in 0..iters {
        let jpeg = images.get(i, level);
        let t0 = Instant::now();
        pre.decode(&jpeg, u64::MAX, min_side).expect("fleet images decode");
        let t1 = Instant::now();
        // The server's own choice of path for this picture and input.
        fused = pre.one_pass(&spec.input, spec.resize);
        let t1b = if fused {
            pre.tensor_into(&spec.input, spec.resize, &mut tensor);
            Instant::now()
        } else {
            let resized = pre.resized(spec.input.size, spec.resize);
            let t1b = Instant::now();
            preprocess::normalise_into(resized, &spec.input, &mut tensor);
            t1b
        };
        let t2 = Instant::now();
        deadline::hull(&rungs, &mut hull);
        let v = sample_view(&rungs, i);
        std::hint::black_box(deadline::choose(&v, &hull));
        let t3 = Instant::now();
        // Both ends of the wire, as the in-process fleet does them.
        buf.clear();
        Request { request_id: i as u64, client_id: 1, resolution: 224, token: String::new(), image: jpeg.clone() }.encode(&mut buf);
        let req = Request::decode(buf.split().freeze()).expect("own request decodes");
        let resp = Response {
            request_id: req.request_id,
            status: Status::Ok,
            message: String::new(),
            model: None,
            top: (0..5).map(|c| Class { index: c, score: 0.1, label: None }).collect(),
            timings: Timings::default(),
        };
        resp.encode(&mut buf);
        std::hint::black_box(Response::decode(&buf.split()).expect("own response decodes"));
        let t4 = Instant::now();
        // The previous path, on the same picture.
        let img = image::load_from_memory(&jpeg).expect("fleet images decode").into_rgb8();
        let old = image::imageops::resize(&img, spec.input.size, spec.input.size, image::imageops::FilterType::Triangle);
        let old_tensor = preprocess::to_tensor_unresized(&old, &spec.input);
        let t5 = Instant::now();
        // The two-pass path on the same picture (its decode untimed).
        two_pass.decode(&jpeg, u64::MAX, min_side).expect("fleet images decode");
        let t6 = Instant::now();
        let resized = two_pass.resized(spec.input.size, spec.resize);
        preprocess::normalise_into(resized, &spec.input, &mut scratch);
        two.push(us(t6, Instant::now()));
        if i < 16 {
            diff += preprocess::mean_abs_diff_tensors(&tensor, &old_tensor, &spec.input);
        }
        dec.push(us(t0, t1));
        rsz.push(us(t1, t1b));
        nrm.push(us(t1b, t2));
        dcs.push(us(t2, t3));
        frm.push(us(t3, t4));
        prev.push(us(t4, t5));
    }
    let (decode_us, resize_us, normalise_us, decision_us, framing_us) = (p50(dec), p50(rsz), p50(nrm), p50(dcs), p50(frm));
    let total_us = decode_us + resize_us + normalise_us + decision_us + framing_us;
    let st = StageTimes { decode_us, resize_us, normalise_us, fused, two_pass_resize_normalise_us: p50(two), decision_us, framing_us, total_us };
    (st, p50(prev), diff / iters.clamp(1, 16) as f64)
}

/// What a `static-cheapest` run measured, after its start-up transient.
#[derive(Debug, Clone, Copy)]
pub struct CheapestRun {
    /// Mean requests per second over the steady intervals.
    pub rps: f64,
    /// Client-observed round trip, p50, ms.
    pub round_trip_ms: Option<f64>,
    /// The cheapest model's inference, p50, ms.
    pub inference_ms: Option<f64>,
}

/// Runs the whole server and the in-process fleet with `static-cheapest` and `clients`
/// closed-loop clients (uplink off) for `secs`; `resolution` fixes the clients' image side,
/// `None` keeps the configured resolutions. With clients enough to keep every worker busy this
/// is the saturation probe that `bench overhead` and `experiment` both read.
pub async fn cheapest_run(cfg: &Config, clients: usize, resolution: Option<u16>, secs: f64) -> Result<CheapestRun> {
    let mut c = cfg.clone();
    c.dispatch.policy = PolicyName::StaticCheapest;
    c.server.listen = "127.0.0.1:0".parse().expect("literal address");
    // One row per second, so "skip the first two rows" is the first two seconds.
    c.headless.status_interval_ms = 1000;
    c.fleet.clients = clients;
    c.fleet.ramp_at_start = false;
    c.fleet.link.enabled = false;
    if let Some(r) = resolution {
        c.fleet.resolutions = vec![r];
    }
    let service = Service::start(crate::service::binary_only(c)).await?;
    let report =
        headless::drive(service, HeadlessOptions { duration: Some(Duration::from_secs_f64(secs)), summary: None, timeseries: None }).await?;
    // The first two intervals are the start-up transient.
    let steady: Vec<f64> = report.rows.iter().skip(2).filter(|r| r.clients == clients).map(|r| r.rps).collect();
    let rps = if steady.is_empty() { report.summary.throughput_rps } else { steady.iter().sum::<f64>() / steady.len() as f64 };
    let round_trip_ms = report.summary.client_latency_ms.as_ref().and_then(|l| l.p50);
    let inference_ms = report.summary.models.iter().rev().find(|m| m.served > 0).and_then(|m| m.p50_ms);
    Ok(CheapestRun { rps, round_trip_ms, inference_ms })
}

pub fn run(
    runtime: &tokio::runtime::Runtime,
    cfg: &Config,
    resolutions: &[u16],
    subsampling: &[Subsampling],
    iters: usize,
    secs: f64,
) -> Result<OverheadReport> {
    // k is the machine's cores (the CPU the requests share), not the executor's threads.
    let (cores, workers) = (crate::engine::config::cores(), cfg.engine.pool_workers());
    backend::init(&cfg.engine)?;
    let mut ladder = Ladder::load(&cfg.models.manifest)?;
    ladder.ensure_files(&crate::dirs::data_dir().join("models"))?;
    let cheapest = ladder.models.last().context("empty ladder")?.clone();
    let mut session = ModelSession::load(&cheapest, cfg.engine.intra_threads)?;
    warm_up(&mut session, 5)?;
    let cheapest_p50_ms = warm_up(&mut session, 200)? / 1000.0;
    drop(session);
    let mut rows = Vec::new();
    let subsampling = if subsampling.is_empty() { vec![cfg.fleet.jpeg_subsampling] } else { subsampling.to_vec() };
    for (sub, &r) in subsampling.iter().flat_map(|s| resolutions.iter().map(move |r| (*s, r))) {
        let mut cfg = cfg.clone();
        cfg.fleet.jpeg_subsampling = sub;
        let cfg = &cfg;
        let images = ImageSet::for_fleet(&cfg.fleet, &[r])?;
        eprintln!("bench overhead: {r} px, {sub}: stages…");
        let (stages, previous, diff) = stages(&images, 0, &cheapest, &ladder.models, iters);
        eprintln!("bench overhead: {r} px: saturated static-cheapest, {} clients, {secs} s…", 16 * workers);
        let rps = runtime.block_on(cheapest_run(cfg, 16 * workers, Some(r), secs))?.rps;
        eprintln!("bench overhead: {r} px: one client, {secs} s…");
        let alone = runtime.block_on(cheapest_run(cfg, 1, Some(r), secs))?;
        rows.push(ResolutionRow {
            resolution: r,
            subsampling: sub,
            jpeg_bytes: images.mean_bytes()[0],
            stages,
            previous_decode_resize_us: previous,
            resize_mean_abs_diff: diff,
            saturated_rps: rps,
            overhead_ms: cores as f64 * 1000.0 / rps.max(1e-9) - cheapest_p50_ms,
            one_client_overhead_ms: alone.round_trip_ms.zip(alone.inference_ms).map(|(a, b)| a - b),
        });
    }
    Ok(OverheadReport { cores, cheapest_model: cheapest.name, cheapest_p50_ms, rows })
}

pub fn table(r: &OverheadReport) -> String {
    let mut s = format!(
        "{} cores; cheapest model {} at {:.3} ms (bare p50)\n\n| input px | chroma | JPEG bytes | decode µs | resize µs | normalise µs | decision µs | framing µs | stages µs | two-pass resize + normalise µs | previous decode+resize µs | resize Δ (0–255) | saturated req/s | overhead ms (k/X − c) | 1-client overhead ms |\n|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        r.cores, r.cheapest_model, r.cheapest_p50_ms
    );
    for x in &r.rows {
        let st = &x.stages;
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} | {:.3} | {} |\n",
            x.resolution,
            x.subsampling,
            x.jpeg_bytes,
            st.decode_us,
            st.resize_us,
            if st.fused { "in resize".to_string() } else { format!("{:.1}", st.normalise_us) },
            st.decision_us,
            st.framing_us,
            st.total_us,
            st.two_pass_resize_normalise_us,
            x.previous_decode_resize_us,
            x.resize_mean_abs_diff,
            x.saturated_rps,
            x.overhead_ms,
            x.one_client_overhead_ms.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into())
        ));
    }
    s
}

/// The deadline policy's decision alone (hull + choice) on the configured ladder's declared
/// accuracies with its bare costs: p50 of batches of 1,000 calls and the overall mean, µs per call.
pub fn decision(cfg: Config, iters: usize) -> Result<(f64, f64)> {
    let ladder = Ladder::load(&cfg.models.manifest)?;
    let n = ladder.models.len();
    let rungs: Vec<Rung> = ladder
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| Rung { cost_us: 400.0 + 800.0 * (n - 1 - i) as f64, accuracy: m.accuracy as f64 })
        .collect();
    let mut hull = Vec::with_capacity(n);
    let mut batches = Vec::new();
    let start = Instant::now();
    let mut done = 0;
    while done < iters {
        let t = Instant::now();
        for i in 0..1000 {
            deadline::hull(&rungs, &mut hull);
            let v = sample_view(&rungs, i);
            std::hint::black_box(deadline::choose(std::hint::black_box(&v), &hull));
        }
        batches.push(t.elapsed().as_secs_f64() * 1e6 / 1000.0);
        done += 1000;
    }
    Ok((p50(batches), start.elapsed().as_secs_f64() * 1e6 / done as f64))
}
