//! Retention: a site set to `--retain 400d` keeps 400 days of events. The
//! upkeep task ([`crate::upkeep`]) deletes older events and dropped copies
//! once an hour, on its own connection, so ingest never waits for it.
//!
//! An event is deleted when it happened before the cutoff *and* its dedup
//! window has closed: a backfilled old event stays until its window ends, so
//! the writer never updates a row that retention is deleting, and the two
//! never conflict. The cutoff is rounded down to a 15-minute slot, so that
//! the rollups lose whole slots with the rows they count.

use crate::app::App;
use crate::domain::period::SLOT;
use crate::store::{self, rollup, timestamp, Result};
use duckdb::params;

/// What one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Deleted {
    /// Unique events.
    pub events: u64,
    /// Dropped-copy records.
    pub duplicates: u64,
}

/// Deletes, for every site with a retention, what is past it.
pub fn run_once(app: &App) -> Result<Deleted> {
    let _upkeep = crate::upkeep::lock();
    let now = app.clock.now_micros();
    let conn = app.store.connect()?;
    let mut total = Deleted::default();
    for site in app.sites.all() {
        let Some(days) = site.settings.retain_days else {
            continue;
        };
        let cutoff = (now - i64::from(days) * 86_400_000_000).div_euclid(SLOT) * SLOT;
        let window_closed = now - i64::from(site.settings.window_secs) * 1_000_000;
        let (events, duplicates) = store::transaction(&conn, |c| {
            let events = c.execute(
                "DELETE FROM events WHERE site = ? AND occurred_at < ? AND received_at < ?",
                params![site.name, timestamp(cutoff), timestamp(window_closed)],
            )?;
            let duplicates = c.execute(
                "DELETE FROM duplicates WHERE site = ? AND received_at < ?",
                params![site.name, timestamp(cutoff)],
            )?;
            rollup::trim(c, &site.name, cutoff, window_closed)?;
            Ok::<_, store::StoreError>((events as u64, duplicates as u64))
        })?;
        if events + duplicates > 0 {
            tracing::info!(site = %site.name, events, duplicates, days, "retention deleted old rows");
        }
        total.events += events;
        total.duplicates += duplicates;
    }
    Ok(total)
}
