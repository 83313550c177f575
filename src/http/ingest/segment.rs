//! The Segment HTTP Tracking API, as Segment's and RudderStack's SDKs speak
//! it (SPEC §2.4): `POST /v1/batch`, and `/v1/track`, `/v1/page`,
//! `/v1/identify`, `/v1/screen`, `/v1/group`, `/v1/alias` with one message.
//!
//! What the real SDKs do, and what this file therefore accepts (captured
//! from them, see `tests/sdk/`): the write key comes as HTTP Basic user name
//! (or `writeKey` in the body); rudder-sdk-node gzips and labels the body
//! `application/x-www-form-urlencoded`, so the body is JSON whatever its
//! content type; rudder-sdk-python treats only an exact 200 as success and
//! reads a 4xx body's `code` and `message`; every SDK retries 5xx and 429
//! with the same `messageId`, which dedup absorbs. A message that fails
//! validation is dropped alone and counted; it never fails the batch.

use super::{
    credentials, mode, site_by_token, store, test_mode, test_report, validate_each, Rejection,
};
use crate::app::App;
use crate::domain::{Event, EventError, Fields, Source};
use crate::http::body;
use crate::http::error::ApiError;
use crate::metrics::{Endpoint, Fate};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

/// Largest body, inflated.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Most messages in one batch.
pub const MAX_MESSAGES: usize = 2_500;

/// The message types and the event name each becomes.
const TYPES: [(&str, Option<&str>); 6] = [
    ("track", None),
    ("page", Some("page.view")),
    ("screen", Some("screen.view")),
    ("identify", Some("identify")),
    ("group", Some("group")),
    ("alias", Some("alias")),
];

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/batch")
            .name(Endpoint::Segment.as_str())
            .route(web::post().to(batch)),
    );
    for (kind, _) in TYPES {
        cfg.service(
            web::resource(format!("/v1/{kind}"))
                .name(Endpoint::Segment.as_str())
                .route(web::post().to(single)),
        );
    }
}

/// An error in the shape the SDKs read: `{"code", "message"}` (plus
/// Tally's usual `error`), with the status of [`ApiError`]'s table.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SegmentError(#[from] ApiError);

impl ResponseError for SegmentError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        self.0.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        let code = self.0.code();
        self.0
            .respond_with(json!({"error": code, "code": code, "message": self.0.to_string()}))
    }
}

#[derive(Deserialize)]
struct BatchBody {
    batch: Option<Vec<Box<RawValue>>>,
    #[serde(rename = "writeKey")]
    write_key: Option<String>,
}

/// One message, loosely typed: each field maps onto [`Fields`].
#[derive(Deserialize)]
struct Message {
    #[serde(rename = "type")]
    kind: Option<Value>,
    #[serde(rename = "messageId")]
    message_id: Option<Value>,
    event: Option<Value>,
    properties: Option<Box<RawValue>>,
    traits: Option<Box<RawValue>>,
    context: Option<Context>,
    timestamp: Option<Value>,
    #[serde(rename = "originalTimestamp")]
    original_timestamp: Option<Value>,
    #[serde(rename = "userId")]
    user_id: Option<Value>,
    #[serde(rename = "anonymousId")]
    anonymous_id: Option<Value>,
    #[serde(rename = "writeKey")]
    write_key: Option<String>,
    name: Option<Value>,
    category: Option<Value>,
    #[serde(rename = "groupId")]
    group_id: Option<Value>,
    #[serde(rename = "previousId")]
    previous_id: Option<Value>,
}

#[derive(Deserialize, Default)]
struct Context {
    page: Option<Page>,
    traits: Option<Box<RawValue>>,
    #[serde(rename = "sessionId")]
    session_id: Option<Value>,
}

#[derive(Deserialize, Default)]
struct Page {
    url: Option<Value>,
    referrer: Option<Value>,
}

/// Maps one Segment message onto an event (SPEC §2.4); `kind` is the type
/// the route implies (`/v1/track` …), which wins over the body's.
pub fn to_event(json: &str, kind: Option<&str>) -> Result<Event, EventError> {
    let bad = |m: String| EventError::new("invalid_event", m);
    if !json.trim_start().starts_with('{') {
        return Err(bad("a message must be a JSON object".into()));
    }
    let m: Message =
        serde_json::from_str(json).map_err(|e| bad(format!("malformed message: {e}")))?;
    let kind = match (kind, &m.kind) {
        (Some(k), _) => k.to_owned(),
        (None, Some(Value::String(k))) => k.clone(),
        _ => {
            return Err(EventError::new(
                "invalid_type",
                "type is required (track, page, …)",
            ))
        }
    };
    let (_, name) = TYPES.iter().find(|(t, _)| *t == kind).ok_or_else(|| {
        EventError::new(
            "invalid_type",
            format!("type {kind:?} is not one of track, page, screen, identify, group, alias"),
        )
    })?;
    let event_name = match name {
        Some(n) => Value::String((*n).to_owned()),
        None => m
            .event
            .clone()
            .ok_or_else(|| EventError::new("invalid_event_name", "a track message needs event"))?,
    };
    let context = m.context.unwrap_or_default();
    let page = context.page.unwrap_or_default();
    let properties = match kind.as_str() {
        "identify" | "group" => m.traits.or(context.traits),
        _ => m.properties,
    };
    // What a page, screen, group or alias message is about lives outside
    // its properties; kept under the wire name unless a property has it.
    let about = match kind.as_str() {
        "page" | "screen" => [("name", m.name), ("category", m.category)],
        "group" => [("groupId", m.group_id), ("", None)],
        "alias" => [("previousId", m.previous_id), ("", None)],
        _ => [("", None), ("", None)],
    };
    let properties = with_fields(properties, about)?;
    let from_props = |key: &str| -> Option<Value> {
        let p: serde_json::Map<String, Value> =
            serde_json::from_str(properties.as_ref()?.get()).ok()?;
        p.get(key).cloned()
    };
    let fields = Fields {
        event_id: m.message_id.map(text),
        event_name: Some(event_name),
        source: None,
        occurred_at: m
            .timestamp
            .filter(|v| !v.is_null())
            .or(m.original_timestamp),
        session_id: context.session_id.map(text),
        url: page.url.or_else(|| from_props("url")),
        referrer: page.referrer.or_else(|| from_props("referrer")),
        properties,
        user_data: None,
        user_id: m.user_id.map(text),
        anonymous_id: m.anonymous_id.map(text),
        site: None,
    };
    fields.validate(Source::Server).map_err(|mut e| {
        if e.code == "invalid_event_id" {
            e.message = format!("messageId: {}", e.message.replace("event_id", "messageId"));
        }
        e
    })
}

/// `properties` with each of `fields` that is set (not null) and that it
/// lacks added; untouched when there is nothing to add.
fn with_fields(
    properties: Option<Box<RawValue>>,
    fields: [(&str, Option<Value>); 2],
) -> Result<Option<Box<RawValue>>, EventError> {
    let mut add = fields
        .into_iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_null()).map(|v| (k, v)))
        .peekable();
    if add.peek().is_none() {
        return Ok(properties);
    }
    let mut map = match properties.as_deref().map(RawValue::get) {
        None | Some("null") => Map::new(),
        // Not an object: left for validation to refuse with its own code.
        Some(text) => match serde_json::from_str::<Map<String, Value>>(text) {
            Ok(map) => map,
            Err(_) => return Ok(properties),
        },
    };
    for (k, v) in add {
        map.entry(k).or_insert(v);
    }
    RawValue::from_string(Value::Object(map).to_string())
        .map(Some)
        .map_err(|e| EventError::new("invalid_properties", e.to_string()))
}

/// Ids sent as numbers are the same ids as text.
fn text(v: Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        other => other,
    }
}

#[derive(Serialize)]
struct Answer {
    success: bool,
    accepted: u64,
    deduplicated: u64,
    rejected: u64,
    errors: Vec<Rejection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    test: Option<Vec<Value>>,
}

/// `POST /v1/batch`.
async fn batch(
    app: web::Data<App>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, SegmentError> {
    let header_token = credentials(&req)?;
    let body = body::read(&req, payload, MAX_BODY_BYTES).await?;
    const SHAPE: &str = "the body must be a JSON object {\"batch\": [...]}";
    if !is_object(&body) {
        return Err(not_a_batch(SHAPE.into()));
    }
    let parsed: BatchBody =
        serde_json::from_slice(&body).map_err(|e| not_a_batch(format!("{SHAPE}: {e}")))?;
    let messages = parsed
        .batch
        .ok_or_else(|| not_a_batch("the body has no \"batch\" array".into()))?;
    if messages.len() > MAX_MESSAGES {
        return Err(ApiError::TooLarge(format!(
            "{} messages in one batch; the limit is {MAX_MESSAGES}",
            messages.len()
        ))
        .into());
    }
    let token = header_token.or(parsed.write_key).ok_or_else(no_key)?;
    let site = site_by_token(&req, &token)?;
    let items = messages.iter().map(|m| m.get());
    answer(&app, &req, site, items, None).await
}

/// `POST /v1/track` and the other single-message routes.
async fn single(
    app: web::Data<App>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, SegmentError> {
    let kind = req.path().trim_start_matches("/v1/").to_owned();
    let header_token = credentials(&req)?;
    let body = body::read(&req, payload, MAX_BODY_BYTES).await?;
    // A body that is not one JSON object is not a message: 400, like a
    // batch body that is not a batch. A message with a bad field is
    // dropped alone, as in a batch.
    let text = std::str::from_utf8(&body)
        .ok()
        .filter(|t| is_object(t.as_bytes()))
        .filter(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok())
        .ok_or_else(|| {
            not_a_batch(format!(
                "the body of /v1/{kind} must be one message, a JSON object"
            ))
        })?;
    let body_key = serde_json::from_str::<Message>(text)
        .ok()
        .and_then(|m| m.write_key);
    let token = header_token.or(body_key).ok_or_else(no_key)?;
    let site = site_by_token(&req, &token)?;
    answer(&app, &req, site, std::iter::once(text), Some(&kind)).await
}

async fn answer<'a>(
    app: &App,
    req: &HttpRequest,
    site: std::sync::Arc<crate::domain::Site>,
    messages: impl Iterator<Item = &'a str>,
    kind: Option<&str>,
) -> Result<HttpResponse, SegmentError> {
    let test = test_mode(req);
    let (events, positions, errors) = validate_each(messages, |m| to_event(m, kind));
    let outcome = store(app, site, events, mode(test)).await?;
    if !test && !errors.is_empty() {
        app.metrics.dropped_messages(errors.len() as u64);
        app.metrics
            .count(Source::Server, Fate::Rejected, errors.len() as u64);
    }
    Ok(HttpResponse::Ok().json(Answer {
        success: true,
        accepted: outcome.accepted,
        deduplicated: outcome.deduplicated,
        rejected: errors.len() as u64,
        test: test.then(|| test_report(&outcome, &positions, &errors)),
        errors,
    }))
}

fn not_a_batch(message: String) -> SegmentError {
    ApiError::bad_request("invalid_body", message).into()
}

/// Whether a body starts like a JSON object.
fn is_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

fn no_key() -> SegmentError {
    ApiError::Unauthorized(
        "send the site's API token as the write key: HTTP Basic user name, or writeKey in the body"
            .into(),
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_track_message_maps_onto_an_event() {
        let e = to_event(
            r#"{"type":"track","event":"order.completed","messageId":"m1","userId":"u1",
               "anonymousId":null,"properties":{"order_id":"42","total":19.99},
               "timestamp":"2026-11-25T20:27:38.487+00:00",
               "context":{"library":{"name":"analytics-python"},"page":{"url":"https://s.example/x"}}}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            (e.event_id.as_str(), e.event_name.as_str()),
            ("m1", "order.completed")
        );
        assert_eq!(e.source, Source::Server);
        assert_eq!(e.user_id.as_deref(), Some("u1"));
        assert_eq!(e.anonymous_id, None);
        assert_eq!(e.url.as_deref(), Some("https://s.example/x"));
        assert_eq!(e.occurred_at, Some(1_795_638_458_487_000));
        assert!(e.properties.unwrap().contains("19.99"));
    }

    #[test]
    fn types_name_their_events_and_traits_become_properties() {
        let page = to_event(
            r#"{"type":"page","messageId":"m2","properties":{"url":"https://a/","referrer":"https://g/"},
               "originalTimestamp":"2026-11-25T20:30:43.688Z"}"#,
            None,
        )
        .unwrap();
        assert_eq!(page.event_name, "page.view");
        assert_eq!(page.url.as_deref(), Some("https://a/"));
        assert_eq!(page.referrer.as_deref(), Some("https://g/"));
        assert!(page.occurred_at.is_some());
        // rudder-sdk-python puts identify traits only in context.traits.
        let who = to_event(
            r#"{"type":"identify","messageId":"m3","userId":7,"context":{"traits":{"email":"A@B.com"}}}"#,
            None,
        )
        .unwrap();
        assert_eq!(who.event_name, "identify");
        assert_eq!(who.user_id.as_deref(), Some("7"));
        let props = who.properties.unwrap();
        assert!(!props.contains("A@B.com"), "hashed: {props}");
        let screen = to_event(r#"{"messageId":"m4","name":"Home"}"#, Some("screen")).unwrap();
        assert_eq!(screen.event_name, "screen.view");
    }

    #[test]
    fn what_a_message_is_about_is_kept_in_its_properties() {
        let props = |json: &str| -> Value {
            serde_json::from_str(&to_event(json, None).unwrap().properties.unwrap()).unwrap()
        };
        let page = props(
            r#"{"type":"page","messageId":"p","name":"Home","category":"Docs","properties":{"url":"https://a/"}}"#,
        );
        assert_eq!(
            page,
            json!({"url": "https://a/", "name": "Home", "category": "Docs"})
        );
        let screen = props(r#"{"type":"screen","messageId":"s","name":"Cart","properties":null}"#);
        assert_eq!(screen, json!({"name": "Cart"}));
        let group =
            props(r#"{"type":"group","messageId":"g","groupId":7,"traits":{"name":"Acme"}}"#);
        assert_eq!(group, json!({"name": "Acme", "groupId": 7}));
        let alias = props(r#"{"type":"alias","messageId":"a","previousId":"anon","userId":"u"}"#);
        assert_eq!(alias, json!({"previousId": "anon"}));
        // A property of that name wins; other types carry nothing extra.
        let named = props(
            r#"{"type":"page","messageId":"p","name":"Home","category":null,"properties":{"name":"Landing"}}"#,
        );
        assert_eq!(named, json!({"name": "Landing"}));
        let track = to_event(
            r#"{"type":"track","event":"x","messageId":"t","name":"ignored","groupId":"g"}"#,
            None,
        )
        .unwrap();
        assert_eq!(track.properties, None);
        let bad = to_event(
            r#"{"type":"page","messageId":"p","name":"Home","properties":[1]}"#,
            None,
        );
        assert_eq!(bad.unwrap_err().code, "invalid_properties");
    }

    #[test]
    fn bad_messages_name_what_is_wrong() {
        let cases = [
            (r#"{"type":"track","messageId":"m"}"#, "invalid_event_name"),
            (r#"{"type":"track","event":"x"}"#, "invalid_event_id"),
            (r#"{"type":"fax","messageId":"m"}"#, "invalid_type"),
            (r#"{"messageId":"m","event":"x"}"#, "invalid_type"),
            (
                r#"{"type":"track","event":"x","messageId":"m","timestamp":"yesterday"}"#,
                "invalid_occurred_at",
            ),
            (
                r#"{"type":"track","event":"x","messageId":"m","context":"nope"}"#,
                "invalid_event",
            ),
            (r#"[1]"#, "invalid_event"),
        ];
        for (json, code) in cases {
            assert_eq!(to_event(json, None).unwrap_err().code, code, "{json}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_message_maps_or_is_refused_with_a_code(text in ".{0,300}") {
            if let Err(e) = to_event(&text, None) {
                proptest::prop_assert!(e.code.starts_with("invalid_"));
            }
        }
    }
}
