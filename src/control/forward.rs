//! `tally forward add|list|remove|retry`: destinations and their outbox.

use super::ControlError;
use crate::app::App;
use crate::domain::forward::{Destination, Target, DEFAULT_MAX_AGE_SECS, DEFAULT_MAX_ATTEMPTS};
use crate::store::outbox;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What `forward add` asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewDestination {
    /// Site name or key.
    pub site: String,
    /// Where to send (a webhook's secret may be empty: one is generated).
    pub target: Target,
    /// Event names; empty: every event but `page.view`.
    pub events: Vec<String>,
    /// Settle delay, seconds.
    pub settle_secs: u32,
    /// Renames on the way out.
    pub rename: BTreeMap<String, String>,
    /// Attempts before parking.
    pub max_attempts: Option<u32>,
    /// Age before parking, seconds.
    pub max_age_secs: Option<u32>,
}

/// A destination as `forward list` shows it: secrets never, counts always.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listed {
    /// Its id.
    pub id: u32,
    /// Its site.
    pub site: String,
    /// `webhook` or `meta`.
    pub kind: String,
    /// The webhook URL, or the Graph URL and pixel id.
    pub target: String,
    /// Event names forwarded (`null`: every event but `page.view`).
    pub events: Option<Vec<String>>,
    /// Settle delay, seconds.
    pub settle_secs: u32,
    /// Renames.
    pub rename: BTreeMap<String, String>,
    /// Meta's test event code, if set.
    pub test_event_code: Option<String>,
    /// Outbox counts.
    #[serde(flatten)]
    pub counts: outbox::Counts,
}

/// Adds a destination; answers it whole, with its secret (shown once).
pub fn add(app: &App, new: NewDestination) -> Result<Destination, ControlError> {
    if new.max_attempts == Some(0) {
        return Err(ControlError("--max-attempts must be at least 1".into()));
    }
    if new.max_age_secs.is_some_and(|s| s < MIN_MAX_AGE_SECS) {
        return Err(ControlError(
            "--max-age must be at least 1m: a receiver gets a minute of retries".into(),
        ));
    }
    let site = app.site(&new.site)?;
    let target = match new.target {
        Target::Webhook { url, secret } => {
            check_url(&url, "--webhook")?;
            let secret = if secret.is_empty() {
                crate::domain::site::new_salt()
            } else {
                secret
            };
            Target::Webhook { url, secret }
        }
        Target::Meta {
            pixel_id,
            token,
            graph_url,
            test_event_code,
        } => {
            check_url(&graph_url, "--graph-url")?;
            if pixel_id.trim().is_empty() || token.trim().is_empty() {
                return Err(ControlError(
                    "--meta PIXEL_ID and --token must not be empty".into(),
                ));
            }
            Target::Meta {
                pixel_id,
                token,
                graph_url: graph_url.trim_end_matches('/').to_owned(),
                test_event_code,
            }
        }
    };
    let destination = Destination {
        id: 0,
        site: site.name.clone(),
        target,
        events: (!new.events.is_empty()).then_some(new.events),
        settle_secs: new.settle_secs,
        rename: new.rename,
        max_attempts: new.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
        max_age_secs: new.max_age_secs.unwrap_or(DEFAULT_MAX_AGE_SECS),
    };
    let conn = app.store.connect()?;
    let added = outbox::add_destination(&conn, destination, app.clock.now_micros())?;
    app.destinations.replace(outbox::destinations(&conn)?);
    Ok(added)
}

/// The shortest `--max-age`.
const MIN_MAX_AGE_SECS: u32 = 60;

fn check_url(url: &str, flag: &str) -> Result<(), ControlError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(ControlError(format!(
            "{flag} {url:?} must be an http:// or https:// URL"
        )))
    }
}

/// Destinations (of one site, if given) with their counts.
pub fn list(app: &App, site: Option<&str>) -> Result<Vec<Listed>, ControlError> {
    let site = site.map(|s| app.site(s)).transpose()?;
    let conn = app.store.connect()?;
    let counts: BTreeMap<u32, outbox::Counts> = outbox::counts(&conn, app.clock.now_micros())?
        .into_iter()
        .collect();
    Ok(app
        .destinations
        .all()
        .iter()
        .filter(|d| site.as_ref().is_none_or(|s| s.name == d.site))
        .map(|d| {
            let (target, test_event_code) = match &d.target {
                Target::Webhook { url, .. } => (url.clone(), None),
                Target::Meta {
                    pixel_id,
                    graph_url,
                    test_event_code,
                    ..
                } => (
                    format!("{graph_url} pixel {pixel_id}"),
                    test_event_code.clone(),
                ),
            };
            Listed {
                id: d.id,
                site: d.site.clone(),
                kind: d.target.kind().to_owned(),
                target,
                events: d.events.clone(),
                settle_secs: d.settle_secs,
                rename: d.rename.clone(),
                test_event_code,
                counts: counts.get(&d.id).copied().unwrap_or_default(),
            }
        })
        .collect())
}

/// Removes a destination and its outbox.
pub fn remove(app: &App, id: u32) -> Result<(), ControlError> {
    let conn = app.store.connect()?;
    if !outbox::remove_destination(&conn, id)? {
        return Err(ControlError(format!(
            "no destination {id}; `tally forward list` shows them"
        )));
    }
    app.destinations.replace(outbox::destinations(&conn)?);
    Ok(())
}

/// Puts a destination's parked events back in line; how many.
pub fn retry(app: &App, id: u32) -> Result<u64, ControlError> {
    if !app.destinations.all().iter().any(|d| d.id == id) {
        return Err(ControlError(format!(
            "no destination {id}; `tally forward list` shows them"
        )));
    }
    let (conn, now) = (app.store.connect()?, app.clock.now_micros());
    let requeued = outbox::retry_parked(&conn, id, now)?;
    app.forward_stats.refresh(&conn, now)?;
    app.destinations.requeued(id);
    Ok(requeued)
}
