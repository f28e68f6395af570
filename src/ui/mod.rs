//! The operator console: a ratatui dashboard over the live node and its built-in fleet. The
//! server, model workers and fleet run on the tokio runtime; the console loop runs on the
//! calling thread, reading snapshots, so it never holds anything the server waits on.

pub mod action;
pub mod app;
pub mod components;
pub mod demo;
pub mod keymap;
pub mod state;
pub mod theme;
pub mod tui;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use crossterm::event;

use crate::config::Config;
use crate::service::Service;
use app::App;
use state::NodeInfo;

#[derive(Debug, Clone, Default)]
pub struct ConsoleOptions {
    pub duration: Option<Duration>,
    /// `--theme NAME`, over `ui.theme`.
    pub theme: Option<String>,
    /// Where the logs go, for the help overlay.
    pub log_path: Option<PathBuf>,
}

pub fn run(runtime: &tokio::runtime::Runtime, config: Config, opts: ConsoleOptions) -> Result<()> {
    // Loading and warming the ladder takes seconds; say so before the screen switches.
    eprintln!("edgeinfer: loading models…");
    let ui = config.ui.clone();
    let fleet_cfg = config.fleet.clone();
    let service = runtime.block_on(Service::start(config))?;
    // The built-in fleet always runs under the console (with `fleet.clients`, often 0), so the
    // client keys have something to act on.
    let fleet = runtime.block_on(crate::fleet::Fleet::start(&fleet_cfg, service.addr, Some(service.telemetry.clone())))?;
    service.control.attach_fleet(fleet.clone());
    let mut app = App::new(NodeInfo::of(&service.engine, service.addr), service.control.clone(), &ui, opts.theme.as_deref());
    app.log_path = opts.log_path;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    runtime.spawn(async move {
        crate::server::shutdown::signal().await;
        flag.store(true, Ordering::Relaxed);
    });
    let deadline = opts.duration.map(|d| Instant::now() + d);
    let (cpu0, wall0) = (thread_cpu(), Instant::now());
    let result = tui::Tui::enter().and_then(|mut tui| {
        let input = |t: Duration| if event::poll(t)? { event::read().map(Some) } else { Ok(None) };
        app.run(&mut tui.terminal, input, || stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d))
        // `tui` drops here: the terminal is restored before anything else is printed.
    });
    let cpu = cpu_share(cpu0, wall0);
    let telemetry = service.telemetry.clone();
    let engine = service.engine.clone();
    // The fleet first, so every request it sent is answered before the server stops.
    runtime.block_on(fleet.shutdown());
    runtime.block_on(service.stop());
    println!("{}", crate::cmd::headless::done_line(&crate::telemetry::summary::build(&engine, &telemetry)));
    if let Some(pct) = cpu {
        let line = format!("console thread CPU: {pct:.2}% of one core over {:.0} s, {} frames", wall0.elapsed().as_secs_f64(), app.frames);
        tracing::info!("{line}");
        println!("edgeinfer: {line}");
    }
    result.map_err(|e| anyhow::anyhow!("terminal error: {e}"))
}

/// CPU time the calling thread has used (Linux: `/proc/thread-self/schedstat`, in ns).
pub fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(s.split_whitespace().next()?.parse().ok()?))
}

/// Percent of one core the calling thread used since `(cpu0, wall0)`.
pub fn cpu_share(cpu0: Option<Duration>, wall0: Instant) -> Option<f64> {
    let used = thread_cpu()?.checked_sub(cpu0?)?;
    Some(used.as_secs_f64() / wall0.elapsed().as_secs_f64().max(1e-9) * 100.0)
}

#[cfg(test)]
mod tests;
