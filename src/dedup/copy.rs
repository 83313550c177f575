//! An event copy made ready for the writer where it arrived (an HTTP worker
//! or the import reader): its key fingerprints and the fingerprint of what
//! it carries are computed there, so the single writer thread only compares.

use crate::domain::key::secondary_value;
use crate::domain::{Event, KeyHash, Site};
use std::hash::{DefaultHasher, Hash, Hasher};

use super::index::FINGERPRINT_BITS;
use super::props::parse_object;

/// A copy's secondary key (SPEC §3): the declared property and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secondary {
    /// Fingerprint of `(site, event_name, property, value)`.
    pub key: KeyHash,
    /// The declared property, e.g. `order_id`.
    pub property: String,
    /// Its value as text.
    pub value: String,
}

/// An event copy with its keys.
#[derive(Debug, Clone)]
pub struct Copy {
    /// The validated event.
    pub event: Event,
    /// Fingerprint of `(site, event_name, event_id)`.
    pub key: KeyHash,
    /// The secondary key, when the site declares one for this event name and
    /// the copy carries the property.
    pub secondary: Option<Secondary>,
    /// Fingerprint of what the copy could fold into a kept row (whether it is
    /// authenticated, its properties and user data): a copy whose
    /// fingerprint equals the last one folded in adds nothing. Never 0.
    pub fingerprint: u32,
}

impl Copy {
    /// Computes the keys of `event` for `site`.
    pub fn prepare(site: &Site, event: Event) -> Copy {
        let (key, secondary) = Copy::keys(site, &event);
        let fingerprint = fingerprint(&event);
        Copy {
            event,
            key,
            secondary,
            fingerprint,
        }
    }

    /// The id key and, when the site declares one for the event's name and
    /// it carries the property, the secondary key of `event` for `site`.
    pub fn keys(site: &Site, event: &Event) -> (KeyHash, Option<Secondary>) {
        let key = KeyHash::of(site.id, &event.event_name, &event.event_id);
        let secondary = site
            .settings
            .secondary_key(&event.event_name)
            .and_then(|property| {
                let props = parse_object(event.properties.as_deref());
                let value = secondary_value(&props, property)?;
                Some(Secondary {
                    key: KeyHash::secondary(site.id, &event.event_name, property, &value),
                    property: property.to_owned(),
                    value,
                })
            });
        (key, secondary)
    }

    /// Whether the copy carries anything a fold could add.
    pub fn carries_content(&self) -> bool {
        self.event.properties.is_some() || self.event.user_data.is_some()
    }
}

/// The [`Copy::fingerprint`] of an event.
fn fingerprint(e: &Event) -> u32 {
    let mut h = DefaultHasher::new();
    e.is_authenticated().hash(&mut h);
    e.properties.hash(&mut h);
    e.user_data.hash(&mut h);
    let bits = h.finish() as u32 & ((1 << FINGERPRINT_BITS) - 1);
    bits.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SiteSettings, Source};

    fn site(keys: &[(&str, &str)]) -> Site {
        Site {
            id: 7,
            name: "s".into(),
            site_key: "k".into(),
            token_hash: String::new(),
            origins: vec![],
            settings: SiteSettings {
                secondary_keys: keys
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
                ..Default::default()
            },
        }
    }

    fn event(id: &str, name: &str, props: &str, source: Source) -> Event {
        let json = format!(r#"{{"event_id":"{id}","event_name":"{name}","properties":{props}}}"#);
        Event::parse(&json, source).unwrap()
    }

    #[test]
    fn a_declared_property_is_a_secondary_key_as_text() {
        let s = site(&[("order.completed", "order_id")]);
        let a = Copy::prepare(
            &s,
            event(
                "evt_1",
                "order.completed",
                r#"{"order_id":42}"#,
                Source::Pixel,
            ),
        );
        let b = Copy::prepare(
            &s,
            event(
                "ord_42",
                "order.completed",
                r#"{"order_id":"42"}"#,
                Source::Server,
            ),
        );
        assert_ne!(a.key, b.key);
        assert_eq!(
            a.secondary.as_ref().unwrap().key,
            b.secondary.as_ref().unwrap().key
        );
        assert_eq!(a.secondary.unwrap().value, "42");
        let other = Copy::prepare(
            &s,
            event("r", "order.refunded", r#"{"order_id":42}"#, Source::Server),
        );
        assert!(other.secondary.is_none(), "declared per event name");
        let without = Copy::prepare(&s, event("x", "order.completed", "{}", Source::Server));
        assert!(without.secondary.is_none());
    }

    #[test]
    fn fingerprints_tell_copies_apart_by_content_and_trust() {
        let s = site(&[]);
        let p = |props: &str, source| Copy::prepare(&s, event("e", "n", props, source)).fingerprint;
        assert_eq!(
            p(r#"{"a":1}"#, Source::Pixel),
            p(r#"{"a":1}"#, Source::Pixel)
        );
        assert_ne!(
            p(r#"{"a":1}"#, Source::Pixel),
            p(r#"{"a":2}"#, Source::Pixel)
        );
        assert_ne!(
            p(r#"{"a":1}"#, Source::Pixel),
            p(r#"{"a":1}"#, Source::Server)
        );
        assert_eq!(
            p(r#"{"a":1}"#, Source::Server),
            p(r#"{"a":1}"#, Source::Import)
        );
    }
}
