//! The real binary: headless run with summary and time series, the one-shot `infer` client,
//! and configuration errors that point at the problem.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_edgeinfer");

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let manifest = common::tiny_ladder(dir);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\n[models]\nmanifest = \"{}\"\n[dispatch]\nwarmup_runs = 2\n{extra}",
        manifest.display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn headless_run_serves_infer_and_writes_summary_and_timeseries() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[headless]\nstatus_interval_ms = 500\n");
    let summary = dir.path().join("summary.json");
    let series = dir.path().join("series.csv");
    let mut server = Command::new(BIN)
        .args(["--headless", "--duration", "4", "--latency-bound-ms", "40"])
        .arg("--config")
        .arg(&cfg)
        .arg("--summary")
        .arg(&summary)
        .arg("--timeseries")
        .arg(&series)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("edgeinfer: listening on ").map(str::to_string))
        .expect("banner names the address");

    let img = dir.path().join("img.png");
    std::fs::write(&img, common::png(80, 60)).unwrap();
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let out = Command::new(BIN).args(["infer", "--json", "--connect", &addr]).arg(&img).arg(&img).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a failed image makes the exit code 2");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let answers: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0]["status"], "ok");
    assert_eq!(answers[0]["model"]["name"], "tiny_96");
    assert_eq!(answers[0]["top"].as_array().unwrap().len(), 5);
    assert!(answers[1]["timings_us"]["inference_us"].as_u64().unwrap() > 0);
    assert_eq!(answers[2]["status"], "bad_request");

    let text = Command::new(BIN).args(["infer", "--connect", &addr]).arg(&img).output().unwrap();
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("model    tiny_96") && text.contains("1. class"), "{text}");

    let status_lines: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(server.wait().unwrap().success());
    assert!(status_lines.iter().any(|l| l.contains("rps") && l.contains("p99")), "{status_lines:?}");

    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    for key in ["backend", "latency_bound_ms", "policy", "models", "requests", "errors", "latency_ms", "slo_attainment", "mean_accuracy"] {
        assert!(s.get(key).is_some(), "summary lacks {key}: {s}");
    }
    assert_eq!(s["latency_bound_ms"], 40.0);
    assert_eq!(s["policy"], "deadline", "the default policy");
    assert_eq!(s["requests"], 4);
    assert_eq!(s["errors"], 1);
    assert_eq!(s["models"].as_array().unwrap().len(), 3);
    assert_eq!(s["models"][0]["served"], 3);
    assert_eq!(s["mean_accuracy"], 50.0);
    assert!(s["backend"]["name"] == "onnxruntime" || s["backend"]["name"] == "tract");
    for k in ["p50", "p90", "p99", "max"] {
        assert!(s["latency_ms"][k].as_f64().unwrap() > 0.0);
    }

    let csv = std::fs::read_to_string(&series).unwrap();
    let mut rows = csv.lines();
    assert_eq!(rows.next().unwrap(), "t_s,clients,rps,mean_accuracy,p50_ms,p99_ms,q_tiny_96,q_tiny_64,q_tiny_32");
    assert!(rows.count() >= 6, "one row per 0.5 s interval over 4 s");
}

#[test]
fn config_errors_name_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[engine]\nintra_thread = 2\n");
    let out = Command::new(BIN).args(["--headless", "--duration", "1"]).arg("--config").arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    // The bad key is on the second line of what was appended to the written file.
    let line = std::fs::read_to_string(&cfg).unwrap().lines().position(|l| l.starts_with("intra_thread")).unwrap() + 1;
    assert!(err.contains("intra_thread") && err.contains(&format!("line {line}")), "{err}");
}

#[test]
fn bad_flag_values_are_refused() {
    let out = Command::new(BIN).args(["--headless", "--latency-bound-ms=-5", "--duration", "1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("latency_bound_ms"));
    let out = Command::new(BIN).args(["--headless", "--policy", "magic"]).output().unwrap();
    assert!(String::from_utf8(out.stderr).unwrap().contains("unknown policy"));
}

#[test]
fn missing_or_corrupt_model_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("ladder.toml");
    std::fs::write(&manifest, "[[model]]\nname = \"real\"\nfile = \"real.onnx\"\naccuracy = 70.0\ninput = \"input\"\nsize = 224\n").unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, format!("[models]\nmanifest = \"{}\"\n", manifest.display())).unwrap();
    let run =
        || Command::new(BIN).args(["--headless", "--duration", "1", "--listen", "127.0.0.1:0"]).arg("--config").arg(&cfg).output().unwrap();
    let out = run();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("real.onnx"));
    std::fs::write(dir.path().join("real.onnx"), b"garbage, not protobuf").unwrap();
    let out = run();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("real.onnx") && err.contains("cannot load model"), "{err}");
}
