//! Integration tests: one binary (every test binary links all of DuckDB),
//! one module per area. Each test starts the real server on a free port with
//! a temporary data dir, or runs the built `tally` binary.

mod browser;
mod helpers;
mod proxy;
mod session;

mod cli;
mod dashboard_api;
mod dashboard_browser;
mod dedup;
mod forward;
mod hardening;
mod hostile;
mod ingest;
mod keys;
mod model;
mod operations;
mod ops;
mod pixel;
mod pixel_browser;
mod restart;
mod rollup;
mod sdk;
mod test_mode;
