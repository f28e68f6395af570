//! `[models]`: which ladder to serve.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    pub manifest: PathBuf,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self { manifest: PathBuf::from("models/ladder.toml") }
    }
}
