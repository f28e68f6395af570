//! The console front end: the node and its built-in fleet on the tokio runtime, the console
//! loop (`ui::app`) on the calling thread, reading snapshots, so it never holds anything the
//! server waits on. At exit it writes the summary and time series asked for, as headless does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use crossterm::event;

use crate::config::Config;
use crate::service::Service;
use crate::ui::app::App;
use crate::ui::state::NodeInfo;
use crate::ui::tui;

#[derive(Debug, Clone, Default)]
pub struct ConsoleOptions {
    pub duration: Option<Duration>,
    /// `--theme NAME`, over `ui.theme`.
    pub theme: Option<String>,
    /// Where the logs go, for the help overlay.
    pub log_path: Option<PathBuf>,
    /// `--summary FILE` and `--timeseries FILE`, written at exit.
    pub summary: Option<PathBuf>,
    pub timeseries: Option<PathBuf>,
}

pub fn run(runtime: &tokio::runtime::Runtime, config: Config, opts: ConsoleOptions) -> Result<()> {
    // Loading and warming the ladder takes seconds; say so before the screen switches.
    eprintln!("edgeinfer: loading models…");
    let ui = config.ui.clone();
    let mut service = runtime.block_on(Service::start(config))?;
    // The built-in fleet always runs under the console (with `fleet.clients`, often 0), so the
    // client keys have something to act on.
    runtime.block_on(service.start_fleet())?;
    let mut node = NodeInfo::of(&service.engine, service.addr);
    // The header shows every address served on (binary protocol, HTTP, gRPC).
    node.addr = service.endpoints();
    let mut app = App::new(node, service.control.clone(), &ui, opts.theme.as_deref());
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
        let tick = || {
            service.tick();
        };
        app.run(&mut tui.terminal, input, tick, || stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d))
        // `tui` drops here: the terminal is restored before anything else is printed.
    });
    let cpu = cpu_share(cpu0, wall0);
    let report = runtime.block_on(service.stop());
    println!("{}", super::headless::done_line(&report.summary));
    if let Some(pct) = cpu {
        let line = format!("console thread CPU: {pct:.2}% of one core over {:.0} s, {} frames", wall0.elapsed().as_secs_f64(), app.frames);
        tracing::info!("{line}");
        println!("edgeinfer: {line}");
    }
    report.write_files(opts.summary.as_deref(), opts.timeseries.as_deref())?;
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
