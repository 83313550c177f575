//! The `sites` table: create, list, rotate tokens, change settings.

use super::{timestamp, Result, StoreError};
use crate::domain::site::{DedupPolicy, Site, SiteSettings};
use duckdb::{params, Connection, Row};

const COLUMNS: &str = "site_id, name, site_key, token_hash, array_to_string(origins, ' '), \
                       window_secs, policy, merge_properties, daily_quota, secondary_keys::VARCHAR, \
                       timezone, retain_days, revenue_property";

fn from_row(r: &Row<'_>) -> duckdb::Result<Site> {
    let origins: String = r.get(4)?;
    let policy: String = r.get(6)?;
    let quota: Option<i64> = r.get(8)?;
    let keys: Option<String> = r.get(9)?;
    let timezone: Option<String> = r.get(10)?;
    let retain: Option<i64> = r.get(11)?;
    Ok(Site {
        id: r.get(0)?,
        name: r.get(1)?,
        site_key: r.get(2)?,
        token_hash: r.get(3)?,
        origins: origins.split_whitespace().map(str::to_owned).collect(),
        settings: SiteSettings {
            window_secs: r.get(5)?,
            policy: DedupPolicy::parse(&policy).unwrap_or_default(),
            merge_properties: r.get(7)?,
            daily_quota: quota.map(|q| q.max(0) as u64),
            secondary_keys: keys
                .and_then(|k| serde_json::from_str(&k).ok())
                .unwrap_or_default(),
            timezone: timezone
                .and_then(|t| t.parse().ok())
                .unwrap_or(chrono_tz::Tz::UTC),
            retain_days: retain.filter(|d| *d > 0).map(|d| d as u32),
            revenue_property: r.get(12)?,
        },
    })
}

/// Every site, by id.
pub fn list(conn: &Connection) -> Result<Vec<Site>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM sites ORDER BY site_id"))?;
    let sites = stmt
        .query_map([], from_row)?
        .collect::<duckdb::Result<Vec<_>>>()?;
    Ok(sites)
}

/// Inserts a site with the next free id; the name must be new.
pub fn insert(
    conn: &Connection,
    name: &str,
    site_key: &str,
    token_hash: &str,
    origins: &[String],
    now_micros: i64,
) -> Result<Site> {
    if list(conn)?.iter().any(|s| s.name == name) {
        return Err(StoreError::SiteExists(name.to_owned()));
    }
    let id: u32 = conn.query_row("SELECT coalesce(max(site_id), 0) + 1 FROM sites", [], |r| {
        r.get(0)
    })?;
    conn.execute(
        "INSERT INTO sites (site_id, name, site_key, token_hash, origins, created_at) \
         VALUES (?, ?, ?, ?, string_split(?, ' '), ?)",
        params![
            id,
            name,
            site_key,
            token_hash,
            origins.join(" "),
            timestamp(now_micros)
        ],
    )?;
    Ok(Site {
        id,
        name: name.to_owned(),
        site_key: site_key.to_owned(),
        token_hash: token_hash.to_owned(),
        origins: origins.to_vec(),
        settings: SiteSettings::default(),
    })
}

/// Replaces a site's token hash.
pub fn set_token_hash(conn: &Connection, site_id: u32, token_hash: &str) -> Result<()> {
    conn.execute(
        "UPDATE sites SET token_hash = ? WHERE site_id = ?",
        params![token_hash, site_id],
    )?;
    Ok(())
}

/// Replaces a site's settings.
pub fn set_settings(conn: &Connection, site_id: u32, s: &SiteSettings) -> Result<()> {
    conn.execute(
        "UPDATE sites SET window_secs = ?, policy = ?, merge_properties = ?, daily_quota = ?, \
         secondary_keys = ?, timezone = ?, retain_days = ?, revenue_property = ? WHERE site_id = ?",
        params![
            s.window_secs,
            s.policy.as_str(),
            s.merge_properties,
            s.daily_quota.map(|q| q as i64),
            (!s.secondary_keys.is_empty())
                .then(|| serde_json::to_string(&s.secondary_keys).unwrap_or_default()),
            s.timezone.name(),
            s.retain_days,
            s.revenue_property,
            site_id
        ],
    )?;
    Ok(())
}

/// Replaces a site's allowed origins.
pub fn set_origins(conn: &Connection, site_id: u32, origins: &[String]) -> Result<()> {
    conn.execute(
        "UPDATE sites SET origins = string_split(?, ' ') WHERE site_id = ?",
        params![origins.join(" "), site_id],
    )?;
    Ok(())
}
