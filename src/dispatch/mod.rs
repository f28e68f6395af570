//! The dispatcher: per-queue accounting (depth, moving average of inference time) and the
//! decision, delegated to a [`policy::Policy`], of which queue takes an arriving request.

pub mod policy;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use policy::{Choice, Policy, QueueView};

/// New average after one sample: `w` is the weight of the newest sample.
pub fn ewma(old: f64, sample: f64, w: f64) -> f64 {
    old + w * (sample - old)
}

#[derive(Default)]
struct QueueStats {
    depth: AtomicUsize,
    /// f64 bits; written only by the queue's own worker, read by the dispatcher.
    ewma_us: AtomicU64,
}

impl QueueStats {
    fn ewma_us(&self) -> f64 {
        f64::from_bits(self.ewma_us.load(Ordering::Relaxed))
    }
}

pub struct Dispatcher {
    policy: Box<dyn Policy>,
    queues: Vec<QueueStats>,
    bound_us: AtomicU64,
    /// Admission bound: requests waiting or running across all queues.
    max_waiting: AtomicUsize,
    ewma_weight: f64,
    /// Serialises decide-and-count, so two simultaneous arrivals never both see the same depth.
    decide: Mutex<()>,
}

impl Dispatcher {
    pub fn new(policy: Box<dyn Policy>, queues: usize, ewma_weight: f64, bound_ms: f64) -> Self {
        assert!(queues > 0, "a ladder has at least one model");
        let d = Self {
            policy,
            queues: (0..queues).map(|_| QueueStats::default()).collect(),
            bound_us: AtomicU64::new(0),
            max_waiting: AtomicUsize::new(usize::MAX),
            ewma_weight,
            decide: Mutex::new(()),
        };
        d.set_bound_ms(bound_ms);
        d
    }

    pub fn len(&self) -> usize {
        self.queues.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Sets the starting average, from warm-up runs at load.
    pub fn seed(&self, queue: usize, inference_us: f64) {
        self.queues[queue].ewma_us.store(inference_us.to_bits(), Ordering::Relaxed);
    }

    pub fn bound_ms(&self) -> f64 {
        f64::from_bits(self.bound_us.load(Ordering::Relaxed)) / 1000.0
    }

    pub fn set_bound_ms(&self, ms: f64) {
        self.bound_us.store((ms * 1000.0).to_bits(), Ordering::Relaxed);
    }

    /// Caps the requests waiting or running across all queues; past it, [`try_assign`](Self::try_assign) refuses.
    pub fn set_max_waiting(&self, n: usize) {
        self.max_waiting.store(n, Ordering::Relaxed);
    }

    pub fn max_waiting(&self) -> usize {
        self.max_waiting.load(Ordering::Relaxed)
    }

    /// Picks the queue for a new request and counts it there until [`complete`](Self::complete)
    /// or [`release`](Self::release). `None` when the admission bound is reached: below it the
    /// paper's rule holds (the last queue always accepts); above it memory would grow without bound.
    pub fn try_assign(&self) -> Option<Choice> {
        self.assign_within(self.max_waiting())
    }

    /// [`try_assign`](Self::try_assign) without the admission bound (benchmarks, tests).
    pub fn assign(&self) -> Choice {
        self.assign_within(usize::MAX).expect("an unbounded assignment always succeeds")
    }

    fn assign_within(&self, limit: usize) -> Option<Choice> {
        let _g = self.decide.lock();
        let views = self.snapshot();
        if views.iter().map(|q| q.depth).sum::<usize>() >= limit {
            return None;
        }
        let choice = self.policy.choose(&views, f64::from_bits(self.bound_us.load(Ordering::Relaxed)));
        self.queues[choice.queue].depth.fetch_add(1, Ordering::Relaxed);
        Some(choice)
    }

    /// Counts a request on `queue` that was placed there without [`try_assign`](Self::try_assign)
    /// (the `deadline` pool chooses the model itself, when a worker takes the request).
    pub fn begin(&self, queue: usize) {
        self.queues[queue].depth.fetch_add(1, Ordering::Relaxed);
    }

    /// The queue's worker finished a request that ran for `inference_us`.
    pub fn complete(&self, queue: usize, inference_us: f64) {
        let q = &self.queues[queue];
        let next = ewma(q.ewma_us(), inference_us, self.ewma_weight);
        q.ewma_us.store(next.to_bits(), Ordering::Relaxed);
        q.depth.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request left the queue without a timing (failed before or during inference).
    pub fn release(&self, queue: usize) {
        self.queues[queue].depth.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<QueueView> {
        self.queues
            .iter()
            .map(|q| QueueView { depth: q.depth.load(Ordering::Relaxed), ewma_us: q.ewma_us() })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispatcher(bound_ms: f64) -> Dispatcher {
        let d = Dispatcher::new(Box::new(policy::Paper), 3, 0.5, bound_ms);
        d.seed(0, 10_000.0);
        d.seed(1, 4_000.0);
        d.seed(2, 1_000.0);
        d
    }

    #[test]
    fn ewma_moves_by_weight() {
        assert_eq!(ewma(10.0, 20.0, 0.1), 11.0);
        assert_eq!(ewma(10.0, 20.0, 1.0), 20.0);
    }

    #[test]
    fn assignments_fill_queues_in_ladder_order() {
        let d = dispatcher(30.0);
        // Queue 0 takes estimates 10, 20 ms; the third would be 30 ms, not under T.
        let picks: Vec<usize> = (0..4).map(|_| d.assign().queue).collect();
        assert_eq!(picks, vec![0, 0, 1, 1]);
        let depths: Vec<usize> = d.snapshot().iter().map(|q| q.depth).collect();
        assert_eq!(depths, vec![2, 2, 0]);
    }

    #[test]
    fn completion_frees_depth_and_updates_average() {
        let d = dispatcher(30.0);
        assert_eq!(d.assign().queue, 0);
        d.complete(0, 20_000.0);
        let q0 = d.snapshot()[0];
        assert_eq!(q0.depth, 0);
        assert_eq!(q0.ewma_us, 15_000.0);
    }

    #[test]
    fn release_frees_depth_without_touching_average() {
        let d = dispatcher(30.0);
        d.assign();
        d.release(0);
        assert_eq!(d.snapshot()[0], QueueView { depth: 0, ewma_us: 10_000.0 });
    }

    #[test]
    fn bound_changes_at_runtime() {
        let d = dispatcher(5.0);
        assert_eq!(d.assign().queue, 1);
        d.set_bound_ms(50.0);
        assert_eq!(d.bound_ms(), 50.0);
        assert_eq!(d.assign().queue, 0);
    }

    #[test]
    fn admission_bound_refuses_past_the_limit_and_recovers() {
        let d = dispatcher(1.0);
        d.set_max_waiting(3);
        // Below the bound the paper's rule holds: the last queue keeps accepting.
        assert!((0..3).all(|_| d.try_assign().map(|c| c.queue) == Some(2)));
        assert_eq!(d.try_assign(), None);
        d.complete(2, 1_000.0);
        assert_eq!(d.try_assign().map(|c| c.queue), Some(2));
    }

    #[test]
    fn concurrent_assign_counts_every_request() {
        let d = std::sync::Arc::new(dispatcher(1e9));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| {
                    d.assign();
                }))
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(d.snapshot().iter().map(|q| q.depth).sum::<usize>(), 4000);
    }
}
