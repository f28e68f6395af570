//! `[ui]` and `[ui.keys]`: the console's theme, T step, frame rate, chart window and key map.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::keymap::{default_bindings, KeyMap};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    pub theme: String,
    pub themes_dir: PathBuf,
    pub t_step_ms: f64,
    pub fps: u32,
    pub chart_window_s: u64,
    /// Action name → keys, e.g. `t_up = ["Up", "+"]`. Actions a file leaves out keep their default keys.
    pub keys: BTreeMap<String, Vec<String>>,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            theme: "dark".into(),
            themes_dir: PathBuf::from("themes"),
            t_step_ms: 5.0,
            fps: 10,
            chart_window_s: 300,
            keys: default_bindings(),
        }
    }
}

impl UiConfig {
    /// Checks serde cannot express: `Err((key, why))` for the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let bad = |key, why: &str| Err((key, why.to_string()));
        if !(self.t_step_ms.is_finite() && self.t_step_ms > 0.0) {
            return bad("ui.t_step_ms", "must be a positive number of milliseconds");
        }
        if !(1..=60).contains(&self.fps) {
            return bad("ui.fps", "must be between 1 and 60");
        }
        if self.chart_window_s < 10 {
            return bad("ui.chart_window_s", "must be at least 10 seconds");
        }
        if self.theme.is_empty() {
            return bad("ui.theme", "must name a theme (e.g. \"dark\")");
        }
        KeyMap::from_config(&self.keys).map(|_| ()).map_err(|m| ("ui.keys", m))
    }
}
