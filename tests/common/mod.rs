//! Shared test fixtures: a tiny ladder of real (synthetic-weight) MobileNet-v1 graphs, a server
//! on a loopback port, and images.
#![allow(dead_code)]

use std::io::Cursor;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgeinfer::config::{BackendChoice, Config};
use edgeinfer::engine::worker::Infer;
use edgeinfer::engine::{backend, Engine};
use edgeinfer::models::{ChannelOrder, InputSpec, Layout, ModelSpec, OutputKind};
use edgeinfer::service::Service;

/// Writes a 3-model ladder (width 0.25 at 96/64/32 px: real graphs, milliseconds to run even on
/// tract) into `dir` and returns its manifest path.
pub fn tiny_ladder(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for (size, acc) in [(96, 50.0), (64, 45.0), (32, 40.0)] {
        text.push_str(&format!(
            "[[model]]\nname = \"tiny_{size}\"\nfile = \"tiny_{size}.onnx\"\naccuracy = {acc}\ninput = \"input\"\nsize = {size}\n\
             [model.synthetic]\narchitecture = \"mobilenet_v1\"\nwidth = 0.25\n\n"
        ));
    }
    let path = dir.join("ladder.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn config(dir: &Path, backend: BackendChoice) -> Config {
    let mut c = Config::default();
    c.models.manifest = tiny_ladder(dir);
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    // Every front end on an ephemeral port: tests run side by side.
    c.server.http_listen = "127.0.0.1:0".into();
    c.server.grpc_listen = "127.0.0.1:0".into();
    c.engine.backend = backend;
    c.dispatch.warmup_runs = 2;
    c
}

pub async fn start(dir: &Path, backend: BackendChoice) -> Service {
    Service::start(config(dir, backend)).await.expect("service starts")
}

/// A textured RGB test image.
pub fn image(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, ((x ^ y) % 256) as u8]))
}

pub fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image(w, h).write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

pub fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image(w, h).write_to(&mut Cursor::new(&mut out), image::ImageFormat::Jpeg).unwrap();
    out
}

/// Polls `cond` every 10 ms for up to `secs`; true once it holds. Telemetry records a request
/// just after its response is written, so tests wait for counts instead of racing them.
pub async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    true
}

/// A ladder rung for a stand-in model (no file): 8 px RGB input, probabilities out.
pub fn stand_in_spec(name: &str, accuracy: f32) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        path: "/dev/null".into(),
        accuracy,
        input: InputSpec { name: "input".into(), size: 8, layout: Layout::Nchw, channels: ChannelOrder::Rgb, mean: [0.0; 3], std: [1.0; 3] },
        output: OutputKind::Probabilities,
        labels: None,
        synthetic: None,
        resize: Default::default(),
    }
}

/// A stand-in model that sleeps for its cost (so timings do not depend on how busy the test
/// machine's CPUs are) and counts its runs.
pub struct Sleeper {
    pub cost: Duration,
    pub runs: Arc<AtomicUsize>,
}

impl Infer for Sleeper {
    fn infer(&mut self, _input: &[f32]) -> anyhow::Result<Vec<f32>> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(self.cost);
        Ok(vec![0.5, 0.25, 0.25])
    }
}

/// An engine over stand-in rungs `m0, m1, …` of the given (cost ms, accuracy), most accurate
/// first, on `workers` executor threads, with the policy and bound `cfg` names.
pub fn sleeper_engine(cfg: &Config, ladder: &[(f64, f32)], workers: usize, runs: &Arc<AtomicUsize>) -> Engine {
    let backend = backend::init(&cfg.engine).unwrap();
    let specs = ladder.iter().enumerate().map(|(i, (_, a))| stand_in_spec(&format!("m{i}"), *a)).collect();
    let sets = (0..workers)
        .map(|_| {
            ladder
                .iter()
                .map(|(ms, _)| Box::new(Sleeper { cost: Duration::from_secs_f64(ms / 1e3), runs: runs.clone() }) as Box<dyn Infer>)
                .collect()
        })
        .collect();
    let warmup = ladder.iter().map(|(ms, _)| ms * 1000.0).collect();
    Engine::from_model_sets(&cfg.engine_settings(), backend, specs, sets, warmup).unwrap()
}

/// Stand-in rungs m0..m3 of 60, 10, 5 and 2.5 ms (declared 70, 60, 50, 40 %).
pub const STAND_IN_LADDER: [(f64, f32); 4] = [(60.0, 70.0), (10.0, 60.0), (5.0, 50.0), (2.5, 40.0)];

/// A service over [`STAND_IN_LADDER`] with T = 200 ms, two executor threads, every front end on
/// an ephemeral port: idle, the 60 ms rung serves; a tighter bound makes a cheaper one serve.
pub async fn stand_in_service() -> Service {
    stand_in_service_with(|_| {}).await
}

/// [`stand_in_service`] with `tweak` applied to its configuration (limits under test).
pub async fn stand_in_service_with(tweak: impl FnOnce(&mut Config)) -> Service {
    let mut cfg = Config::default();
    // No model files are loaded, so any backend will do: the one the rest of the process uses.
    cfg.engine.backend = BackendChoice::Auto;
    cfg.dispatch.latency_bound_ms = 200.0;
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.http_listen = "127.0.0.1:0".into();
    cfg.server.grpc_listen = "127.0.0.1:0".into();
    tweak(&mut cfg);
    let engine = sleeper_engine(&cfg, &STAND_IN_LADDER, 2, &Arc::new(AtomicUsize::new(0)));
    Service::with_engine(cfg, engine).await.unwrap()
}
