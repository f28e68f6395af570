//! The paper's executor (per-model queues, each with its own worker thread) and [`execute`],
//! the one place any executor runs a model: timed, panic-safe, booked with the dispatcher.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};

use super::intake::{Intake, Pinned, Refusal, Ticket};
use super::preprocess::Preprocessor;
use super::session::{top_k, ModelSession};
use super::{Answer, Failure, Limits};
use crate::dispatch::Dispatcher;
use crate::models::ModelSpec;

/// Anything a worker can run: the real ONNX session, or a stand-in in tests.
pub trait Infer: Send + 'static {
    fn infer(&mut self, input: &[f32]) -> anyhow::Result<Vec<f32>>;
}

impl Infer for Box<dyn Infer> {
    fn infer(&mut self, input: &[f32]) -> anyhow::Result<Vec<f32>> {
        (**self).infer(input)
    }
}

impl Infer for ModelSession {
    fn infer(&mut self, input: &[f32]) -> anyhow::Result<Vec<f32>> {
        self.run(input)
    }
}

/// A request bound to one model's queue, its tensor already shaped.
pub struct Job {
    pub tensor: Vec<f32>,
    pub ticket: Ticket,
    /// Time before the model queue: waiting at the front door, µs.
    pub waited_us: u64,
    pub preprocess_us: u64,
    pub estimate_us: f64,
    pub enqueued: Instant,
}

/// The paper's executor: a fixed set of stage threads (one per core) take requests from the
/// front door, decode them, let the per-queue policy pick the model queue, shape the tensor and
/// queue it; one dedicated thread per model runs its queue FIFO.
pub struct Workers {
    /// Emptied at shutdown: dropping the senders is what ends each model worker's loop.
    queues: RwLock<Vec<Sender<Job>>>,
    stages: Mutex<Vec<JoinHandle<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// Starts one thread per model, in ladder order (queue i runs model i), and `stages` stage threads.
    pub fn spawn<M: Infer>(
        models: Vec<M>,
        specs: Arc<Vec<ModelSpec>>,
        dispatcher: Arc<Dispatcher>,
        intake: Arc<Intake>,
        limits: Limits,
        stages: usize,
    ) -> std::io::Result<Workers> {
        let mut queues = Vec::with_capacity(models.len());
        let mut threads = Vec::with_capacity(models.len());
        for (i, model) in models.into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::unbounded();
            let (d, intake) = (dispatcher.clone(), intake.clone());
            let t = std::thread::Builder::new()
                .name(format!("model-{i}-{}", specs[i].name))
                .spawn(move || run_queue(i, model, rx, &d, &intake, limits))?;
            queues.push(tx);
            threads.push(t);
        }
        let mut stage_threads = Vec::with_capacity(stages);
        for s in 0..stages.max(1) {
            let (queues, intake, d, specs) = (queues.clone(), intake.clone(), dispatcher.clone(), specs.clone());
            stage_threads
                .push(std::thread::Builder::new().name(format!("stage-{s}")).spawn(move || run_stage(&queues, &intake, &d, &specs, limits))?);
        }
        Ok(Workers { queues: RwLock::new(queues), stages: Mutex::new(stage_threads), threads: Mutex::new(threads) })
    }

    /// Waits for the stage threads to drain the (closed) front door, then lets every model
    /// queue drain (each queued job is still run and answered) and joins the threads.
    pub fn join(&self) {
        for t in self.stages.lock().drain(..) {
            let _ = t.join();
        }
        self.queues.write().clear();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

/// A stage thread: decode, choose the queue (the paper's rule, on arrival), shape, enqueue.
fn run_stage(queues: &[Sender<Job>], intake: &Intake, dispatcher: &Dispatcher, specs: &[ModelSpec], limits: Limits) {
    super::lower_thread_priority(limits.nice);
    let min_side = specs.iter().map(|m| m.input.size).max().unwrap_or(0);
    let mut pre = Preprocessor::new();
    while let Some(taken) = intake.take() {
        let mut ticket = taken.ticket;
        let taken_at = Instant::now();
        let waited_us = taken_at.saturating_duration_since(ticket.arrival).as_micros() as u64;
        if let Some(p) = ticket.pinned.take() {
            stage_pinned(p, ticket, taken_at, queues, dispatcher, specs, limits, &mut pre);
            continue;
        }
        // Decoding comes first so that a bad image never occupies a queue slot.
        if let Err(e) = pre.decode(&ticket.image, limits.max_image_pixels, min_side) {
            ticket.answer(Answer::failed(Failure::Image(e), waited_us));
            continue;
        }
        let choice = dispatcher.assign();
        // The tensor moves to the model's thread, so it is allocated per request here.
        let mut tensor = Vec::new();
        let spec = &specs[choice.queue];
        pre.tensor_into(&spec.input, spec.resize, &mut tensor);
        let preprocess_us = taken_at.elapsed().as_micros() as u64;
        dispatcher.record_overhead(preprocess_us as f64);
        let job = Job { tensor, ticket, waited_us, preprocess_us, estimate_us: choice.estimate_us, enqueued: Instant::now() };
        if let Err(e) = queues[choice.queue].send(job) {
            dispatcher.release(choice.queue);
            e.into_inner().ticket.answer(Answer::failed(Failure::Refused(Refusal::ShuttingDown), waited_us));
        }
    }
}

/// A request for one rung: its tensor goes straight to that rung's queue, no policy decision.
#[allow(clippy::too_many_arguments)]
fn stage_pinned(
    p: Pinned,
    ticket: Ticket,
    taken_at: Instant,
    queues: &[Sender<Job>],
    d: &Dispatcher,
    specs: &[ModelSpec],
    limits: Limits,
    pre: &mut Preprocessor,
) {
    let waited_us = taken_at.saturating_duration_since(ticket.arrival).as_micros() as u64;
    let mut tensor = Vec::new();
    if let Err(e) = super::pinned::prepare(pre, &ticket.image, p.tensor, &specs[p.rung], limits.max_image_pixels, &mut tensor) {
        ticket.answer(Answer::failed(Failure::Image(e), waited_us));
        return;
    }
    let preprocess_us = taken_at.elapsed().as_micros() as u64;
    d.begin(p.rung);
    let job = Job { tensor, ticket, waited_us, preprocess_us, estimate_us: d.estimate_us(p.rung), enqueued: Instant::now() };
    if let Err(e) = queues[p.rung].send(job) {
        d.release(p.rung);
        e.into_inner().ticket.answer(Answer::failed(Failure::Refused(Refusal::ShuttingDown), waited_us));
    }
}

fn run_queue<M: Infer>(index: usize, mut model: M, rx: Receiver<Job>, dispatcher: &Dispatcher, intake: &Intake, limits: Limits) {
    super::lower_thread_priority(limits.nice);
    let k = limits.top_k;
    for job in rx {
        let start = Instant::now();
        let queue_us = job.waited_us + start.duration_since(job.enqueued).as_micros() as u64;
        // The paper's worker runs what it was given; a requester gone meanwhile is the one
        // exception, since nobody would read the answer.
        if job.ticket.abandoned() {
            dispatcher.release(index);
            intake.count_abandoned();
            continue;
        }
        let (result, inference_us, scores) = execute(&mut model, index, &job.tensor, dispatcher, k);
        let answer = Answer {
            model: Some(index),
            result: result.map_err(Failure::Inference),
            queue_us,
            preprocess_us: job.preprocess_us,
            inference_us,
            estimate_us: Some(job.estimate_us),
            aim: None,
            scores,
        };
        job.ticket.answer(answer);
    }
}

/// The classes a model ranked highest, with their scores, best first.
pub type TopK = Vec<(usize, f32)>;

/// Runs model `index` on one tensor, times it, and settles the dispatcher's books for it
/// (`complete` with the time on success, `release` on failure). Returns top-k or why not, the
/// time, and every score (empty on failure).
pub fn execute<M: Infer>(
    model: &mut M,
    index: usize,
    tensor: &[f32],
    dispatcher: &Dispatcher,
    k: usize,
) -> (Result<TopK, String>, u64, Vec<f32>) {
    let start = Instant::now();
    // A panic inside one inference must fail that request, not the worker.
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| model.infer(tensor)));
    let inference_us = start.elapsed().as_micros() as u64;
    let mut all = Vec::new();
    let result = match ran {
        Ok(Ok(scores)) => {
            dispatcher.complete(index, inference_us as f64);
            let top = top_k(&scores, k);
            all = scores;
            Ok(top)
        }
        Ok(Err(e)) => {
            dispatcher.release(index);
            tracing::error!(model = index, "inference error: {e:#}");
            Err(format!("inference failed: {e:#}"))
        }
        Err(panic) => {
            dispatcher.release(index);
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(model = index, "inference panicked: {what}");
            Err(format!("inference panicked: {what}"))
        }
    };
    (result, inference_us, all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::policy::Paper;

    struct Scripted(Vec<anyhow::Result<Vec<f32>>>);
    impl Infer for Scripted {
        fn infer(&mut self, _input: &[f32]) -> anyhow::Result<Vec<f32>> {
            match self.0.pop() {
                Some(r) => r,
                None => panic!("scripted model ran out"),
            }
        }
    }

    #[test]
    fn failures_and_panics_fail_one_request_and_the_execution_carries_on() {
        let d = Dispatcher::new(Box::new(Paper), 1, 0.5, 50.0);
        // Popped from the back: ok, error, ok, then panic when empty.
        let mut model = Scripted(vec![Ok(vec![0.1, 0.9]), Err(anyhow::anyhow!("boom")), Ok(vec![0.7, 0.3])]);
        let results: Vec<_> = (0..4)
            .map(|_| {
                d.begin(0);
                execute(&mut model, 0, &[0.0], &d, 1).0
            })
            .collect();
        assert_eq!(results[0], Ok(vec![(0, 0.7)]));
        assert!(results[1].as_ref().unwrap_err().contains("boom"));
        assert_eq!(results[2], Ok(vec![(1, 0.9)]));
        assert!(results[3].as_ref().unwrap_err().contains("panicked"));
        // Every request left the queue's depth, failed or not.
        assert_eq!(d.snapshot()[0].depth, 0);
    }
}
