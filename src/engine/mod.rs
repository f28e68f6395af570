//! The inference engine: backend selection, loaded model sessions, and their worker threads.

pub mod backend;
pub mod pool;
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
use pool::{Pool, PoolJob};
use worker::{Infer, Job, Workers};

/// How requests reach the models.
enum Executor {
    /// One FIFO queue and worker per model; the policy picks the queue on arrival (`paper`, …).
    Queues(Workers),
    /// One FIFO queue, a worker per core, model chosen when a worker takes the request (`deadline`).
    Pool(Pool),
}

pub struct Engine {
    pub ladder: Arc<Vec<ModelSpec>>,
    pub dispatcher: Arc<Dispatcher>,
    pub backend: &'static BackendInfo,
    /// Median warm-up inference time per model, µs (what seeded each moving average).
    pub warmup_us: Vec<f64>,
    policy: String,
    executor: Executor,
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
        // The pool gives every worker its own session of every model (sessions are not shared
        // across threads); per-queue policies need one session per model.
        let copies = if cfg.dispatch.policy == policy::DEADLINE { cfg.engine.pool_workers() } else { 1 };
        let mut model_sets: Vec<Vec<Box<dyn Infer>>> = (0..copies).map(|_| Vec::new()).collect();
        let mut warmup_us = Vec::with_capacity(ladder.models.len());
        for spec in &ladder.models {
            for (copy, set) in model_sets.iter_mut().enumerate() {
                let mut s = ModelSession::load(spec, cfg.engine.intra_threads)?;
                if copy == 0 {
                    let runs = cfg.dispatch.warmup_runs.max(1);
                    let median = warm_up(&mut s, runs).with_context(|| format!("warm-up of model {:?}", spec.name))?;
                    tracing::info!(model = %spec.name, warmup_ms = median / 1000.0, "model ready");
                    warmup_us.push(median);
                }
                set.push(Box::new(s));
            }
        }
        Self::from_model_sets(cfg, backend, ladder.models, model_sets, warmup_us)
    }

    /// [`Engine::from_model_sets`] with one set of models (per-queue policies).
    pub fn from_models(
        cfg: &Config,
        backend: &'static BackendInfo,
        specs: Vec<ModelSpec>,
        models: Vec<Box<dyn Infer>>,
        warmup_us: Vec<f64>,
    ) -> Result<Engine> {
        Self::from_model_sets(cfg, backend, specs, vec![models], warmup_us)
    }

    /// Assembles an engine from already-loaded models (ladder order) and their measured
    /// warm-up times: one set per pool worker for `deadline`, exactly one set otherwise.
    /// [`Engine::start`] uses it; tests use it with stand-in models.
    pub fn from_model_sets(
        cfg: &Config,
        backend: &'static BackendInfo,
        specs: Vec<ModelSpec>,
        mut model_sets: Vec<Vec<Box<dyn Infer>>>,
        warmup_us: Vec<f64>,
    ) -> Result<Engine> {
        let n = specs.len();
        anyhow::ensure!(n > 0 && warmup_us.len() == n, "one spec and warm-up time per rung");
        anyhow::ensure!(!model_sets.is_empty() && model_sets.iter().all(|s| s.len() == n), "one model per rung in every set");
        let d = &cfg.dispatch;
        let pooled = d.policy == policy::DEADLINE;
        // The pool's decision is `late_choice`; the per-queue policy object is then unused, and
        // `paper` stands in so the dispatcher's accounting (depths, averages) is the same code.
        let per_queue = policy::by_name(if pooled { "paper" } else { &d.policy }).context("unknown dispatch policy")?;
        let dispatcher = Arc::new(Dispatcher::new(per_queue, n, d.ewma_weight, d.latency_bound_ms));
        for (i, us) in warmup_us.iter().enumerate() {
            dispatcher.seed(i, *us);
        }
        let ladder = Arc::new(specs);
        let executor = if pooled {
            Executor::Pool(Pool::spawn(model_sets, ladder.clone(), dispatcher.clone(), cfg.server.top_k).context("cannot start the worker pool")?)
        } else {
            anyhow::ensure!(model_sets.len() == 1, "per-queue policies run one set of models");
            let names: Vec<String> = ladder.iter().map(|m| m.name.clone()).collect();
            let models = model_sets.remove(0);
            Executor::Queues(Workers::spawn(models, &names, dispatcher.clone(), cfg.server.top_k).context("cannot start model worker threads")?)
        };
        Ok(Engine { ladder, dispatcher, backend, warmup_us, policy: d.policy.clone(), executor })
    }

    /// The configured policy's name (`dispatch.policy`).
    pub fn policy_name(&self) -> &str {
        &self.policy
    }

    /// Requests waiting for a pool worker (always 0 for per-queue policies, whose waiting
    /// requests show in the queue depths).
    pub fn pool_backlog(&self) -> usize {
        match &self.executor {
            Executor::Pool(p) => p.backlog(),
            Executor::Queues(_) => 0,
        }
    }

    pub fn is_pooled(&self) -> bool {
        matches!(self.executor, Executor::Pool(_))
    }

    pub fn submit_pool(&self, job: PoolJob) -> Result<(), PoolJob> {
        match &self.executor {
            Executor::Pool(p) => p.submit(job),
            Executor::Queues(_) => Err(job),
        }
    }

    pub fn enqueue(&self, queue: usize, job: Job) -> Result<(), Job> {
        match &self.executor {
            Executor::Queues(w) => w.enqueue(queue, job),
            Executor::Pool(_) => Err(job),
        }
    }

    pub fn any_synthetic(&self) -> bool {
        self.ladder.iter().any(ModelSpec::is_synthetic)
    }

    /// Drains every queue and stops the workers.
    pub fn shutdown(&self) {
        match &self.executor {
            Executor::Queues(w) => w.shutdown(),
            Executor::Pool(p) => p.shutdown(),
        }
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
