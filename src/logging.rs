//! Logging set-up. Headless and one-shot commands log to stderr (stdout carries the status
//! lines and results); the console logs to a file, since anything on the terminal would tear
//! its screen. `RUST_LOG` overrides the default filter.

use std::path::PathBuf;

use tracing_subscriber::EnvFilter;

const DEFAULT_FILTER: &str = "edgeinfer=info,ort=warn";

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

pub fn init_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Where the console's log goes: `edgeinfer.log` in the platform state folder (Linux:
/// `$XDG_STATE_HOME/edgeinfer`, else `~/.local/state/edgeinfer`), or the data folder elsewhere.
pub fn log_file_path() -> PathBuf {
    let dir = crate::dirs::project_dirs().and_then(|d| d.state_dir().map(|p| p.to_path_buf())).unwrap_or_else(crate::dirs::data_dir);
    dir.join("edgeinfer.log")
}

/// Appends logs to `path` (created with its folder). Keep the guard alive: dropping it flushes
/// and stops the background writer.
pub fn init_file(path: &std::path::Path) -> std::io::Result<tracing_appender::non_blocking::WorkerGuard> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let (writer, guard) = tracing_appender::non_blocking(file);
    let _ = tracing_subscriber::fmt().with_env_filter(filter()).with_ansi(false).with_writer(writer).try_init();
    Ok(guard)
}

static PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts every panic in the process (caught ones too, e.g. a model worker's), then runs the
/// previous hook. Soak runs report the count.
pub fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        previous(info);
    }));
}

pub fn panics() -> u64 {
    PANICS.load(std::sync::atomic::Ordering::Relaxed)
}
