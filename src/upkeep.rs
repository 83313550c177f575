//! The background upkeep, on one connection so its writes never conflict
//! with each other: rollups advanced every minute ([`roll_up`]), retention
//! every hour ([`crate::retention`]). Both run off the async threads.

use crate::app::App;
use crate::store::{rollup, Result};
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

/// Advances every site's rollups as far as their windows allow; the first
/// build over a large store logs its progress a day of arrivals at a time.
pub fn roll_up(app: &App) -> Result<()> {
    let _upkeep = lock();
    let conn = app.store.connect()?;
    for site in app.sites.all() {
        let window = site.settings.window_secs;
        loop {
            let now = app.clock.now_micros();
            match rollup::advance(&conn, &site.name, window, now)? {
                rollup::Advance::CaughtUp => break,
                rollup::Advance::Partway(to) => tracing::info!(
                    site = %site.name,
                    counted_until = %crate::store::sql::format_timestamp(to),
                    "rolling up events"
                ),
            }
        }
    }
    Ok(())
}

/// Runs the upkeep until dropped: rollups first (so the dashboard is fast
/// soon after a start), retention at the first tick and every hour after.
pub async fn run_forever(app: Arc<App>) {
    let mut tick = tokio::time::interval(TICK);
    let mut ticks = 0u32;
    loop {
        tick.tick().await;
        let retain = ticks % RETENTION_TICKS == 0;
        ticks = ticks.wrapping_add(1);
        let app = app.clone();
        let pass = tokio::task::spawn_blocking(move || {
            let rolled = roll_up(&app);
            let retained = if retain {
                crate::retention::run_once(&app).map(|_| ())
            } else {
                Ok(())
            };
            (rolled, retained)
        })
        .await;
        match pass {
            Ok((rolled, retained)) => {
                if let Err(e) = rolled {
                    tracing::warn!(error = %e, "rollup pass failed; retrying in a minute");
                }
                if let Err(e) = retained {
                    tracing::warn!(error = %e, "retention pass failed; retrying in an hour");
                }
            }
            Err(e) => tracing::warn!(error = %e, "upkeep pass panicked"),
        }
    }
}
