//! `[server]`: the listener and the limits every connection and request is held to.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_frame_bytes: usize,
    pub max_image_pixels: u64,
    pub top_k: usize,
    pub max_waiting: usize,
    /// Open connections on all front ends together (`open.rs`).
    pub max_connections: usize,
    pub idle_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub auth_token: String,
    /// The Open Inference Protocol over HTTP (and `/metrics`); empty: off.
    pub http_listen: String,
    /// The Open Inference Protocol over gRPC; empty: off.
    pub grpc_listen: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7878".parse().expect("literal address"),
            max_frame_bytes: 8 * 1024 * 1024,
            max_image_pixels: 4096 * 4096,
            top_k: 5,
            max_waiting: 4096,
            max_connections: 16384,
            idle_timeout_ms: 300_000,
            read_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            auth_token: String::new(),
            http_listen: "127.0.0.1:8000".into(),
            grpc_listen: "127.0.0.1:8001".into(),
        }
    }
}

impl ServerConfig {
    /// `server.http_listen` as an address; `None` when off. Checked by [`ServerConfig::validate`].
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_listen.parse().ok()
    }

    /// `server.grpc_listen` as an address; `None` when off.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_listen.parse().ok()
    }

    /// Checks serde cannot express: `Err((key, why))` for the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let bad = |key, why: &str| Err((key, why.to_string()));
        if self.max_frame_bytes < 64 {
            return bad("server.max_frame_bytes", "must be at least 64 bytes");
        }
        if self.max_image_pixels == 0 {
            return bad("server.max_image_pixels", "must be positive");
        }
        if self.top_k == 0 || self.top_k > 255 {
            return bad("server.top_k", "must be between 1 and 255");
        }
        if self.max_waiting == 0 {
            return bad("server.max_waiting", "must be at least 1");
        }
        if self.max_connections == 0 {
            return bad("server.max_connections", "must be at least 1");
        }
        for (key, v) in [
            ("server.idle_timeout_ms", self.idle_timeout_ms),
            ("server.read_timeout_ms", self.read_timeout_ms),
            ("server.write_timeout_ms", self.write_timeout_ms),
        ] {
            if v == 0 {
                return bad(key, "must be positive");
            }
        }
        for (key, addr) in [("server.http_listen", &self.http_listen), ("server.grpc_listen", &self.grpc_listen)] {
            if !addr.is_empty() && addr.parse::<SocketAddr>().is_err() {
                return Err((key, format!("{addr:?} is not an address like \"127.0.0.1:8000\" (empty turns it off)")));
            }
        }
        if self.auth_token.len() > u16::MAX as usize {
            return bad("server.auth_token", "must be shorter than 64 KiB");
        }
        Ok(())
    }
}
