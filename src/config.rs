//! Configuration: typed keys, layered files, and errors that point at the offending line.
//!
//! Layers, later wins: built-in defaults, the project file (`--config FILE`, else `./config.toml`
//! when present), the user file under the platform config folder (from `directories`), then flags.
//! Each file is checked on its own first so an error names that file, key and line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::dirs::user_config_path;
pub use crate::dispatch::config::DispatchConfig;
pub use crate::engine::config::{BackendChoice, EngineConfig};
pub use crate::fleet::config::{FleetConfig, LinkConfig};
pub use crate::models::config::ModelsConfig;
pub use crate::server::config::ServerConfig;
pub use crate::ui::config::UiConfig;

/// The whole configuration, one section per module; each section is defined, defaulted and
/// checked by the module it configures (re-exported here), except `[headless]`, which only the
/// headless front end reads.
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

/// `[headless]`: the status line's interval.
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
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read config file {}", file.display()))?;
            let table = parse_layer(file, &text)?;
            deep_merge(&mut merged, table);
        }
        let config: Config = toml::Value::Table(merged).try_into().context("merged configuration is invalid")?;
        config.validate().map_err(|e| {
            // Point at the last file that set the key, since that is the one to edit.
            let key = e.key;
            let place = files.iter().rev().find_map(|f| locate_key(f, key).map(|line| format!(" ({}:{line})", f.display()))).unwrap_or_default();
            anyhow::anyhow!("config key `{key}`{place}: {}", e.message)
        })?;
        Ok(config)
    }

    /// Semantic checks that serde cannot express, section by section, each by its owner. Also
    /// used after flags are applied.
    pub fn validate(&self) -> std::result::Result<(), KeyError> {
        let bound_ms = self.dispatch.latency_bound_ms;
        self.dispatch
            .validate()
            .and_then(|()| self.engine.validate())
            .and_then(|()| self.server.validate())
            .and_then(|()| self.models.validate())
            .and_then(|()| self.validate_headless())
            .and_then(|()| self.ui.validate())
            .and_then(|()| self.fleet.validate(bound_ms))
            .map_err(|(key, message)| KeyError::new(key, message))
    }

    fn validate_headless(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.headless.status_interval_ms < 50 {
            return Err(("headless.status_interval_ms", "must be at least 50".into()));
        }
        Ok(())
    }

    /// What the engine is built from.
    pub fn engine_settings(&self) -> crate::engine::Settings {
        crate::engine::Settings {
            engine: self.engine.clone(),
            dispatch: self.dispatch.clone(),
            manifest: self.models.manifest.clone(),
            max_waiting: self.server.max_waiting,
            max_image_pixels: self.server.max_image_pixels,
            top_k: self.server.top_k,
        }
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
    fn jpeg_subsampling_takes_the_usual_names_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "[fleet]\njpeg_subsampling = \"4:4:4\"\n");
        assert_eq!(Config::load(Some(&p)).unwrap().fleet.jpeg_subsampling, crate::fleet::config::Subsampling::S444);
        assert_eq!(Config::default().fleet.jpeg_subsampling, crate::fleet::config::Subsampling::S420);
        let p = write(dir.path(), "[fleet]\njpeg_subsampling = \"4:1:1\"\n");
        let err = format!("{:#}", Config::load(Some(&p)).unwrap_err());
        assert!(err.contains("jpeg_subsampling") && err.contains("4:2:0"), "{err}");
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
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "[dispatch]\npolicy = \"nope\"\n");
        let err = format!("{:#}", Config::load(Some(&p)).unwrap_err());
        assert!(err.contains("unknown policy \"nope\"") && err.contains("paper") && err.contains("line 2"), "{err}");
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
