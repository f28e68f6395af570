//! The shared executor: one worker thread per core, all fed by the front door's queue
//! ([`Intake`]), each holding its own session of every model. A worker takes a request and does
//! everything for it on the same thread — decode, choose the model, resize, infer — so there is
//! no hand-off to size or to hide a backlog in, and the model is chosen when the request's wait
//! is known exactly (late binding).
//!
//! `deadline` (the default), `static-best` and `static-cheapest` run here; they differ only in
//! [`SharedChoice`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::Mutex;

use super::intake::{Intake, Pinned, Taken, Ticket};
use super::preprocess::Preprocessor;
use super::worker::{execute, Infer};
use super::{Answer, Failure, Limits};
use crate::dispatch::deadline::{self, Decision, Rung, View};
use crate::dispatch::policy::SharedChoice;
use crate::dispatch::{ewma, AtomicF64, Dispatcher};
use crate::models::ModelSpec;

/// State the workers share beside the queue.
struct Shared {
    intake: Arc<Intake>,
    dispatcher: Arc<Dispatcher>,
    specs: Arc<Vec<ModelSpec>>,
    choice: SharedChoice,
    limits: Limits,
    /// Per worker: when its current inference is expected to end, µs since `epoch` (0: idle).
    busy_until: Vec<AtomicU64>,
    epoch: Instant,
    /// α of the `deadline` policy and how it is learned.
    learner: Arc<Learner>,
    /// The mix's budget, µs (NaN until the first request), see `deadline::smooth_budget`.
    budget: AtomicF64,
}

pub struct Pool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    /// `model_sets[w]` holds worker w's sessions, one per ladder rung.
    pub fn spawn(
        model_sets: Vec<Vec<Box<dyn Infer>>>,
        specs: Arc<Vec<ModelSpec>>,
        dispatcher: Arc<Dispatcher>,
        intake: Arc<Intake>,
        choice: SharedChoice,
        limits: Limits,
    ) -> std::io::Result<Pool> {
        let workers = model_sets.len();
        let epoch = Instant::now();
        let shared = Arc::new(Shared {
            intake,
            dispatcher,
            specs,
            choice,
            limits,
            busy_until: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            epoch,
            learner: Arc::new(Learner::new(epoch)),
            budget: AtomicF64::new(f64::NAN),
        });
        let mut threads = Vec::with_capacity(workers);
        for (w, models) in model_sets.into_iter().enumerate() {
            let s = shared.clone();
            threads.push(std::thread::Builder::new().name(format!("exec-{w}")).spawn(move || run(w, models, &s))?);
        }
        Ok(Pool { shared, threads: Mutex::new(threads) })
    }

    /// The `deadline` policy's current latency target, as a fraction of T.
    pub fn target(&self) -> f64 {
        self.shared.learner.target()
    }

    /// Where answers' latencies go to teach the target (see `Pending`).
    pub fn learner(&self) -> Arc<Learner> {
        self.shared.learner.clone()
    }

    /// Waits for the workers to drain the (closed) queue and exit.
    pub fn join(&self) {
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

/// What the `deadline` policy aimed a request at: the α it was chosen with, and its bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aim {
    pub alpha: f64,
    pub bound_us: f64,
}

/// α of the `deadline` policy, learned from the latencies of the answers it aimed
/// (`deadline::Tail`). Shared by the executor threads, which read α, and the front ends'
/// [`super::Pending`]s, which report the latencies.
pub struct Learner {
    target: AtomicF64,
    tail: Mutex<deadline::Tail>,
    epoch: Instant,
}

impl Learner {
    fn new(epoch: Instant) -> Learner {
        Learner { target: AtomicF64::new(deadline::INITIAL_TARGET), tail: Mutex::new(deadline::Tail::default()), epoch }
    }

    pub fn target(&self) -> f64 {
        self.target.get()
    }

    /// One answered request's latency, µs.
    pub fn learn(&self, aim: Aim, latency_us: f64) {
        let now_us = self.epoch.elapsed().as_micros() as u64;
        if let Some(alpha) = self.tail.lock().record(now_us, latency_us, aim.bound_us, aim.alpha) {
            self.target.set(alpha);
        }
    }
}

/// The policy's mix draws: an additive recurrence by the golden ratio, a low-discrepancy
/// sequence. Over any run of requests the share that takes the dearer model tracks the policy's
/// probability far more evenly than random draws would, so the work queued ahead of a request —
/// and with it the latency — varies less. Offset per worker.
struct Dither(f64);

impl Dither {
    fn next(&mut self) -> f64 {
        self.0 = (self.0 + 0.618_033_988_749_895) % 1.0;
        self.0
    }
}

/// One worker's loop: everything a request needs, on this thread, with buffers it keeps.
fn run(w: usize, mut models: Vec<Box<dyn Infer>>, s: &Shared) {
    super::lower_thread_priority(s.limits.nice);
    let n = s.specs.len();
    let accuracies: Vec<f64> = s.specs.iter().map(|m| m.accuracy as f64).collect();
    let min_side = s.specs.iter().map(|m| m.input.size).max().unwrap_or(0);
    let mut pre = Preprocessor::new();
    let mut tensor = Vec::new();
    let mut rungs = Vec::with_capacity(n);
    let mut hull = Vec::with_capacity(n);
    let mut dither = Dither((w as f64 * 0.37) % 1.0);
    // This worker's average resize + normalise time: what is still ahead of a decoded request.
    let mut resize_us = 0.0;
    while let Some(Taken { mut ticket, behind, newest_slack_us }) = s.intake.take() {
        let taken = Instant::now();
        if let Some(p) = ticket.pinned.take() {
            serve_pinned(w, s, p, ticket, taken, &mut models, &mut pre, &mut tensor);
            continue;
        }
        let queue_us = taken.saturating_duration_since(ticket.arrival).as_micros() as u64;
        let d = &s.dispatcher;
        // Past saturation: a request that cannot make its deadline even on the cheapest model,
        // with others waiting behind it, is refused before any work is spent on it (deadline
        // policy only; the baselines run everything). See `deadline::choose`, step 4.
        let hopeless = || {
            let cheapest_us = (0..n).map(|i| d.estimate_us(i)).fold(f64::INFINITY, f64::min);
            ticket.waited_us(taken) + d.overhead_us() + cheapest_us > ticket.bound_us
        };
        if s.choice == SharedChoice::Deadline && behind > 0 && hopeless() {
            ticket.answer(Answer::failed(Failure::Shed, queue_us));
            continue;
        }
        if let Err(e) = pre.decode(&ticket.image, s.limits.max_image_pixels, min_side) {
            ticket.answer(Answer::failed(Failure::Image(e), queue_us));
            continue;
        }
        let decoded = Instant::now();
        // The α this request is aimed with, which its answer's deviation is measured against.
        let aimed = s.learner.target();
        // Whether the budget left the policy a choice; see where the answer is recorded.
        let mut in_control = false;
        let decision = match s.choice {
            SharedChoice::Best => Decision::Run { rung: 0, estimate_us: d.estimate_us(0) },
            SharedChoice::Cheapest => Decision::Run { rung: n - 1, estimate_us: d.estimate_us(n - 1) },
            SharedChoice::Deadline => {
                rungs.clear();
                rungs.extend((0..n).map(|i| Rung { cost_us: d.estimate_us(i), accuracy: accuracies[i] }));
                deadline::hull(&rungs, &mut hull);
                let now_us = decoded.duration_since(s.epoch).as_micros() as u64;
                let busy_us: f64 = s
                    .busy_until
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != w)
                    .map(|(_, b)| b.load(Ordering::Relaxed).saturating_sub(now_us) as f64)
                    .sum();
                let mut view = View {
                    rungs: &rungs,
                    overhead_us: d.overhead_us(),
                    own_overhead_us: resize_us,
                    bound_us: ticket.bound_us,
                    waited_us: ticket.waited_us(decoded),
                    behind,
                    // The newest request's slack shrank by what this one's decode took.
                    newest_slack_us: newest_slack_us - decoded.duration_since(taken).as_secs_f64() * 1e6,
                    busy_us,
                    workers: s.busy_until.len(),
                    target: aimed,
                    dither: dither.next(),
                    smoothed_budget_us: None,
                };
                let share = deadline::share_budget(&view);
                let peers = behind + s.busy_until.len();
                let smoothed = s.budget.update(|b| deadline::smooth_budget(b, share, peers));
                view.smoothed_budget_us = Some(smoothed);
                in_control = hull.first().is_some_and(|&c| smoothed >= rungs[c].cost_us);
                deadline::choose(&view, &hull)
            }
        };
        let Decision::Run { rung: m, estimate_us } = decision else {
            ticket.answer(Answer::failed(Failure::Shed, queue_us));
            continue;
        };
        let resize_start = Instant::now();
        pre.tensor_into(&s.specs[m].input, s.specs[m].resize, &mut tensor);
        let started = Instant::now();
        resize_us = if resize_us == 0.0 { us(started - resize_start) } else { ewma(resize_us, us(started - resize_start), 0.05) };
        let preprocess_us = started.duration_since(taken).as_micros() as u64;
        d.record_overhead(preprocess_us as f64);
        // The last point before the model: a requester gone meanwhile costs no inference.
        if ticket.abandoned() {
            s.intake.count_abandoned();
            continue;
        }
        let answer = Answer {
            queue_us,
            preprocess_us,
            estimate_us: Some(estimate_us),
            // Only answers the policy had a choice over teach α. When the budget is below the
            // cheapest model, latency is set by the load alone and α cannot move it: counting
            // those answers as α's error pushed α down further, which left it at the floor until
            // the load fell (measured: the cheapest model for 30 s at 56 clients on a slow
            // 2-core second).
            aim: (s.choice == SharedChoice::Deadline && in_control).then_some(Aim { alpha: aimed, bound_us: ticket.bound_us }),
            ..run_announced(s, w, &mut models[m], m, &tensor, started)
        };
        ticket.answer(answer);
    }
}

/// A request pinned to one rung (`Engine::submit_to`): no shedding and no policy decision, the
/// rung runs it. Its run is announced in `busy_until` like any other, so the `deadline` policy's
/// view of the cores stays whole while it runs.
#[allow(clippy::too_many_arguments)]
fn serve_pinned(
    w: usize,
    s: &Shared,
    p: Pinned,
    ticket: Ticket,
    taken: Instant,
    models: &mut [Box<dyn Infer>],
    pre: &mut Preprocessor,
    tensor: &mut Vec<f32>,
) {
    let queue_us = taken.saturating_duration_since(ticket.arrival).as_micros() as u64;
    let (m, d) = (p.rung, &s.dispatcher);
    if let Err(e) = super::pinned::prepare(pre, &ticket.image, p.tensor, &s.specs[m], s.limits.max_image_pixels, tensor) {
        ticket.answer(Answer::failed(Failure::Image(e), queue_us));
        return;
    }
    let started = Instant::now();
    if ticket.abandoned() {
        s.intake.count_abandoned();
        return;
    }
    let estimate_us = d.estimate_us(m);
    let preprocess_us = started.duration_since(taken).as_micros() as u64;
    ticket.answer(Answer { queue_us, preprocess_us, estimate_us: Some(estimate_us), ..run_announced(s, w, &mut models[m], m, tensor, started) });
}

/// Runs rung `m` on `tensor` for worker `w`, the run announced in `busy_until[w]` while it lasts
/// (the `deadline` policy's view of what the other cores still have to do). The answer's
/// timings before the model, its estimate and its aim are the caller's to fill in.
fn run_announced(s: &Shared, w: usize, model: &mut Box<dyn Infer>, m: usize, tensor: &[f32], started: Instant) -> Answer {
    let d = &s.dispatcher;
    d.begin(m);
    let end_us = started.duration_since(s.epoch).as_micros() as u64 + d.estimate_us(m) as u64;
    s.busy_until[w].store(end_us.max(1), Ordering::Relaxed);
    let (result, inference_us, scores) = execute(model, m, tensor, d, s.limits.top_k);
    s.busy_until[w].store(0, Ordering::Relaxed);
    Answer {
        model: Some(m),
        result: result.map_err(Failure::Inference),
        queue_us: 0,
        preprocess_us: 0,
        inference_us,
        estimate_us: None,
        aim: None,
        scores,
    }
}

fn us(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
