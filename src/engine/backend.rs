//! Choosing the inference backend at start-up: ONNX Runtime loaded from a shared library at run
//! time when one can be found (or fetched), otherwise tract, a pure-Rust ONNX engine compiled in.
//!
//! Both sit behind the same `ort` API: `ort::set_api` installs either ONNX Runtime's C function
//! table or ort-tract's emulation of it, once per process.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};

use super::config::{BackendChoice, EngineConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Onnxruntime,
    Tract,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Onnxruntime => "onnxruntime",
            BackendKind::Tract => "tract",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendInfo {
    pub name: BackendKind,
    pub version: String,
    /// The ONNX Runtime library in use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<PathBuf>,
    /// Why ONNX Runtime is not in use, when the choice was `auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
}

impl BackendInfo {
    /// One line for logs, status lines and the console header.
    pub fn describe(&self) -> String {
        match &self.fallback_reason {
            None => format!("{} {}", self.name.as_str(), self.version),
            Some(why) => format!(
                "{} {} (ONNX Runtime not available: {why}; ~9x slower — set ORT_DYLIB_PATH or engine.ort_dylib, or `pip install onnxruntime`)",
                self.name.as_str(),
                self.version
            ),
        }
    }
}

static BACKEND: OnceLock<BackendInfo> = OnceLock::new();
static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

pub const TRACT_VERSION: &str = "0.23 (ort-tract 0.5.0)";

/// The backend chosen for this process, if [`init`] ran.
pub fn current() -> Option<&'static BackendInfo> {
    BACKEND.get()
}

/// Installs the backend for the whole process. A second call returns the first choice when it
/// is compatible with `cfg`, and an error when it is not (the `ort` API table cannot be swapped).
pub fn init(cfg: &EngineConfig) -> Result<&'static BackendInfo> {
    static INIT: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
    let _g = INIT.lock();
    if let Some(existing) = BACKEND.get() {
        let compatible = match cfg.backend {
            BackendChoice::Auto => true,
            BackendChoice::Onnxruntime => existing.name == BackendKind::Onnxruntime,
            BackendChoice::Tract => existing.name == BackendKind::Tract,
        };
        if !compatible {
            bail!("backend already initialised as {} in this process", existing.name.as_str());
        }
        return Ok(existing);
    }
    let info = match cfg.backend {
        BackendChoice::Tract => install_tract(None),
        BackendChoice::Onnxruntime => install_onnxruntime(cfg)?,
        BackendChoice::Auto => match install_onnxruntime(cfg) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!("ONNX Runtime unavailable, falling back to tract: {e:#}");
                install_tract(Some(format!("{e:#}")))
            }
        },
    };
    let env = ort::init()
        .with_name("edgeinfer")
        .with_telemetry(false)
        .build()
        .map_err(|e| anyhow!("cannot create the {} environment: {e}", info.name.as_str()))?;
    let _ = ENVIRONMENT.set(env);
    Ok(BACKEND.get_or_init(|| info))
}

/// The process-wide `ort` environment sessions are built in; `None` before [`init`].
pub fn environment() -> Option<&'static ort::environment::Environment> {
    ENVIRONMENT.get()
}

fn install_tract(fallback_reason: Option<String>) -> BackendInfo {
    ort::set_api(ort_tract::api());
    BackendInfo { name: BackendKind::Tract, version: TRACT_VERSION.into(), library: None, fallback_reason }
}

fn install_onnxruntime(cfg: &EngineConfig) -> Result<BackendInfo> {
    let path = match find_onnxruntime(cfg) {
        Some(p) => p,
        None if cfg.fetch_onnxruntime => fetch_wheel(&cfg.onnxruntime_version)?,
        None => bail!("no libonnxruntime found and engine.fetch_onnxruntime is off"),
    };
    let (api, version) = load_library(&path)?;
    if !ort::set_api(api) {
        bail!("the ort API table was already set in this process");
    }
    tracing::info!(library = %path.display(), %version, "using ONNX Runtime");
    Ok(BackendInfo { name: BackendKind::Onnxruntime, version, library: Some(path), fallback_reason: None })
}

/// dlopens the library and copies its API table. The library stays loaded for the process' life.
fn load_library(path: &Path) -> Result<(ort::sys::OrtApi, String)> {
    // SAFETY: loading runs the library's initialisers; libonnxruntime's are sound to run once.
    let lib = unsafe { libloading::Library::new(path) }.with_context(|| format!("cannot load ONNX Runtime library {}", path.display()))?;
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    // SAFETY: the symbol has this signature in every ONNX Runtime release (C API, stable ABI).
    let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> = unsafe { lib.get(b"OrtGetApiBase\0") }
        .with_context(|| format!("{} has no OrtGetApiBase: not an ONNX Runtime library", path.display()))?;
    // SAFETY: OrtGetApiBase returns a pointer to a static table, or null.
    let base = unsafe { get_base().as_ref() }.ok_or_else(|| anyhow!("OrtGetApiBase returned null"))?;
    // SAFETY: both are plain C calls returning static data.
    let version = unsafe { CStr::from_ptr((base.GetVersionString)()) }.to_string_lossy().into_owned();
    let api = unsafe { (base.GetApi)(ort::sys::ORT_API_VERSION).as_ref() }.ok_or_else(|| {
        anyhow!("ONNX Runtime {version} at {} does not offer API version {}: too old", path.display(), ort::sys::ORT_API_VERSION)
    })?;
    Ok((api.clone(), version))
}

/// Looks for libonnxruntime, in the documented order.
pub fn find_onnxruntime(cfg: &EngineConfig) -> Option<PathBuf> {
    let env = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()).map(PathBuf::from);
    let configured = Some(PathBuf::from(&cfg.ort_dylib)).filter(|p| !p.as_os_str().is_empty());
    if let Some(p) = env.or(configured) {
        // An explicit path is used as given, so a wrong one fails loudly instead of being skipped.
        return Some(p);
    }
    let beside_exe = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf));
    let candidates = [beside_exe, python_capi_dir(), Some(fetched_dir(&cfg.onnxruntime_version))];
    candidates.into_iter().flatten().find_map(|dir| library_in(&dir))
}

/// `libonnxruntime.so` or a versioned `libonnxruntime.so.X.Y.Z` in `dir`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == "libonnxruntime.so" || n.starts_with("libonnxruntime.so.") || n == "libonnxruntime.dylib")
        })
        .collect();
    found.sort();
    found.pop()
}

/// The `onnxruntime` Python package's `capi/` folder, where its wheel puts the shared library.
fn python_capi_dir() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import importlib.util as u; s = u.find_spec('onnxruntime'); print(s.submodule_search_locations[0] if s else '')"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir).join("capi"))
}

/// The `onnxruntime` wheel edgeinfer fetches when no library is installed.
fn onnxruntime_wheel(version: &str) -> crate::pypi::Wheel<'_> {
    crate::pypi::Wheel { package: "onnxruntime", version }
}

pub fn fetched_dir(version: &str) -> PathBuf {
    onnxruntime_wheel(version).cache_dir(&crate::dirs::data_dir())
}

/// Fetches the pinned `onnxruntime` wheel from PyPI with pip and keeps just its shared library.
fn fetch_wheel(version: &str) -> Result<PathBuf> {
    let mut files = crate::pypi::fetch(onnxruntime_wheel(version), &["onnxruntime/capi/libonnxruntime.so*"], &crate::dirs::data_dir())?;
    Ok(files.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_versioned_library_names() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(library_in(dir.path()), None);
        std::fs::write(dir.path().join("libonnxruntime.so.1.32.0"), b"").unwrap();
        std::fs::write(dir.path().join("libother.so"), b"").unwrap();
        assert_eq!(library_in(dir.path()), Some(dir.path().join("libonnxruntime.so.1.32.0")));
    }

    #[test]
    fn loading_a_non_library_fails_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("libonnxruntime.so");
        std::fs::write(&fake, b"not an ELF file").unwrap();
        let err = format!("{:#}", load_library(&fake).unwrap_err());
        assert!(err.contains("libonnxruntime.so"), "{err}");
    }

    #[test]
    fn fallback_is_described_with_a_hint() {
        let info = BackendInfo { name: BackendKind::Tract, version: TRACT_VERSION.into(), library: None, fallback_reason: Some("x".into()) };
        assert!(info.describe().contains("ORT_DYLIB_PATH"));
    }
}
