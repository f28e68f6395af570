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
        let estimate = |q: &QueueView| (q.depth as f64 + 1.0) * q.ewma_us;
        queues
            .iter()
            .enumerate()
            .map(|(i, q)| Choice { queue: i, estimate_us: estimate(q) })
            .find(|c| c.estimate_us < bound_us)
            .unwrap_or_else(|| {
                let last = queues.len() - 1;
                Choice { queue: last, estimate_us: estimate(&queues[last]) }
            })
    }
}

/// Policy names accepted by `--policy` and `dispatch.policy`.
pub const NAMES: &[&str] = &["paper"];

pub fn by_name(name: &str) -> Option<Box<dyn Policy>> {
    match name {
        "paper" => Some(Box::new(Paper)),
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
        for n in NAMES {
            assert_eq!(by_name(n).unwrap().name(), *n);
        }
        assert!(by_name("fastest").is_none());
    }
}
