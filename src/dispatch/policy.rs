//! Model-selection policies: pure functions of a snapshot of the queues and the bound T.
//!
//! No clocks, threads or models here, so every decision can be unit-tested with fixed numbers.

/// What a policy may know about one model queue (the server is otherwise oblivious to the model).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueView {
    /// Requests waiting in the queue or being run by its worker.
    pub depth: usize,
    /// Moving average of the model's inference time, in microseconds.
    pub ewma_us: f64,
}

impl QueueView {
    /// The paper's latency estimate for one more request here: (depth + 1) × EWMA.
    pub fn estimate_us(&self) -> f64 {
        (self.depth as f64 + 1.0) * self.ewma_us
    }
}

/// A policy's answer: the queue (index in ladder order, 0 = most accurate) and the latency it expects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub queue: usize,
    pub estimate_us: f64,
}

pub trait Policy: Send + Sync {
    fn name(&self) -> &'static str;
    /// `queues` is in ladder order, most accurate first, and never empty.
    fn choose(&self, queues: &[QueueView], bound_us: f64) -> Choice;
}

/// Muraru & Raiciu, section 3: walk the queues from the most accurate down; the estimated latency
/// in queue i is (depth_i + 1) × EWMA_i; take the first estimate under T; if none, the last queue.
#[derive(Debug, Default, Clone, Copy)]
pub struct Paper;

impl Policy for Paper {
    fn name(&self) -> &'static str {
        "paper"
    }

    fn choose(&self, queues: &[QueueView], bound_us: f64) -> Choice {
        queues
            .iter()
            .enumerate()
            .map(|(i, q)| Choice { queue: i, estimate_us: q.estimate_us() })
            .find(|c| c.estimate_us < bound_us)
            .unwrap_or_else(|| {
                let last = queues.len() - 1;
                Choice { queue: last, estimate_us: queues[last].estimate_us() }
            })
    }
}

/// Baseline: always the most accurate model, whatever the load.
#[derive(Debug, Default, Clone, Copy)]
pub struct StaticBest;

impl Policy for StaticBest {
    fn name(&self) -> &'static str {
        "static-best"
    }

    fn choose(&self, queues: &[QueueView], _bound_us: f64) -> Choice {
        Choice { queue: 0, estimate_us: queues[0].estimate_us() }
    }
}

/// Baseline: always the cheapest (last) model.
#[derive(Debug, Default, Clone, Copy)]
pub struct StaticCheapest;

impl Policy for StaticCheapest {
    fn name(&self) -> &'static str {
        "static-cheapest"
    }

    fn choose(&self, queues: &[QueueView], _bound_us: f64) -> Choice {
        let last = queues.len() - 1;
        Choice { queue: last, estimate_us: queues[last].estimate_us() }
    }
}

/// The `deadline` policy runs on a shared pool of workers (one per core) fed by one FIFO queue,
/// and binds the model late: when a worker takes a request, not when it arrives. What it knows
/// then is exact — how long this request has already waited and how many wait behind it.
pub const DEADLINE: &str = "deadline";

/// Policy names accepted by `--policy` and `dispatch.policy`.
pub const NAMES: &[&str] = &["paper", "static-best", "static-cheapest", DEADLINE];

/// The per-queue policies; `None` for unknown names and for [`DEADLINE`], which is not per-queue.
pub fn by_name(name: &str) -> Option<Box<dyn Policy>> {
    match name {
        "paper" => Some(Box::new(Paper)),
        "static-best" => Some(Box::new(StaticBest)),
        "static-cheapest" => Some(Box::new(StaticCheapest)),
        _ => None,
    }
}

/// What the `deadline` policy sees when a worker takes a request.
#[derive(Debug, Clone, Copy)]
pub struct LateView<'a> {
    /// Moving-average inference time per model, ladder order, µs.
    pub costs_us: &'a [f64],
    pub bound_us: f64,
    /// How long this request has waited since it arrived.
    pub waited_us: f64,
    /// Requests queued behind it.
    pub behind: usize,
    /// How long the newest of those has waited (0 when none).
    pub newest_waited_us: f64,
    /// Workers sharing the queue.
    pub workers: usize,
    /// Safety factor on a model's average cost, from [`next_margin`].
    pub margin: f64,
}

/// Where the margin starts: run-to-run jitter here puts p99 at ~1.1-1.3x p50.
pub const INITIAL_MARGIN: f64 = 1.2;

/// The margin learns what the cost estimates leave out (decoding and resizing competing for
/// the same cores, response writing, jitter): up 5% after a request that missed T, down 0.025%
/// after one that made it. At equilibrium the two balance at a miss rate of about
/// ln(1/0.99975)/ln(1.05) ≈ 0.5%: the policy aims for ~99.5% SLO attainment, spending the rest
/// of the budget on accuracy.
pub fn next_margin(margin: f64, missed: bool) -> f64 {
    let m = if missed { margin * 1.05 } else { margin * 0.99975 };
    m.clamp(1.0, 4.0)
}

/// Picks the most accurate model that fits the smaller of two budgets: what is left of T for
/// this request, and its fair share of the time left before the newest queued request's
/// deadline (`workers` × that time / requests still to run). Dominated models — no cheaper than
/// a more accurate one — are never picked. If nothing fits, the cheapest model.
pub fn late_choice(v: &LateView) -> Choice {
    let own = v.bound_us - v.waited_us;
    let backlog = v.workers.max(1) as f64 * (v.bound_us - v.newest_waited_us) / (v.behind + 1) as f64;
    let budget = own.min(backlog);
    let mut cheapest_so_far = f64::INFINITY;
    let mut fallback = Choice { queue: 0, estimate_us: f64::INFINITY };
    for (i, &cost) in v.costs_us.iter().enumerate() {
        if cost >= cheapest_so_far {
            continue; // dominated: a more accurate model is at least as cheap
        }
        cheapest_so_far = cost;
        fallback = Choice { queue: i, estimate_us: v.waited_us + cost };
        if cost * v.margin <= budget {
            return fallback;
        }
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(depth: usize, ewma_ms: f64) -> QueueView {
        QueueView { depth, ewma_us: ewma_ms * 1000.0 }
    }

    #[test]
    fn idle_system_takes_most_accurate() {
        let c = Paper.choose(&[q(0, 12.0), q(0, 5.0), q(0, 1.0)], 50_000.0);
        assert_eq!(c, Choice { queue: 0, estimate_us: 12_000.0 });
    }

    #[test]
    fn skips_queues_whose_estimate_reaches_the_bound() {
        // (3+1)*12 = 48 < 50 would fit; (4+1)*12 = 60 does not, (2+1)*5 = 15 does.
        assert_eq!(Paper.choose(&[q(3, 12.0), q(2, 5.0)], 50_000.0).queue, 0);
        let c = Paper.choose(&[q(4, 12.0), q(2, 5.0), q(0, 1.0)], 50_000.0);
        assert_eq!(c, Choice { queue: 1, estimate_us: 15_000.0 });
    }

    #[test]
    fn estimate_equal_to_bound_is_not_under_it() {
        // "lower than T": equality moves on.
        assert_eq!(Paper.choose(&[q(4, 10.0), q(0, 1.0)], 50_000.0).queue, 1);
    }

    #[test]
    fn last_queue_always_accepts() {
        let c = Paper.choose(&[q(10, 12.0), q(10, 5.0), q(100, 1.0)], 50_000.0);
        assert_eq!(c, Choice { queue: 2, estimate_us: 101_000.0 });
    }

    #[test]
    fn single_queue_ladder() {
        assert_eq!(Paper.choose(&[q(0, 1.0)], 1.0).queue, 0);
    }

    #[test]
    fn bound_change_moves_the_choice() {
        let queues = [q(1, 12.0), q(0, 5.0)];
        assert_eq!(Paper.choose(&queues, 20_000.0).queue, 1);
        assert_eq!(Paper.choose(&queues, 30_000.0).queue, 0);
    }

    #[test]
    fn names_resolve() {
        for n in NAMES.iter().filter(|n| **n != DEADLINE) {
            assert_eq!(by_name(n).unwrap().name(), *n);
        }
        assert!(by_name("fastest").is_none());
        assert!(by_name(DEADLINE).is_none(), "deadline is a pool mode, not a per-queue policy");
    }

    #[test]
    fn static_baselines() {
        let queues = [q(9, 12.0), q(0, 5.0), q(3, 1.0)];
        assert_eq!(StaticBest.choose(&queues, 1.0).queue, 0);
        assert_eq!(StaticCheapest.choose(&queues, 1e9), Choice { queue: 2, estimate_us: 4_000.0 });
    }

    fn late(costs: &[f64], waited_ms: f64, behind: usize, newest_ms: f64) -> usize {
        let costs: Vec<f64> = costs.iter().map(|c| c * 1000.0).collect();
        late_choice(&LateView {
            costs_us: &costs,
            bound_us: 50_000.0,
            waited_us: waited_ms * 1000.0,
            behind,
            newest_waited_us: newest_ms * 1000.0,
            workers: 2,
            margin: INITIAL_MARGIN,
        })
        .queue
    }

    #[test]
    fn margin_grows_on_misses_shrinks_on_hits_within_bounds() {
        assert!((next_margin(1.2, true) - 1.26).abs() < 1e-12);
        assert!(next_margin(1.2, false) < 1.2);
        assert_eq!(next_margin(1.0, false), 1.0);
        assert_eq!(next_margin(4.0, true), 4.0);
        // The equilibrium lies between one miss in 100 (the margin climbs) and one in 400 (it sinks).
        let run = |every: usize| (0..40_000).fold(1.5, |m, i| next_margin(m, i % every == 0));
        assert!(run(100) > 3.0, "{}", run(100));
        assert!(run(400) < 1.1, "{}", run(400));
    }

    #[test]
    fn late_choice_idle_takes_the_best() {
        assert_eq!(late(&[12.0, 5.0, 1.0], 0.0, 0, 0.0), 0);
    }

    #[test]
    fn late_choice_respects_the_requests_own_deadline() {
        // 40 ms waited leaves 10: 12 ms does not fit, 5 ms (x1.2 margin) does.
        assert_eq!(late(&[12.0, 5.0, 1.0], 40.0, 0, 0.0), 1);
        // 48 ms waited leaves 2: only the 1 ms model fits.
        assert_eq!(late(&[12.0, 5.0, 1.0], 48.0, 0, 0.0), 2);
    }

    #[test]
    fn late_choice_shares_time_with_the_backlog() {
        // 19 behind, the newest fresh: 2 workers x 50 ms / 20 requests = 5 ms each -> the 1 ms model
        // (5 ms x 1.2 margin does not fit in 5).
        assert_eq!(late(&[12.0, 5.0, 1.0], 0.0, 19, 0.0), 2);
        // 7 behind: 100 / 8 = 12.5 ms each -> the 5 ms model.
        assert_eq!(late(&[12.0, 5.0, 1.0], 0.0, 7, 0.0), 1);
    }

    #[test]
    fn late_choice_skips_dominated_models_and_falls_back_to_the_cheapest() {
        // Model 1 costs more than model 0 and is less accurate: never chosen.
        assert_eq!(late(&[5.0, 8.0, 1.0], 45.0, 0, 0.0), 2);
        assert_eq!(late(&[5.0, 8.0, 1.0], 0.0, 0, 0.0), 0);
        // Nothing fits a request already past its deadline: the cheapest model.
        assert_eq!(late(&[12.0, 5.0, 1.0], 60.0, 3, 10.0), 2);
        // The cheapest is the cheapest by cost, not by position.
        assert_eq!(late(&[3.0, 9.0, 4.0], 70.0, 0, 0.0), 0);
    }
}
