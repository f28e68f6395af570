//! The fleet over the emulated cellular uplink, and the fleet's control surface, end to end on
//! loopback against a real server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use edgeinfer::config::{BackendChoice, FleetConfig};
use edgeinfer::control::FleetControl;
use edgeinfer::fleet::images::ImageSet;
use edgeinfer::fleet::Fleet;

const TC_UPPER: f64 = 200.0;

/// Ticks every 250 ms until `done` holds (true) or `secs` pass (false).
async fn wait_for(fleet: &Fleet, secs: f64, mut done: impl FnMut(&Fleet) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if done(fleet) {
            return true;
        }
    }
    false
}

fn link_fleet_config() -> FleetConfig {
    let mut f = FleetConfig {
        clients: 8,
        resolutions: vec![160, 112, 64, 32],
        tc_lower_ms: 80.0,
        tc_upper_ms: TC_UPPER,
        hold_responses: 1,
        hold_ms: 200,
        ..FleetConfig::default()
    };
    // The cell's rate comes from the images the fleet will actually send, so the scenario does not
    // drift with the encoder's settings: 8 clients sending R_1 images wait ~250 ms for their share
    // (over TC_upper), one client alone ~31 ms plus the RTT (under TC_lower).
    let r1_bytes = ImageSet::for_fleet(&f, &f.resolutions).unwrap().mean_bytes()[0] as f64;
    f.link.cell_mbps = f.clients as f64 * r1_bytes * 8.0 / 0.250 / 1e6;
    f.link.client_cap_mbps = 0.0;
    f.link.rtt_ms = 10.0;
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_uplink_resolutions_step_down_and_climb_back_when_clients_leave() {
    let dir = tempfile::tempdir().unwrap();
    let svc = common::start(dir.path(), BackendChoice::Auto).await;
    let fleet = Fleet::start(&link_fleet_config(), svc.addr, Some(svc.telemetry.clone())).await.unwrap();
    svc.control.attach_fleet(fleet.clone());

    // The link is the bottleneck: every client leaves R_1 ...
    let all_down = wait_for(&fleet, 8.0, |f| f.per_resolution()[0] == 0).await;
    assert!(all_down, "clients should leave R_1: {:?}", fleet.per_resolution());
    fleet.tick();
    // ... and the latency they measure comes back under TC_upper.
    let mut last_p50 = None;
    let back_under = wait_for(&fleet, 8.0, |f| {
        last_p50 = f.tick().p50_ms;
        last_p50.is_some_and(|p| p < TC_UPPER)
    })
    .await;
    assert!(back_under, "client p50 should fall under TC_upper, last {last_p50:?}, at {:?}", fleet.per_resolution());

    // Alone on the cell, the remaining client climbs back to R_1.
    fleet.remove_clients(7);
    assert_eq!(fleet.count(), 1);
    let climbed = wait_for(&fleet, 8.0, |f| f.per_resolution()[0] == 1).await;
    assert!(climbed, "a lone client should climb back to R_1: {:?}", fleet.per_resolution());

    fleet.shutdown().await;
    let c = fleet.counts();
    assert_eq!((c.errors, c.unanswered()), (0, 0), "{c:?}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_handle_drives_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let svc = common::start(dir.path(), BackendChoice::Auto).await;
    let mut cfg = FleetConfig { resolutions: vec![64, 32], ramp_step: 2, ramp_every_s: 0.2, max_clients: 5, ..FleetConfig::default() };
    cfg.link.enabled = false;
    let fleet = Fleet::start(&cfg, svc.addr, Some(svc.telemetry.clone())).await.unwrap();
    svc.control.attach_fleet(fleet.clone());
    let ctl: Arc<dyn FleetControl> = svc.control.fleet().unwrap();

    ctl.add_clients(2);
    assert!(wait_for(&fleet, 5.0, |f| f.snapshot().clients.iter().all(|c| c.requests > 2)).await);
    let snap = ctl.snapshot();
    assert_eq!((snap.clients.len(), snap.per_resolution.clone(), snap.resolutions.clone()), (2, vec![2, 0], vec![64, 32]));
    assert!(snap.clients[0].last_latency_ms.is_some());

    // Paused: no new requests (the ones in flight finish).
    ctl.set_paused(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = fleet.counts();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fleet.counts().sent, before.sent);
    assert!(ctl.snapshot().paused);
    ctl.set_paused(false);
    assert!(wait_for(&fleet, 5.0, |f| f.counts().sent > before.sent).await);

    // The ramp adds 2 every 0.2 s up to 5, then stops by itself.
    assert!(ctl.toggle_ramp());
    assert!(wait_for(&fleet, 5.0, |f| f.count() == 5 && !f.snapshot().ramp.unwrap().running).await);
    ctl.remove_clients(3);
    assert_eq!(ctl.snapshot().clients.len(), 2);

    // T must stay under the client thresholds (defaults 100/200 ms).
    assert!(svc.control.set_bound_ms(100.0).is_err());
    assert!(svc.control.set_bound_ms(60.0).is_ok());

    fleet.shutdown().await;
    let c = fleet.counts();
    assert_eq!((c.errors, c.unanswered()), (0, 0), "{c:?}");
    let telemetry = svc.telemetry.clone();
    svc.stop().await;
    // The server answered exactly what the fleet sent.
    assert_eq!(telemetry.totals().requests, c.answered);
}
