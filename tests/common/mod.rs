//! Shared test fixtures: a tiny ladder of real (synthetic-weight) MobileNet-v1 graphs, a server
//! on a loopback port, and images.
#![allow(dead_code)]

use std::io::Cursor;
use std::path::{Path, PathBuf};

use edgeinfer::config::{BackendChoice, Config};
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
