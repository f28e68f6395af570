//! `edgeinfer experiment --quick` runs end to end and produces every file it promises.

mod common;

use std::process::Command;

#[test]
fn quick_experiment_produces_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = common::tiny_ladder(dir.path());
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, format!("[models]\nmanifest = \"{}\"\n[dispatch]\nwarmup_runs = 2\n", manifest.display())).unwrap();
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_edgeinfer"))
        .args(["experiment", "--quick", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let mut files = vec!["figure1.csv".to_string(), "figure1_accuracy_vs_cost.svg".into(), "report.md".into()];
    for p in edgeinfer::cmd::experiment::POLICIES {
        files.extend([format!("ramp_{p}.csv"), format!("summary_{p}.json"), format!("figure3_{p}.svg")]);
    }
    for f in &files {
        let path = out.join(f);
        let len = std::fs::metadata(&path).unwrap_or_else(|_| panic!("{f} missing")).len();
        assert!(len > 100, "{f} is nearly empty ({len} bytes)");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for p in edgeinfer::cmd::experiment::POLICIES {
        assert!(report.contains(&format!("### `{p}`")), "report lacks the {p} table");
    }
    assert!(report.contains("Estimator accuracy") && report.contains("optimum"));
    // Every ramp served requests, so every policy has a load factor (a number, not a dash).
    let factors = report.lines().find(|l| l.starts_with("| **load factor** |")).expect("the load factor row");
    let cells: Vec<&str> = factors.trim_matches('|').split('|').map(str::trim).skip(2).collect();
    assert_eq!(cells.len(), edgeinfer::cmd::experiment::POLICIES.len(), "{factors}");
    for c in cells {
        let x: f64 = c.trim_end_matches('×').parse().unwrap_or_else(|_| panic!("load factor {c:?} in {factors}"));
        assert!(x > 0.0 && x.is_finite(), "{factors}");
    }
    // Every level of the default policy's table has a measured speed and overhead (numbers, not
    // dashes) and an in-situ optimum beside the decode-aware one.
    let table = report.split("### `deadline`").nth(1).expect("the deadline table");
    let header = table.lines().find(|l| l.starts_with("| clients |")).expect("its header");
    let col = |name: &str| header.split('|').map(str::trim).position(|c| c == name).unwrap_or_else(|| panic!("no {name} column: {header}"));
    let (speed, o_ms, situ) = (col("speed"), col("o ms"), col("in-situ optimum"));
    let rows: Vec<&str> = table.lines().skip_while(|l| !l.starts_with("|---")).skip(1).take_while(|l| l.starts_with('|')).collect();
    assert!(!rows.is_empty(), "{table}");
    // The goal applies from one client up: the ramp measures that level first, then the steps.
    let clients: Vec<&str> = rows.iter().map(|r| r.split('|').nth(1).unwrap().trim()).collect();
    assert_eq!(clients[..3], ["1", "4", "8"], "{table}");
    for r in rows {
        let cells: Vec<&str> = r.split('|').map(str::trim).collect();
        let x: f64 = cells[speed].trim_end_matches('×').parse().unwrap_or_else(|_| panic!("speed {:?} in {r}", cells[speed]));
        assert!(x > 0.0 && x.is_finite(), "{r}");
        let o: f64 = cells[o_ms].parse().unwrap_or_else(|_| panic!("o {:?} in {r}", cells[o_ms]));
        assert!(o >= 0.0, "{r}");
        let o: f64 = cells[situ].trim_end_matches('*').parse().unwrap_or_else(|_| panic!("in-situ optimum {:?} in {r}", cells[situ]));
        assert!(o > 0.0, "{r}");
    }
    // Every policy served the ramp without errors, and the ramp reached its top.
    for p in edgeinfer::cmd::experiment::POLICIES {
        let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(format!("summary_{p}.json"))).unwrap()).unwrap();
        assert_eq!(s["errors"], 0, "{p}: {s}");
        assert_eq!(s["policy"], *p);
        assert_eq!(s["clients"]["final"], 16, "{p}");
    }
    let svg = std::fs::read_to_string(out.join("figure3_paper.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "a real line chart");
}
