//! The shared worker pool behind the `deadline` policy: one FIFO queue, one worker per core,
//! each worker holding a session of every model. The model is chosen when a worker takes the
//! request ([`late_choice`]), so the choice sees exactly how long the request has waited and
//! how much work is queued behind it — instead of per-queue guesses that ignore each other
//! while all queues share the same cores.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use image::RgbImage;
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::preprocess;
use super::worker::{execute, Infer, JobOutcome};
use crate::dispatch::policy::{late_choice, next_margin, LateView, INITIAL_MARGIN};
use crate::dispatch::Dispatcher;
use crate::models::ModelSpec;

pub struct PoolJob {
    /// Decoded, not yet resized: the size depends on the model, chosen later.
    pub image: RgbImage,
    /// When the request's frame arrived; its deadline is arrival + T.
    pub arrival: Instant,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<PoolOutcome>,
}

#[derive(Debug)]
pub struct PoolOutcome {
    pub model: usize,
    /// Predicted queue wait + inference (the wait is known exactly at choice time), µs.
    pub estimate_us: f64,
    /// Resize + normalise for the chosen model, done by the worker, µs.
    pub resize_us: u64,
    pub job: JobOutcome,
}

struct Queue {
    jobs: Mutex<(VecDeque<PoolJob>, bool)>,
    ready: Condvar,
    /// The policy's cost margin (f64 bits), learned from missed deadlines; see `next_margin`.
    margin: AtomicU64,
}

pub struct Pool {
    queue: Arc<Queue>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    /// `model_sets[w]` holds worker w's sessions, one per ladder rung.
    pub fn spawn(
        model_sets: Vec<Vec<Box<dyn Infer>>>,
        specs: Arc<Vec<ModelSpec>>,
        dispatcher: Arc<Dispatcher>,
        k: usize,
    ) -> std::io::Result<Pool> {
        let queue = Arc::new(Queue {
            jobs: Mutex::new((VecDeque::new(), false)),
            ready: Condvar::new(),
            margin: AtomicU64::new(INITIAL_MARGIN.to_bits()),
        });
        let workers = model_sets.len();
        let mut threads = Vec::with_capacity(workers);
        for (w, models) in model_sets.into_iter().enumerate() {
            let (q, s, d) = (queue.clone(), specs.clone(), dispatcher.clone());
            threads.push(std::thread::Builder::new().name(format!("pool-{w}")).spawn(move || run(models, &q, &s, &d, k, workers))?);
        }
        Ok(Pool { queue, threads: Mutex::new(threads) })
    }

    /// The policy's current cost margin.
    pub fn margin(&self) -> f64 {
        f64::from_bits(self.queue.margin.load(Ordering::Relaxed))
    }

    /// Requests waiting for a worker.
    pub fn backlog(&self) -> usize {
        self.queue.jobs.lock().0.len()
    }

    /// Fails only after [`Pool::shutdown`] began.
    pub fn submit(&self, job: PoolJob) -> Result<(), PoolJob> {
        let mut g = self.queue.jobs.lock();
        if g.1 {
            return Err(job);
        }
        g.0.push_back(job);
        drop(g);
        self.queue.ready.notify_one();
        Ok(())
    }

    /// Runs what is queued, then stops the workers.
    pub fn shutdown(&self) {
        self.queue.jobs.lock().1 = true;
        self.queue.ready.notify_all();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

fn run(mut models: Vec<Box<dyn Infer>>, queue: &Queue, specs: &[ModelSpec], dispatcher: &Dispatcher, k: usize, workers: usize) {
    loop {
        let (job, behind, newest_waited_us) = {
            let mut g = queue.jobs.lock();
            while g.0.is_empty() && !g.1 {
                queue.ready.wait(&mut g);
            }
            let Some(job) = g.0.pop_front() else { return };
            let now = Instant::now();
            let newest = g.0.back().map_or(0.0, |j| now.duration_since(j.arrival).as_secs_f64() * 1e6);
            (job, g.0.len(), newest)
        };
        let taken = Instant::now();
        let costs: Vec<f64> = dispatcher.snapshot().iter().map(|q| q.ewma_us).collect();
        let choice = late_choice(&LateView {
            costs_us: &costs,
            bound_us: dispatcher.bound_ms() * 1000.0,
            waited_us: taken.duration_since(job.arrival).as_secs_f64() * 1e6,
            behind,
            newest_waited_us,
            workers,
            margin: f64::from_bits(queue.margin.load(Ordering::Relaxed)),
        });
        dispatcher.begin(choice.queue);
        let tensor = preprocess::to_tensor(&job.image, &specs[choice.queue].input);
        let resize_us = taken.elapsed().as_micros() as u64;
        let (result, inference_us) = execute(&mut models[choice.queue], choice.queue, &tensor, dispatcher, k);
        // Learn from the outcome. Workers race on this update; a lost step is harmless.
        let missed = job.arrival.elapsed().as_secs_f64() * 1e3 > dispatcher.bound_ms();
        let m = next_margin(f64::from_bits(queue.margin.load(Ordering::Relaxed)), missed);
        queue.margin.store(m.to_bits(), Ordering::Relaxed);
        let queue_us = taken.duration_since(job.enqueued).as_micros() as u64;
        // Predicted queue wait + inference, comparable with the per-queue policies' estimates.
        let estimate_us = queue_us as f64 + costs[choice.queue];
        let job_outcome = JobOutcome { result, queue_us, inference_us };
        let _ = job.reply.send(PoolOutcome { model: choice.queue, estimate_us, resize_us, job: job_outcome });
    }
}
