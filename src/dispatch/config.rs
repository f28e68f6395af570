//! `[dispatch]`: the policy, the latency bound T and the cost model's moving average.

use serde::{Deserialize, Serialize};

use super::policy::PolicyName;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    pub policy: PolicyName,
    pub latency_bound_ms: f64,
    pub ewma_weight: f64,
    pub warmup_runs: usize,
    /// A request's own `timeout` (Open Inference Protocol) is clamped into this range, ms.
    pub timeout_min_ms: f64,
    pub timeout_max_ms: f64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            policy: PolicyName::Deadline,
            latency_bound_ms: 50.0,
            ewma_weight: 0.1,
            warmup_runs: 5,
            timeout_min_ms: 1.0,
            timeout_max_ms: 60_000.0,
        }
    }
}

impl DispatchConfig {
    /// Checks serde cannot express: `Err((key, why))` for the first bad key. (An unknown
    /// policy name is refused while parsing, with the known ones.)
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(self.latency_bound_ms.is_finite() && self.latency_bound_ms > 0.0) {
            return Err(("dispatch.latency_bound_ms", "must be a positive number of milliseconds".into()));
        }
        if !(self.ewma_weight > 0.0 && self.ewma_weight <= 1.0) {
            return Err(("dispatch.ewma_weight", "must be in (0, 1]".into()));
        }
        if !(self.timeout_min_ms.is_finite() && self.timeout_min_ms > 0.0) {
            return Err(("dispatch.timeout_min_ms", "must be a positive number of milliseconds".into()));
        }
        if !(self.timeout_max_ms.is_finite() && self.timeout_max_ms >= self.timeout_min_ms) {
            return Err(("dispatch.timeout_max_ms", "must be at least dispatch.timeout_min_ms".into()));
        }
        Ok(())
    }
}
