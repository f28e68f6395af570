//! Smoke test of the real binary's console in a pseudo-terminal, driven through tmux: it starts,
//! the header shows the backend and T, `+` changes T, `a` reaches the fleet keys, `q` quits, the
//! terminal leaves the alternate screen, and the summary and time series asked for on the
//! command line are written. Every wait is bounded. Where tmux is absent the test is skipped
//! with the reason printed — except under CI (`CI=true`), where that is a failure: CI must run
//! it (`.ci/run` installs tmux).

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("tmux runs")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "console"]).stdout).into_owned()
    }

    /// Polls the pane until `pred` holds, for at most `secs`.
    fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            if Instant::now() > end {
                panic!("timed out after {secs} s waiting for {what}; screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn keys(&self, k: &str) {
        assert!(self.run(&["send-keys", "-t", "console", "-l", k]).status.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Only this test's private tmux server (own socket) is stopped.
        let _ = self.run(&["kill-server"]);
    }
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let manifest = common::tiny_ladder(dir);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\n[models]\nmanifest = {:?}\n[dispatch]\nwarmup_runs = 2\n",
        manifest.display().to_string()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Whether tmux can be run; without it the test is skipped, or fails under CI.
fn tmux_or_skip() -> bool {
    if Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI must run the console test, but tmux is not installed (.ci/run installs it)");
    }
    eprintln!("SKIPPED console_pty: tmux is not installed");
    false
}

#[test]
fn console_starts_takes_keys_and_restores_the_terminal() {
    if !tmux_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let state = dir.path().join("state");
    let (summary, series) = (dir.path().join("summary.json"), dir.path().join("series.csv"));
    let cmd = format!(
        "XDG_STATE_HOME={} {} --config {} --summary {} --timeseries {}; echo \"console exited: $?\"; sleep 120",
        state.display(),
        env!("CARGO_BIN_EXE_edgeinfer"),
        config.display(),
        summary.display(),
        series.display()
    );
    let tmux = Tmux { socket: format!("edgeinfer-test-{}", std::process::id()) };
    let dir_s = dir.path().display().to_string();
    let started = tmux.run(&["new-session", "-d", "-s", "console", "-x", "100", "-y", "30", "-c", &dir_s, &cmd]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));

    let s = tmux.wait_for("the console header", 180, |s| s.contains("T 50.0 ms"));
    let head = s.lines().find(|l| l.contains("backend ")).unwrap_or_else(|| panic!("no backend in header:\n{s}"));
    assert!(head.contains("onnxruntime") || head.contains("tract"), "{head}");
    // The header names every address served on: the binary protocol, HTTP and gRPC.
    for front in ["tcp 127.0.0.1:", "http 127.0.0.1:", "grpc 127.0.0.1:"] {
        assert!(s.contains(front), "no {front:?} in the header:\n{s}");
    }
    assert_eq!(tmux.run(&["display", "-p", "-t", "console", "#{alternate_on}"]).stdout, b"1\n");

    tmux.keys("+");
    tmux.wait_for("T to change to 55 ms", 10, |s| s.contains("T 55.0 ms"));
    tmux.keys("a");
    // The built-in fleet runs under the console: `a` adds a real client, logged as an event.
    tmux.wait_for("the client to be added", 10, |s| s.contains("+1 clients → 1"));

    tmux.keys("q");
    let s = tmux.wait_for("the process to exit", 30, |s| s.contains("console exited:"));
    assert!(s.contains("console exited: 0"), "{s}");
    assert!(s.contains("edgeinfer: done:"), "{s}");
    assert_eq!(tmux.run(&["display", "-p", "-t", "console", "#{alternate_on}"]).stdout, b"0\n", "still on the alternate screen");
    let log = std::fs::read_to_string(state.join("edgeinfer").join("edgeinfer.log")).expect("the console logs to a file");
    assert!(log.contains("T changed 50.0 → 55.0 ms"), "{log}");

    // `--summary` and `--timeseries` are honoured, as in headless mode (the fleet's columns too).
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary written")).unwrap();
    assert_eq!(s["latency_bound_ms"], 55.0, "{s}");
    assert_eq!(s["clients"]["final"], 1, "{s}");
    let csv = std::fs::read_to_string(&series).expect("time series written");
    let header = csv.lines().next().unwrap();
    assert!(header.starts_with("t_s,clients,rps,mean_accuracy,p50_ms,p99_ms,q_tiny_96") && header.contains(",r_224"), "{header}");
    assert!(csv.lines().count() >= 2, "{csv}");
}

/// Without tmux, the test above must not pass silently under CI: run it again in a child with
/// no tmux on its PATH and `CI=true`, and it fails, saying why; without `CI` it skips.
#[test]
fn a_missing_tmux_fails_under_ci_and_skips_elsewhere() {
    let run = |ci: Option<&str>| {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args(["--exact", "console_starts_takes_keys_and_restores_the_terminal", "--nocapture", "--test-threads=1"]);
        c.env("PATH", "/nonexistent").env_remove("CI");
        if let Some(v) = ci {
            c.env("CI", v);
        }
        c.output().unwrap()
    };
    let under_ci = run(Some("true"));
    let text = String::from_utf8_lossy(&under_ci.stdout).into_owned() + &String::from_utf8_lossy(&under_ci.stderr);
    assert!(!under_ci.status.success(), "passed without tmux under CI:\n{text}");
    assert!(text.contains("tmux is not installed"), "{text}");
    let elsewhere = run(None);
    let text = String::from_utf8_lossy(&elsewhere.stdout).into_owned() + &String::from_utf8_lossy(&elsewhere.stderr);
    assert!(elsewhere.status.success() && text.contains("SKIPPED console_pty"), "{text}");
}
