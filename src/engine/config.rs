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
    /// Workers of the `deadline` pool: `pool_workers`, or one per core when 0.
    pub fn pool_workers(&self) -> usize {
        if self.pool_workers > 0 {
            self.pool_workers
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
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
