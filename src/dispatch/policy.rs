//! Model-selection policies: pure functions of a snapshot of the queues and the bound T.
//!
//! No clocks, threads or models here, so every decision can be unit-tested with fixed numbers.

use serde::{Deserialize, Serialize};

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

/// The dispatch policies: the one list of the names `--policy`, `--policies` and
/// `dispatch.policy` take (each spelt in kebab case, e.g. `static-best`), the default first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", try_from = "String")]
pub enum PolicyName {
    /// The shared executor binds the model late, when a worker takes the request, aiming at the
    /// optimum's model mix for the measured load (see `dispatch::deadline`).
    #[default]
    Deadline,
    /// The paper's section 3, literally: per-model queues, [`Paper`].
    Paper,
    /// Baseline: always the most accurate model, on the shared executor.
    StaticBest,
    /// Baseline: always the cheapest model, on the shared executor.
    StaticCheapest,
}

impl PolicyName {
    pub const ALL: [PolicyName; 4] = [PolicyName::Deadline, PolicyName::Paper, PolicyName::StaticBest, PolicyName::StaticCheapest];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::Deadline => "deadline",
            PolicyName::Paper => "paper",
            PolicyName::StaticBest => "static-best",
            PolicyName::StaticCheapest => "static-cheapest",
        }
    }

    /// How the policy runs. The static baselines run on the same all-cores executor as the
    /// default, so they are fair yardsticks; `paper` stays literal.
    pub fn mode(self) -> Mode {
        match self {
            PolicyName::Paper => Mode::Queues,
            PolicyName::Deadline => Mode::Shared(SharedChoice::Deadline),
            PolicyName::StaticBest => Mode::Shared(SharedChoice::Best),
            PolicyName::StaticCheapest => Mode::Shared(SharedChoice::Cheapest),
        }
    }

    /// The per-queue policy object; `None` for [`PolicyName::Deadline`], which binds late on the
    /// shared executor instead.
    pub fn per_queue(self) -> Option<Box<dyn Policy>> {
        match self {
            PolicyName::Paper => Some(Box::new(Paper)),
            PolicyName::StaticBest => Some(Box::new(StaticBest)),
            PolicyName::StaticCheapest => Some(Box::new(StaticCheapest)),
            PolicyName::Deadline => None,
        }
    }
}

impl std::fmt::Display for PolicyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PolicyName {
    type Err = String;

    /// Refuses an unknown name with the known ones, for the command line and the config file alike.
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|p| p.as_str()).collect();
            format!("unknown policy {s:?}; known: {}", known.join(", "))
        })
    }
}

impl TryFrom<String> for PolicyName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

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
        use clap::ValueEnum;
        for p in PolicyName::ALL {
            // One spelling everywhere: the enum's, clap's, serde's, and the policy object's.
            assert_eq!(p.as_str().parse::<PolicyName>(), Ok(p));
            assert_eq!(p.to_possible_value().unwrap().get_name(), p.as_str());
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
            assert_eq!(serde_json::from_value::<PolicyName>(p.as_str().into()).unwrap(), p);
            if let Some(obj) = p.per_queue() {
                assert_eq!(obj.name(), p.as_str());
            }
        }
        assert_eq!(PolicyName::value_variants(), PolicyName::ALL);
        assert_eq!(PolicyName::default(), PolicyName::Deadline);
        let err = "fastest".parse::<PolicyName>().unwrap_err();
        assert_eq!(err, "unknown policy \"fastest\"; known: deadline, paper, static-best, static-cheapest");
        assert!(serde_json::from_value::<PolicyName>("fastest".into()).unwrap_err().to_string().contains("unknown policy"));
        assert!(PolicyName::Deadline.per_queue().is_none(), "deadline binds late on the shared executor, not per queue");
        assert_eq!(PolicyName::Paper.mode(), Mode::Queues);
        assert_eq!(PolicyName::StaticCheapest.mode(), Mode::Shared(SharedChoice::Cheapest));
    }

    #[test]
    fn static_baselines() {
        let queues = [q(9, 12.0), q(0, 5.0), q(3, 1.0)];
        assert_eq!(StaticBest.choose(&queues, 1.0).queue, 0);
        assert_eq!(StaticCheapest.choose(&queues, 1e9), Choice { queue: 2, estimate_us: 4_000.0 });
    }
}
