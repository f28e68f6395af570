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

/// The default policy: the shared executor binds the model late, when a worker takes the
/// request, aiming at the optimum's model mix for the measured load (see `dispatch::deadline`).
pub const DEADLINE: &str = "deadline";
pub const PAPER: &str = "paper";
pub const STATIC_BEST: &str = "static-best";
pub const STATIC_CHEAPEST: &str = "static-cheapest";

/// Policy names accepted by `--policy` and `dispatch.policy`; the default first.
pub const NAMES: &[&str] = &[DEADLINE, PAPER, STATIC_BEST, STATIC_CHEAPEST];

/// How a policy runs: on per-model queues (the paper's design) or on the shared executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One FIFO queue and one worker per model; the policy picks the queue on arrival.
    Queues,
    /// One FIFO queue, a worker per core; the model is bound when a worker takes the request.
    Shared(SharedChoice),
}

/// The choice the shared executor makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedChoice {
    /// `dispatch::deadline`.
    Deadline,
    /// Always the most accurate model (baseline).
    Best,
    /// Always the cheapest (last) model (baseline).
    Cheapest,
}

/// How the named policy runs; `None` for unknown names. The static baselines run on the same
/// all-cores executor as the default, so they are fair yardsticks; `paper` stays literal.
pub fn mode(name: &str) -> Option<Mode> {
    match name {
        PAPER => Some(Mode::Queues),
        DEADLINE => Some(Mode::Shared(SharedChoice::Deadline)),
        STATIC_BEST => Some(Mode::Shared(SharedChoice::Best)),
        STATIC_CHEAPEST => Some(Mode::Shared(SharedChoice::Cheapest)),
        _ => None,
    }
}

/// The per-queue policy objects, by name; `None` for unknown names and for [`DEADLINE`].
pub fn by_name(name: &str) -> Option<Box<dyn Policy>> {
    match name {
        PAPER => Some(Box::new(Paper)),
        STATIC_BEST => Some(Box::new(StaticBest)),
        STATIC_CHEAPEST => Some(Box::new(StaticCheapest)),
        _ => None,
    }
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
        assert!(by_name(DEADLINE).is_none(), "deadline binds late on the shared executor, not per queue");
        assert_eq!(mode(PAPER), Some(Mode::Queues));
        assert_eq!(mode(STATIC_CHEAPEST), Some(Mode::Shared(SharedChoice::Cheapest)));
        assert!(NAMES.iter().all(|n| mode(n).is_some()));
    }

    #[test]
    fn static_baselines() {
        let queues = [q(9, 12.0), q(0, 5.0), q(3, 1.0)];
        assert_eq!(StaticBest.choose(&queues, 1.0).queue, 0);
        assert_eq!(StaticCheapest.choose(&queues, 1e9), Choice { queue: 2, estimate_us: 4_000.0 });
    }
}
