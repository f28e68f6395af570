//! The paper's section-4 experiment in miniature, end to end through headless mode: closed-loop
//! fleet clients ramped up against the server on loopback, the uplink emulation off, so compute
//! is the bottleneck and the dispatcher must move down the model ladder.

mod common;

use std::time::Duration;

use edgeinfer::config::BackendChoice;
use edgeinfer::headless::{self, HeadlessOptions};
use edgeinfer::service::Service;

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_on_the_compute_bottleneck_lowers_accuracy_and_keeps_the_slo() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), BackendChoice::Auto);
    cfg.headless.status_interval_ms = 250;
    let f = &mut cfg.fleet;
    (f.clients, f.ramp_at_start, f.ramp_step, f.ramp_every_s, f.max_clients) = (1, true, 3, 0.5, 10);
    f.link.enabled = false;
    f.resolutions = vec![96, 64];
    // Client thresholds far above any latency here: this test is about the server's loop.
    (f.tc_lower_ms, f.tc_upper_ms) = (5_000.0, 10_000.0);
    let svc = Service::start(cfg).await.unwrap();
    // T a few times the most accurate model's cost: one client fits in its queue, ten do not.
    let ewma0 = svc.engine.dispatcher.snapshot()[0].ewma_us / 1000.0;
    svc.control.set_bound_ms((ewma0 * 3.0).max(1.0)).unwrap();
    let summary_path = dir.path().join("summary.json");
    let ts_path = dir.path().join("ts.csv");
    let opts = HeadlessOptions { duration: Some(Duration::from_secs(4)), summary: Some(summary_path.clone()), timeseries: Some(ts_path.clone()) };
    let report = headless::drive(svc, opts).await.unwrap();

    // Rows while the fleet ran (the last row is the drain after stopping).
    let rows = &report.rows[..report.rows.len() - 1];
    assert_eq!(rows.first().unwrap().clients, 1);
    assert_eq!(rows.last().unwrap().clients, 10, "ramp reaches max");
    let acc: Vec<f64> = rows.iter().filter_map(|r| r.mean_accuracy).collect();
    let (first, last) = (mean(&acc[..2]), mean(&acc[acc.len() - 2..]));
    assert!(last < first, "accuracy falls as load grows: first {first:.2}, last {last:.2} ({acc:?})");

    let s = &report.summary;
    assert_eq!(s.errors, 0, "{:?}", s.errors_by_status);
    let c = s.client_requests.unwrap();
    assert_eq!((c.errors, c.unanswered()), (0, 0), "{c:?}");
    assert!(c.answered > 50, "{c:?}");
    let slo = s.slo_attainment.unwrap();
    assert!(slo > 0.7, "SLO attainment {slo}");
    let clients = s.clients.as_ref().unwrap();
    assert_eq!(clients.final_count, 10);

    // The files carry the fleet's fields.
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    assert_eq!(json["clients"]["final"], 10);
    assert_eq!(json["clients"]["resolutions"]["96"], 10);
    assert!(json["client_latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    let csv = std::fs::read_to_string(&ts_path).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(header.ends_with(",client_p50_ms,client_p99_ms,r_96,r_64"), "{header}");
}
