//! The node: the engine, the listeners, the built-in fleet and telemetry, started together,
//! ticked together, reported together, and stopped together in the one right order. Headless
//! mode, the console, the benches, the experiment and the tests all drive one of these.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::control::Control;
use crate::engine::Engine;
use crate::fleet::Fleet;
use crate::server::oip::{Listener, Oip};
use crate::server::open::OpenConnections;
use crate::server::Server;
use crate::telemetry::summary::{self, BackendSummary, ModelSummary, Summary};
use crate::telemetry::{Row, Telemetry};

/// `config` with the Open Inference Protocol front ends off: for runs inside one process that
/// measure the binary protocol (experiment, benches), which must not clash on their ports.
pub fn binary_only(mut config: Config) -> Config {
    config.server.http_listen.clear();
    config.server.grpc_listen.clear();
    config
}

pub struct Service {
    pub engine: Arc<Engine>,
    pub telemetry: Arc<Telemetry>,
    /// Runtime changes (T, the fleet) go through here.
    pub control: Arc<Control>,
    pub addr: SocketAddr,
    /// The Open Inference Protocol over HTTP (with /metrics) and gRPC, where on.
    pub http_addr: Option<SocketAddr>,
    pub grpc_addr: Option<SocketAddr>,
    pub oip: Arc<Oip>,
    pub config: Config,
    /// The built-in fleet, once started against this node's own listener.
    fleet: Option<Arc<Fleet>>,
    shutdown: CancellationToken,
    connections: TaskTracker,
    accept_loop: tokio::task::JoinHandle<()>,
    /// The HTTP and gRPC servers; each returns once it has answered what it accepted.
    front_ends: Vec<tokio::task::JoinHandle<()>>,
}

/// One closed interval: the server's row and, with the built-in fleet, what its clients saw.
#[derive(Debug, Clone)]
pub struct Tick {
    pub server: Row,
    pub fleet: Option<Row>,
}

/// What a node produced, once stopped.
#[derive(Debug)]
pub struct Report {
    pub summary: Summary,
    /// The server's time series; the last row is what was answered while stopping.
    pub rows: Vec<Row>,
    /// The fleet's time series, row for row with `rows`; empty without a fleet.
    pub fleet_rows: Vec<Row>,
    /// Ladder order (the CSV's queue columns).
    model_names: Vec<String>,
    /// The fleet's resolution ladder (its CSV columns); `None` without a fleet.
    resolutions: Option<Vec<u16>>,
}

impl Service {
    /// Loads the models (on a blocking thread: it takes seconds) and starts listening.
    pub async fn start(config: Config) -> Result<Service> {
        let settings = config.engine_settings();
        let engine = tokio::task::spawn_blocking(move || Engine::start(&settings)).await.context("engine start-up panicked")??;
        Self::with_engine(config, engine).await
    }

    /// Serves an engine that is already assembled (tests use stand-in models this way).
    pub async fn with_engine(config: Config, engine: Engine) -> Result<Service> {
        let engine = Arc::new(engine);
        let telemetry = Arc::new(Telemetry::new(engine.ladder.iter().map(|m| m.accuracy).collect()));
        if let Some(why) = &engine.backend.fallback_reason {
            telemetry.problem(format!("backend fallback to tract: {why}"));
        }
        // One count of open connections for every front end: `server.max_connections` caps the node.
        let open = OpenConnections::new(config.server.max_connections, Some(telemetry.clone()));
        let server = Server::bind(&config.server, engine.clone(), telemetry.clone(), open.clone()).await?;
        let addr = server.local_addr();
        let shutdown = CancellationToken::new();
        let connections = TaskTracker::new();
        let accept_loop = tokio::spawn(server.run(shutdown.clone(), connections.clone()));
        telemetry.event(format!("listening on {addr}, T = {} ms, policy {}", engine.dispatcher.bound_ms(), engine.policy_name()));
        let control = Arc::new(Control::new(engine.dispatcher.clone(), telemetry.clone()));
        telemetry.metrics.name_ladder(&config.models.name, engine.ladder.iter().map(|m| m.name.clone()).collect());
        let oip = Arc::new(Oip::new(
            engine.clone(),
            telemetry.clone(),
            control.clone(),
            &config.server,
            open,
            &config.models.name,
            (config.dispatch.timeout_min_ms, config.dispatch.timeout_max_ms),
        ));
        let mut front_ends = Vec::new();
        let mut start = |addr: Option<SocketAddr>,
                         key: &str,
                         what: &str,
                         run: fn(Listener, CancellationToken) -> BoxFuture<'static, ()>|
         -> Result<Option<SocketAddr>> {
            let Some(a) = addr else { return Ok(None) };
            let listener = Listener::bind(a, key, oip.clone())?;
            let bound = listener.local_addr();
            front_ends.push(tokio::spawn(run(listener, shutdown.clone())));
            telemetry.event(format!("Open Inference Protocol over {what} on {bound}"));
            Ok(Some(bound))
        };
        let http_addr = start(config.server.http_addr(), "server.http_listen", "HTTP (metrics at /metrics)", |l, s| {
            Box::pin(crate::server::http::run(l, s))
        })?;
        let grpc_addr = start(config.server.grpc_addr(), "server.grpc_listen", "gRPC", |l, s| Box::pin(crate::server::grpc::run(l, s)))?;
        Ok(Service {
            engine,
            telemetry,
            control,
            addr,
            http_addr,
            grpc_addr,
            oip,
            config,
            fleet: None,
            shutdown,
            connections,
            accept_loop,
            front_ends,
        })
    }

    /// Every address served on, e.g. `tcp 127.0.0.1:7878  http 127.0.0.1:8000  grpc 127.0.0.1:8001`.
    pub fn endpoints(&self) -> String {
        let mut s = format!("tcp {}", self.addr);
        for (name, a) in [("http", self.http_addr), ("grpc", self.grpc_addr)] {
            if let Some(a) = a {
                s += &format!("  {name} {a}");
            }
        }
        s
    }

    /// Starts the built-in fleet (`[fleet]`) against this node's own listener and hands it to
    /// [`Control`]; the node stops it first when it stops.
    pub async fn start_fleet(&mut self) -> Result<Arc<Fleet>> {
        anyhow::ensure!(self.fleet.is_none(), "the built-in fleet is already running");
        let fleet = Fleet::start(&self.config.fleet, self.addr, Some(self.telemetry.clone())).await?;
        self.control.attach_fleet(fleet.clone());
        self.fleet = Some(fleet.clone());
        Ok(fleet)
    }

    /// Starts the built-in fleet when the configuration asks for clients or a ramp at start,
    /// unless it already runs (a caller that drives the fleet itself started it).
    pub async fn start_configured_fleet(&mut self) -> Result<()> {
        let f = &self.config.fleet;
        if self.fleet.is_none() && (f.clients > 0 || f.ramp_at_start) {
            self.start_fleet().await?;
        }
        Ok(())
    }

    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// Closes one telemetry interval: the server's row and, with the built-in fleet, its own.
    pub fn tick(&self) -> Tick {
        let depths = self.engine.dispatcher.snapshot().iter().map(|q| q.depth).collect();
        let clients = self.control.fleet().map_or(0, |f| f.count());
        Tick { server: self.telemetry.tick(depths, clients), fleet: self.fleet.as_ref().map(|f| f.tick()) }
    }

    /// The full summary as things stand: the server's figures and, with the built-in fleet,
    /// what its clients measured.
    pub fn summary(&self) -> Summary {
        let engine = &self.engine;
        let totals = self.telemetry.totals();
        let views = engine.dispatcher.snapshot();
        let duration_s = self.telemetry.elapsed_s();
        let fleet = self.fleet.as_ref();
        Summary {
            backend: BackendSummary { name: engine.backend.name.as_str(), version: engine.backend.version.clone() },
            synthetic_weights: engine.any_synthetic(),
            latency_bound_ms: engine.dispatcher.bound_ms(),
            policy: engine.policy_name().to_string(),
            duration_s,
            models: engine
                .ladder
                .iter()
                .zip(&totals.per_model)
                .zip(&views)
                .map(|((spec, t), v)| ModelSummary {
                    name: spec.name.clone(),
                    accuracy: spec.accuracy,
                    served: t.served,
                    ewma_ms: v.ewma_us / 1000.0,
                    p50_ms: t.inference_p50_ms,
                })
                .collect(),
            requests: totals.requests,
            errors: totals.errors,
            errors_by_status: totals.errors_by_status,
            latency_ms: totals.latency_ms,
            slo_attainment: totals.slo_attainment,
            mean_accuracy: totals.mean_accuracy,
            throughput_rps: totals.requests as f64 / duration_s.max(1e-9),
            estimate_error_ms: totals.estimate_error_ms,
            connections: self.telemetry.connections(),
            client_latency_ms: fleet.map(|f| f.stats().latency()),
            client_requests: fleet.map(|f| f.counts()),
            clients: fleet.map(|f| f.clients_summary()),
        }
    }

    /// Graceful stop, in the one right order: the fleet first (each client finishes its request
    /// in flight, so everything it sent is answered); then the listeners (no new connections or
    /// frames; every request already read is answered); then the front door closes and the
    /// executor drains what it admitted. The last row closes what was answered while stopping.
    pub async fn stop(mut self) -> Report {
        // Counted while the clients still run: the fleet is empty once shut down.
        let clients = self.fleet.as_ref().map(|f| f.clients_summary());
        if let Some(f) = &self.fleet {
            f.shutdown().await;
        }
        // The OIP front ends answer `overloaded` to what arrives from here on.
        self.oip.closing.store(true, std::sync::atomic::Ordering::Relaxed);
        self.shutdown.cancel();
        let _ = (&mut self.accept_loop).await;
        self.connections.close();
        self.connections.wait().await;
        for f in std::mem::take(&mut self.front_ends) {
            let _ = f.await;
        }
        let engine = self.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        self.tick();
        let mut summary = self.summary();
        if clients.is_some() {
            summary.clients = clients;
        }
        Report {
            summary,
            rows: self.telemetry.rows(),
            fleet_rows: self.fleet.as_ref().map(|f| f.rows()).unwrap_or_default(),
            model_names: self.engine.ladder.iter().map(|m| m.name.clone()).collect(),
            resolutions: self.fleet.as_ref().map(|f| f.resolutions().to_vec()),
        }
    }
}

impl Report {
    /// Writes the JSON summary and the per-interval CSV (with the fleet's columns when it ran),
    /// each where asked.
    pub fn write_files(&self, summary_path: Option<&Path>, timeseries_path: Option<&Path>) -> Result<()> {
        if let Some(p) = summary_path {
            summary::write_json(p, &self.summary)?;
        }
        if let Some(p) = timeseries_path {
            let fleet = self.resolutions.as_deref().map(|r| (r, self.fleet_rows.as_slice()));
            summary::write_csv_with_fleet(p, &self.rows, &self.model_names, fleet)?;
        }
        Ok(())
    }
}
