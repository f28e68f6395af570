//! The TCP front end: accepts device connections and runs one task per connection. Beside it,
//! the Open Inference Protocol front ends (`oip.rs` shared, `http.rs`, `grpc.rs`).

pub mod config;
mod connection;
pub mod grpc;
mod guarded;
pub mod http;
pub mod oip;
pub mod open;
pub mod pipeline;
pub mod shutdown;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::Engine;
use crate::telemetry::Telemetry;
use config::ServerConfig;
use open::{OpenConnections, Protocol};

/// Per-connection and per-request limits, from `[server]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_image_pixels: u64,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Empty: no token required.
    pub auth_token: String,
}

impl Limits {
    pub fn from_config(cfg: &ServerConfig) -> Self {
        Self {
            max_frame_bytes: cfg.max_frame_bytes,
            max_image_pixels: cfg.max_image_pixels,
            max_connections: cfg.max_connections,
            idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
            read_timeout: Duration::from_millis(cfg.read_timeout_ms),
            write_timeout: Duration::from_millis(cfg.write_timeout_ms),
            auth_token: cfg.auth_token.clone(),
        }
    }
}

/// What every connection task shares.
pub struct Shared {
    pub engine: Arc<Engine>,
    pub telemetry: Arc<Telemetry>,
    pub limits: Limits,
    /// The node's connections, shared with the other front ends under one cap.
    open: Arc<OpenConnections>,
}

/// A deep accept queue: a cell's worth of devices reconnecting at once (or the fleet starting
/// 1,000 clients) must not overflow the kernel's queue while the runtime is busy, which would
/// reset connections that already sent a request. The kernel caps it at `net.core.somaxconn`.
const ACCEPT_BACKLOG: u32 = 4096;

pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// `open` is the node's connection count, which every front end admits into.
    pub async fn bind(cfg: &ServerConfig, engine: Arc<Engine>, telemetry: Arc<Telemetry>, open: Arc<OpenConnections>) -> Result<Server> {
        let listener = listen(cfg.listen).with_context(|| format!("cannot listen on {}", cfg.listen))?;
        engine.set_max_waiting(cfg.max_waiting);
        let shared = Arc::new(Shared { engine, telemetry, limits: Limits::from_config(cfg), open });
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
                    let Some(place) = shared.open.admit(Protocol::Binary) else {
                        let max = shared.open.max();
                        if let Some(answer) = shared.open.refusal(connection::refuse(socket, shared.clone(), max)) {
                            tracker.spawn(answer);
                        }
                        continue;
                    };
                    let shutdown = shutdown.clone();
                    tracker.spawn(async move {
                        let _place = place;
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
