//! The dispatcher: per-queue accounting (depth, moving average of inference time), the cost
//! model every policy reads, and the per-queue decision, delegated to a [`policy::Policy`].
//!
//! Admission (how many requests may be in the system) is not here: it is counted at the front
//! door, `engine::intake`, where every accepted request is seen before any work is done on it.

pub mod config;
pub mod deadline;
pub mod policy;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use policy::{Choice, Policy, QueueView};

/// New average after one sample: `w` is the weight of the newest sample.
pub fn ewma(old: f64, sample: f64, w: f64) -> f64 {
    old + w * (sample - old)
}

/// An f64 behind an atomic, updated without losing concurrent writes (several executor threads
/// complete runs of the same model at once; a plain load-then-store would drop some samples).
#[derive(Default)]
pub(crate) struct AtomicF64(AtomicU64);

impl AtomicF64 {
    pub(crate) fn new(v: f64) -> Self {
        Self(AtomicU64::new(v.to_bits()))
    }
    pub(crate) fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    pub(crate) fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    /// Applies `f` atomically and returns the value it wrote.
    pub(crate) fn update(&self, f: impl Fn(f64) -> f64) -> f64 {
        let previous = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some(f(f64::from_bits(bits)).to_bits()));
        f(f64::from_bits(previous.unwrap_or_else(|bits| bits)))
    }
}

struct QueueStats {
    depth: AtomicUsize,
    ewma_us: AtomicF64,
    /// Bare cost from the warm-up runs, µs: what the cost model scales.
    baseline_us: AtomicF64,
    /// This model's cost on the executor relative to the others', beyond the shared
    /// contention factor (see [`Dispatcher::estimate_us`]). Starts at 1.
    relative: AtomicF64,
}

impl QueueStats {
    fn new() -> Self {
        QueueStats { depth: AtomicUsize::new(0), ewma_us: AtomicF64::new(0.0), baseline_us: AtomicF64::new(0.0), relative: AtomicF64::new(1.0) }
    }
}

/// Weight of one run in the contention factor: ~50 runs of memory, so a load change shows
/// within a few milliseconds at the cheap end and one-off slow runs do not swing it.
const CONTENTION_WEIGHT: f64 = 0.02;
/// Weight of one run of a model in its relative factor: 20× slower than the shared factor, so a
/// change of the machine's speed is taken up by the shared factor before it can be mistaken for
/// a change of one model's cost (with one model running alone the two cannot be told apart).
const RELATIVE_WEIGHT: f64 = 0.001;
/// The range a relative factor is kept in.
const RELATIVE_RANGE: (f64, f64) = (0.25, 4.0);
/// Weight of one request in the moving average of the work beside inference.
const OVERHEAD_WEIGHT: f64 = 0.02;

pub struct Dispatcher {
    policy: Box<dyn Policy>,
    queues: Vec<QueueStats>,
    bound_us: AtomicF64,
    ewma_weight: f64,
    /// Measured ÷ bare cost over recent runs of any model: how much the executor's threads are
    /// slowed now (other threads on the cores, memory bandwidth). See [`Dispatcher::estimate_us`].
    contention: AtomicF64,
    /// Moving average of the per-request work beside inference (decode, resize, normalise), µs.
    overhead_us: AtomicF64,
    /// Serialises decide-and-count, so two simultaneous arrivals never both see the same depth.
    decide: Mutex<()>,
}

impl Dispatcher {
    pub fn new(policy: Box<dyn Policy>, queues: usize, ewma_weight: f64, bound_ms: f64) -> Self {
        assert!(queues > 0, "a ladder has at least one model");
        Self {
            policy,
            queues: (0..queues).map(|_| QueueStats::new()).collect(),
            bound_us: AtomicF64::new(bound_ms * 1000.0),
            ewma_weight,
            contention: AtomicF64::new(1.0),
            overhead_us: AtomicF64::new(0.0),
            decide: Mutex::new(()),
        }
    }

    pub fn len(&self) -> usize {
        self.queues.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Sets the starting average and the bare cost, from warm-up runs.
    pub fn seed(&self, queue: usize, inference_us: f64) {
        self.queues[queue].ewma_us.set(inference_us);
        self.queues[queue].baseline_us.set(inference_us);
    }

    pub fn bound_ms(&self) -> f64 {
        self.bound_us.get() / 1000.0
    }

    pub fn set_bound_ms(&self, ms: f64) {
        self.bound_us.set(ms * 1000.0);
    }

    /// Picks the queue for a new request (per-queue policies) and counts it there until
    /// [`complete`](Self::complete) or [`release`](Self::release).
    pub fn assign(&self) -> Choice {
        let _g = self.decide.lock();
        let views = self.snapshot();
        let choice = self.policy.choose(&views, self.bound_us.get());
        self.queues[choice.queue].depth.fetch_add(1, Ordering::Relaxed);
        choice
    }

    /// Counts a request on `queue` that was placed there without [`assign`](Self::assign)
    /// (the shared executor binds the model itself, when a worker takes the request).
    pub fn begin(&self, queue: usize) {
        self.queues[queue].depth.fetch_add(1, Ordering::Relaxed);
    }

    /// The queue's worker finished a request that ran for `inference_us`.
    pub fn complete(&self, queue: usize, inference_us: f64) {
        let q = &self.queues[queue];
        let w = self.ewma_weight;
        q.ewma_us.update(|old| ewma(old, inference_us, w));
        let base = q.baseline_us.get();
        if base > 0.0 {
            // The shared factor first, from this run with the model's own factor taken out; then
            // the model's factor, from what the shared one leaves unexplained.
            let ratio = inference_us / base;
            let shared = self.contention.update(|old| ewma(old, ratio / q.relative.get(), CONTENTION_WEIGHT));
            q.relative.update(|old| ewma(old, ratio / shared, RELATIVE_WEIGHT).clamp(RELATIVE_RANGE.0, RELATIVE_RANGE.1));
        }
        q.depth.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request left the queue without a timing (failed before or during inference).
    pub fn release(&self, queue: usize) {
        self.queues[queue].depth.fetch_sub(1, Ordering::Relaxed);
    }

    /// What model `queue` costs on the executor now, µs: bare cost × its relative factor × the
    /// shared contention factor, `b_i · r_i · s(t)`.
    ///
    /// `s(t)` is how much the executor is slowed now (other threads on the cores, the machine's
    /// own speed), learned from recent runs of *any* model: a per-model average goes stale for
    /// models the policy stops choosing — it keeps the value of its last, contended runs, and a
    /// model once slowed is never chosen again. One shared factor keeps every estimate as
    /// current as the busiest model's, without probe runs that would cost accuracy.
    ///
    /// `r_i` is what one shared factor cannot say: models are not slowed alike. On 2 cores the
    /// cheapest rungs ran at 1.3–1.7× bare under load (they are short, so the cache refills and
    /// time slices lost to the sockets' threads weigh more) while the mid rungs ran at ~1.0×.
    /// With `s` alone, a mix heavy in cheap runs raised every estimate, the dearer rungs looked
    /// dearer than they were, the policy chose cheaper still: a feedback that swung accuracy
    /// by ±5 points at a steady load (56–64 clients, 2 cores). `r_i` learns slowly and only when
    /// model i runs; being relative to `s`, it does not go stale when the machine's speed moves.
    pub fn estimate_us(&self, queue: usize) -> f64 {
        let q = &self.queues[queue];
        let base = q.baseline_us.get();
        if base > 0.0 {
            base * q.relative.get() * self.contention.get()
        } else {
            q.ewma_us.get()
        }
    }

    pub fn contention(&self) -> f64 {
        self.contention.get()
    }

    /// Records the work beside inference one request took (decode, resize, normalise), µs.
    pub fn record_overhead(&self, us: f64) {
        self.overhead_us.update(|old| if old == 0.0 { us } else { ewma(old, us, OVERHEAD_WEIGHT) });
    }

    pub fn overhead_us(&self) -> f64 {
        self.overhead_us.get()
    }

    pub fn snapshot(&self) -> Vec<QueueView> {
        self.queues.iter().map(|q| QueueView { depth: q.depth.load(Ordering::Relaxed), ewma_us: q.ewma_us.get() }).collect()
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
    fn estimates_follow_contention_even_for_unused_models() {
        let d = dispatcher(30.0);
        // Only queue 2 runs, at twice its bare cost: queue 0's estimate doubles too.
        for _ in 0..2000 {
            d.begin(2);
            d.complete(2, 2_000.0);
        }
        assert!((d.estimate_us(2) - 2_000.0).abs() < 1.0, "{}", d.estimate_us(2));
        // With one model running alone, a slower machine and a slower model look alike: while
        // the shared factor catches up, the model's own factor takes a little of it (≤ 5 %).
        let e0 = d.estimate_us(0);
        assert!((19_000.0..=20_000.0).contains(&e0), "{e0}");
        // Contention gone: back to the bare costs, for the model that ran and the one that did not.
        for _ in 0..2000 {
            d.begin(1);
            d.complete(1, 4_000.0);
        }
        assert!((d.estimate_us(1) - 4_000.0).abs() < 1.0, "{}", d.estimate_us(1));
        assert!((d.estimate_us(0) - 10_000.0).abs() < 500.0, "{}", d.estimate_us(0));
    }

    /// Runs queues 2 and 1 alternately, `n` times each, at these costs (µs), and returns their
    /// estimates afterwards.
    fn run_mixed(d: &Dispatcher, n: usize, cost2: f64, cost1: f64) -> (f64, f64) {
        for _ in 0..n {
            for (q, us) in [(2, cost2), (1, cost1)] {
                d.begin(q);
                d.complete(q, us);
            }
        }
        (d.estimate_us(2), d.estimate_us(1))
    }

    #[test]
    fn models_slowed_unalike_keep_their_own_estimates() {
        let d = dispatcher(30.0);
        // Under load, queue 2 (short runs) costs 1.6× bare, queue 1 costs bare: run them mixed.
        let (e2, e1) = run_mixed(&d, 20_000, 1_600.0, 4_000.0);
        assert!((e1 - 4_000.0).abs() < 100.0 && (e2 - 1_600.0).abs() < 40.0, "{e1} {e2}");
        // One shared factor alone would have priced both at ~1.3× bare: queue 1 at ~5,200 µs.
        // A model that never ran has no factor of its own: it is priced at the shared one.
        let unused_before = d.estimate_us(0);
        assert!((unused_before / 10_000.0 - d.contention()).abs() < 1e-9);
        // The whole machine then slows by half: every estimate follows, the unused queue 0's too,
        // keeping each model's own factor.
        let (e2, e1) = run_mixed(&d, 500, 2_400.0, 6_000.0);
        assert!((e1 - 6_000.0).abs() < 300.0 && (e2 - 2_400.0).abs() < 120.0, "{e1} {e2}");
        let slowed = d.estimate_us(0) / unused_before;
        assert!((1.4..=1.6).contains(&slowed), "{slowed}");
    }

    #[test]
    fn concurrent_updates_lose_no_write() {
        // Several executor threads update one model's average at once: a load-then-store would
        // drop some of the increments below; the compare-and-swap loop keeps every one.
        let x = std::sync::Arc::new(AtomicF64::new(0.0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let x = x.clone();
                std::thread::spawn(move || {
                    (0..20_000).for_each(|_| {
                        x.update(|v| v + 1.0);
                    })
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(x.get(), 80_000.0);
        let d = dispatcher(30.0);
        d.record_overhead(300.0);
        assert_eq!(d.overhead_us(), 300.0);
    }

    #[test]
    fn concurrent_assign_counts_every_request() {
        let d = std::sync::Arc::new(dispatcher(1e9));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || {
                    (0..1000).for_each(|_| {
                        d.assign();
                    })
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(d.snapshot().iter().map(|q| q.depth).sum::<usize>(), 4000);
    }
}
