//! Regression test for the soak's memory growth: with ort 2.0.0-rc.14 every session-allocated
//! output leaked its `OrtTypeInfo` (~330 bytes a run on ONNX Runtime, 16 MB over these runs).
//! `ModelSession` preallocates its output to avoid that path; this checks a run loop stays flat.

mod common;

use edgeinfer::config::BackendChoice;
use edgeinfer::engine::{backend, session::ModelSession};
use edgeinfer::models::Ladder;

#[test]
fn repeated_runs_do_not_grow_the_resident_set() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), BackendChoice::Auto);
    backend::init(&cfg.engine).unwrap();
    let mut ladder = Ladder::load(&cfg.models.manifest).unwrap();
    ladder.ensure_files(dir.path()).unwrap();
    let mut s = ModelSession::load(&ladder.models[2], 1).unwrap();
    let input = vec![0.1f32; s.input_len()];
    let rss = || edgeinfer::cmd::bench::rss_kib(std::process::id()).unwrap();
    for _ in 0..5_000 {
        s.run(&input).unwrap();
    }
    let warm = rss();
    const RUNS: u64 = 50_000;
    for i in 1..=RUNS {
        s.run(&input).unwrap();
        if i % 10_000 == 0 {
            eprintln!("{i} runs: RSS {} kB", rss());
        }
    }
    let grown_kib = rss().saturating_sub(warm);
    eprintln!("grew {grown_kib} kB over {RUNS} runs: {:.1} bytes per run", grown_kib as f64 * 1024.0 / RUNS as f64);
    assert!(grown_kib < 4_096, "{grown_kib} kB over {RUNS} runs");
}
