//! Configuration: typed keys, layered files, and errors that point at the offending line.
//!
//! Layers, later wins: built-in defaults, the project file (`--config FILE`, else `./config.toml`
//! when present), the user file under the platform config folder (from `directories`), then flags.
//! Each file is checked on its own first so an error names that file, key and line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub dispatch: DispatchConfig,
    pub engine: EngineConfig,
    pub models: ModelsConfig,
    pub headless: HeadlessConfig,
    pub ui: UiConfig,
    pub fleet: FleetConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_frame_bytes: usize,
    pub max_image_pixels: u64,
    pub top_k: usize,
    pub max_waiting: usize,
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

impl ServerConfig {
    /// `server.http_listen` as an address; `None` when off. Checked by [`Config::validate`].
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_listen.parse().ok()
    }

    /// `server.grpc_listen` as an address; `None` when off.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_listen.parse().ok()
    }
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    pub policy: String,
    pub latency_bound_ms: f64,
    pub ewma_weight: f64,
    pub warmup_runs: usize,
    /// A request's own `timeout` (Open Inference Protocol) is clamped into this range, ms.
    pub timeout_min_ms: f64,
    pub timeout_max_ms: f64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self { policy: "deadline".into(), latency_bound_ms: 50.0, ewma_weight: 0.1, warmup_runs: 5, timeout_min_ms: 1.0, timeout_max_ms: 60_000.0 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    Auto,
    Onnxruntime,
    Tract,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub backend: BackendChoice,
    pub ort_dylib: String,
    pub fetch_onnxruntime: bool,
    pub onnxruntime_version: String,
    pub intra_threads: usize,
    pub pool_workers: usize,
    pub executor_nice: i32,
}

impl EngineConfig {
    /// Workers of the `deadline` pool: `pool_workers`, or one per core when 0.
    pub fn pool_workers(&self) -> usize {
        if self.pool_workers > 0 {
            self.pool_workers
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            ort_dylib: String::new(),
            fetch_onnxruntime: true,
            onnxruntime_version: "1.32.0".into(),
            intra_threads: 1,
            pool_workers: 0,
            executor_nice: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    pub manifest: PathBuf,
    /// The adaptive ladder's model name on the Open Inference Protocol (and in `/metrics`).
    pub name: String,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self { manifest: PathBuf::from("models/ladder.toml"), name: "edgeinfer".into() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadlessConfig {
    pub status_interval_ms: u64,
}

impl Default for HeadlessConfig {
    fn default() -> Self {
        Self { status_interval_ms: 1000 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    pub theme: String,
    pub themes_dir: PathBuf,
    pub t_step_ms: f64,
    pub fps: u32,
    pub chart_window_s: u64,
    /// Action name → keys, e.g. `t_up = ["Up", "+"]`. Actions a file leaves out keep their default keys.
    pub keys: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            theme: "dark".into(),
            themes_dir: PathBuf::from("themes"),
            t_step_ms: 5.0,
            fps: 10,
            chart_window_s: 300,
            keys: crate::ui::keymap::default_bindings(),
        }
    }
}

/// The built-in client fleet (`[fleet]`): see `config.toml` for what each key means and why.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    pub clients: usize,
    pub ramp_at_start: bool,
    pub ramp_step: usize,
    pub ramp_every_s: f64,
    pub max_clients: usize,
    pub resolutions: Vec<u16>,
    pub tc_lower_ms: f64,
    pub tc_upper_ms: f64,
    pub hold_responses: u32,
    pub hold_ms: u64,
    pub think_ms: u64,
    pub jpeg_quality: u8,
    pub images: PathBuf,
    pub request_timeout_ms: u64,
    pub link: LinkConfig,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            clients: 0,
            ramp_at_start: false,
            ramp_step: 4,
            ramp_every_s: 2.0,
            max_clients: 64,
            resolutions: vec![224, 192, 160, 128, 96],
            tc_lower_ms: 100.0,
            tc_upper_ms: 200.0,
            hold_responses: 2,
            hold_ms: 500,
            think_ms: 0,
            jpeg_quality: 75,
            images: PathBuf::new(),
            request_timeout_ms: 30_000,
            link: LinkConfig::default(),
        }
    }
}

/// The fleet's emulated cellular uplink (`[fleet.link]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkConfig {
    pub enabled: bool,
    pub cell_mbps: f64,
    pub client_cap_mbps: f64,
    pub rtt_ms: f64,
    pub chunk_bytes: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self { enabled: true, cell_mbps: 20.0, client_cap_mbps: 5.0, rtt_ms: 40.0, chunk_bytes: 1460 }
    }
}

impl FleetConfig {
    /// `bound_ms` is the server's T, which both client thresholds must exceed (paper, section 3).
    pub fn validate(&self, bound_ms: f64) -> std::result::Result<(), KeyError> {
        if let Err((key, msg)) = crate::fleet::controller::check(&self.resolutions, self.tc_lower_ms, self.tc_upper_ms, bound_ms) {
            let key = match key {
                "resolutions" => "fleet.resolutions",
                _ => "fleet.tc_lower_ms",
            };
            return Err(KeyError::new(key, msg));
        }
        let checks: [(bool, &'static str, &str); 9] = [
            (self.ramp_step >= 1, "fleet.ramp_step", "must be at least 1"),
            (self.ramp_every_s.is_finite() && self.ramp_every_s > 0.0, "fleet.ramp_every_s", "must be a positive number of seconds"),
            (self.max_clients >= 1, "fleet.max_clients", "must be at least 1"),
            ((1..=100).contains(&self.jpeg_quality), "fleet.jpeg_quality", "must be between 1 and 100"),
            (self.request_timeout_ms >= 1, "fleet.request_timeout_ms", "must be at least 1"),
            (self.link.cell_mbps.is_finite() && self.link.cell_mbps > 0.0, "fleet.link.cell_mbps", "must be a positive rate in Mbit/s"),
            (self.link.client_cap_mbps.is_finite() && self.link.client_cap_mbps >= 0.0, "fleet.link.client_cap_mbps", "must be 0 (no cap) or a positive rate in Mbit/s"),
            (self.link.rtt_ms.is_finite() && self.link.rtt_ms >= 0.0, "fleet.link.rtt_ms", "must be 0 or a positive number of milliseconds"),
            (self.link.chunk_bytes >= 1, "fleet.link.chunk_bytes", "must be at least 1"),
        ];
        match checks.into_iter().find(|(ok, _, _)| !ok) {
            Some((_, key, msg)) => Err(KeyError::new(key, msg)),
            None => Ok(()),
        }
    }
}

/// Where edgeinfer keeps per-user state. `None` when the platform gives no home folder.
pub fn project_dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "edgeinfer")
}

pub fn user_config_path() -> Option<PathBuf> {
    project_dirs().map(|d| d.config_dir().join("config.toml"))
}

/// Data folder for fetched runtimes and generated models that cannot live beside the manifest.
pub fn data_dir() -> PathBuf {
    project_dirs()
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(|| std::env::temp_dir().join("edgeinfer"))
}

impl Config {
    /// Loads the layered configuration. `explicit` is `--config FILE`; with it, a missing file is an error.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        let mut merged = toml::Table::new();
        let project = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from("config.toml")).filter(|p| p.exists()),
        };
        let mut files = Vec::new();
        if let Some(p) = project {
            files.push(p);
        }
        if let Some(user) = user_config_path().filter(|p| p.exists()) {
            files.push(user);
        }
        for file in &files {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read config file {}", file.display()))?;
            let table = parse_layer(file, &text)?;
            deep_merge(&mut merged, table);
        }
        let config: Config = toml::Value::Table(merged)
            .try_into()
            .context("merged configuration is invalid")?;
        config.validate().map_err(|e| {
            // Point at the last file that set the key, since that is the one to edit.
            let key = e.key;
            let place = files
                .iter()
                .rev()
                .find_map(|f| locate_key(f, key).map(|line| format!(" ({}:{line})", f.display())))
                .unwrap_or_default();
            anyhow::anyhow!("config key `{key}`{place}: {}", e.message)
        })?;
        Ok(config)
    }

    /// Semantic checks that serde cannot express. Also used after flags are applied.
    pub fn validate(&self) -> std::result::Result<(), KeyError> {
        let d = &self.dispatch;
        if !(d.latency_bound_ms.is_finite() && d.latency_bound_ms > 0.0) {
            return Err(KeyError::new("dispatch.latency_bound_ms", "must be a positive number of milliseconds"));
        }
        if !(d.ewma_weight > 0.0 && d.ewma_weight <= 1.0) {
            return Err(KeyError::new("dispatch.ewma_weight", "must be in (0, 1]"));
        }
        if !crate::dispatch::policy::NAMES.contains(&d.policy.as_str()) {
            return Err(KeyError::new(
                "dispatch.policy",
                format!("unknown policy {:?}; known: {}", d.policy, crate::dispatch::policy::NAMES.join(", ")),
            ));
        }
        if !(0..=19).contains(&self.engine.executor_nice) {
            return Err(KeyError::new("engine.executor_nice", "must be between 0 and 19"));
        }
        if self.engine.intra_threads == 0 {
            return Err(KeyError::new("engine.intra_threads", "must be at least 1"));
        }
        if self.server.max_frame_bytes < 64 {
            return Err(KeyError::new("server.max_frame_bytes", "must be at least 64 bytes"));
        }
        if self.server.max_image_pixels == 0 {
            return Err(KeyError::new("server.max_image_pixels", "must be positive"));
        }
        if self.server.top_k == 0 || self.server.top_k > 255 {
            return Err(KeyError::new("server.top_k", "must be between 1 and 255"));
        }
        if self.server.max_waiting == 0 {
            return Err(KeyError::new("server.max_waiting", "must be at least 1"));
        }
        if self.server.max_connections == 0 {
            return Err(KeyError::new("server.max_connections", "must be at least 1"));
        }
        for (key, v) in [
            ("server.idle_timeout_ms", self.server.idle_timeout_ms),
            ("server.read_timeout_ms", self.server.read_timeout_ms),
            ("server.write_timeout_ms", self.server.write_timeout_ms),
        ] {
            if v == 0 {
                return Err(KeyError::new(key, "must be positive"));
            }
        }
        for (key, addr) in [("server.http_listen", &self.server.http_listen), ("server.grpc_listen", &self.server.grpc_listen)] {
            if !addr.is_empty() && addr.parse::<SocketAddr>().is_err() {
                return Err(KeyError::new(key, format!("{addr:?} is not an address like \"127.0.0.1:8000\" (empty turns it off)")));
            }
        }
        if !(d.timeout_min_ms.is_finite() && d.timeout_min_ms > 0.0) {
            return Err(KeyError::new("dispatch.timeout_min_ms", "must be a positive number of milliseconds"));
        }
        if !(d.timeout_max_ms.is_finite() && d.timeout_max_ms >= d.timeout_min_ms) {
            return Err(KeyError::new("dispatch.timeout_max_ms", "must be at least dispatch.timeout_min_ms"));
        }
        if self.models.name.is_empty() || self.models.name.contains('/') {
            return Err(KeyError::new("models.name", "must be a non-empty name without '/'"));
        }
        if self.server.auth_token.len() > u16::MAX as usize {
            return Err(KeyError::new("server.auth_token", "must be shorter than 64 KiB"));
        }
        if self.headless.status_interval_ms < 50 {
            return Err(KeyError::new("headless.status_interval_ms", "must be at least 50"));
        }
        let ui = &self.ui;
        if !(ui.t_step_ms.is_finite() && ui.t_step_ms > 0.0) {
            return Err(KeyError::new("ui.t_step_ms", "must be a positive number of milliseconds"));
        }
        if !(1..=60).contains(&ui.fps) {
            return Err(KeyError::new("ui.fps", "must be between 1 and 60"));
        }
        if ui.chart_window_s < 10 {
            return Err(KeyError::new("ui.chart_window_s", "must be at least 10 seconds"));
        }
        if ui.theme.is_empty() {
            return Err(KeyError::new("ui.theme", "must name a theme (e.g. \"dark\")"));
        }
        crate::ui::keymap::KeyMap::from_config(&ui.keys).map_err(|m| KeyError::new("ui.keys", m))?;
        self.fleet.validate(d.latency_bound_ms)
    }
}

/// A semantic error on one key, e.g. `dispatch.ewma_weight`.
#[derive(Debug)]
pub struct KeyError {
    pub key: &'static str,
    pub message: String,
}

impl KeyError {
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self { key, message: message.into() }
    }
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for KeyError {}

/// Parses one file and type-checks it alone, so unknown keys and wrong types are reported with
/// that file's name, line and column (toml's own error carries the span).
fn parse_layer(file: &Path, text: &str) -> Result<toml::Table> {
    let name = file.display();
    if let Err(e) = toml::from_str::<Config>(text) {
        bail!("config file {name}: {e}");
    }
    toml::from_str::<toml::Table>(text).with_context(|| format!("config file {name}"))
}

fn deep_merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => deep_merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Finds the 1-based line where `section.key` is set in a TOML file, for error messages.
fn locate_key(file: &Path, dotted: &str) -> Option<usize> {
    let text = std::fs::read_to_string(file).ok()?;
    let (section, key) = dotted.rsplit_once('.')?;
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(s) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            current = s.trim().to_string();
        } else if current == section {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim() == key {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("c.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn shipped_config_parses_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let shipped: Config = toml::from_str(&text).unwrap();
        let defaults = Config::default();
        // The commented file documents the defaults; drifting apart would mislead users.
        assert_eq!(toml::to_string(&shipped).unwrap(), toml::to_string(&defaults).unwrap());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "[dispatch]\npolicy = \"paper\"\nlatency_bound = 3\n");
        let err = format!("{:#}", Config::load(Some(&p)).unwrap_err());
        assert!(err.contains("latency_bound"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn wrong_type_names_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "[server]\n\ntop_k = \"five\"\n");
        let err = format!("{:#}", Config::load(Some(&p)).unwrap_err());
        assert!(err.contains("line 3") && err.contains("top_k"), "{err}");
    }

    #[test]
    fn semantic_error_names_key_and_position() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "[dispatch]\n# comment\newma_weight = 1.5\n");
        let err = format!("{:#}", Config::load(Some(&p)).unwrap_err());
        assert!(err.contains("dispatch.ewma_weight"), "{err}");
        assert!(err.contains("c.toml:3"), "{err}");
    }

    #[test]
    fn front_end_addresses_and_timeout_range_are_checked() {
        let mut c = Config::default();
        assert_eq!(c.server.http_addr(), Some("127.0.0.1:8000".parse().unwrap()));
        c.server.grpc_listen = String::new();
        assert_eq!(c.server.grpc_addr(), None);
        assert!(c.validate().is_ok(), "an empty address turns a front end off");
        c.server.http_listen = "localhost".into();
        assert_eq!(c.validate().unwrap_err().key, "server.http_listen");
        let mut c = Config::default();
        c.dispatch.timeout_max_ms = 0.5;
        assert_eq!(c.validate().unwrap_err().key, "dispatch.timeout_max_ms");
    }

    #[test]
    fn unknown_policy_is_refused() {
        let mut c = Config::default();
        c.dispatch.policy = "nope".into();
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "dispatch.policy");
        assert!(e.message.contains("paper"));
    }

    #[test]
    fn fleet_thresholds_must_be_ordered_and_above_t() {
        let mut c = Config::default();
        c.fleet.tc_lower_ms = 300.0;
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "fleet.tc_lower_ms");
        assert!(e.message.contains("below TC_upper"), "{}", e.message);
        let mut c = Config::default();
        c.dispatch.latency_bound_ms = 150.0;
        let e = c.validate().unwrap_err();
        assert!(e.message.contains("above the server's bound T"), "{}", e.message);
        let mut c = Config::default();
        c.fleet.link.chunk_bytes = 0;
        assert_eq!(c.validate().unwrap_err().key, "fleet.link.chunk_bytes");
    }

    #[test]
    fn nested_fleet_key_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "[fleet]\nclients = 2\n\n[fleet.link]\nrtt_ms = -1.0\n");
        let err = format!("{:#}", Config::load(Some(&p)).unwrap_err());
        assert!(err.contains("fleet.link.rtt_ms") && err.contains("c.toml:5"), "{err}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/edgeinfer.toml"))).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/edgeinfer.toml"));
    }

    #[test]
    fn merge_overrides_leaves_only() {
        let mut base: toml::Table = toml::from_str("[a]\nx = 1\ny = 2\n").unwrap();
        deep_merge(&mut base, toml::from_str("[a]\ny = 3\n").unwrap());
        assert_eq!(base["a"]["x"].as_integer(), Some(1));
        assert_eq!(base["a"]["y"].as_integer(), Some(3));
    }
}
