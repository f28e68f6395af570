//! Smoke test of the real binary's console in a pseudo-terminal, driven through tmux (skipped,
//! with the reason printed, where tmux is absent): it starts, the header shows the backend and
//! T, `+` changes T, `a` reaches the fleet keys, `q` quits and the terminal leaves the
//! alternate screen. Every wait is bounded.

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

#[test]
fn console_starts_takes_keys_and_restores_the_terminal() {
    if Command::new("tmux").arg("-V").output().map(|o| !o.status.success()).unwrap_or(true) {
        eprintln!("SKIPPED console_pty: tmux is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let state = dir.path().join("state");
    let cmd = format!(
        "XDG_STATE_HOME={} {} --config {}; echo \"console exited: $?\"; sleep 120",
        state.display(),
        env!("CARGO_BIN_EXE_edgeinfer"),
        config.display()
    );
    let tmux = Tmux { socket: format!("edgeinfer-test-{}", std::process::id()) };
    let dir_s = dir.path().display().to_string();
    let started = tmux.run(&["new-session", "-d", "-s", "console", "-x", "100", "-y", "30", "-c", &dir_s, &cmd]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));

    let s = tmux.wait_for("the console header", 180, |s| s.contains("T 50.0 ms"));
    let head = s.lines().find(|l| l.contains("backend ")).unwrap_or_else(|| panic!("no backend in header:\n{s}"));
    assert!(head.contains("onnxruntime") || head.contains("tract"), "{head}");
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
}
