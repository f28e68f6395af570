//! Overload, hostile peers, worker faults, access control and graceful shutdown, against the
//! real server on loopback. Stand-in models (no ONNX) make the timing under test deterministic
//! enough: a "model" here sleeps for a fixed time or fails on purpose.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgeinfer::client::Client;
use edgeinfer::config::{BackendChoice, Config};
use edgeinfer::engine::worker::Infer;
use edgeinfer::engine::{backend, Engine};
use edgeinfer::models::ModelSpec;
use edgeinfer::protocol::Status;
use edgeinfer::service::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A stand-in model: sleeps, and panics or errors on chosen calls.
struct StandIn {
    sleep: Duration,
    calls: u64,
    panic_every: u64,
    error_every: u64,
}

impl Infer for StandIn {
    fn infer(&mut self, _input: &[f32]) -> anyhow::Result<Vec<f32>> {
        self.calls += 1;
        std::thread::sleep(self.sleep);
        if self.panic_every > 0 && self.calls.is_multiple_of(self.panic_every) {
            panic!("injected fault #{}", self.calls);
        }
        if self.error_every > 0 && self.calls.is_multiple_of(self.error_every) {
            anyhow::bail!("injected error #{}", self.calls);
        }
        Ok((0..10).map(|i| i as f32 / 45.0).collect())
    }
}

fn spec(name: &str, accuracy: f32) -> ModelSpec {
    common::stand_in_spec(name, accuracy)
}

/// Two queues: a faulty/slow "accurate" model and a cheap reliable one.
async fn start(cfg: Config, first: StandIn) -> Service {
    let backend = backend::init(&cfg.engine).unwrap();
    let second = StandIn { sleep: Duration::from_millis(1), calls: 0, panic_every: 0, error_every: 0 };
    let engine = Engine::from_models(
        &cfg.engine_settings(),
        backend,
        vec![spec("first", 70.0), spec("second", 50.0)],
        vec![Box::new(first), Box::new(second)],
        vec![5_000.0, 1_000.0],
    )
    .unwrap();
    Service::with_engine(cfg, engine).await.unwrap()
}

fn config() -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.http_listen = "127.0.0.1:0".into();
    c.server.grpc_listen = "127.0.0.1:0".into();
    c.engine.backend = BackendChoice::Tract; // no model files are loaded; any backend will do
    c.dispatch.latency_bound_ms = 1_000.0;
    c
}

fn reliable(ms: u64) -> StandIn {
    StandIn { sleep: Duration::from_millis(ms), calls: 0, panic_every: 0, error_every: 0 }
}

async fn closed_within(s: &mut TcpStream, secs: u64) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_control_refuses_at_once_past_the_bound_then_recovers() {
    let mut cfg = config();
    cfg.server.max_waiting = 2;
    cfg.dispatch.latency_bound_ms = 1e6; // every request wants the slow first queue
    let svc = start(cfg, reliable(300)).await;
    let addr = svc.addr;
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(async move {
                let mut c = Client::connect(addr, i).await.unwrap();
                let t = std::time::Instant::now();
                let r = c.infer(common::png(8, 8).into(), 8).await.unwrap();
                (r.status, r.message, t.elapsed())
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let (status, message, took) = t.await.unwrap();
        match status {
            Status::Ok => ok += 1,
            Status::Overloaded => {
                assert!(message.contains("max_waiting"), "{message}");
                assert!(took < Duration::from_millis(290), "refused at once, not after queueing: {took:?}");
            }
            other => panic!("unexpected {other}: {message}"),
        }
    }
    assert_eq!(ok, 2, "exactly the bound is admitted");
    let mut c = Client::connect(addr, 9).await.unwrap();
    assert_eq!(c.infer(common::png(8, 8).into(), 8).await.unwrap().status, Status::Ok);
    assert!(common::eventually(5, || svc.telemetry.totals().requests == 7).await);
    assert_eq!(svc.telemetry.totals().errors_by_status.get("overloaded"), Some(&4));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_refuses_clearly_and_frees_slots() {
    let mut cfg = config();
    cfg.server.max_connections = 2;
    let svc = start(cfg, reliable(1)).await;
    let mut a = Client::connect(svc.addr, 1).await.unwrap();
    let b = Client::connect(svc.addr, 2).await.unwrap();
    assert_eq!(a.infer(common::png(8, 8).into(), 8).await.unwrap().status, Status::Ok);
    let mut c = Client::connect(svc.addr, 3).await.unwrap();
    let refused = c.recv().await.unwrap();
    assert_eq!(refused.status, Status::Overloaded);
    assert!(refused.message.contains("too many connections"), "{}", refused.message);
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut d = Client::connect(svc.addr, 4).await.unwrap();
    assert_eq!(d.infer(common::png(8, 8).into(), 8).await.unwrap().status, Status::Ok);
    assert_eq!(svc.telemetry.connections().refused, 1);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_idle_and_non_reading_peers_are_dropped() {
    let mut cfg = config();
    cfg.server.read_timeout_ms = 300;
    cfg.server.idle_timeout_ms = 500;
    cfg.server.write_timeout_ms = 300;
    let svc = start(cfg, reliable(1)).await;

    // Half a frame, then silence.
    let mut stalled = TcpStream::connect(svc.addr).await.unwrap();
    stalled.write_all(&[0, 0, 1, 0, 1, 0]).await.unwrap();
    assert!(closed_within(&mut stalled, 5).await, "stalled peer dropped");

    // Nothing at all.
    let mut idle = TcpStream::connect(svc.addr).await.unwrap();
    assert!(closed_within(&mut idle, 5).await, "idle peer dropped");

    // Floods cheap (invalid) requests and never reads the answers: the server's writes block,
    // then time out, and the connection is dropped instead of buffering without bound.
    let mut deaf = TcpStream::connect(svc.addr).await.unwrap();
    let frame = [0u8, 0, 0, 3, 1, 0, 0];
    let flood: Vec<u8> = frame.iter().copied().cycle().take(frame.len() * 400_000).collect();
    let _ = tokio::time::timeout(Duration::from_secs(10), deaf.write_all(&flood)).await;
    assert!(common::eventually(10, || svc.telemetry.connections().dropped >= 2).await, "{:?}", svc.telemetry.connections());

    // Meanwhile a well-behaved client is served.
    let mut good = Client::connect(svc.addr, 1).await.unwrap();
    assert_eq!(good.infer(common::png(8, 8).into(), 8).await.unwrap().status, Status::Ok);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_faults_fail_one_request_and_the_queue_carries_on() {
    let svc = start(config(), StandIn { sleep: Duration::from_millis(1), calls: 0, panic_every: 3, error_every: 5 }).await;
    let mut c = Client::connect(svc.addr, 1).await.unwrap();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let r = c.infer(common::png(8, 8).into(), 8).await.unwrap();
        assert_eq!(r.model.as_ref().unwrap().index, 0);
        if r.status == Status::Internal {
            assert!(r.message.contains("injected"), "{}", r.message);
        }
        statuses.push(r.status);
    }
    // Calls 3, 6, 9 panic and 5, 10 error: five failures, five answers, one worker throughout.
    let failed = statuses.iter().filter(|s| **s == Status::Internal).count();
    assert_eq!(failed, 5, "{statuses:?}");
    assert_eq!(statuses[0], Status::Ok);
    assert!(common::eventually(5, || svc.telemetry.totals().requests == 10).await);
    assert_eq!(svc.telemetry.totals().errors_by_status.get("internal"), Some(&5));
    assert_eq!(svc.engine.dispatcher.snapshot()[0].depth, 0);
    // The other queue is unaffected.
    svc.engine.dispatcher.set_bound_ms(0.001);
    let r = c.infer(common::png(8, 8).into(), 8).await.unwrap();
    assert_eq!((r.status, r.model.unwrap().index), (Status::Ok, 1));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_token_is_required_when_configured() {
    let mut cfg = config();
    cfg.server.auth_token = "edge-s3cret".into();
    let svc = start(cfg, reliable(1)).await;
    for wrong in ["", "edge-s3creT"] {
        let mut c = Client::connect(svc.addr, 1).await.unwrap();
        c.token = wrong.into();
        let r = c.infer(common::png(8, 8).into(), 8).await.unwrap();
        assert_eq!(r.status, Status::Unauthorized);
        assert!(r.model.is_none() && r.top.is_empty(), "nothing but the error");
        assert!(r.message.contains("token"));
        assert!(c.infer(common::png(8, 8).into(), 8).await.is_err(), "connection closed after refusal");
    }
    let mut c = Client::connect(svc.addr, 1).await.unwrap();
    c.token = "edge-s3cret".into();
    assert_eq!(c.infer(common::png(8, 8).into(), 8).await.unwrap().status, Status::Ok);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load_answers_every_request_it_read() {
    let svc = start(config(), reliable(3)).await;
    let addr = svc.addr;
    let answered = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let answered = answered.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(addr, i).await.unwrap();
                // Closed loop until the server goes away; every answer is counted.
                while let Ok(r) = c.infer(common::png(8, 8).into(), 8).await {
                    assert!(matches!(r.status, Status::Ok | Status::Overloaded), "{}", r.message);
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let telemetry = svc.telemetry.clone();
    svc.stop().await;
    for c in clients {
        c.await.unwrap();
    }
    let served = telemetry.totals().requests;
    assert!(served > 50, "load was real: {served}");
    assert_eq!(answered.load(Ordering::Relaxed), served, "every request the server read was answered");
}
