//! The paper's section-4 experiment in miniature, end to end through headless mode: closed-loop
//! fleet clients ramped up against the server on loopback, the uplink emulation off, so compute
//! is the bottleneck and the dispatcher must move down the model ladder.

mod common;

use std::time::Duration;

use edgeinfer::cmd::headless::{self, HeadlessOptions};
use edgeinfer::config::BackendChoice;
use edgeinfer::dispatch::policy::PolicyName;
use edgeinfer::service::Service;

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_on_the_compute_bottleneck_lowers_accuracy_and_keeps_the_slo() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), BackendChoice::Auto);
    // The paper's loop (the last queue always accepts): this test reads its per-queue estimates.
    cfg.dispatch.policy = PolicyName::Paper;
    cfg.headless.status_interval_ms = 250;
    // A steadier seed for the moving averages, from which T is set below.
    cfg.dispatch.warmup_runs = 20;
    let f = &mut cfg.fleet;
    (f.clients, f.ramp_at_start, f.ramp_step, f.ramp_every_s, f.max_clients) = (1, true, 6, 0.5, 24);
    f.link.enabled = false;
    f.resolutions = vec![96, 64];
    // Client thresholds far above any latency here: this test is about the server's loop.
    (f.tc_lower_ms, f.tc_upper_ms) = (5_000.0, 10_000.0);
    let mut svc = Service::start(cfg).await.unwrap();
    // T = an idle request's own server time (decode, resize, inference: the dispatcher's
    // estimate leaves out the first two) + six inferences of the most accurate model: one client
    // always finds the top queue under T; the bursts of two dozen do not, and spill down.
    let mut probe = edgeinfer::client::Client::connect(svc.addr, 999).await.unwrap();
    let mut idle: Vec<u32> = Vec::new();
    for _ in 0..20 {
        idle.push(probe.infer(common::jpeg(96, 96).into(), 96).await.unwrap().timings.total_us);
    }
    drop(probe);
    idle.sort();
    let ewma0 = svc.engine.dispatcher.snapshot()[0].ewma_us / 1000.0;
    let bound = idle[10] as f64 / 1000.0 + 6.0 * ewma0;
    svc.control.set_bound_ms(bound).unwrap();
    // Think time, from the same measurements: 24 clients offer about twice what the top model's
    // one worker serves, 1 client a small fraction of it. A fixed think time made the test a
    // bet on the machine's speed: 24 clients thinking 15 ms leave a 0.585 ms top model 80 % busy,
    // and on a fast runner nothing ever spilled. Were nothing to spill here, the closed loop
    // would settle where N = X·(think + R) with X ≤ 1/c: a top queue about 12 deep, its estimate
    // 13·c against T ≈ 7.5·c. Think time also keeps the load under the whole ladder's capacity,
    // so the server's latency is what the dispatcher makes of it, not N / throughput of a
    // saturated closed loop, which no dispatcher could keep under T.
    let think_ms = (12.0 * ewma0 - idle[10] as f64 / 1000.0).round().max(1.0);
    svc.config.fleet.think_ms = think_ms as u64;
    eprintln!("ewma0 {ewma0:.3} ms, idle p50 {} us, T {bound:.3} ms, think {think_ms} ms", idle[10]);
    let summary_path = dir.path().join("summary.json");
    let ts_path = dir.path().join("ts.csv");
    let opts =
        HeadlessOptions { duration: Some(Duration::from_secs(4)), summary: Some(summary_path.clone()), timeseries: Some(ts_path.clone()) };
    let report = headless::drive(svc, opts).await.unwrap();

    // Rows while the fleet ran (the last row is the drain after stopping).
    let rows = &report.rows[..report.rows.len() - 1];
    assert_eq!(rows.first().unwrap().clients, 1);
    assert_eq!(rows.last().unwrap().clients, 24, "ramp reaches max");
    // Alone, the client always finds the top queue under T; at full load bursts spill.
    let acc_at = |n: usize| mean(&rows.iter().filter(|r| r.clients == n).filter_map(|r| r.mean_accuracy).collect::<Vec<_>>());
    let (first, last) = (acc_at(1), acc_at(24));
    assert!(last < first, "accuracy falls as load grows: with 1 client {first:.2}, with 24 {last:.2}");

    let s = &report.summary;
    assert_eq!(s.errors, 0, "{:?}", s.errors_by_status);
    let c = s.client_requests.unwrap();
    assert_eq!((c.errors, c.unanswered()), (0, 0), "{c:?}");
    assert!(c.answered > 50, "{c:?}");
    assert_eq!(s.requests, c.answered + 20, "the server answered the probe and exactly what the fleet sent");
    let slo = s.slo_attainment.unwrap();
    // 0.63-0.92 over 13 runs here. Not higher, because `paper` fills the top queue until its
    // own estimate reaches T, and that estimate leaves out the decoding and resizing counted in
    // the server's latency (which two cores shared by 24 clients, and here other builds,
    // stretch): under overload the requests sent to a full queue overrun T by that much.
    assert!(slo > 0.5, "SLO attainment {slo}");
    let clients = s.clients.as_ref().unwrap();
    assert_eq!(clients.final_count, 24);

    // The files carry the fleet's fields.
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    assert_eq!(json["clients"]["final"], 24);
    assert_eq!(json["clients"]["resolutions"]["96"], 24);
    assert!(json["client_latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    let csv = std::fs::read_to_string(&ts_path).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(header.ends_with(",client_p50_ms,client_p99_ms,r_96,r_64"), "{header}");
}
