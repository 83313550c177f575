//! An event as Tally trusts it: parsed once from the wire with the limits of
//! SPEC §2.3, so nothing past the boundary checks a field again.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

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
    fn new(code: &'static str, message: impl Into<String>) -> Self {
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
    /// The properties object as JSON text; `None` when absent.
    pub properties: Option<String>,
    /// Daily-rotating visitor hash, set by Tally for pixel copies (never read
    /// from the wire).
    pub visitor_id: Option<String>,
}

/// The wire shape shared by `/v1/events`, `/v1/pixel` and `tally import`.
/// Every field is loosely typed so each one gets its own error code.
#[derive(Deserialize)]
struct WireEvent {
    site: Option<Value>,
    event_id: Option<Value>,
    event_name: Option<Value>,
    source: Option<Value>,
    occurred_at: Option<Value>,
    session_id: Option<Value>,
    url: Option<Value>,
    referrer: Option<Value>,
    properties: Option<Box<RawValue>>,
}

impl Event {
    /// Parses one event object; `default_source` applies when `source` is absent.
    pub fn parse(json: &str, default_source: Source) -> Result<Event, EventError> {
        Ok(Self::parse_wire(json, default_source)?.1)
    }

    /// Parses one pixel body: the event plus the `site` key it names.
    /// The source is always `pixel`, whatever the body says.
    pub fn parse_pixel(json: &str) -> Result<(String, Event), EventError> {
        let (site, mut event) = Self::parse_wire(json, Source::Pixel)?;
        event.source = Source::Pixel;
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

    fn parse_wire(
        json: &str,
        default_source: Source,
    ) -> Result<(Option<Value>, Event), EventError> {
        let wire: WireEvent = serde_json::from_str(json).map_err(|e| {
            EventError::new(
                "invalid_event",
                format!("an event must be a JSON object: {e}"),
            )
        })?;
        let event = Event {
            event_id: required_id("event_id", wire.event_id)?,
            event_name: required_id("event_name", wire.event_name)?,
            source: source(wire.source, default_source)?,
            occurred_at: occurred_at(wire.occurred_at)?,
            session_id: optional_string("session_id", wire.session_id, MAX_SESSION_BYTES)?,
            url: optional_string("url", wire.url, MAX_URL_BYTES)?,
            referrer: optional_string("referrer", wire.referrer, MAX_URL_BYTES)?,
            properties: properties(wire.properties)?,
            visitor_id: None,
        };
        Ok((wire.site, event))
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
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| Some(t.timestamp_micros()))
            .map_err(|e| {
                EventError::new(
                    "invalid_occurred_at",
                    format!(
                        "occurred_at must be an RFC 3339 time such as 2026-11-23T10:00:00Z ({e})"
                    ),
                )
            }),
        Some(_) => Err(EventError::new(
            "invalid_occurred_at",
            "occurred_at must be a string",
        )),
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
        _ => "invalid_referrer",
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
    if !text.starts_with('{') {
        return Err(EventError::new(
            "invalid_properties",
            "properties must be a JSON object",
        ));
    }
    // A full parse: serde's raw values let through text DuckDB's JSON type
    // would later refuse (e.g. a lone surrogate escape).
    if serde_json::from_str::<serde_json::Map<String, Value>>(text).is_err() {
        return Err(EventError::new(
            "invalid_properties",
            "properties is not valid JSON",
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
    Ok(Some(text.to_owned()))
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
    fn pixel_bodies_always_count_as_pixel() {
        let (site, e) = Event::parse_pixel(
            r#"{"site":"k1","event_id":"e","event_name":"n","source":"server"}"#,
        )
        .unwrap();
        assert_eq!(site, "k1");
        assert_eq!(e.source, Source::Pixel);
    }
}
