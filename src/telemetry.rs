//! Logging: tracing-subscriber to stderr (stdout is for command results),
//! filtered by `RUST_LOG`, defaulting to `default_level`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
