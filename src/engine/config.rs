//! `[engine]`: the inference backend and the executor's threads, and [`Settings`], everything
//! an engine is built from.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dispatch::config::DispatchConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    Auto,
    Onnxruntime,
    Tract,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub backend: BackendChoice,
    pub ort_dylib: String,
    pub fetch_onnxruntime: bool,
    pub onnxruntime_version: String,
    pub intra_threads: usize,
    pub pool_workers: usize,
    /// Threads of the async runtime (sockets, front ends, the in-process fleet) in a process
    /// that hosts an engine; 0 = [`auto_runtime_threads`].
    pub runtime_threads: usize,
    /// Nice value of the executor's threads (Linux, 0–19); unset = [`auto_executor_nice`].
    pub executor_nice: Option<i32>,
}

impl EngineConfig {
    /// Threads of the shared executor: `pool_workers`, or when 0, [`auto_workers`] for this
    /// machine's cores.
    pub fn pool_workers(&self) -> usize {
        if self.pool_workers > 0 {
            self.pool_workers
        } else {
            auto_workers(cores())
        }
    }

    /// Threads of the async runtime: `runtime_threads`, or when 0, [`auto_runtime_threads`] for
    /// this machine's cores and the executor's threads.
    pub fn runtime_threads(&self) -> usize {
        if self.runtime_threads > 0 {
            self.runtime_threads
        } else {
            auto_runtime_threads(cores(), self.pool_workers())
        }
    }

    /// The executor threads' nice value: `executor_nice`, or when unset, [`auto_executor_nice`]
    /// for this machine's cores and the executor's threads.
    pub fn executor_nice(&self) -> i32 {
        self.executor_nice.unwrap_or_else(|| auto_executor_nice(cores(), self.pool_workers()))
    }

    /// Checks serde cannot express: `Err((key, why))` for the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.executor_nice.is_some_and(|n| !(0..=19).contains(&n)) {
            return Err(("engine.executor_nice", "must be between 0 and 19".into()));
        }
        if self.runtime_threads > MAX_RUNTIME_THREADS {
            return Err((
                "engine.runtime_threads",
                format!("must be at most {MAX_RUNTIME_THREADS} (0 = one per core, or one where the executor takes every core)"),
            ));
        }
        if self.intra_threads == 0 {
            return Err(("engine.intra_threads", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// The cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Executor threads for `cores` cores: all but one in eight, which are left to the sockets, the
/// front ends and the in-process fleet (tokio's threads). Why not one per core: the executor's
/// threads never block, so with one per core every tokio thread competes with a running model
/// for a time slice, requests are read and answered late, and cores idle between them. Measured
/// on a 16-core machine, same binary, same run (`edgeinfer experiment --policies deadline`):
/// `static-cheapest` saturated at 10,971 req/s with 16 executor threads and 14,019 with 14, and
/// `deadline` held T for 99.8-100 % of requests at every level up to 336 clients with 14, against
/// 93.5 % from 336 clients with 16. On 2 and 4 cores this is one per core: there the models need
/// every core, and the other work fits in the gaps (measured on 2 cores, `bench overhead
/// --resolutions 224` alternated: one executor thread saturates at 674-766 req/s, two at
/// 1,113-1,445).
pub fn auto_workers(cores: usize) -> usize {
    (cores - cores / 8).max(1)
}

/// Async runtime threads for `cores` cores when the executor has `workers` threads: one where
/// the executor takes every core, one per core otherwise.
///
/// Why one: there a runtime thread runs only by preempting a model, and a second one adds
/// wake-ups, not capacity. When a task is woken from outside (an answer from the executor)
/// tokio wakes an idle worker, which wakes a sibling to steal; with two runtime threads on
/// 2 cores the process made 2.6 voluntary context switches per request, with one 1.0
/// (`static-cheapest` saturated, 32 clients). Measured on 2 cores, alternated: saturated
/// throughput higher with one thread in 11 of 13 pairs (median +5 %), and the serving overhead
/// at one client (round trip p50 minus inference p50) 0.49-0.60 ms against 0.57-0.71 ms, lower
/// in 5 of 5 pairs. One thread serves the front ends of a small box with room to spare: it was
/// 15 % busy at 1,800 req/s, in-process fleet included.
///
/// Where the executor leaves cores (8 and more), the runtime keeps one thread per core, as in
/// the 16-core runs: there its work (about 0.09 ms of CPU per request with the in-process fleet,
/// more over gRPC) needs more than one thread at 14,000 req/s, and fewer was not measured.
pub fn auto_runtime_threads(cores: usize, workers: usize) -> usize {
    if workers >= cores {
        1
    } else {
        cores
    }
}

/// The executor threads' nice value for `cores` cores when the executor has `workers` threads:
/// 10 where the executor takes every core, 0 (left as it is) otherwise.
///
/// Why: where the executor takes every core, the async runtime's one thread (sockets, framing,
/// the in-process fleet) runs only by preempting a model, and at equal priority it can wait a
/// time slice for it; that wait lands in the latency of the request being answered, widens the
/// tail, and the `deadline` policy answers a wider tail by aiming lower (α). At nice 10 the
/// runtime's thread runs as soon as it has work. Measured on 2 cores, `edgeinfer --headless
/// --clients N --no-link --duration 25`, 0 and 10 alternated (and 0 against 5 at 48 clients):
/// the median latency rose by 1.0–2.9 ms in 17 of 17 pairs with p99 within 1.1 ms of before and
/// SLO 99.76–99.89 %, i.e. the policy spent more of T, and mean accuracy was higher in 13 of 17
/// pairs (mean +0.63 points at 32 clients, +0.96 at 48, +1.49 at 56, +0.33 at 64);
/// `bench overhead` was not worse (2 pairs: saturated 1,578 → 1,606 and 1,446 → 1,532 req/s,
/// one client 0.62 → 0.57 and 0.65 → 0.60 ms). Where the executor leaves cores to the runtime (8 and more) it is not
/// measured, and stays 0.
pub fn auto_executor_nice(cores: usize, workers: usize) -> i32 {
    if workers >= cores {
        10
    } else {
        0
    }
}

/// Far more than any machine here has cores: a typo, not a plan.
const MAX_RUNTIME_THREADS: usize = 1024;

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            ort_dylib: String::new(),
            fetch_onnxruntime: true,
            onnxruntime_version: "1.32.0".into(),
            intra_threads: 1,
            pool_workers: 0,
            runtime_threads: 0,
            executor_nice: None,
        }
    }
}

/// What an engine is built from: its own section, the policy's, the ladder's manifest, and the
/// server limits the executor enforces (`server.max_waiting`, `max_image_pixels`, `top_k`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub engine: EngineConfig,
    pub dispatch: DispatchConfig,
    pub manifest: PathBuf,
    pub max_waiting: usize,
    pub max_image_pixels: u64,
    pub top_k: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executor_leaves_one_core_in_eight_to_the_sockets() {
        assert_eq!([1, 2, 4, 7, 8, 16, 32, 64].map(auto_workers), [1, 2, 4, 7, 7, 14, 28, 56]);
        let c = EngineConfig { pool_workers: 3, ..EngineConfig::default() };
        assert_eq!(c.pool_workers(), 3, "a configured count is kept");
        assert_eq!(EngineConfig::default().pool_workers(), auto_workers(cores()));
    }

    #[test]
    fn the_runtime_gets_one_thread_where_the_executor_takes_every_core() {
        assert_eq!([(1, 1), (2, 2), (4, 4), (2, 1)].map(|(c, w)| auto_runtime_threads(c, w)), [1, 1, 1, 2]);
        assert_eq!([(8, 7), (16, 14), (64, 56)].map(|(c, w)| auto_runtime_threads(c, w)), [8, 16, 64]);
        assert_eq!(EngineConfig { runtime_threads: 3, ..EngineConfig::default() }.runtime_threads(), 3, "a configured count is kept");
        let c = EngineConfig::default();
        assert_eq!(c.runtime_threads(), auto_runtime_threads(cores(), c.pool_workers()));
        assert!(EngineConfig { runtime_threads: 5000, ..EngineConfig::default() }.validate().is_err());
    }

    #[test]
    fn the_executor_yields_to_the_runtime_where_it_takes_every_core() {
        assert_eq!([(1, 1), (2, 2), (4, 4)].map(|(c, w)| auto_executor_nice(c, w)), [10, 10, 10]);
        assert_eq!([(2, 1), (8, 7), (16, 14)].map(|(c, w)| auto_executor_nice(c, w)), [0, 0, 0]);
        let c = EngineConfig::default();
        assert_eq!(c.executor_nice(), auto_executor_nice(cores(), c.pool_workers()));
        // A configured value is kept, 0 included (leave the threads as they are).
        for n in [0, 5, 19] {
            let c = EngineConfig { executor_nice: Some(n), ..EngineConfig::default() };
            assert_eq!((c.executor_nice(), c.validate()), (n, Ok(())));
        }
        for n in [-1, 20] {
            assert_eq!(EngineConfig { executor_nice: Some(n), ..EngineConfig::default() }.validate().unwrap_err().0, "engine.executor_nice");
        }
    }
}
