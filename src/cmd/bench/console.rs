//! `edgeinfer bench console`: what the console costs. Runs the real app loop (snapshots, the
//! once-a-second telemetry tick, layout and rendering into a `TestBackend` screen) against a
//! live node with N fleet clients and request load, and reports the console thread's CPU.
//!
//! The built-in fleet is used when one is attached; otherwise a stand-in fleet snapshot of N
//! clients is shown (the console's cost depends on how many clients it lists, not on who sends
//! the traffic), and `load` closed-loop connections send real requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cmd::console::{cpu_share, thread_cpu};
use crate::config::Config;
use crate::control::FleetControl;
use crate::service::Service;
use crate::ui::app::App;
use crate::ui::demo::StandInFleet;
use crate::ui::state::NodeInfo;

#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    pub secs: f64,
    pub clients: usize,
    /// Closed-loop request connections (used when no built-in fleet is attached).
    pub load: usize,
    pub width: u16,
    pub height: u16,
}

#[derive(Debug, Serialize)]
pub struct ConsoleBench {
    pub seconds: f64,
    pub clients: usize,
    /// "built-in" or "stand-in".
    pub fleet: &'static str,
    pub load_connections: usize,
    pub screen: String,
    pub frames: u64,
    pub fps: f64,
    pub requests: u64,
    /// The console thread, percent of one core.
    pub console_cpu_pct: Option<f64>,
}

pub fn run(runtime: &tokio::runtime::Runtime, config: Config, o: BenchOptions) -> Result<ConsoleBench> {
    let ui = config.ui.clone();
    let mut service = runtime.block_on(Service::start(crate::service::binary_only(config)))?;
    let control = service.control.clone();
    // The real built-in fleet, as the console runs it; a stand-in only if it cannot start.
    let real =
        runtime.block_on(service.start_fleet()).inspect_err(|e| tracing::warn!("built-in fleet unavailable ({e:#}); listing a stand-in")).ok();
    let (fleet, fleet_kind): (Arc<dyn FleetControl>, &'static str) = match real {
        Some(f) => (f, "built-in"),
        None => {
            let t = control.bound_ms();
            let stand_in: Arc<dyn FleetControl> = Arc::new(StandInFleet::new(vec![224, 192, 160, 128], t * 1.6, t * 3.0));
            control.attach_fleet(stand_in.clone());
            (stand_in, "stand-in")
        }
    };
    fleet.add_clients(o.clients);
    let stop = CancellationToken::new();
    let load = if fleet_kind == "stand-in" { o.load } else { 0 };
    for i in 0..load {
        runtime.spawn(send_loop(service.addr, i as u32, stop.clone()));
    }
    let mut app = App::new(NodeInfo::of(&service.engine, service.addr), control.clone(), &ui, None);
    let mut terminal = Terminal::new(TestBackend::new(o.width, o.height))?;
    let secs = Duration::try_from_secs_f64(o.secs.max(1.0))?;
    let (cpu0, wall0) = (thread_cpu(), Instant::now());
    let input = |t: Duration| {
        std::thread::sleep(t);
        Ok(None)
    };
    app.run(
        &mut terminal,
        input,
        || {
            service.tick();
        },
        || wall0.elapsed() >= secs,
    )?;
    let cpu = cpu_share(cpu0, wall0);
    // Counted while the clients still run: the fleet is empty once shut down.
    let listed = fleet.snapshot().clients.len();
    let wall = wall0.elapsed().as_secs_f64();
    stop.cancel();
    let requests = service.telemetry.totals().requests;
    runtime.block_on(service.stop());
    Ok(ConsoleBench {
        seconds: wall,
        clients: listed,
        fleet: fleet_kind,
        load_connections: load,
        screen: format!("{}x{}", o.width, o.height),
        frames: app.frames,
        fps: app.frames as f64 / wall,
        requests,
        console_cpu_pct: cpu,
    })
}

/// One closed-loop client: a fixed image, sent again as soon as the answer arrives.
async fn send_loop(addr: std::net::SocketAddr, id: u32, stop: CancellationToken) {
    let img = image::RgbImage::from_fn(224, 224, |x, y| image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, ((x ^ y) % 256) as u8]));
    let mut png = Vec::new();
    if img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).is_err() {
        return;
    }
    let png = bytes::Bytes::from(png);
    let Ok(mut client) = crate::client::Client::connect(addr, 10_000 + id).await else { return };
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = client.infer(png.clone(), 224) => if r.is_err() { break },
        }
    }
}

impl std::fmt::Display for ConsoleBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cpu = self.console_cpu_pct.map_or("n/a (no /proc/thread-self)".into(), |c| format!("{c:.2}% of one core"));
        writeln!(
            f,
            "console: {} clients ({} fleet), {} load connections, screen {}",
            self.clients, self.fleet, self.load_connections, self.screen
        )?;
        writeln!(
            f,
            "console: {:.1} s, {} frames ({:.1} fps), {} requests served meanwhile",
            self.seconds, self.frames, self.fps, self.requests
        )?;
        write!(f, "console thread CPU: {cpu}")
    }
}
