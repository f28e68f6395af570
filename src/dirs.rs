//! Where edgeinfer keeps per-user state: the user config file, fetched runtimes and wheels,
//! generated models that cannot live beside their manifest, and the console's log.

use std::path::PathBuf;

/// The platform's folders for edgeinfer. `None` when the platform gives no home folder.
pub fn project_dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "edgeinfer")
}

pub fn user_config_path() -> Option<PathBuf> {
    project_dirs().map(|d| d.config_dir().join("config.toml"))
}

/// Data folder for fetched runtimes and generated models that cannot live beside the manifest.
pub fn data_dir() -> PathBuf {
    project_dirs().map(|d| d.data_dir().to_path_buf()).unwrap_or_else(|| std::env::temp_dir().join("edgeinfer"))
}
