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
use worker::{Infer, Job, Workers};

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
        let mut models: Vec<Box<dyn Infer>> = Vec::with_capacity(ladder.models.len());
        let mut warmup_us = Vec::with_capacity(ladder.models.len());
        for spec in &ladder.models {
            let mut s = ModelSession::load(spec, cfg.engine.intra_threads)?;
            let runs = cfg.dispatch.warmup_runs.max(1);
            let median = warm_up(&mut s, runs).with_context(|| format!("warm-up of model {:?}", spec.name))?;
            tracing::info!(model = %spec.name, warmup_ms = median / 1000.0, "model ready");
            warmup_us.push(median);
            models.push(Box::new(s));
        }
        Self::from_models(cfg, backend, ladder.models, models, warmup_us)
    }

    /// Assembles an engine from already-loaded models (ladder order) and their measured
    /// warm-up times. [`Engine::start`] uses it; tests use it with stand-in models.
    pub fn from_models(
        cfg: &Config,
        backend: &'static BackendInfo,
        specs: Vec<ModelSpec>,
        models: Vec<Box<dyn Infer>>,
        warmup_us: Vec<f64>,
    ) -> Result<Engine> {
        anyhow::ensure!(!specs.is_empty() && specs.len() == models.len() && specs.len() == warmup_us.len(), "one spec, model and warm-up time per rung");
        let policy = policy::by_name(&cfg.dispatch.policy).context("unknown dispatch policy")?;
        let d = &cfg.dispatch;
        let dispatcher = Arc::new(Dispatcher::new(policy, specs.len(), d.ewma_weight, d.latency_bound_ms));
        for (i, us) in warmup_us.iter().enumerate() {
            dispatcher.seed(i, *us);
        }
        let names: Vec<String> = specs.iter().map(|m| m.name.clone()).collect();
        let workers = Workers::spawn(models, &names, dispatcher.clone(), cfg.server.top_k)
            .context("cannot start model worker threads")?;
        Ok(Engine { ladder: Arc::new(specs), dispatcher, backend, warmup_us, workers })
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
