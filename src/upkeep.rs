//! The background upkeep, on its own thread so its writes never conflict
//! with each other and never wait on the async threads: rollups advanced
//! every minute ([`roll_up`]), retention every hour ([`crate::retention`]).

use crate::app::App;
use crate::store::{rollup, Result};
use duckdb::Connection;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

static UPKEEP: Mutex<()> = Mutex::new(());

/// Holds off every other upkeep pass in this process (and hand-written
/// changes that clear the rollups): their writes to the rollup tables
/// would conflict.
pub fn lock() -> MutexGuard<'static, ()> {
    UPKEEP.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often the rollups advance.
pub const TICK: Duration = Duration::from_secs(60);

/// Retention runs once every this many ticks (an hour).
const RETENTION_TICKS: u32 = 60;

/// The rollups are checked against the rows once every this many ticks: a
/// count over one column of each table (measured: 40 ms at 10 M events and
/// 2.5 M dropped copies, so ~0.4 s at 100 M).
const CHECK_TICKS: u32 = 10;

/// Advances every site's rollups as far as their windows allow; the first
/// build over a large store logs its progress a day of arrivals at a time.
/// A site that fails is logged and the others go on.
pub fn roll_up(app: &App) -> Result<()> {
    let _upkeep = lock();
    let conn = app.store.connect()?;
    for site in app.sites.all() {
        if let Err(e) = roll_up_site(app, &conn, &site.name, &rollup::Rules::of(&site.settings)) {
            tracing::warn!(site = %site.name, error = %e, "rollup pass failed; retrying in a minute");
        }
    }
    Ok(())
}

fn roll_up_site(app: &App, conn: &Connection, site: &str, rules: &rollup::Rules) -> Result<()> {
    loop {
        let now = app.clock.now_micros();
        match rollup::advance(conn, site, rules, now)? {
            rollup::Advance::CaughtUp => return Ok(()),
            rollup::Advance::Partway(to) => tracing::info!(
                site,
                counted_until = %crate::store::sql::format_timestamp(to),
                "rolling up events"
            ),
        }
    }
}

/// Checks every site's rollups against the rows ([`rollup::agrees`]) and
/// empties those that drifted, to be counted again; returns how many.
pub fn check(app: &App) -> Result<usize> {
    let _upkeep = lock();
    let conn = app.store.connect()?;
    let mut drifted = 0;
    for site in app.sites.all() {
        if !rollup::agrees(&conn, &site.name)? {
            tracing::warn!(site = %site.name, "rollups disagreed with the rows; counting them again");
            rollup::clear(&conn, Some(&site.name))?;
            drifted += 1;
        }
    }
    Ok(drifted)
}

/// The upkeep thread: rollups first (so the dashboard is fast soon after
/// a start), retention at the first tick and every hour after.
pub struct Upkeep {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Upkeep {
    /// Starts the thread.
    pub fn start(app: Arc<App>) -> std::io::Result<Upkeep> {
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tally-upkeep".into())
            .spawn(move || run(&app, &stopped))?;
        Ok(Upkeep { stop, thread })
    }

    /// Stops the thread after the pass in progress, if any.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn run(app: &App, stopped: &std::sync::mpsc::Receiver<()>) {
    let mut ticks = 0u32;
    loop {
        if ticks.is_multiple_of(CHECK_TICKS) {
            if let Err(e) = check(app) {
                tracing::warn!(error = %e, "rollup check failed; retrying later");
            }
        }
        if let Err(e) = roll_up(app) {
            tracing::warn!(error = %e, "rollup pass failed; retrying in a minute");
        }
        if ticks.is_multiple_of(RETENTION_TICKS) {
            if let Err(e) = crate::retention::run_once(app) {
                tracing::warn!(error = %e, "retention pass failed; retrying in an hour");
            }
        }
        ticks = ticks.wrapping_add(1);
        match stopped.recv_timeout(TICK) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}
