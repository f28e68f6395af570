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
    pub executor_nice: i32,
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

    /// Checks serde cannot express: `Err((key, why))` for the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(0..=19).contains(&self.executor_nice) {
            return Err(("engine.executor_nice", "must be between 0 and 19".into()));
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

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            ort_dylib: String::new(),
            fetch_onnxruntime: true,
            onnxruntime_version: "1.32.0".into(),
            intra_threads: 1,
            pool_workers: 0,
            executor_nice: 0,
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
}
