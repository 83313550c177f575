//! An event as Tally trusts it: parsed once from the wire with the limits of
//! SPEC §2.3, so nothing past the boundary checks a field again.

use super::personal;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Longest `event_id` / `event_name`, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Largest `properties` object, in bytes of JSON text.
pub const MAX_PROPERTIES_BYTES: usize = 32 * 1024;
/// Longest `session_id`, in bytes.
pub const MAX_SESSION_BYTES: usize = 256;
/// Longest `url` / `referrer`, in bytes.
pub const MAX_URL_BYTES: usize = 4096;

/// Who sent a copy of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The browser pixel (`POST /v1/pixel`).
    Pixel,
    /// A server-side sender (`POST /v1/events`).
    Server,
    /// A backfill (`tally import`).
    Import,
}

impl serde::Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Source {
    /// All sources, in the order of their bits in [`Source::bit`].
    pub const ALL: [Source; 3] = [Source::Pixel, Source::Server, Source::Import];

    /// The name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Pixel => "pixel",
            Source::Server => "server",
            Source::Import => "import",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|src| src.as_str() == s)
    }

    /// This source's bit in a "sources seen" mask.
    pub fn bit(self) -> u8 {
        match self {
            Source::Pixel => 1,
            Source::Server => 2,
            Source::Import => 4,
        }
    }

    /// The source for a small index (`0..3`), as stored in the dedup index.
    pub fn from_index(i: u8) -> Source {
        Source::ALL[usize::from(i % 3)]
    }

    /// This source's small index (`0..3`).
    pub fn index(self) -> u8 {
        self.bit().trailing_zeros() as u8
    }
}

/// Why one event of a batch was rejected; `code` names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct EventError {
    /// Machine-readable code, e.g. `invalid_event_id`.
    pub code: &'static str,
    /// What is wrong, for a human.
    pub message: String,
}

impl EventError {
    /// An error with a code and a message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A validated event copy, before deduplication.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Sender-chosen id; with the name, the dedup key.
    pub event_id: String,
    /// Event name, e.g. `order.completed`.
    pub event_name: String,
    /// Who sent this copy.
    pub source: Source,
    /// When it happened, in µs since the epoch (UTC); `None` means "on arrival".
    pub occurred_at: Option<i64>,
    /// Session id chosen by the sender.
    pub session_id: Option<String>,
    /// Page URL.
    pub url: Option<String>,
    /// Referrer URL.
    pub referrer: Option<String>,
    /// The properties object as JSON text (`email` / `phone` hashed); `None`
    /// when absent.
    pub properties: Option<String>,
    /// Match keys as JSON text, already hashed (SPEC §3); `None` when absent.
    pub user_data: Option<String>,
    /// The sender's user id (Segment's `userId`).
    pub user_id: Option<String>,
    /// The sender's anonymous id (Segment's `anonymousId`).
    pub anonymous_id: Option<String>,
    /// Daily-rotating visitor hash, set by Tally for pixel copies (never read
    /// from the wire).
    pub visitor_id: Option<String>,
}

/// An event's fields as some wire shape carries them, loosely typed so each
/// one gets its own error code. Every ingest protocol (the `/v1/events`
/// shape, the pixel, Segment, Meta's Conversions API, imports) maps its JSON
/// onto these fields and calls [`Fields::validate`]: one set of rules for all.
#[derive(Debug, Default, Deserialize)]
pub struct Fields {
    /// `event_id`.
    pub event_id: Option<Value>,
    /// `event_name`.
    pub event_name: Option<Value>,
    /// `source`: `server`, `pixel` or `import`.
    pub source: Option<Value>,
    /// `occurred_at`, RFC 3339.
    pub occurred_at: Option<Value>,
    /// `session_id`.
    pub session_id: Option<Value>,
    /// `url`.
    pub url: Option<Value>,
    /// `referrer`.
    pub referrer: Option<Value>,
    /// `properties`, a JSON object, kept as the sender wrote it.
    pub properties: Option<Box<RawValue>>,
    /// `user_data`, an object of match keys.
    pub user_data: Option<Value>,
    /// `user_id`.
    pub user_id: Option<Value>,
    /// `anonymous_id`.
    pub anonymous_id: Option<Value>,
    /// `site`: the site key, in pixel bodies only (elsewhere ignored).
    pub site: Option<Value>,
}

/// Earliest and latest `occurred_at` accepted, µs: years 1970 to 9999, so
/// every stored time prints, exports and imports again as RFC 3339.
const OCCURRED_RANGE: std::ops::RangeInclusive<i64> = 0..=253_402_300_799_999_999;

impl Event {
    /// Parses one event object; `default_source` applies when `source` is absent.
    pub fn parse(json: &str, default_source: Source) -> Result<Event, EventError> {
        Self::parse_wire(json)?.1.validate(default_source)
    }

    /// Parses one pixel body: the event plus the `site` key it names.
    /// The source is always `pixel`, whatever the body says.
    pub fn parse_pixel(json: &str) -> Result<(String, Event), EventError> {
        let (site, mut fields) = Self::parse_wire(json)?;
        fields.source = None;
        let event = fields.validate(Source::Pixel)?;
        let site = match site {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => {
                return Err(EventError::new(
                    "invalid_site",
                    "site must be the site key string",
                ))
            }
        };
        Ok((site, event))
    }

    fn parse_wire(json: &str) -> Result<(Option<Value>, Fields), EventError> {
        if !json.trim_start().starts_with('{') {
            return Err(EventError::new(
                "invalid_event",
                "an event must be a JSON object",
            ));
        }
        let mut fields: Fields = serde_json::from_str(json).map_err(|e| {
            EventError::new(
                "invalid_event",
                format!("an event must be a JSON object: {e}"),
            )
        })?;
        Ok((fields.site.take(), fields))
    }

    /// Clamps `occurred_at` to `now` ± `skew_micros`: a public sender (the
    /// pixel) may not date its copy years away from its arrival.
    pub fn clamp_occurred_at(&mut self, now: i64, skew_micros: i64) {
        if let Some(t) = self.occurred_at.as_mut() {
            *t = (*t).clamp(now - skew_micros, now + skew_micros);
        }
    }

    /// Whether this copy came from an authenticated sender (the server API,
    /// an import, a drop-in SDK) rather than the public pixel: its property
    /// values win over a pixel copy's (SPEC §3, trust).
    pub fn is_authenticated(&self) -> bool {
        self.source != Source::Pixel
    }
}

impl Fields {
    /// Checks every field against SPEC §2.3 and hashes personal data;
    /// `default_source` applies when `source` is absent.
    pub fn validate(self, default_source: Source) -> Result<Event, EventError> {
        Ok(Event {
            event_id: required_id("event_id", self.event_id)?,
            event_name: required_id("event_name", self.event_name)?,
            source: source(self.source, default_source)?,
            occurred_at: occurred_at(self.occurred_at)?,
            session_id: optional_string("session_id", self.session_id, MAX_SESSION_BYTES)?,
            url: optional_string("url", self.url, MAX_URL_BYTES)?,
            referrer: optional_string("referrer", self.referrer, MAX_URL_BYTES)?,
            properties: properties(self.properties)?,
            user_data: user_data(self.user_data)?,
            user_id: optional_string("user_id", self.user_id, MAX_ID_BYTES)?,
            anonymous_id: optional_string("anonymous_id", self.anonymous_id, MAX_ID_BYTES)?,
            visitor_id: None,
        })
    }
}

fn required_id(field: &'static str, value: Option<Value>) -> Result<String, EventError> {
    let code = match field {
        "event_id" => "invalid_event_id",
        _ => "invalid_event_name",
    };
    match value {
        Some(Value::String(s)) if s.is_empty() => {
            Err(EventError::new(code, format!("{field} must not be empty")))
        }
        Some(Value::String(s)) if s.len() > MAX_ID_BYTES => Err(EventError::new(
            code,
            format!("{field} is {} bytes; the limit is {MAX_ID_BYTES}", s.len()),
        )),
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(EventError::new(code, format!("{field} is required"))),
        Some(_) => Err(EventError::new(code, format!("{field} must be a string"))),
    }
}

fn source(value: Option<Value>, default: Source) -> Result<Source, EventError> {
    match value {
        None | Some(Value::Null) => Ok(default),
        Some(Value::String(s)) => Source::parse(&s).ok_or_else(|| {
            EventError::new(
                "invalid_source",
                format!("source must be \"server\", \"pixel\" or \"import\", not {s:?}"),
            )
        }),
        Some(_) => Err(EventError::new("invalid_source", "source must be a string")),
    }
}

fn occurred_at(value: Option<Value>) -> Result<Option<i64>, EventError> {
    let bad = |why: String| EventError::new("invalid_occurred_at", why);
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let t = chrono::DateTime::parse_from_rfc3339(&s).map_err(|e| {
                bad(format!(
                    "occurred_at must be an RFC 3339 time such as 2026-11-23T10:00:00Z ({e})"
                ))
            })?;
            let micros = t.timestamp_micros();
            if OCCURRED_RANGE.contains(&micros) {
                Ok(Some(micros))
            } else {
                Err(bad(format!(
                    "occurred_at {s} is outside the years 1970 to 9999 (in UTC)"
                )))
            }
        }
        Some(_) => Err(bad("occurred_at must be a string".into())),
    }
}

fn optional_string(
    field: &'static str,
    value: Option<Value>,
    max: usize,
) -> Result<Option<String>, EventError> {
    let code = match field {
        "session_id" => "invalid_session_id",
        "url" => "invalid_url",
        "referrer" => "invalid_referrer",
        "user_id" => "invalid_user_id",
        _ => "invalid_anonymous_id",
    };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() > max => Err(EventError::new(
            code,
            format!("{field} is {} bytes; the limit is {max}", s.len()),
        )),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(EventError::new(code, format!("{field} must be a string"))),
    }
}

fn properties(raw: Option<Box<RawValue>>) -> Result<Option<String>, EventError> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    if !text.starts_with('{') {
        return Err(EventError::new(
            "invalid_properties",
            "properties must be a JSON object",
        ));
    }
    if text.len() > MAX_PROPERTIES_BYTES {
        return Err(EventError::new(
            "invalid_properties",
            format!(
                "properties is {} bytes; the limit is {MAX_PROPERTIES_BYTES}",
                text.len()
            ),
        ));
    }
    // A full parse: serde's raw values let through text DuckDB's JSON type
    // would later refuse (e.g. a lone surrogate escape).
    let Ok(mut map) = serde_json::from_str::<Map<String, Value>>(text) else {
        return Err(EventError::new(
            "invalid_properties",
            "properties is not valid JSON",
        ));
    };
    // An empty object carries nothing: stored as no properties at all.
    if map.is_empty() {
        return Ok(None);
    }
    if personal::has_personal_properties(&map) {
        personal::hash_personal_properties(&mut map);
        return Ok(Some(Value::Object(map).to_string()));
    }
    Ok(Some(text.to_owned()))
}

fn user_data(value: Option<Value>) -> Result<Option<String>, EventError> {
    let bad = |m: String| EventError::new("invalid_user_data", m);
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => {
            let hashed = personal::hash_user_data(&map).map_err(|e| bad(e.0))?;
            if hashed.is_empty() {
                return Ok(None);
            }
            let text = Value::Object(hashed).to_string();
            if text.len() > personal::MAX_USER_DATA_BYTES {
                return Err(bad(format!(
                    "user_data is {} bytes hashed; the limit is {}",
                    text.len(),
                    personal::MAX_USER_DATA_BYTES
                )));
            }
            Ok(Some(text))
        }
        Some(_) => Err(bad("user_data must be a JSON object of match keys".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_server_event() {
        let e = Event::parse(
            r#"{"event_id":"ord_42","event_name":"order.completed","source":"server",
               "occurred_at":"2026-11-23T10:00:00Z","session_id":"s_1",
               "properties":{"order_id":"42","total":199.99}}"#,
            Source::Server,
        )
        .unwrap();
        assert_eq!(e.event_id, "ord_42");
        assert_eq!(e.source, Source::Server);
        assert_eq!(e.occurred_at, Some(1_795_428_000_000_000));
        assert_eq!(
            e.properties.as_deref(),
            Some(r#"{"order_id":"42","total":199.99}"#)
        );
    }

    #[test]
    fn each_bad_field_gets_its_own_code() {
        let cases = [
            (r#"[1]"#, "invalid_event"),
            (r#"{"event_name":"a"}"#, "invalid_event_id"),
            (r#"{"event_id":"","event_name":"a"}"#, "invalid_event_id"),
            (r#"{"event_id":"x","event_name":7}"#, "invalid_event_name"),
            (
                r#"{"event_id":"x","event_name":"a","source":"fax"}"#,
                "invalid_source",
            ),
            (
                r#"{"event_id":"x","event_name":"a","occurred_at":"yesterday"}"#,
                "invalid_occurred_at",
            ),
            (
                r#"{"event_id":"x","event_name":"a","properties":[1]}"#,
                "invalid_properties",
            ),
            (
                r#"{"event_id":"x","event_name":"a","session_id":5}"#,
                "invalid_session_id",
            ),
            (
                r#"{"event_id":"x","event_name":"a","properties":{"s":"\ud800"}}"#,
                "invalid_properties",
            ),
        ];
        for (json, code) in cases {
            assert_eq!(
                Event::parse(json, Source::Server).unwrap_err().code,
                code,
                "{json}"
            );
        }
    }

    #[test]
    fn limits_are_bytes_not_chars() {
        let id = "é".repeat(129); // 258 bytes
        let json = format!(r#"{{"event_id":"{id}","event_name":"a"}}"#);
        assert_eq!(
            Event::parse(&json, Source::Server).unwrap_err().code,
            "invalid_event_id"
        );
        let id = "a".repeat(256);
        let json = format!(r#"{{"event_id":"{id}","event_name":"a"}}"#);
        assert!(Event::parse(&json, Source::Server).is_ok());
    }

    #[test]
    fn personal_data_is_hashed_before_it_is_kept() {
        let e = Event::parse(
            r#"{"event_id":"o","event_name":"n","user_data":{"email":" A@B.com"},
               "properties":{"email":"A@B.com","total":1}}"#,
            Source::Server,
        )
        .unwrap();
        let text = format!("{:?}", e);
        assert!(
            !text.contains("A@B.com") && !text.contains("a@b.com"),
            "{text}"
        );
        let hashed = personal::hash_email("a@b.com");
        assert_eq!(e.user_data.unwrap(), format!(r#"{{"em":"{hashed}"}}"#));
        assert!(e.properties.unwrap().contains(&hashed));
        let bad = r#"{"event_id":"o","event_name":"n","user_data":{"street":"x"}}"#;
        assert_eq!(
            Event::parse(bad, Source::Server).unwrap_err().code,
            "invalid_user_data"
        );
    }

    #[test]
    fn times_outside_years_1970_to_9999_are_refused() {
        for t in [
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59-01:00",
            "1969-12-31T23:59:59Z",
        ] {
            let json = format!(r#"{{"event_id":"x","event_name":"a","occurred_at":"{t}"}}"#);
            assert_eq!(
                Event::parse(&json, Source::Server).unwrap_err().code,
                "invalid_occurred_at",
                "{t}"
            );
        }
        let ok = r#"{"event_id":"x","event_name":"a","occurred_at":"9999-12-31T23:59:59Z"}"#;
        assert!(Event::parse(ok, Source::Server).is_ok());
    }

    #[test]
    fn a_sequence_is_not_an_event() {
        let json = r#"["x","a"]"#;
        assert_eq!(
            Event::parse(json, Source::Server).unwrap_err().code,
            "invalid_event"
        );
    }

    #[test]
    fn a_pixel_time_is_clamped_to_its_arrival() {
        let (_, mut e) = Event::parse_pixel(
            r#"{"site":"k","event_id":"e","event_name":"n","occurred_at":"2000-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        e.clamp_occurred_at(1_000_000_000_000_000, 600_000_000);
        assert_eq!(e.occurred_at, Some(999_999_400_000_000));
    }

    #[test]
    fn pixel_bodies_always_count_as_pixel() {
        let (site, e) = Event::parse_pixel(
            r#"{"site":"k1","event_id":"e","event_name":"n","source":"server"}"#,
        )
        .unwrap();
        assert_eq!(site, "k1");
        assert_eq!(e.source, Source::Pixel);
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_with_a_code(text in ".{0,400}") {
            if let Err(e) = Event::parse(&text, Source::Server) {
                proptest::prop_assert!(e.code.starts_with("invalid_"));
            }
            let _ = Event::parse_pixel(&text);
        }

        #[test]
        fn valid_fields_come_back_as_sent(
            id in "[a-zA-Z0-9_-]{1,40}",
            name in "[a-z.]{1,30}",
            total in -1_000_000i64..1_000_000,
        ) {
            let json = serde_json::json!({"event_id": id, "event_name": name, "properties": {"total": total}});
            let e = Event::parse(&json.to_string(), Source::Server).unwrap();
            proptest::prop_assert_eq!(e.event_id, id);
            proptest::prop_assert_eq!(e.event_name, name);
            let props: serde_json::Value = serde_json::from_str(&e.properties.unwrap()).unwrap();
            proptest::prop_assert_eq!(props["total"].as_i64(), Some(total));
        }
    }
}
