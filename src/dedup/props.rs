//! What later copies do to the kept row's properties and user data (SPEC §3):
//! fill-in, trust, and the bounds that stop a public sender from growing a
//! row.
//!
//! The rule, declaratively: start from the kept copy's properties; each other
//! copy, in arrival order, fills in the keys the row lacks (unless the site
//! turned `merge` off); on a key that a pixel copy and an authenticated copy
//! both carry, the authenticated value wins — the kept copy's if it is
//! authenticated, else the first authenticated copy's. [`PropState`] applies
//! that one copy at a time, remembering which keys still hold a pixel's
//! value (`pixel_keys`, stored with the row).
//!
//! Bounds: a fold that would take the properties past
//! [`MAX_PROPERTIES_BYTES`] (or the user data past its limit) changes
//! nothing, and after [`MAX_MERGES`] folds that changed the row, later
//! copies are recorded but change nothing — so a holder of the public site
//! key cannot grow one row, or the cost of merging into it, without bound.
//! Trust comes before both bounds: past them an authenticated copy still
//! overwrites the keys that hold a pixel's value, and where that would pass
//! the size limit, keys that only a pixel vouched for are dropped to make
//! room (largest first).

use crate::domain::event::MAX_PROPERTIES_BYTES;
use crate::domain::personal::MAX_USER_DATA_BYTES;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// Folds that may change one kept row; later copies only count.
pub const MAX_MERGES: u8 = 12;

/// A JSON object.
pub type Object = Map<String, Value>;

/// The kept row's merged content.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PropState {
    /// Properties.
    pub props: Object,
    /// Property keys whose value came from a pixel copy: an authenticated
    /// copy may still overwrite them.
    pub pixel_keys: BTreeSet<String>,
    /// Hashed match keys.
    pub user_data: Object,
    /// Folds that changed the row so far.
    pub merges: u8,
}

/// One copy's content, as the fold reads it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// Its properties.
    pub props: Option<&'a Object>,
    /// Its hashed user data.
    pub user_data: Option<&'a Object>,
    /// Whether it came from an authenticated sender.
    pub authenticated: bool,
}

impl PropState {
    /// The state of a row whose kept copy is `kept`, before any merge.
    pub fn of_kept(kept: Incoming<'_>) -> Self {
        let props = kept.props.cloned().unwrap_or_default();
        let pixel_keys = if kept.authenticated {
            BTreeSet::new()
        } else {
            props.keys().cloned().collect()
        };
        Self {
            props,
            pixel_keys,
            user_data: kept.user_data.cloned().unwrap_or_default(),
            merges: 0,
        }
    }

    /// Folds in a later copy that is dropped. Returns the property keys it
    /// set (added, or overwrote as the authenticated value), with their
    /// values; empty when it changed nothing.
    pub fn fold(&mut self, c: Incoming<'_>, merge: bool) -> Object {
        if self.merges < MAX_MERGES {
            if let Some(filled) = self.try_fold(c, merge) {
                return filled;
            }
        }
        if c.authenticated {
            self.overwrite_pixel_values(c)
        } else {
            Object::new()
        }
    }

    /// [`PropState::fold`] within the bounds: `None`, and nothing changed,
    /// when the result would not fit.
    fn try_fold(&mut self, c: Incoming<'_>, merge: bool) -> Option<Object> {
        let mut next = self.clone();
        let mut filled = Object::new();
        for (k, v) in c.props.into_iter().flatten() {
            let set = match next.props.get(k) {
                None => merge,
                Some(old) => c.authenticated && next.pixel_keys.contains(k) && old != v,
            };
            let trusted_now = c.authenticated && next.pixel_keys.contains(k);
            if set {
                next.props.insert(k.clone(), v.clone());
                filled.insert(k.clone(), v.clone());
                if !c.authenticated {
                    next.pixel_keys.insert(k.clone());
                }
            }
            if trusted_now {
                next.pixel_keys.remove(k);
            }
        }
        let user_changed = merge && fill_user_data(&mut next.user_data, c.user_data);
        if !next.fits() {
            return None;
        }
        if !filled.is_empty() || user_changed {
            next.merges += 1;
        }
        *self = next;
        Some(filled)
    }

    /// An authenticated copy past the bounds: its values replace a pixel's
    /// on the keys both carry, nothing is added, and keys only a pixel
    /// vouched for make room if needed. Returns the keys it set.
    fn overwrite_pixel_values(&mut self, c: Incoming<'_>) -> Object {
        let mut next = self.clone();
        let mut filled = Object::new();
        for (k, v) in c.props.into_iter().flatten() {
            if next.pixel_keys.remove(k) && next.props.get(k) != Some(v) {
                next.props.insert(k.clone(), v.clone());
                filled.insert(k.clone(), v.clone());
            }
        }
        if !next.shrink_to_fit() {
            return Object::new();
        }
        if !filled.is_empty() {
            next.merges = next.merges.saturating_add(1);
        }
        *self = next;
        filled
    }

    /// Drops keys only a pixel vouched for, largest value first, until the
    /// row fits; whether it does.
    fn shrink_to_fit(&mut self) -> bool {
        let mut unvouched: Vec<(usize, String)> = self
            .pixel_keys
            .iter()
            .map(|k| {
                (
                    self.props.get(k).map_or(0, |v| v.to_string().len()),
                    k.clone(),
                )
            })
            .collect();
        unvouched.sort();
        while !self.fits() {
            let Some((_, k)) = unvouched.pop() else {
                return false;
            };
            self.props.remove(&k);
            self.pixel_keys.remove(&k);
        }
        true
    }

    /// Makes `c` the kept copy (`prefer_pixel`), the old kept content
    /// merging into it under the same rule. Returns the property keys the
    /// old content kept in the row.
    pub fn replace(&mut self, c: Incoming<'_>, merge: bool) -> Object {
        let old = std::mem::replace(self, PropState::of_kept(c));
        self.merges = old.merges;
        let mut kept_from_old = Object::new();
        for (k, v) in &old.props {
            let old_trusted = !old.pixel_keys.contains(k);
            let keep_old = match self.props.get(k) {
                None => merge,
                Some(new) => old_trusted && !c.authenticated && new != v,
            };
            if keep_old {
                self.props.insert(k.clone(), v.clone());
                kept_from_old.insert(k.clone(), v.clone());
                if old_trusted {
                    self.pixel_keys.remove(k);
                } else {
                    self.pixel_keys.insert(k.clone());
                }
            } else if self.props.contains_key(k) && old_trusted && !c.authenticated {
                self.pixel_keys.remove(k); // equal values: the key is vouched for
            }
        }
        if merge {
            fill_user_data(&mut self.user_data, Some(&old.user_data));
        }
        if json_len(&self.user_data) > MAX_USER_DATA_BYTES {
            // Together too large: the row keeps the match keys it had.
            self.user_data = old.user_data.clone();
        }
        if !self.shrink_to_fit() {
            // Too large even with only vouched-for keys: the new kept copy
            // alone.
            let merges = self.merges;
            *self = PropState::of_kept(c);
            self.merges = merges;
            return Object::new();
        }
        kept_from_old.retain(|k, _| self.props.contains_key(k));
        kept_from_old
    }

    /// Whether the row stays within the property and user-data limits.
    fn fits(&self) -> bool {
        json_len(&self.props) <= MAX_PROPERTIES_BYTES
            && json_len(&self.user_data) <= MAX_USER_DATA_BYTES
    }

    /// The properties as stored: `None` for an empty object.
    pub fn props_text(&self) -> Option<String> {
        (!self.props.is_empty()).then(|| Value::Object(self.props.clone()).to_string())
    }

    /// The user data as stored: `None` when empty.
    pub fn user_data_text(&self) -> Option<String> {
        (!self.user_data.is_empty()).then(|| Value::Object(self.user_data.clone()).to_string())
    }

    /// The state of a stored row. `pixel_keys` is stored only where it
    /// differs from its default: every key when the kept copy is a pixel's,
    /// none otherwise (so most rows store `NULL`).
    pub fn restore(
        props: Option<&str>,
        user_data: Option<&str>,
        pixel_keys: Option<&str>,
        kept_authenticated: bool,
        merges: u8,
    ) -> Self {
        let props = parse_object(props);
        let pixel_keys = match pixel_keys {
            Some(text) => parse_keys(Some(text)),
            None if kept_authenticated => BTreeSet::new(),
            None => props.keys().cloned().collect(),
        };
        Self {
            props,
            pixel_keys,
            user_data: parse_object(user_data),
            merges,
        }
    }

    /// The stored form of `pixel_keys` (see [`PropState::restore`]).
    pub fn pixel_keys_text(&self, kept_authenticated: bool) -> Option<String> {
        let default = if kept_authenticated {
            self.pixel_keys.is_empty()
        } else {
            self.pixel_keys.len() == self.props.len()
                && self.props.keys().all(|k| self.pixel_keys.contains(k))
        };
        (!default).then(|| serde_json::to_string(&self.pixel_keys).unwrap_or_default())
    }
}

/// Adds the user-data keys `into` lacks; whether any was added.
fn fill_user_data(into: &mut Object, from: Option<&Object>) -> bool {
    let mut changed = false;
    for (k, v) in from.into_iter().flatten() {
        if !into.contains_key(k) {
            into.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    changed
}

fn json_len(o: &Object) -> usize {
    if o.is_empty() {
        0
    } else {
        serde_json::to_string(o).map_or(usize::MAX, |s| s.len())
    }
}

/// Parses stored or sent JSON object text; `None` and malformed text are empty.
pub fn parse_object(text: Option<&str>) -> Object {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// Parses a stored `pixel_keys` array.
pub fn parse_keys(text: Option<&str>) -> BTreeSet<String> {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Object {
        v.as_object().unwrap().clone()
    }

    fn copy(props: &Object, authenticated: bool) -> Incoming<'_> {
        Incoming {
            props: Some(props),
            user_data: None,
            authenticated,
        }
    }

    #[test]
    fn later_copies_fill_in_missing_keys_and_never_overwrite_their_equals() {
        let kept = obj(json!({"a": 1, "b": 2}));
        let mut s = PropState::of_kept(copy(&kept, true));
        let filled = s.fold(copy(&obj(json!({"b": 9, "c": 3})), true), true);
        assert_eq!(filled, obj(json!({"c": 3})));
        assert_eq!(s.props, obj(json!({"a": 1, "b": 2, "c": 3})));
        assert_eq!(s.merges, 1);
        assert!(s.fold(copy(&obj(json!({"a": 5})), true), true).is_empty());
        assert_eq!(s.merges, 1, "a copy that adds nothing is no merge");
    }

    #[test]
    fn a_server_value_beats_a_forged_pixel_value_whichever_is_kept() {
        // The pixel copy first (kept), the server's after.
        let mut s = PropState::of_kept(copy(&obj(json!({"total": 0.01})), false));
        s.fold(copy(&obj(json!({"total": 199.99})), true), true);
        assert_eq!(s.props["total"], json!(199.99));
        assert!(s.pixel_keys.is_empty());
        // A later pixel copy cannot take it back.
        s.fold(copy(&obj(json!({"total": 0.02})), false), true);
        assert_eq!(s.props["total"], json!(199.99));
        // prefer_pixel: the pixel copy replaces the server's, values stay.
        let mut s = PropState::of_kept(copy(&obj(json!({"total": 199.99, "a": 1})), true));
        s.replace(copy(&obj(json!({"total": 0.01, "b": 2})), false), true);
        assert_eq!(s.props, obj(json!({"total": 199.99, "a": 1, "b": 2})));
        assert_eq!(s.pixel_keys, BTreeSet::from(["b".to_owned()]));
    }

    #[test]
    fn the_first_authenticated_copy_wins_a_key_a_pixel_added() {
        let mut s = PropState::of_kept(copy(&obj(json!({"a": 1})), true));
        s.fold(copy(&obj(json!({"b": 2})), false), true);
        s.fold(copy(&obj(json!({"b": 5})), true), true);
        s.fold(copy(&obj(json!({"b": 7})), true), true);
        assert_eq!(s.props, obj(json!({"a": 1, "b": 5})));
    }

    #[test]
    fn merge_off_adds_nothing_but_trust_still_holds() {
        let mut s = PropState::of_kept(copy(&obj(json!({"a": 1})), false));
        s.fold(copy(&obj(json!({"a": 2, "b": 3})), true), false);
        assert_eq!(s.props, obj(json!({"a": 2})));
    }

    #[test]
    fn a_row_never_grows_past_the_limit_nor_merges_forever() {
        let mut s = PropState::of_kept(copy(&Object::new(), false));
        let mut changes = 0;
        for i in 0..1_000 {
            let big = obj(json!({ format!("k{i}"): "x".repeat(4_000) }));
            if !s.fold(copy(&big, false), true).is_empty() {
                changes += 1;
            }
            assert!(s.props_text().map_or(0, |t| t.len()) <= MAX_PROPERTIES_BYTES);
        }
        assert!(changes <= usize::from(MAX_MERGES), "{changes}");
        let mut s = PropState::of_kept(copy(&Object::new(), false));
        for i in 0..100 {
            s.fold(copy(&obj(json!({ format!("k{i}"): i })), false), true);
        }
        assert_eq!(s.props.len(), usize::from(MAX_MERGES));
    }

    #[test]
    fn past_the_merge_limit_a_server_value_still_beats_a_pixels() {
        let mut s = PropState::of_kept(copy(&obj(json!({"total": 1})), false));
        for i in 0..usize::from(MAX_MERGES) + 3 {
            s.fold(copy(&obj(json!({ format!("k{i}"): 1 })), false), true);
        }
        assert_eq!(s.merges, MAX_MERGES);
        let filled = s.fold(
            copy(&obj(json!({"total": 999, "currency": "USD"})), true),
            true,
        );
        assert_eq!(
            filled,
            obj(json!({"total": 999})),
            "no key added past the limit"
        );
        assert_eq!(s.props["total"], json!(999));
        assert!(!s.pixel_keys.contains("total"));
        // A pixel copy cannot take it back.
        s.fold(copy(&obj(json!({"total": 1})), false), true);
        assert_eq!(s.props["total"], json!(999));
    }

    #[test]
    fn a_server_value_that_would_pass_the_size_limit_pushes_pixel_keys_out() {
        let kept = obj(json!({"a": "x".repeat(15_000), "b": "short"}));
        let mut s = PropState::of_kept(copy(&kept, false));
        let server = obj(json!({"b": "y".repeat(20_000), "c": "z"}));
        let filled = s.fold(copy(&server, true), true);
        assert_eq!(filled, obj(json!({"b": "y".repeat(20_000)})));
        assert_eq!(
            s.props,
            obj(json!({"b": "y".repeat(20_000)})),
            "a made room"
        );
        assert!(s.props_text().unwrap().len() <= MAX_PROPERTIES_BYTES);
    }

    #[test]
    fn a_large_pixel_copy_replacing_the_servers_keeps_the_servers_values() {
        let mut s = PropState::of_kept(copy(&obj(json!({"total": 199.99})), true));
        let pixel = obj(json!({"total": 0.01, "junk": "x".repeat(MAX_PROPERTIES_BYTES - 20)}));
        s.replace(copy(&pixel, false), true);
        assert_eq!(s.props, obj(json!({"total": 199.99})));
    }

    #[test]
    fn a_pixel_copy_with_large_user_data_replacing_the_servers_keeps_the_servers_values() {
        let server_ud = obj(json!({"ph": "a".repeat(64)}));
        let mut s = PropState::of_kept(Incoming {
            props: Some(&obj(json!({"total": 199.99}))),
            user_data: Some(&server_ud),
            authenticated: true,
        });
        let many: Vec<String> = (0..122).map(|i| format!("{i:064x}")).collect();
        let pixel_ud = obj(json!({ "em": many }));
        assert!(json_len(&pixel_ud) <= MAX_USER_DATA_BYTES, "fits alone");
        let mut both = pixel_ud.clone();
        fill_user_data(&mut both, Some(&server_ud));
        assert!(json_len(&both) > MAX_USER_DATA_BYTES, "not together");
        s.replace(
            Incoming {
                props: Some(&obj(json!({"total": 0.01}))),
                user_data: Some(&pixel_ud),
                authenticated: false,
            },
            true,
        );
        assert_eq!(s.props["total"], json!(199.99));
        assert_eq!(s.user_data, server_ud);
    }

    #[test]
    fn pixel_keys_are_stored_only_where_they_differ_from_the_default() {
        let mut s = PropState::of_kept(copy(&obj(json!({"a": 1, "b": 2})), false));
        assert_eq!(s.pixel_keys_text(false), None);
        s.fold(copy(&obj(json!({"a": 5})), true), true);
        let text = s.pixel_keys_text(false).unwrap();
        assert_eq!(text, r#"["b"]"#);
        let back = PropState::restore(s.props_text().as_deref(), None, Some(&text), false, 1);
        assert_eq!(back, s);
        let server = PropState::restore(Some(r#"{"a":1}"#), None, None, true, 0);
        assert!(server.pixel_keys.is_empty());
        let pixel = PropState::restore(Some(r#"{"a":1}"#), None, None, false, 0);
        assert_eq!(pixel.pixel_keys.len(), 1);
    }

    #[test]
    fn user_data_fills_in() {
        let mut s = PropState::of_kept(Incoming {
            props: None,
            user_data: Some(&obj(json!({"em": "h1"}))),
            authenticated: false,
        });
        s.fold(
            Incoming {
                props: None,
                user_data: Some(&obj(json!({"em": "h2", "ph": "h3"}))),
                authenticated: true,
            },
            true,
        );
        assert_eq!(s.user_data, obj(json!({"em": "h1", "ph": "h3"})));
        assert_eq!(s.merges, 1);
    }
}
