//! The inference engine: backend selection, loaded model sessions, the executor that runs them,
//! and the one door every front end enters by: [`Engine::submit`].
//!
//! A request's way down: `submit` admits it at the front door (`intake`), an executor thread
//! takes it, decodes and resizes it (`preprocess`), the policy binds it to a model
//! (`dispatch`), the model runs (`worker::execute`), and the [`Answer`] goes back up to the
//! [`Pending`] `submit` returned.

pub mod backend;
pub mod config;
pub(crate) mod intake;
pub mod pinned;
pub(crate) mod pool;
pub mod preprocess;
pub mod resample;
pub mod session;
pub mod worker;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::dispatch::policy::{Mode, PolicyName};
use crate::dispatch::Dispatcher;
use crate::models::{Ladder, ModelSpec};
use backend::BackendInfo;
pub use config::{BackendChoice, EngineConfig, Settings};
pub use intake::Refusal;
use intake::{Intake, Pinned, Ticket};
use pool::{Learner, Pool};
use preprocess::ImageError;
use session::ModelSession;
use worker::{Infer, Workers};

/// What the executor needs to know of the server's limits and settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_image_pixels: u64,
    pub top_k: usize,
    /// The executor threads' nice value (`engine.executor_nice`).
    pub nice: i32,
}

/// Why a request got no classes.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The deadline policy refused it: even the cheapest model would finish after its deadline.
    #[error("server overloaded: the request cannot be answered within its latency bound")]
    Shed,
    #[error("{0}")]
    Inference(String),
}

/// The engine's answer to one request.
#[derive(Debug)]
pub struct Answer {
    /// The rung that ran it (`None` when none did).
    pub model: Option<usize>,
    /// Top classes, best first, or why not.
    pub result: Result<Vec<(usize, f32)>, Failure>,
    /// Waiting before preprocessing (and, on per-model queues, in the model's queue), µs.
    pub queue_us: u64,
    pub preprocess_us: u64,
    pub inference_us: u64,
    /// What the policy predicted for queue wait + inference, µs.
    pub estimate_us: Option<f64>,
    /// What the `deadline` policy aimed this request at, when it had a choice: its latency,
    /// measured where the front end receives the answer, teaches the policy its target.
    pub aim: Option<pool::Aim>,
    /// Every class's score, as the model gave it (empty when no model ran): the Open Inference
    /// Protocol returns the whole vector. The model's own output, moved, not copied.
    pub scores: Vec<f32>,
}

impl Answer {
    pub fn failed(why: Failure, queue_us: u64) -> Answer {
        Answer { model: None, result: Err(why), queue_us, preprocess_us: 0, inference_us: 0, estimate_us: None, aim: None, scores: Vec::new() }
    }
}

/// A submitted request's answer, to await. It resolves as the oneshot channel inside does; on
/// the way it hands the request's latency — measured now, in the front end's task, after the
/// executor's reply has crossed back to it — to the policy's target learner. Measured there and
/// not where the executor replies, it includes the wait for the front end's task to be woken,
/// which on 16 busy cores was part of the tail the policy did not see (p99 51.5 ms with T = 50
/// while the executor's view said the tail was inside T).
pub struct Pending {
    rx: oneshot::Receiver<Answer>,
    arrival: Instant,
    learner: Option<Arc<Learner>>,
}

impl Future for Pending {
    type Output = Result<Answer, oneshot::error::RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let out = std::task::ready!(Pin::new(&mut self.rx).poll(cx));
        if let (Ok(answer), Some(learner)) = (&out, &self.learner) {
            if let Some(aim) = answer.aim {
                learner.learn(aim, self.arrival.elapsed().as_secs_f64() * 1e6);
            }
        }
        Poll::Ready(out)
    }
}

/// What a request for one rung carries: an encoded image, or a tensor in the rung's input shape.
pub enum Input {
    Image(Bytes),
    Tensor(Vec<f32>),
}

/// How requests reach the models.
enum Executor {
    /// One FIFO queue and worker per model; the policy picks the queue on arrival (`paper`).
    Queues(Workers),
    /// One worker per core; model chosen when a worker takes the request (`deadline`, `static-*`).
    Shared(Pool),
}

pub struct Engine {
    pub ladder: Arc<Vec<ModelSpec>>,
    pub dispatcher: Arc<Dispatcher>,
    pub backend: &'static BackendInfo,
    /// Median warm-up inference time per model, µs (what seeded each moving average).
    pub warmup_us: Vec<f64>,
    intake: Arc<Intake>,
    policy: PolicyName,
    executor: Executor,
}

impl Engine {
    /// Initialises the backend, loads the ladder named in the settings (writing synthetic
    /// models that are missing), warms every model up and starts the executor.
    pub fn start(cfg: &Settings) -> Result<Engine> {
        let backend = backend::init(&cfg.engine)?;
        let mut ladder = Ladder::load(&cfg.manifest)?;
        let generated = ladder.ensure_files(&crate::dirs::data_dir().join("models"))?;
        if generated > 0 {
            tracing::info!(generated, "wrote synthetic model files (random weights: predictions are meaningless)");
        }
        // The shared executor gives every worker its own session of every model (sessions are
        // not shared across threads); per-model queues need one session per model.
        let shared = matches!(cfg.dispatch.policy.mode(), Mode::Shared(_));
        let copies = if shared { cfg.engine.pool_workers() } else { 1 };
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
                } else {
                    // A session's first run allocates its memory arenas and is several times
                    // slower: every copy runs once here, not on a live request.
                    warm_up(&mut s, 1).with_context(|| format!("warm-up of model {:?}", spec.name))?;
                }
                set.push(Box::new(s));
            }
        }
        Self::from_model_sets(cfg, backend, ladder.models, model_sets, warmup_us)
    }

    /// [`Engine::from_model_sets`] with one set of models.
    pub fn from_models(
        cfg: &Settings,
        backend: &'static BackendInfo,
        specs: Vec<ModelSpec>,
        models: Vec<Box<dyn Infer>>,
        warmup_us: Vec<f64>,
    ) -> Result<Engine> {
        Self::from_model_sets(cfg, backend, specs, vec![models], warmup_us)
    }

    /// Assembles an engine from already-loaded models (ladder order) and their measured
    /// warm-up times: one set per executor worker for the shared executor (at least one),
    /// exactly one set for per-model queues. [`Engine::start`] uses it; tests use it with
    /// stand-in models.
    pub fn from_model_sets(
        cfg: &Settings,
        backend: &'static BackendInfo,
        specs: Vec<ModelSpec>,
        mut model_sets: Vec<Vec<Box<dyn Infer>>>,
        warmup_us: Vec<f64>,
    ) -> Result<Engine> {
        let n = specs.len();
        anyhow::ensure!(n > 0 && warmup_us.len() == n, "one spec and warm-up time per rung");
        anyhow::ensure!(!model_sets.is_empty() && model_sets.iter().all(|s| s.len() == n), "one model per rung in every set");
        let d = &cfg.dispatch;
        let mode = d.policy.mode();
        // On the shared executor the per-queue policy object is unused; `paper` stands in so the
        // dispatcher's accounting (depths, averages) is the same code for every policy.
        let per_queue = if mode == Mode::Queues { d.policy } else { PolicyName::Paper }.per_queue().context("a per-queue policy")?;
        let dispatcher = Arc::new(Dispatcher::new(per_queue, n, d.ewma_weight, d.latency_bound_ms));
        for (i, us) in warmup_us.iter().enumerate() {
            dispatcher.seed(i, *us);
        }
        let intake = Arc::new(Intake::new(cfg.max_waiting));
        let limits = Limits { max_image_pixels: cfg.max_image_pixels, top_k: cfg.top_k, nice: cfg.engine.executor_nice() };
        let ladder = Arc::new(specs);
        let executor = match mode {
            Mode::Shared(choice) => Executor::Shared(
                Pool::spawn(model_sets, ladder.clone(), dispatcher.clone(), intake.clone(), choice, limits)
                    .context("cannot start the executor")?,
            ),
            Mode::Queues => {
                anyhow::ensure!(model_sets.len() == 1, "per-model queues run one set of models");
                let models = model_sets.remove(0);
                let stages = cfg.engine.pool_workers();
                Executor::Queues(
                    Workers::spawn(models, ladder.clone(), dispatcher.clone(), intake.clone(), limits, stages)
                        .context("cannot start model worker threads")?,
                )
            }
        };
        Ok(Engine { ladder, dispatcher, backend, warmup_us, intake, policy: d.policy, executor })
    }

    /// The one door into the engine. Admits the request (or says why not) and returns where its
    /// answer will arrive. `arrival` is when its bytes arrived: time spent since counts against
    /// its bound. `bound` is its own latency bound; `None` means T. Never blocks.
    pub fn submit(&self, image: Bytes, arrival: Instant, bound: Option<Duration>) -> Result<Pending, Refusal> {
        self.enter(image, arrival, bound, None)
    }

    /// The same door for a request addressed to one rung: admitted and counted exactly as
    /// [`submit`](Self::submit), queued in the same FIFO, but run on `rung` with no policy
    /// decision. A tensor must already have the rung's input length (the front end checks it).
    pub fn submit_to(&self, rung: usize, input: Input, arrival: Instant, bound: Option<Duration>) -> Result<Pending, Refusal> {
        debug_assert!(rung < self.ladder.len());
        let (image, tensor) = match input {
            Input::Image(b) => (b, None),
            Input::Tensor(t) => (Bytes::new(), Some(t)),
        };
        self.enter(image, arrival, bound, Some(Pinned { rung, tensor }))
    }

    fn enter(&self, image: Bytes, arrival: Instant, bound: Option<Duration>, pinned: Option<Pinned>) -> Result<Pending, Refusal> {
        let admitted = self.intake.admit()?;
        let bound_us = bound.map_or_else(|| self.dispatcher.bound_ms() * 1000.0, |b| b.as_secs_f64() * 1e6);
        let (reply, rx) = oneshot::channel();
        self.intake.push(Ticket { image, arrival, bound_us, reply, admitted, pinned })?;
        let learner = match &self.executor {
            Executor::Shared(p) => Some(p.learner()),
            Executor::Queues(_) => None,
        };
        Ok(Pending { rx, arrival, learner })
    }

    /// Caps the requests in the system (`server.max_waiting`).
    pub fn set_max_waiting(&self, n: usize) {
        self.intake.set_max(n);
    }

    /// The configured policy's name (`dispatch.policy`).
    pub fn policy_name(&self) -> &'static str {
        self.policy.as_str()
    }

    /// Requests waiting at the front door, not yet taken by an executor thread.
    pub fn backlog(&self) -> usize {
        self.intake.waiting()
    }

    /// Requests admitted and not yet answered: waiting, preprocessing, queued or running.
    pub fn in_system(&self) -> usize {
        self.intake.in_system()
    }

    /// Requests dropped unrun because their requester had gone.
    pub fn abandoned(&self) -> usize {
        self.intake.abandoned()
    }

    /// Whether the policy runs on the shared all-cores executor.
    pub fn is_shared(&self) -> bool {
        matches!(self.executor, Executor::Shared(_))
    }

    /// The `deadline` policy's latency target as a fraction of T (`None` for other policies).
    pub fn target(&self) -> Option<f64> {
        match &self.executor {
            Executor::Shared(p) if self.policy == PolicyName::Deadline => Some(p.target()),
            _ => None,
        }
    }

    pub fn any_synthetic(&self) -> bool {
        self.ladder.iter().any(ModelSpec::is_synthetic)
    }

    /// Closes the front door, runs everything already admitted, and stops the threads.
    pub fn shutdown(&self) {
        self.intake.close();
        match &self.executor {
            Executor::Queues(w) => w.join(),
            Executor::Shared(p) => p.join(),
        }
    }
}

/// Lowers the calling thread's CPU priority to `nice` (Linux: this thread only; 0 leaves it).
///
/// The executor's threads are CPU-bound; the async runtime's threads (sockets, framing, the
/// in-process fleet) run in short bursts. At equal priority a waking I/O thread can wait a whole
/// time slice behind an inference, and that wait lands in every request's latency — a tail the
/// policy can only answer by spending less on accuracy. Above 0 the I/O threads run sooner and
/// the executor soaks up the rest; the cost model sees the executor's share of the cores in the
/// measured run times. Too high starves the executor whenever the I/O side is busy
/// (`engine.executor_nice`).
pub(crate) fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        // SAFETY: setpriority has no memory effects; who = 0 with PRIO_PROCESS is this thread on Linux.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, 0, nice);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
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
