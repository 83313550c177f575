//! Tally: a single-binary analytics appliance that counts every event once.
//!
//! # Layout
//!
//! Dependencies point one way: `http → ingest → (dedup, store) → domain`.
//!
//! - [`domain`]: pure types and rules, no I/O: [`domain::Event`] parsed with
//!   the limits of the contract, the dedup key fingerprint, sites, the clock.
//! - [`dedup`]: the in-memory windowed key index and the rules of which copy
//!   wins; no I/O.
//! - [`store`]: DuckDB only: migrations, appends and updates, site rows,
//!   `tally sql`, exports.
//! - [`ingest`]: the bounded queue and the single writer thread that decides
//!   each copy against the index and group-commits to the store before
//!   answering (the durable ack).
//! - [`http`]: actix-web only: routes, the error → status table, the pixel
//!   and dashboard files.
//! - [`control`]: the commands shared by the CLI and the server's control
//!   socket, so CLI commands work with or without a running server.
//! - [`app`]: the [`app::App`] value that ties config, store, sites, ingest
//!   and counters together; [`server`] runs it; [`commands`] is the CLI.
//! - [`forward`]: the outbox sender that delivers each unique event to the
//!   site's webhooks and Meta's Conversions API once.
//! - [`retention`]: deletes events past a site's retention.
//! - [`upkeep`]: the background task that advances the rollups and runs
//!   retention.
//!
//! A request to `/v1/events` goes: `http::ingest` parses and authenticates →
//! `ingest::Ingest::ingest` queues → the writer judges each copy with
//! `dedup` and appends rows with `store::events` → COMMIT → the answer.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod dedup;
pub mod domain;
pub mod forward;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod retention;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod upkeep;
