//! Destinations that receive each unique event once, after dedup (SPEC §6):
//! a webhook or Meta's Conversions API, per site, with the events it wants,
//! a settle delay and the limits after which an undeliverable event is
//! parked.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Meta's public Graph API.
pub const META_GRAPH_URL: &str = "https://graph.facebook.com";
/// The Graph API version destinations post to.
pub const META_GRAPH_VERSION: &str = "v26.0";
/// Default attempts before an event is parked.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;
/// Default age after which an undelivered event is parked: three days, so
/// a receiver down for a day loses nothing.
pub const DEFAULT_MAX_AGE_SECS: u32 = 3 * 86_400;
/// The event name a destination skips unless it names it.
pub const PAGE_VIEW: &str = "page.view";

/// Where a destination sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// One POST per event, signed with HMAC-SHA256.
    Webhook {
        /// The receiver's URL.
        url: String,
        /// The signing secret.
        secret: String,
    },
    /// Meta's Conversions API, up to 1,000 events a request.
    Meta {
        /// The Meta pixel (dataset) id.
        pixel_id: String,
        /// The Conversions API access token.
        token: String,
        /// The Graph API base URL (Meta's, or a proxy's / a test server's).
        graph_url: String,
        /// Meta's test event code: events show in Test Events, not in ads.
        test_event_code: Option<String>,
    },
}

impl Target {
    /// `webhook` or `meta`.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Webhook { .. } => "webhook",
            Target::Meta { .. } => "meta",
        }
    }

    /// Events sent in one request.
    pub fn batch_size(&self) -> usize {
        match self {
            Target::Webhook { .. } => 1,
            Target::Meta { .. } => 1_000,
        }
    }
}

/// A destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// Its id (`tally forward remove ID`).
    pub id: u32,
    /// The site whose events it receives.
    pub site: String,
    /// Where it sends.
    pub target: Target,
    /// Event names it wants; `None`: every event but `page.view`.
    pub events: Option<Vec<String>>,
    /// Seconds to wait after an event's first copy before sending it, so
    /// later copies can merge their properties in.
    pub settle_secs: u32,
    /// Event names renamed on the way out (Meta: `order.completed` → `Purchase`).
    pub rename: BTreeMap<String, String>,
    /// Attempts before an event is parked.
    pub max_attempts: u32,
    /// Seconds after its first copy after which an undelivered event is parked.
    pub max_age_secs: u32,
}

impl Destination {
    /// Whether this destination receives events named `name`.
    pub fn wants(&self, name: &str) -> bool {
        match &self.events {
            Some(names) => names.iter().any(|n| n == name),
            None => name != PAGE_VIEW,
        }
    }

    /// The name an event goes out under.
    pub fn outgoing_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.rename.get(name).map_or(name, String::as_str)
    }
}

/// Seconds to wait before attempt `attempt + 1` after `attempt` failures:
/// exponential from 1 s, capped at 10 minutes, with up to 25 % jitter from
/// `jitter` (0..1) so many parked senders do not retry in step.
pub fn backoff_secs(attempt: u32, jitter: f64) -> u64 {
    let base = 1u64 << attempt.min(20);
    let capped = base.min(600) as f64;
    (capped * (1.0 + 0.25 * jitter.clamp(0.0, 1.0))).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(events: Option<Vec<String>>) -> Destination {
        Destination {
            id: 1,
            site: "s".into(),
            target: Target::Webhook {
                url: "http://x".into(),
                secret: "k".into(),
            },
            events,
            settle_secs: 0,
            rename: BTreeMap::from([("order.completed".to_owned(), "Purchase".to_owned())]),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_age_secs: DEFAULT_MAX_AGE_SECS,
        }
    }

    #[test]
    fn a_destination_wants_every_event_but_page_views_unless_it_names_them() {
        let all = dest(None);
        assert!(all.wants("order.completed"));
        assert!(!all.wants("page.view"));
        let some = dest(Some(vec!["page.view".into()]));
        assert!(some.wants("page.view"));
        assert!(!some.wants("order.completed"));
        assert_eq!(all.outgoing_name("order.completed"), "Purchase");
        assert_eq!(all.outgoing_name("signup"), "signup");
    }

    #[test]
    fn backoff_doubles_to_ten_minutes_with_jitter() {
        assert_eq!(backoff_secs(0, 0.0), 1);
        assert_eq!(backoff_secs(3, 0.0), 8);
        assert_eq!(backoff_secs(30, 0.0), 600);
        assert_eq!(backoff_secs(30, 1.0), 750);
    }
}
