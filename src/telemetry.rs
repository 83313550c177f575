//! Logging: tracing-subscriber to stderr (stdout is for command results),
//! filtered by `RUST_LOG`, defaulting to `default_level`.
//!
//! actix-http logs each malformed or aborted client request (`stream error:
//! Request parse error …`) at ERROR: that is the client's fault, answered
//! with a 400, and anyone could flood the log with it. The default filter
//! silences that one target; `RUST_LOG` overrides it all.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// The directive that keeps clients' malformed requests out of the log.
const QUIET_CLIENT_ERRORS: &str = "actix_http::h1::dispatcher=off";

/// Installs the global subscriber.
pub fn init(default_level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},{QUIET_CLIENT_ERRORS}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
