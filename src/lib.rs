//! edgeinfer: an adaptive inference server for the network edge, after Muraru & Raiciu,
//! "Efficient Inference at the Edge". See ARCHITECTURE.md for the path of a request.
//!
//! Layers, top first; a module uses only its own line and those below it (`tests/architecture.rs`
//! checks this, and that no modules import each other in a loop):
//! - `cmd` — the front ends: flags, headless, console, `infer`, `client`, `experiment`, the benches
//! - `service` — the node: engine, listeners, fleet and telemetry started, ticked, reported, stopped
//! - `config` — the whole configuration: layered files and flags; each section is its module's
//! - `ui`, `fleet`, `server` — the console's panels; the built-in clients; the listeners
//! - `control`, `client` — runtime changes (T, the fleet); a device's connection
//! - `telemetry`, `engine` — what was answered; the models, the executor and its one door
//! - `dispatch`, `models`, `logging` — policies and cost model; the ladder and its ONNX graphs; logs
//! - `protocol`, `pypi`, `rng`, `dirs` — the wire format; wheels; seeded numbers; where files live

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
