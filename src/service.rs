//! The running edge node: engine, TCP server and telemetry started together, and stopped
//! together in the right order. Headless mode and the console both drive one of these.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::control::Control;
use crate::engine::Engine;
use crate::server::Server;
use crate::telemetry::Telemetry;

pub struct Service {
    pub engine: Arc<Engine>,
    pub telemetry: Arc<Telemetry>,
    /// Runtime changes (T, the fleet) go through here.
    pub control: Arc<Control>,
    pub addr: SocketAddr,
    pub config: Config,
    shutdown: CancellationToken,
    connections: TaskTracker,
    accept_loop: tokio::task::JoinHandle<()>,
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
        Ok(Service { engine, telemetry, control, addr, config, shutdown, connections, accept_loop })
    }

    /// Graceful stop: no new connections or frames; every request already read is answered;
    /// then the model queues drain and the workers exit.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.accept_loop.await;
        self.connections.close();
        self.connections.wait().await;
        let engine = self.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    }
}
