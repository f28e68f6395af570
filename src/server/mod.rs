//! The TCP front end: accepts device connections and runs one task per connection.

mod connection;
pub mod shutdown;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::engine::Engine;
use crate::pipeline::Limits;
use crate::telemetry::Telemetry;

/// What every connection task shares.
pub struct Shared {
    pub engine: Arc<Engine>,
    pub telemetry: Arc<Telemetry>,
    pub limits: Limits,
    pub max_frame_bytes: usize,
}

pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    pub async fn bind(cfg: &ServerConfig, engine: Arc<Engine>, telemetry: Arc<Telemetry>) -> Result<Server> {
        let listener = TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let shared = Arc::new(Shared {
            engine,
            telemetry,
            limits: Limits { max_image_pixels: cfg.max_image_pixels },
            max_frame_bytes: cfg.max_frame_bytes,
        });
        Ok(Server { listener, shared })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Accepts until `shutdown` fires; connection tasks are spawned on `tracker` so the caller
    /// can wait for every in-flight request to be answered.
    pub async fn run(self, shutdown: CancellationToken, tracker: TaskTracker) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = self.listener.accept() => a,
            };
            match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let shared = self.shared.clone();
                    let shutdown = shutdown.clone();
                    tracker.spawn(async move {
                        connection::handle(socket, peer, shared, shutdown).await;
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}
