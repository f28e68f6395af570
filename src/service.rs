//! The running edge node: engine, TCP server and telemetry started together, and stopped
//! together in the right order. Headless mode and the console both drive one of these.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::control::Control;
use crate::engine::Engine;
use crate::server::oip::{Listener, Oip};
use crate::server::Server;
use crate::telemetry::Telemetry;

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
    shutdown: CancellationToken,
    connections: TaskTracker,
    accept_loop: tokio::task::JoinHandle<()>,
    /// The HTTP and gRPC servers; each returns once it has answered what it accepted.
    front_ends: Vec<tokio::task::JoinHandle<()>>,
}

impl Service {
    /// Loads the models (on a blocking thread: it takes seconds) and starts listening.
    pub async fn start(config: Config) -> Result<Service> {
        let cfg = config.clone();
        let engine = tokio::task::spawn_blocking(move || Engine::start(&cfg))
            .await
            .context("engine start-up panicked")??;
        Self::with_engine(config, engine).await
    }

    /// Serves an engine that is already assembled (tests use stand-in models this way).
    pub async fn with_engine(config: Config, engine: Engine) -> Result<Service> {
        let engine = Arc::new(engine);
        let telemetry = Arc::new(Telemetry::new(engine.ladder.iter().map(|m| m.accuracy).collect()));
        if let Some(why) = &engine.backend.fallback_reason {
            telemetry.event(format!("backend fallback to tract: {why}"));
        }
        let server = Server::bind(&config.server, engine.clone(), telemetry.clone()).await?;
        let addr = server.local_addr();
        let shutdown = CancellationToken::new();
        let connections = TaskTracker::new();
        let accept_loop = tokio::spawn(server.run(shutdown.clone(), connections.clone()));
        telemetry.event(format!("listening on {addr}, T = {} ms, policy {}", engine.dispatcher.bound_ms(), engine.policy_name()));
        let control = Arc::new(Control::new(engine.dispatcher.clone(), telemetry.clone()));
        telemetry.metrics.name_ladder(&config.models.name, engine.ladder.iter().map(|m| m.name.clone()).collect());
        let oip = Arc::new(Oip::new(engine.clone(), telemetry.clone(), control.clone(), &config));
        let mut front_ends = Vec::new();
        let mut start = |addr: Option<SocketAddr>, key: &str, what: &str, run: fn(Listener, CancellationToken) -> BoxFuture<'static, ()>| -> Result<Option<SocketAddr>> {
            let Some(a) = addr else { return Ok(None) };
            let listener = Listener::bind(a, key, oip.clone())?;
            let bound = listener.local_addr();
            front_ends.push(tokio::spawn(run(listener, shutdown.clone())));
            telemetry.event(format!("Open Inference Protocol over {what} on {bound}"));
            Ok(Some(bound))
        };
        let http_addr = start(config.server.http_addr(), "server.http_listen", "HTTP (metrics at /metrics)", |l, s| Box::pin(crate::server::http::run(l, s)))?;
        let grpc_addr = start(config.server.grpc_addr(), "server.grpc_listen", "gRPC", |l, s| Box::pin(crate::server::grpc::run(l, s)))?;
        Ok(Service { engine, telemetry, control, addr, http_addr, grpc_addr, oip, config, shutdown, connections, accept_loop, front_ends })
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

    /// Graceful stop: no new connections or frames; every request already read is answered;
    /// then the model queues drain and the workers exit.
    pub async fn stop(self) {
        self.oip.closing.store(true, std::sync::atomic::Ordering::Relaxed);
        self.shutdown.cancel();
        let _ = self.accept_loop.await;
        self.connections.close();
        self.connections.wait().await;
        for f in self.front_ends {
            let _ = f.await;
        }
        let engine = self.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    }
}
