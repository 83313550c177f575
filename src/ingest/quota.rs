//! Per-site daily quotas: unique events accepted per UTC day. Counted after
//! each commit and loaded from the store at start, so a restart does not
//! reset a spent quota.

use crate::domain::Site;
use crate::store::{events, Result};
use duckdb::Connection;
use std::collections::HashMap;
use std::sync::Mutex;

const DAY_MICROS: i64 = 86_400 * 1_000_000;

/// A spent quota: retry after this many seconds (the next UTC midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// Seconds until the quota resets.
    pub retry_after_secs: u64,
}

/// Accepted events per site for the current UTC day.
#[derive(Debug, Default)]
pub struct Quotas {
    used: Mutex<HashMap<String, (i64, u64)>>,
}

impl Quotas {
    /// Counts today's accepted events of every site from the store.
    pub fn load(conn: &Connection, sites: &[Site], now_micros: i64) -> Result<Quotas> {
        let today = now_micros.div_euclid(DAY_MICROS);
        let mut used = HashMap::new();
        for (site, n) in events::counts_since(conn, today * DAY_MICROS)? {
            if sites.iter().any(|s| s.name == site) {
                used.insert(site, (today, n));
            }
        }
        Ok(Quotas {
            used: Mutex::new(used),
        })
    }

    /// Refuses when `site` has spent its quota for today.
    pub fn check(&self, site: &Site, now_micros: i64) -> Result<(), QuotaExceeded> {
        let Some(limit) = site.settings.daily_quota else {
            return Ok(());
        };
        let today = now_micros.div_euclid(DAY_MICROS);
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        match used.get(&site.name) {
            Some(&(day, n)) if day == today && n >= limit => Err(QuotaExceeded {
                retry_after_secs: ((today + 1) * DAY_MICROS - now_micros)
                    .div_euclid(1_000_000)
                    .max(1) as u64,
            }),
            _ => Ok(()),
        }
    }

    /// Adds `n` accepted events to `site`'s count for today.
    pub fn add(&self, site: &str, n: u64, now_micros: i64) {
        let today = now_micros.div_euclid(DAY_MICROS);
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let slot = used.entry(site.to_owned()).or_insert((today, 0));
        if slot.0 != today {
            *slot = (today, 0);
        }
        slot.1 += n;
    }
}
