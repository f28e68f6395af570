//! edgeinfer: an adaptive inference server for the network edge, after Muraru & Raiciu,
//! "Efficient Inference at the Edge". See ARCHITECTURE.md for the path of a request.

pub mod client;
pub mod cmd;
pub mod config;
pub mod control;
pub mod dirs;
pub mod dispatch;
pub mod engine;
pub mod fleet;
pub mod logging;
pub mod models;
pub mod protocol;
pub mod pypi;
pub mod rng;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod ui;
