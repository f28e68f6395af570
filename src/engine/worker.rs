//! Model workers: one dedicated OS thread per model queue, so inference never runs on (or
//! stalls) the async runtime. Each worker drains its FIFO queue, times every run, and feeds the
//! timing back to the dispatcher's moving average.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;

use super::session::{top_k, ModelSession};
use crate::dispatch::Dispatcher;

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

pub struct Job {
    pub tensor: Vec<f32>,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<JobOutcome>,
}

#[derive(Debug)]
pub struct JobOutcome {
    /// Top classes, best first, or why inference failed.
    pub result: Result<Vec<(usize, f32)>, String>,
    pub queue_us: u64,
    pub inference_us: u64,
}

pub struct Workers {
    /// Emptied at shutdown: dropping the senders is what ends each worker's loop.
    queues: RwLock<Vec<Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// Starts one thread per model, in ladder order (queue i runs model i).
    pub fn spawn<M: Infer>(models: Vec<M>, names: &[String], dispatcher: Arc<Dispatcher>, k: usize) -> std::io::Result<Workers> {
        let mut queues = Vec::with_capacity(models.len());
        let mut threads = Vec::with_capacity(models.len());
        for (i, model) in models.into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::unbounded();
            let d = dispatcher.clone();
            let t = std::thread::Builder::new()
                .name(format!("model-{i}-{}", names[i]))
                .spawn(move || run_queue(i, model, rx, &d, k))?;
            queues.push(tx);
            threads.push(t);
        }
        Ok(Workers { queues: RwLock::new(queues), threads: Mutex::new(threads) })
    }

    /// Hands a job to queue `i`. Fails only after [`Workers::shutdown`] began.
    pub fn enqueue(&self, queue: usize, job: Job) -> Result<(), Job> {
        match self.queues.read().get(queue) {
            Some(tx) => tx.send(job).map_err(|e| e.into_inner()),
            None => Err(job),
        }
    }

    /// Lets every queue drain (each queued job is still run and answered), then joins the threads.
    pub fn shutdown(&self) {
        self.queues.write().clear();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

fn run_queue<M: Infer>(index: usize, mut model: M, rx: Receiver<Job>, dispatcher: &Dispatcher, k: usize) {
    for job in rx {
        let start = Instant::now();
        let queue_us = start.duration_since(job.enqueued).as_micros() as u64;
        let (result, inference_us) = execute(&mut model, index, &job.tensor, dispatcher, k);
        // The requester may be gone (peer hung up); the work is still accounted for.
        let _ = job.reply.send(JobOutcome { result, queue_us, inference_us });
    }
}

/// Runs model `index` on one tensor, times it, and settles the dispatcher's books for it
/// (`complete` with the time on success, `release` on failure). Returns top-k or why not.
pub(super) fn execute<M: Infer>(
    model: &mut M,
    index: usize,
    tensor: &[f32],
    dispatcher: &Dispatcher,
    k: usize,
) -> (Result<Vec<(usize, f32)>, String>, u64) {
    let start = Instant::now();
    // A panic inside one inference must fail that request, not the worker.
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| model.infer(tensor)));
    let inference_us = start.elapsed().as_micros() as u64;
    let result = match ran {
        Ok(Ok(scores)) => {
            dispatcher.complete(index, inference_us as f64);
            Ok(top_k(&scores, k))
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
    (result, inference_us)
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

    fn submit(w: &Workers, q: usize) -> oneshot::Receiver<JobOutcome> {
        let (tx, rx) = oneshot::channel();
        assert!(w.enqueue(q, Job { tensor: vec![0.0], enqueued: Instant::now(), reply: tx }).is_ok());
        rx
    }

    #[test]
    fn failures_and_panics_fail_one_request_and_the_worker_carries_on() {
        let d = Arc::new(Dispatcher::new(Box::new(Paper), 1, 0.5, 50.0));
        // Popped from the back: ok, error, ok, then panic when empty.
        let script = vec![Ok(vec![0.1, 0.9]), Err(anyhow::anyhow!("boom")), Ok(vec![0.7, 0.3])];
        let w = Workers::spawn(vec![Scripted(script)], &["m".into()], d.clone(), 1).unwrap();
        for _ in 0..4 {
            d.assign();
        }
        let outcomes: Vec<JobOutcome> = (0..4).map(|_| submit(&w, 0)).map(|rx| rx.blocking_recv().unwrap()).collect();
        assert_eq!(outcomes[0].result, Ok(vec![(0, 0.7)]));
        assert!(outcomes[1].result.as_ref().unwrap_err().contains("boom"));
        assert_eq!(outcomes[2].result, Ok(vec![(1, 0.9)]));
        assert!(outcomes[3].result.as_ref().unwrap_err().contains("panicked"));
        // Every request left the queue's depth, failed or not.
        assert_eq!(d.snapshot()[0].depth, 0);
        w.shutdown();
    }
}
