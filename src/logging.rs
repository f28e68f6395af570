//! Logging set-up. Headless and one-shot commands log to stderr (stdout carries the status
//! lines and results); `RUST_LOG` overrides the default filter.

use tracing_subscriber::EnvFilter;

const DEFAULT_FILTER: &str = "edgeinfer=info,ort=warn";

pub fn init_stderr() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
