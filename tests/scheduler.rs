//! The shared executor and the default `deadline` policy end to end, through the engine's one
//! door (`Engine::submit`), with stand-in models of known cost: a "model" sleeps for its cost,
//! so the timing under test does not depend on how busy the test machine's CPUs are.
//!
//! Checked: T holds at light and heavy load; spare capacity is spent on accuracy (light load
//! takes the best model, heavy load mixes up to what the budget allows, well above the cheapest
//! alone); a request whose requester is gone never reaches a model; admission is exact.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeinfer::cmd::experiment::optimum::{optimum, Point};
use edgeinfer::config::{BackendChoice, Config};
use edgeinfer::dispatch::policy::PolicyName;
use edgeinfer::engine::Engine;

mod common;

/// Ladder: (cost ms, accuracy), most accurate first.
const LADDER: [(f64, f32); 4] = [(20.0, 70.0), (10.0, 60.0), (5.0, 50.0), (2.5, 40.0)];
const WORKERS: usize = 2;
const T_MS: f64 = 100.0;

fn engine(runs: &Arc<AtomicUsize>, max_waiting: usize) -> Engine {
    let mut cfg = Config::default();
    cfg.engine.backend = BackendChoice::Tract; // no model files are loaded; any backend will do
    cfg.dispatch.latency_bound_ms = T_MS;
    cfg.server.max_waiting = max_waiting;
    assert_eq!(cfg.dispatch.policy, PolicyName::Deadline, "the default policy is under test");
    common::sleeper_engine(&cfg, &LADDER, WORKERS, runs)
}

struct Load {
    requests: usize,
    within_t: usize,
    refused: usize,
    accuracy_sum: f64,
    top_model: usize,
}

/// `clients` closed-loop clients for `secs`, each submitting a tiny PNG and waiting for its answer.
async fn closed_loop(engine: &Arc<Engine>, clients: usize, secs: f64) -> Load {
    let png = Bytes::from(common::png(8, 8));
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (engine, png) = (engine.clone(), png.clone());
            tokio::spawn(async move {
                let mut l = Load { requests: 0, within_t: 0, refused: 0, accuracy_sum: 0.0, top_model: 0 };
                while Instant::now() < stop {
                    let arrival = Instant::now();
                    let answer = engine.submit(png.clone(), arrival, None).expect("admitted").await.expect("answered");
                    l.requests += 1;
                    match (answer.result, answer.model) {
                        (Ok(_), Some(m)) => {
                            l.within_t += (arrival.elapsed().as_secs_f64() * 1e3 <= T_MS) as usize;
                            l.accuracy_sum += LADDER[m].1 as f64;
                            l.top_model += (m == 0) as usize;
                        }
                        _ => l.refused += 1,
                    }
                }
                l
            })
        })
        .collect();
    let mut total = Load { requests: 0, within_t: 0, refused: 0, accuracy_sum: 0.0, top_model: 0 };
    for t in tasks {
        let l = t.await.unwrap();
        total.requests += l.requests;
        total.within_t += l.within_t;
        total.refused += l.refused;
        total.accuracy_sum += l.accuracy_sum;
        total.top_model += l.top_model;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_holds_t_and_spends_spare_capacity_on_accuracy() {
    let runs = Arc::new(AtomicUsize::new(0));
    let engine = Arc::new(engine(&runs, 4096));
    let points: Vec<Point> = LADDER.iter().map(|(c, a)| Point { cost_ms: *c, accuracy: *a as f64 }).collect();

    // Light load: 2 clients, one per worker: every request can have the best model.
    let light = closed_loop(&engine, 2, 1.5).await;
    assert!(light.requests > 20, "{}", light.requests);
    assert!(
        light.top_model as f64 >= 0.95 * light.requests as f64,
        "light load must use the best model: {}/{}",
        light.top_model,
        light.requests
    );

    // Heavy load: 32 clients. The best mix within T averages 2·100/32 = 6.25 ms per request:
    // between the 5 ms and 10 ms rungs, 52.5 % accuracy; the cheapest alone gives 40 %.
    let heavy = closed_loop(&engine, 32, 4.0).await;
    let served = heavy.requests - heavy.refused;
    let slo = heavy.within_t as f64 / heavy.requests as f64;
    let accuracy = heavy.accuracy_sum / served as f64;
    let best = optimum(&points, 32, WORKERS, T_MS).unwrap().accuracy;
    assert!(slo >= 0.97, "T must hold under load: {slo:.3} of {} requests within T", heavy.requests);
    assert!(accuracy >= 0.9 * best, "spare capacity must go to accuracy: {accuracy:.1} vs optimum {best:.1}");
    assert!(accuracy > 45.0, "well above the cheapest model alone (40): {accuracy:.1}");
    // The policy's latency target stayed in its range and every request left the system.
    let target = engine.target().unwrap();
    assert!((0.2..=1.0).contains(&target), "{target}");
    assert_eq!(engine.in_system(), 0);
    let engine = Arc::try_unwrap(engine).ok().expect("no client holds the engine");
    tokio::task::spawn_blocking(move || engine.shutdown()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_requester_is_gone_never_reach_a_model() {
    let runs = Arc::new(AtomicUsize::new(0));
    let engine = engine(&runs, 4096);
    let png = Bytes::from(common::png(8, 8));
    // Two requests occupy both workers; 20 more queue behind them and are abandoned at once.
    let kept: Vec<_> = (0..2).map(|_| engine.submit(png.clone(), Instant::now(), None).unwrap()).collect();
    for _ in 0..20 {
        drop(engine.submit(png.clone(), Instant::now(), None).unwrap());
    }
    for rx in kept {
        assert!(rx.await.unwrap().result.is_ok());
    }
    assert!(common::eventually(5, || engine.in_system() == 0).await, "abandoned requests left the count");
    assert_eq!(engine.abandoned(), 20);
    assert_eq!(runs.load(Ordering::Relaxed), 2, "only the two kept requests ran");
    tokio::task::spawn_blocking(move || engine.shutdown()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_counts_every_request_in_the_system_exactly() {
    let runs = Arc::new(AtomicUsize::new(0));
    let engine = Arc::new(engine(&runs, 5));
    let png = Bytes::from(common::png(8, 8));
    // 40 simultaneous submissions from 8 threads: exactly 5 get in, however they interleave.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (engine, png) = (engine.clone(), png.clone());
            std::thread::spawn(move || (0..5).filter_map(|_| engine.submit(png.clone(), Instant::now(), None).ok()).collect::<Vec<_>>())
        })
        .collect();
    let admitted: Vec<_> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert_eq!(admitted.len(), 5);
    for rx in admitted {
        rx.await.unwrap();
    }
    assert!(common::eventually(5, || engine.in_system() == 0).await);
    let engine = Arc::try_unwrap(engine).ok().expect("no thread holds the engine");
    tokio::task::spawn_blocking(move || engine.shutdown()).await.unwrap();
}

/// Several executor threads finish runs of one model at once and each folds its time into that
/// model's moving average: no update may be lost. With every sample equal, the average after N
/// updates is the same number whatever the interleaving — N steps of `ewma` from the seed — so a
/// lost update shows as a different value.
#[test]
fn concurrent_completions_lose_no_moving_average_update() {
    use edgeinfer::dispatch::{ewma, policy::Paper, Dispatcher};
    const THREADS: usize = 4;
    const EACH: usize = 20_000;
    const W: f64 = 1e-5;
    let (seed_us, sample_us) = (1_000.0, 1_000_000.0);
    let d = Arc::new(Dispatcher::new(Box::new(Paper), 2, W, T_MS));
    d.seed(0, seed_us);
    d.seed(1, seed_us);
    let start = Arc::new(std::sync::Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (d, start) = (d.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..EACH {
                    d.begin(0);
                    d.complete(0, sample_us);
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    let expected = (0..THREADS * EACH).fold(seed_us, |e, _| ewma(e, sample_us, W));
    let q = d.snapshot()[0];
    assert_eq!(q.depth, 0, "every begin was completed");
    assert_eq!(q.ewma_us, expected, "{} updates folded in; a lost one would leave a different average", THREADS * EACH);
    assert!(q.ewma_us > 100_000.0 && q.ewma_us < 900_000.0, "the average is still moving ({}), so each update counts", q.ewma_us);
}
