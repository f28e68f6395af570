//! `[models]`: which ladder to serve.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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

impl ModelsConfig {
    /// Checks serde cannot express: `Err((key, why))` for the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.name.is_empty() || self.name.contains('/') {
            return Err(("models.name", "must be a non-empty name without '/'".into()));
        }
        Ok(())
    }
}
