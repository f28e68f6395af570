//! The inference engine: backend selection, loaded model sessions, and their worker threads.

pub mod backend;
pub mod preprocess;
pub mod session;
pub mod worker;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::dispatch::{policy, Dispatcher};
use crate::models::{Ladder, ModelSpec};
use backend::BackendInfo;
use session::ModelSession;
use worker::{Job, Workers};

pub struct Engine {
    pub ladder: Arc<Vec<ModelSpec>>,
    pub dispatcher: Arc<Dispatcher>,
    pub backend: &'static BackendInfo,
    /// Median warm-up inference time per model, µs (what seeded each moving average).
    pub warmup_us: Vec<f64>,
    workers: Workers,
}

impl Engine {
    /// Initialises the backend, loads the ladder named in the config (writing synthetic models
    /// that are missing), warms every model up and starts the workers.
    pub fn start(cfg: &Config) -> Result<Engine> {
        let backend = backend::init(&cfg.engine)?;
        let mut ladder = Ladder::load(&cfg.models.manifest)?;
        let generated = ladder.ensure_files(&crate::config::data_dir().join("models"))?;
        if generated > 0 {
            tracing::info!(generated, "wrote synthetic model files (random weights: predictions are meaningless)");
        }
        Self::with_ladder(cfg, backend, ladder)
    }

    fn with_ladder(cfg: &Config, backend: &'static BackendInfo, ladder: Ladder) -> Result<Engine> {
        let policy = policy::by_name(&cfg.dispatch.policy).context("unknown dispatch policy")?;
        let d = &cfg.dispatch;
        let dispatcher = Arc::new(Dispatcher::new(policy, ladder.models.len(), d.ewma_weight, d.latency_bound_ms));
        let mut sessions = Vec::with_capacity(ladder.models.len());
        let mut warmup_us = Vec::with_capacity(ladder.models.len());
        for (i, spec) in ladder.models.iter().enumerate() {
            let mut s = ModelSession::load(spec, cfg.engine.intra_threads)?;
            let median = warm_up(&mut s, d.warmup_runs.max(1)).with_context(|| format!("warm-up of model {:?}", spec.name))?;
            dispatcher.seed(i, median);
            warmup_us.push(median);
            tracing::info!(model = %spec.name, warmup_ms = median / 1000.0, "model ready");
            sessions.push(s);
        }
        let names: Vec<String> = ladder.models.iter().map(|m| m.name.clone()).collect();
        let workers = Workers::spawn(sessions, &names, dispatcher.clone(), cfg.server.top_k)
            .context("cannot start model worker threads")?;
        Ok(Engine { ladder: Arc::new(ladder.models), dispatcher, backend, warmup_us, workers })
    }

    pub fn enqueue(&self, queue: usize, job: Job) -> Result<(), Job> {
        self.workers.enqueue(queue, job)
    }

    pub fn any_synthetic(&self) -> bool {
        self.ladder.iter().any(ModelSpec::is_synthetic)
    }

    /// Drains every queue and stops the workers.
    pub fn shutdown(&self) {
        self.workers.shutdown();
    }
}

/// Runs the model `runs` times on a fixed input and returns the median time in µs.
pub fn warm_up(s: &mut ModelSession, runs: usize) -> Result<f64> {
    let input = vec![0.1f32; s.input_len()];
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            s.run(&input).map(|_| t.elapsed().as_secs_f64() * 1e6)
        })
        .collect::<Result<_>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
