//! Commands that change or read the appliance (`tally site …`, `sql`,
//! `import`, `export`, `admin`), executed against an [`App`].
//!
//! DuckDB lets one process hold the file, so every CLI command first tries
//! the running server's control socket (`DATA_DIR/tally.sock`, owner-only)
//! and sends it a [`Request`]; with no server it opens the file itself and
//! calls the same [`execute`]. The answer is the same JSON value either way,
//! and the CLI prints it, so the output cannot differ between the two paths.

pub mod client;
pub mod forward;
pub mod import;
pub mod socket;

use crate::app::App;
use crate::domain::site::DedupPolicy;
use crate::domain::SiteSettings;
use crate::store::{self, export::Format, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;

/// One command for [`execute`]; also the control socket's wire format.
/// Fields mirror the CLI flags of the same names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Request {
    /// `tally site add`.
    SiteAdd { name: String, origins: Vec<String> },
    /// `tally site list`.
    SiteList,
    /// `tally site rotate-token`.
    SiteRotateToken { site: String },
    /// `tally site set`.
    SiteSet { site: String, change: SiteChange },
    /// `tally admin set-password` (the CLI sends the Argon2 hash, never the password).
    SetPasswordHash { hash: String },
    /// `tally sql`.
    Sql { query: String, write: bool },
    /// `tally import` (an absolute path the server can read).
    Import {
        path: PathBuf,
        site: String,
        #[serde(default)]
        dry_run: bool,
    },
    /// `tally inspect`.
    Inspect {
        site: String,
        event_id: String,
        name: Option<String>,
    },
    /// `tally near-misses`.
    NearMisses { site: String },
    /// `tally backup` (an absolute path).
    Backup { out: PathBuf },
    /// `tally forward add`.
    ForwardAdd {
        destination: forward::NewDestination,
    },
    /// `tally forward list`.
    ForwardList { site: Option<String> },
    /// `tally forward remove`.
    ForwardRemove { id: u32 },
    /// `tally forward retry`.
    ForwardRetry { id: u32 },
    /// `tally export`.
    Export {
        site: String,
        format: Format,
        out: PathBuf,
        from: Option<i64>,
        to: Option<i64>,
    },
}

/// Settings to change; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SiteChange {
    /// Dedup window, seconds.
    pub window_secs: Option<u32>,
    /// Dedup policy name.
    pub policy: Option<String>,
    /// Property fill-in.
    pub merge: Option<bool>,
    /// Daily quota; `Some(0)` turns it off.
    pub daily_quota: Option<u64>,
    /// New allowed origins (replacing the old ones).
    pub origins: Option<Vec<String>>,
    /// Secondary keys to declare: (event name, property).
    #[serde(default)]
    pub keys: Vec<(String, String)>,
    /// Event names whose secondary key to remove.
    #[serde(default)]
    pub no_keys: Vec<String>,
    /// Time zone (IANA name).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Retention in days; `Some(0)` keeps everything.
    #[serde(default)]
    pub retain_days: Option<u32>,
    /// Revenue property; an empty name restores the default rule.
    #[serde(default)]
    pub revenue_property: Option<String>,
}

/// A command that failed; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ControlError(pub String);

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        ControlError(e.to_string())
    }
}

impl From<crate::ingest::IngestError> for ControlError {
    fn from(e: crate::ingest::IngestError) -> Self {
        ControlError(format!("import stopped: {e}; lines before it are stored"))
    }
}

/// The settings key of the dashboard password hash.
pub const PASSWORD_KEY: &str = "admin_password_hash";

/// Runs one command; blocking (call it off async threads).
pub fn execute(app: &App, req: Request) -> Result<Value, ControlError> {
    execute_with_progress(app, req, &mut |_| {})
}

/// [`execute`], telling `progress` how a long command (an import) advances.
pub fn execute_with_progress(
    app: &App,
    req: Request,
    progress: &mut dyn FnMut(import::Progress),
) -> Result<Value, ControlError> {
    match req {
        Request::SiteAdd { name, origins } => Ok(json!(app.add_site(&name, &origins)?)),
        Request::SiteList => Ok(Value::Array(
            app.sites.all().iter().map(|s| site_json(s)).collect(),
        )),
        Request::SiteRotateToken { site } => {
            let (site, token) = app.rotate_token(&site)?;
            Ok(json!({"name": site.name, "site_key": site.site_key, "api_token": token}))
        }
        Request::SiteSet { site, change } => {
            let current = app.site(&site)?;
            let settings = apply_change(&current.settings, &change)?;
            let updated = app.configure_site(&site, settings, change.origins.as_deref())?;
            Ok(site_json(&updated))
        }
        Request::SetPasswordHash { hash } => {
            app.set_password_hash(&hash)?;
            Ok(json!({"ok": true}))
        }
        Request::Sql { query, write } => {
            let conn = app.store.connect()?;
            let _upkeep = write.then(crate::upkeep::lock);
            let table = store::sql::run(&conn, &query, write)?;
            if write {
                // A hand-written change to `sites` takes effect at once.
                app.sites.replace_all(store::sites::list(&conn)?);
            }
            Ok(json!(table))
        }
        Request::Import {
            path,
            site,
            dry_run,
        } => import::run(app, &path, &site, dry_run, progress),
        Request::Inspect {
            site,
            event_id,
            name,
        } => {
            let site = app.site(&site)?;
            let found =
                store::inspect::lookup(&*app.store.connect()?, &site, &event_id, name.as_deref())?;
            Ok(json!(found))
        }
        Request::NearMisses { site } => {
            let site = app.site(&site)?;
            let since = app.clock.now_micros() - i64::from(site.settings.window_secs) * 1_000_000;
            let report = store::stats::near_misses(&*app.store.connect()?, &site.name, since)?;
            Ok(json!(report))
        }
        Request::Backup { out } => {
            let events = store::backup::backup(&*app.store.connect()?, &out)?;
            Ok(json!({"events": events, "path": out}))
        }
        Request::ForwardAdd { destination } => Ok(json!(forward::add(app, destination)?)),
        Request::ForwardList { site } => Ok(json!(forward::list(app, site.as_deref())?)),
        Request::ForwardRemove { id } => {
            forward::remove(app, id)?;
            Ok(json!({"removed": id}))
        }
        Request::ForwardRetry { id } => Ok(json!({"id": id, "requeued": forward::retry(app, id)?})),
        Request::Export {
            site,
            format,
            out,
            from,
            to,
        } => {
            let site = app.site(&site)?;
            let rows =
                store::export::export(&*app.store.connect()?, &site.name, format, &out, from, to)?;
            Ok(json!({"rows": rows, "path": out}))
        }
    }
}

fn apply_change(current: &SiteSettings, c: &SiteChange) -> Result<SiteSettings, ControlError> {
    let mut s = current.clone();
    if let Some(w) = c.window_secs {
        if !(60..=30 * 86_400).contains(&w) {
            return Err(ControlError(
                "the window must be between 1 minute and 30 days".into(),
            ));
        }
        s.window_secs = w;
    }
    if let Some(p) = &c.policy {
        s.policy = DedupPolicy::parse(p).ok_or_else(|| {
            ControlError(format!(
                "policy {p:?} is unknown; use first_wins or prefer_pixel"
            ))
        })?;
    }
    if let Some(m) = c.merge {
        s.merge_properties = m;
    }
    if let Some(q) = c.daily_quota {
        s.daily_quota = (q > 0).then_some(q);
    }
    for name in &c.no_keys {
        s.secondary_keys.remove(name);
    }
    for (name, property) in &c.keys {
        if name.len() > crate::domain::event::MAX_ID_BYTES || property.is_empty() {
            return Err(ControlError(format!(
                "--key {name}={property}: the event name must be 1-256 bytes and the property non-empty"
            )));
        }
        s.secondary_keys.insert(name.clone(), property.clone());
    }
    if let Some(tz) = &c.timezone {
        s.timezone = tz.parse().map_err(|_| {
            ControlError(format!(
                "{tz:?} is not a time zone; use an IANA name such as Europe/Berlin"
            ))
        })?;
    }
    if let Some(days) = c.retain_days {
        s.retain_days = (days > 0).then_some(days);
    }
    if let Some(p) = &c.revenue_property {
        s.revenue_property = (!p.trim().is_empty()).then(|| p.trim().to_owned());
    }
    Ok(s)
}

fn site_json(s: &crate::domain::Site) -> Value {
    json!({
        "name": s.name,
        "site_key": s.site_key,
        "origins": s.origins,
        "window_secs": s.settings.window_secs,
        "policy": s.settings.policy.as_str(),
        "merge_properties": s.settings.merge_properties,
        "daily_quota": s.settings.daily_quota,
        "secondary_keys": s.settings.secondary_keys,
        "timezone": s.settings.timezone.name(),
        "retain_days": s.settings.retain_days,
        "revenue_property": s.settings.revenue_property,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revenue(name: &str) -> Result<Option<String>, ControlError> {
        let change = SiteChange {
            revenue_property: Some(name.to_owned()),
            ..SiteChange::default()
        };
        apply_change(&SiteSettings::default(), &change).map(|s| s.revenue_property)
    }

    #[test]
    fn a_revenue_property_is_trimmed_and_reset_by_an_empty_name() {
        assert_eq!(revenue(" amount ").unwrap().as_deref(), Some("amount"));
        assert_eq!(revenue("").unwrap(), None);
        assert_eq!(revenue(" * ").unwrap().as_deref(), Some("*"));
    }
}
